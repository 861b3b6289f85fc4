// npusim_dram: a simulation-only model of the device DRAM behind one AXI4-style slave port.
//
// Not synthesisable and not meant to be: it is a plain array with a latency/bandwidth pipeline
// in front, so a DRAM-sized memory (64 MiB) builds in seconds under Verilator, where an Amaranth
// memory of that size cannot even be converted (docs/hw/dram.md, "Why SystemVerilog").
// Instantiated from Amaranth by npusim.hw.dram.DramModel; the port conventions are those of
// npusim.hw.axi (INCR bursts of full-width beats, len = beats - 1).
//
// Timing (every figure in clock cycles; "cycle c" is the cycle whose closing rising edge samples
// a handshake):
//   * an AR accepted in cycle c has its first R beat valid from cycle c + LATENCY on; the beats of
//     a burst, and of consecutive bursts, follow one per cycle while r_ready is high: with enough
//     bursts in flight the port returns a beat every cycle;
//   * AR (and AW) are accepted while fewer than OUTSTANDING read (write) bursts are pending; a
//     read burst is pending until its last beat has been taken;
//   * W beats are written to the array as they are accepted, one per cycle, in AW order, strobes
//     honoured; W waits for its AW (w_ready is low while no AW is queued);
//   * a burst's B is valid from LATENCY cycles after the cycle of its last W beat;
//   * R data is read from the array in the cycle the beat is presented, so a read sees every
//     write whose beat was accepted before that cycle.
//
// Errors are decided per burst when its AR/AW is accepted: a misaligned address or a burst that
// crosses a 4 KiB boundary is SLVERR; a burst reaching past WORDS beats is DECERR. Refused reads
// return every beat with zero data and that resp; refused writes accept and drop their beats and
// answer that resp in B. A write burst whose w_last disagrees with its AW len (the burst ends after
// len + 1 beats regardless) is written but answered SLVERR.
//
// The array has no initial block: Verilator zero-initialises it (the default
// --x-initial); images are put in and taken out through the backdoor:
//   bd_load (pulse): $readmemh(HEXFILE, mem, bd_addr, bd_addr + bd_words - 1)
//   bd_dump (pulse): $writememh(HEXFILE, mem, bd_addr, bd_addr + bd_words - 1)
// both executed at the rising edge that samples the pulse (load before dump if both are set);
// bd_count then increments (mod 256), so a testbench can tell the operation ran. HEXFILE is
// resolved against the simulator's working directory. bd_words = 0 does nothing but count.

/* verilator lint_off DECLFILENAME */  // the file is named for its role, the module for the project
module npusim_dram #(
    parameter int    ADDR_WIDTH  = 26,        // byte address bits of the port
    parameter int    DATA_BYTES  = 32,        // bytes per beat (a power of two)
    parameter int    ID_WIDTH    = 4,
    parameter int    WORDS       = 2097152,   // array size in beats
    parameter int    LATENCY     = 40,        // AR accepted -> first R beat, last W -> B (>= 1)
    parameter int    OUTSTANDING = 8,         // read bursts, and write bursts, accepted at once
    parameter string HEXFILE     = "npusim_dram.hex"
) (
    input  logic                    clk,
    input  logic                    rst,       // synchronous, active high: empties the queues

    input  logic                    ar_valid,
    output logic                    ar_ready,
    input  logic [ADDR_WIDTH-1:0]   ar_addr,
    input  logic [7:0]              ar_len,
    input  logic [ID_WIDTH-1:0]     ar_id,

    output logic                    r_valid,
    input  logic                    r_ready,
    output logic [DATA_BYTES*8-1:0] r_data,
    output logic [1:0]              r_resp,
    output logic                    r_last,
    output logic [ID_WIDTH-1:0]     r_id,

    input  logic                    aw_valid,
    output logic                    aw_ready,
    input  logic [ADDR_WIDTH-1:0]   aw_addr,
    input  logic [7:0]              aw_len,
    input  logic [ID_WIDTH-1:0]     aw_id,

    input  logic                    w_valid,
    output logic                    w_ready,
    input  logic [DATA_BYTES*8-1:0] w_data,
    input  logic [DATA_BYTES-1:0]   w_strb,
    input  logic                    w_last,

    output logic                    b_valid,
    input  logic                    b_ready,
    output logic [1:0]              b_resp,
    output logic [ID_WIDTH-1:0]     b_id,

    input  logic                    bd_load,
    input  logic                    bd_dump,
    input  logic [31:0]             bd_addr,   // first beat
    input  logic [31:0]             bd_words,  // beats
    output logic [7:0]              bd_count   // backdoor operations done, mod 256
);
    localparam logic [1:0] OKAY = 2'd0, SLVERR = 2'd2, DECERR = 2'd3;
    localparam int SLOT_BITS = OUTSTANDING > 1 ? $clog2(OUTSTANDING) : 1;
    localparam int BEAT_SHIFT = $clog2(DATA_BYTES);
    localparam int BOUNDARY = 4096;

    typedef logic [SLOT_BITS-1:0] slot_t;
    typedef logic [SLOT_BITS:0] count_t;
    typedef logic [63:0] cycle_t;

    initial begin
        if (LATENCY < 1) $fatal(1, "npusim_dram: LATENCY must be at least 1, not %0d", LATENCY);
        if (OUTSTANDING < 1) $fatal(1, "npusim_dram: OUTSTANDING must be at least 1");
        if (DATA_BYTES != (1 << BEAT_SHIFT)) $fatal(1, "npusim_dram: DATA_BYTES not a power of 2");
    end

    logic [DATA_BYTES*8-1:0] mem [0:WORDS-1];

    cycle_t now;  // cycles since reset

    // The response of a burst: OKAY, or why it is refused (see the header).
    function automatic logic [1:0] classify(input logic [ADDR_WIDTH-1:0] addr,
                                            input logic [7:0] len);
        logic [63:0] address, bytes, first_beat;
        address = 64'(addr);
        bytes = (64'(len) + 64'd1) << BEAT_SHIFT;
        first_beat = address >> BEAT_SHIFT;
        if ((address & 64'(DATA_BYTES - 1)) != 64'd0) return SLVERR;
        if ((address & 64'(BOUNDARY - 1)) + bytes > 64'(BOUNDARY)) return SLVERR;
        if (first_beat + 64'(len) >= 64'(WORDS)) return DECERR;
        return OKAY;
    endfunction

    function automatic slot_t next_slot(input slot_t slot);
        return 32'(slot) == OUTSTANDING - 1 ? '0 : slot + 1'b1;
    endfunction

    function automatic logic [31:0] beat_index(input logic [ADDR_WIDTH-1:0] addr);
        return 32'(64'(addr) >> BEAT_SHIFT);
    endfunction

    // -- Reads: a queue of accepted bursts, streamed from its head ------------------------------

    logic [31:0]         rq_beat [OUTSTANDING];  // first beat index
    logic [7:0]          rq_len  [OUTSTANDING];
    logic [ID_WIDTH-1:0] rq_id   [OUTSTANDING];
    logic [1:0]          rq_resp [OUTSTANDING];
    cycle_t              rq_due  [OUTSTANDING];  // first cycle its beats may be valid
    slot_t  rq_head, rq_tail;
    count_t rq_count;
    logic [7:0] r_beat;  // beats of the head burst already taken

    assign ar_ready = 32'(rq_count) < OUTSTANDING;
    assign r_valid  = rq_count != '0 && now >= rq_due[rq_head];
    assign r_resp   = rq_resp[rq_head];
    assign r_id     = rq_id[rq_head];
    assign r_last   = r_beat == rq_len[rq_head];
    assign r_data   = r_valid && rq_resp[rq_head] == OKAY
                      ? mem[rq_beat[rq_head] + 32'(r_beat)] : '0;

    wire ar_take = ar_valid && ar_ready;
    wire r_take  = r_valid && r_ready;

    always_ff @(posedge clk) begin
        if (rst) begin
            rq_head <= '0;
            rq_tail <= '0;
            rq_count <= '0;
            r_beat <= '0;
        end else begin
            if (ar_take) begin
                rq_beat[rq_tail] <= beat_index(ar_addr);
                rq_len[rq_tail] <= ar_len;
                rq_id[rq_tail] <= ar_id;
                rq_resp[rq_tail] <= classify(ar_addr, ar_len);
                rq_due[rq_tail] <= now + 64'(LATENCY);
                rq_tail <= next_slot(rq_tail);
            end
            if (r_take) begin
                if (r_last) begin
                    rq_head <= next_slot(rq_head);
                    r_beat <= '0;
                end else begin
                    r_beat <= r_beat + 8'd1;
                end
            end
            rq_count <= rq_count + count_t'(ar_take) - count_t'(r_take && r_last);
        end
    end

    // -- Writes: a queue of accepted AW requests, then a queue of pending B responses -----------

    logic [31:0]         wq_beat [OUTSTANDING];
    logic [7:0]          wq_len  [OUTSTANDING];
    logic [ID_WIDTH-1:0] wq_id   [OUTSTANDING];
    logic [1:0]          wq_resp [OUTSTANDING];
    slot_t  wq_head, wq_tail;
    count_t wq_count;
    logic [7:0] w_beat;     // beats of the head burst already written
    logic       w_bad_last; // a w_last so far disagreed with the burst's len

    logic [ID_WIDTH-1:0] bq_id   [OUTSTANDING];
    logic [1:0]          bq_resp [OUTSTANDING];
    cycle_t              bq_due  [OUTSTANDING];
    slot_t  bq_head, bq_tail;
    count_t bq_count;

    assign aw_ready = 32'(wq_count) < OUTSTANDING;
    assign w_ready  = wq_count != '0 && 32'(bq_count) < OUTSTANDING;
    assign b_valid  = bq_count != '0 && now >= bq_due[bq_head];
    assign b_resp   = bq_resp[bq_head];
    assign b_id     = bq_id[bq_head];

    wire aw_take = aw_valid && aw_ready;
    wire w_take  = w_valid && w_ready;
    wire b_take  = b_valid && b_ready;
    wire w_final = w_beat == wq_len[wq_head];  // the head burst's last beat (by its len)
    /* verilator lint_off UNUSEDSIGNAL */  // bits above the array's index width
    wire [31:0] w_index = wq_beat[wq_head] + 32'(w_beat);
    /* verilator lint_on UNUSEDSIGNAL */

    always_ff @(posedge clk) begin
        if (rst) begin
            wq_head <= '0;
            wq_tail <= '0;
            wq_count <= '0;
            w_beat <= '0;
            w_bad_last <= 1'b0;
            bq_head <= '0;
            bq_tail <= '0;
            bq_count <= '0;
        end else begin
            if (aw_take) begin
                wq_beat[wq_tail] <= beat_index(aw_addr);
                wq_len[wq_tail] <= aw_len;
                wq_id[wq_tail] <= aw_id;
                wq_resp[wq_tail] <= classify(aw_addr, aw_len);
                wq_tail <= next_slot(wq_tail);
            end
            if (w_take) begin
                if (wq_resp[wq_head] == OKAY) begin
                    for (int i = 0; i < DATA_BYTES; i++) begin
                        if (w_strb[i]) mem[w_index][8*i +: 8] <= w_data[8*i +: 8];
                    end
                end
                if (w_final) begin
                    bq_id[bq_tail] <= wq_id[wq_head];
                    bq_resp[bq_tail] <= wq_resp[wq_head] != OKAY ? wq_resp[wq_head]
                                        : (w_bad_last || !w_last) ? SLVERR : OKAY;
                    bq_due[bq_tail] <= now + 64'(LATENCY);
                    bq_tail <= next_slot(bq_tail);
                    wq_head <= next_slot(wq_head);
                    w_beat <= '0;
                    w_bad_last <= 1'b0;
                end else begin
                    w_beat <= w_beat + 8'd1;
                    if (w_last) w_bad_last <= 1'b1;
                end
            end
            if (b_take) bq_head <= next_slot(bq_head);
            wq_count <= wq_count + count_t'(aw_take) - count_t'(w_take && w_final);
            bq_count <= bq_count + count_t'(w_take && w_final) - count_t'(b_take);
        end
    end

    // -- Cycle counter and backdoor --------------------------------------------------------------

    always_ff @(posedge clk) begin
        if (rst) now <= '0;
        else now <= now + 64'd1;
    end

    always @(posedge clk) begin
        if (rst) bd_count <= '0;
        else if (bd_load || bd_dump) bd_count <= bd_count + 8'd1;
        if (bd_load && bd_words != 0) $readmemh(HEXFILE, mem, bd_addr, bd_addr + bd_words - 1);
        if (bd_dump && bd_words != 0) $writememh(HEXFILE, mem, bd_addr, bd_addr + bd_words - 1);
    end
endmodule
