"""The DMA engine: executes one resolved DMA command at a time, bit-exact and error-exact with
the functional model (:mod:`npusim.sw.fm.dma`).

A command is first *checked* completely (alignment, shape, operand extents against SRAM, the
DMA windows and DRAM, then the block-table or slot-mapping entries, read from DRAM in a
pre-pass) and nothing is written before every check passed (the rows of a table of at most
``DMA_TABLE_BUFFER`` entries are *read* while its entries are checked): a row generator lists
the rows in the functional model's order (a gather's or scatter's contiguous tokens of one
block merged into one segment), a reader fetches each segment's source beats (AXI bursts or
scratchpad words) into a data FIFO, a realigner shifts them to the destination's byte offset,
and a writer stores them (AXI bursts with ``strb``, scratchpad writes with ``mask``).
``docs/hw/dma.md`` is the theory of operation.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ...sw.fm.dma import MAX_DMA_ROWS
from ...sw.fm.timing import DMA_MERGE_MAX_BYTES, DMA_TABLE_BUFFER
from ...sw.isa.enums import ErrorCode, Space
from ...sw.params import DEFAULT
from ...sw.regmap import NUM_WINDOWS
from ..axi import AxiParams, AxiSignature
from ..isa import DmaCommand, ErrorShape, Opcode, resolved_layout
from ..ne.scratchpad import ScratchpadPort
from ..refuse import refuse
from .link_error import link_error
from .windows import WindowLayout, window_hit

__all__ = ["WindowLayout", "DoneLayout", "DmaEngine", "BURST_BEATS", "DATA_FIFO_BEATS",
           "TABLE_BURST_BEATS", "TABLE_FIFO_BEATS", "ROW_QUEUE_DEPTH", "MAX_WRITE_BURSTS",
           "SERIAL_CHUNK_BEATS", "ID_WIDTH", "DMA_MERGE_MAX_BYTES", "DMA_TABLE_BUFFER"]


#: Width of a segment's byte count: a DMA_COPY row (``len``) or a merged run of paged rows
#: (up to ``DMA_MERGE_MAX_BYTES``), whichever is longer.
SEG_BITS = max(DMA_MERGE_MAX_BYTES,
               (1 << resolved_layout("DMA_COPY")["len"].width) - 1).bit_length()

#: A command's completion: its error code (``ErrorCode.OK`` = 0 when it succeeded).
DoneLayout = data.StructLayout({"error": ErrorShape})

#: Longest AXI burst the engine issues (512 B at 32 B/beat). Bursts start on multiples of it,
#: so they never cross a 4 KiB boundary. ``HwParams.dma_burst_beats`` (the functional model's
#: timing counts bursts); the engine refuses any other value.
BURST_BEATS = DEFAULT.dma_burst_beats
#: Source beats buffered between the reader and the realigner (8 KiB at 32 B/beat); a read is
#: issued only when its beats have room, so read data is never back-pressured. It bounds the
#: bytes in flight, so it must cover a read's round trip at full rate: over the link (about 600
#: cycles to a peer and back at 8 B/cycle) 2 KiB held a peer read to half the link's rate.
DATA_FIFO_BEATS = 256
#: Bursts and buffer of the block-table / slot-mapping reader.
TABLE_BURST_BEATS = 4
TABLE_FIFO_BEATS = 8
#: Rows (segments) the reader may run ahead of the realigner and the writer.
ROW_QUEUE_DEPTH = 16
#: Write bursts in flight (address accepted, response not yet received).
MAX_WRITE_BURSTS = 16
#: Largest piece of a row moved at once when a command's source and destination overlap
#: (read completely, then written; less than the data FIFO).
SERIAL_CHUNK_BEATS = 63
#: AXI ID width of both master ports (the engine uses ID 0 only).
ID_WIDTH = 1

_SRAM, _DRAM, _LINK = int(Space.SRAM), int(Space.DRAM), int(Space.LINK)


def _log2(x):
    return x.bit_length() - 1


class DmaEngine(wiring.Component):
    """DMA engine for DMA_COPY, DMA_GATHER, DMA_SCATTER and DMA_RING.

    Parameters
    ----------
    params : HwParams
        ``dram_bytes`` (DRAM port address width), ``dram_bytes_per_cycle`` (beat size of both
        AXI ports; must equal ``sram_bytes_per_cycle``, the scratchpad word), ``sram_bytes``,
        ``dma_align`` (a power of two dividing the beat size).

    Members
    -------
    cmd : ``In(stream.Signature(DmaCommand))``
        The next command, accepted only when the engine is idle (the previous one is done).
    done : ``Out(stream.Signature(DoneLayout))``
        One per command, after all its writes completed (AXI B responses received, scratchpad
        writes accepted). A check error (ALIGNMENT, BAD_SHAPE, SRAM_BOUNDS, DMA_WINDOW,
        BLOCK_TABLE) is reported before anything is written. An AXI error response during the
        data pass reports DMA_WINDOW (DRAM port), LINK_UNSUPPORTED (link DECERR) or
        LINK_TIMEOUT (link SLVERR); writes after it carry no enabled bytes.
    windows : ``In(ArrayLayout(WindowLayout, NUM_WINDOWS))``
        The DMA windows the host granted (driven by the register block; hold them stable while
        a command runs).
    dram : ``Out(AxiSignature)``
        DRAM port (``addr_width`` = log2(dram_bytes)).
    link : ``Out(AxiSignature)``
        Link port (64-bit bus addresses) for ``Space.LINK`` operands.
    sram : ``Out(ScratchpadPort)``
        The scratchpad's DMA port (word addresses).
    busy : ``Out(1)``
        A command is being executed (accepted, ``done`` not yet taken).
    bytes_moved : ``Out(64)``
        Running total of the row bytes of completed-without-error commands' rows.
    """

    def __init__(self, params=DEFAULT):
        B, A = params.dram_bytes_per_cycle, params.dma_align
        problem = None
        if B < 4 or B & (B - 1):
            problem = f"dram_bytes_per_cycle must be a power of two >= 4, not {B}"
        elif params.sram_bytes_per_cycle != B:
            problem = (f"sram_bytes_per_cycle ({params.sram_bytes_per_cycle}) must equal "
                       f"dram_bytes_per_cycle ({B})")
        elif A < 1 or A & (A - 1) or B % A:
            problem = f"dma_align must be a power of two dividing {B}, not {A}"
        elif params.dram_bytes & (params.dram_bytes - 1) or params.dram_bytes < B:
            problem = f"dram_bytes must be a power of two, not {params.dram_bytes}"
        elif params.sram_bytes % B:
            problem = f"sram_bytes must be a multiple of {B}"
        elif params.dma_burst_beats != BURST_BEATS:
            problem = f"dma_burst_beats must be {BURST_BEATS}, not {params.dma_burst_beats}"
        if problem:
            refuse(self, ValueError(problem))
        self.params = params
        self.beat_bytes = B
        self.sram_words = params.sram_bytes // B
        self.sram_addr_width = max(1, (self.sram_words - 1).bit_length())
        self.dram_axi = AxiParams(addr_width=_log2(params.dram_bytes), data_bytes=B,
                                  id_width=ID_WIDTH)
        self.link_axi = AxiParams(addr_width=64, data_bytes=B, id_width=ID_WIDTH)
        super().__init__({
            "cmd": In(stream.Signature(DmaCommand)),
            "done": Out(stream.Signature(DoneLayout)),
            "windows": In(data.ArrayLayout(WindowLayout, NUM_WINDOWS)),
            "dram": Out(AxiSignature(self.dram_axi)),
            "link": Out(AxiSignature(self.link_axi)),
            "sram": Out(ScratchpadPort(self.sram_addr_width, B)),
            "busy": Out(1),
            "bytes_moved": Out(64),
        })

    # -- checks -----------------------------------------------------------------------------------

    def _extent_error(self, m, name, space, lo, n, write):
        """Error code (0 if fine) of the extent ``space[lo, lo + n)``, combinationally."""
        p = self.params
        end = Signal(67, name=f"{name}_end")
        m.d.comb += end.eq(lo + n)
        hit = Signal(name=f"{name}_hit")
        m.d.comb += hit.eq(window_hit(self.windows, space, lo, n, write))
        code = Signal(8, name=f"{name}_code")
        with m.Switch(space):
            with m.Case(_SRAM):
                m.d.comb += code.eq(Mux(end > p.sram_bytes, ErrorCode.SRAM_BOUNDS, 0))
            with m.Case(_DRAM):
                m.d.comb += code.eq(Mux(hit & (end <= p.dram_bytes), 0, ErrorCode.DMA_WINDOW))
            with m.Case(_LINK):
                m.d.comb += code.eq(Mux(hit, 0, ErrorCode.DMA_WINDOW))
            with m.Default():
                m.d.comb += code.eq(ErrorCode.DMA_WINDOW)
        return code

    def elaborate(self, platform):
        m = Module()
        p = self.params
        B, A = self.beat_bytes, p.dma_align
        lB, lA = _log2(B), _log2(A)
        D = DATA_FIFO_BEATS
        SAW = self.sram_addr_width
        ones = (1 << B) - 1

        clear = Signal()  # one-cycle clear of every queue and buffer (at each command start)

        def fifo_(name, layout_or_width, depth, buffered=False):
            width = layout_or_width if isinstance(layout_or_width, int) else \
                data.Layout.cast(layout_or_width).size
            cls = fifo.SyncFIFOBuffered if buffered else fifo.SyncFIFO
            f = cls(width=width, depth=depth)
            m.submodules[name] = ResetInserter({"sync": clear})(f)
            if isinstance(layout_or_width, int):
                return f, f.w_data, f.r_data
            return f, data.View(layout_or_width, f.w_data), data.View(layout_or_width, f.r_data)

        # -- the command and its checks -----------------------------------------------------------
        c = Signal(DmaCommand)
        cp, ga, sc, rg = (c.args.dma_copy, c.args.dma_gather, c.args.dma_scatter,
                          c.args.dma_ring)
        is_copy, is_gather = c.opcode == Opcode.DMA_COPY, c.opcode == Opcode.DMA_GATHER
        is_scatter, is_ring = c.opcode == Opcode.DMA_SCATTER, c.opcode == Opcode.DMA_RING
        paged = Signal()
        m.d.comb += paged.eq(is_gather | is_scatter)

        # ALIGNMENT
        def misaligned(*values):
            return Cat(*(v[:lA] for v in values)).any() if lA else Const(0)
        bad_align = Signal()
        with m.Switch(c.opcode):
            with m.Case(Opcode.DMA_COPY):
                m.d.comb += bad_align.eq(misaligned(cp.src, cp.dst, cp.len, cp.src_stride1,
                                                    cp.dst_stride1, cp.src_stride2,
                                                    cp.dst_stride2))
            with m.Case(Opcode.DMA_GATHER):
                m.d.comb += bad_align.eq(misaligned(ga.pool, ga.dst, ga.row_bytes,
                                                    ga.row_stride, ga.dst_stride))
            with m.Case(Opcode.DMA_SCATTER):
                m.d.comb += bad_align.eq(misaligned(sc.pool, sc.src, sc.row_bytes,
                                                    sc.row_stride, sc.src_stride))
            with m.Case(Opcode.DMA_RING):
                m.d.comb += bad_align.eq(misaligned(rg.ring, rg.lin, rg.row_bytes,
                                                    rg.ring_stride, rg.lin_stride))

        # BAD_SHAPE (gather, scatter and ring counts are 16 bits: never above MAX_DMA_ROWS)
        bad_shape = Signal()
        m.d.comb += bad_shape.eq((is_copy & (cp.n1 * cp.n2 > MAX_DMA_ROWS))
                                 | (is_ring & (rg.ring_rows == 0)))

        # The extents, in check order, and the per-command constants of the data pass.
        def minus1(v):
            return Mux(v == 0, 0, v - 1)[:len(v)]

        ext = [dict(present=Signal(name=f"e{k}_present"), space=Signal(2, name=f"e{k}_space"),
                    lo=Signal(66, name=f"e{k}_lo"), n=Signal(52, name=f"e{k}_n"),
                    write=Signal(name=f"e{k}_write")) for k in range(3)]
        e_comb = [{f: Signal.like(s, name=f"{s.name}_d") for f, s in e.items()} for e in ext]
        t_lo_d, t_count_d = Signal(66), Signal(18)         # table: first byte, entries
        rows_d = Signal()                                  # the data pass moves something
        src_space_d, dst_space_d, row_n_d = Signal(2), Signal(2), Signal(SEG_BITS)
        rd_k, wr_k = Signal(2), Signal(2)                  # which extents data is read/written
        log2b = Signal(4)
        m.d.comb += log2b.eq(Mux(is_gather, ga.block_log2, sc.block_log2))

        def set_ext(k, present, space, lo, n, write):
            e = e_comb[k]
            m.d.comb += [e["present"].eq(present), e["space"].eq(space), e["lo"].eq(lo),
                         e["n"].eq(n), e["write"].eq(write)]

        with m.Switch(c.opcode):
            with m.Case(Opcode.DMA_COPY):
                any_rows = (cp.n1 != 0) & (cp.n2 != 0) & (cp.len != 0)
                for k, side, write in ((0, "src", 0), (1, "dst", 1)):
                    span = (minus1(cp.n2) * getattr(cp, f"{side}_stride2")
                            + minus1(cp.n1) * getattr(cp, f"{side}_stride1") + cp.len)
                    set_ext(k, any_rows, getattr(cp, f"{side}_space"), getattr(cp, side), span,
                            write)
                m.d.comb += [rows_d.eq(any_rows), src_space_d.eq(cp.src_space),
                             dst_space_d.eq(cp.dst_space), row_n_d.eq(cp.len),
                             rd_k.eq(0), wr_k.eq(1)]
            for case, a, side, gather in ((Opcode.DMA_GATHER, ga, "dst", True),
                                          (Opcode.DMA_SCATTER, sc, "src", False)):
                with m.Case(case):
                    table = a.table if gather else a.slots
                    if gather:
                        first = a.t0 >> a.block_log2
                        last = (a.t0 + a.n - 1) >> a.block_log2
                        count = last - first + 1
                    else:
                        first, count = a.i0, a.n
                    any_rows = (a.n != 0) & (a.row_bytes != 0)
                    pool_rows = a.pool_blocks << a.block_log2
                    set_ext(0, a.n != 0, _DRAM, table + 4 * first, 4 * count, 0)
                    set_ext(1, any_rows & (a.pool_blocks != 0), _DRAM, a.pool,
                            minus1(pool_rows) * a.row_stride + a.row_bytes, not gather)
                    set_ext(2, any_rows, getattr(a, f"{side}_space"), getattr(a, side),
                            minus1(a.n) * getattr(a, f"{side}_stride") + a.row_bytes, gather)
                    m.d.comb += [t_lo_d.eq(table + 4 * first),
                                 t_count_d.eq(Mux(a.n != 0, count, 0)),
                                 rows_d.eq(any_rows), row_n_d.eq(a.row_bytes)]
                    if gather:
                        m.d.comb += [src_space_d.eq(_DRAM), dst_space_d.eq(a.dst_space),
                                     rd_k.eq(1), wr_k.eq(2)]
                    else:
                        m.d.comb += [src_space_d.eq(a.src_space), dst_space_d.eq(_DRAM),
                                     rd_k.eq(2), wr_k.eq(1)]
            with m.Case(Opcode.DMA_RING):
                any_rows = (rg.n != 0) & (rg.row_bytes != 0)
                ring = (rg.ring_space, rg.ring,
                        minus1(rg.ring_rows) * rg.ring_stride + rg.row_bytes)
                lin = (rg.lin_space, rg.lin, minus1(rg.n) * rg.lin_stride + rg.row_bytes)
                with m.If(rg.to_ring):
                    set_ext(0, any_rows, *lin, 0)
                    set_ext(1, any_rows, *ring, 1)
                    m.d.comb += [src_space_d.eq(rg.lin_space), dst_space_d.eq(rg.ring_space)]
                with m.Else():
                    set_ext(0, any_rows, *ring, 0)
                    set_ext(1, any_rows, *lin, 1)
                    m.d.comb += [src_space_d.eq(rg.ring_space), dst_space_d.eq(rg.lin_space)]
                m.d.comb += [rows_d.eq(any_rows), row_n_d.eq(rg.row_bytes),
                             rd_k.eq(0), wr_k.eq(1)]

        # Overlap of the read and the written extent (same space): rows run one at a time.
        def pick(k, field):
            return Mux(k == 0, e_comb[0][field], Mux(k == 1, e_comb[1][field], e_comb[2][field]))
        r_lo, r_n, r_sp = pick(rd_k, "lo"), pick(rd_k, "n"), pick(rd_k, "space")
        w_lo, w_n, w_sp = pick(wr_k, "lo"), pick(wr_k, "n"), pick(wr_k, "space")
        overlap_d = Signal()
        m.d.comb += overlap_d.eq((r_sp == w_sp) & (r_lo < w_lo + w_n) & (w_lo < r_lo + r_n))

        # Paged rows merge (consecutive tokens of one block, contiguous on both sides, as one
        # segment) unless the extents overlap (serial mode moves the FM's rows one by one).
        a_rb = Mux(is_gather, ga.row_bytes, sc.row_bytes)
        a_rs = Mux(is_gather, ga.row_stride, sc.row_stride)
        a_ls = Mux(is_gather, ga.dst_stride, sc.src_stride)
        merge_d = Signal()
        m.d.comb += merge_d.eq(paged & ~overlap_d & (a_rs == a_rb) & (a_ls == a_rb)
                               & ((a_rb << log2b) <= DMA_MERGE_MAX_BYTES))

        t_lo, t_count = Signal(66), Signal(18)
        rows_any, serial, merge, buffered = Signal(), Signal(), Signal(), Signal()
        src_space, dst_space, row_n = Signal(2), Signal(2), Signal(SEG_BITS)
        ring_r0 = Signal(16)
        ext_code = [self._extent_error(m, f"ext{k}", e["space"], e["lo"], e["n"], e["write"])
                    for k, e in enumerate(ext)]

        # -- error collection ---------------------------------------------------------------------
        err = Signal(8)
        chk_err = Signal(8)      # from the check phases
        io_err = Signal(8)       # from AXI responses
        with m.If(err == 0):
            with m.If(chk_err != 0):
                m.d.sync += err.eq(chk_err)
            with m.Elif(io_err != 0):
                m.d.sync += err.eq(io_err)

        # -- status shared by the phase FSM and the data path -------------------------------------
        gen_active = Signal()          # the row generator has rows left
        gen_start = Signal()           # (pulse) start the row generator
        t_start = Signal()             # (pulse) (re)start the table reader
        x_rem = Signal(18)             # table entries still to deliver
        ent, ent_valid, ent_ready = Signal(32), Signal(), Signal()
        t_pend = Signal(range(TABLE_FIFO_BEATS + 1))
        data_idle = Signal()           # nothing queued, in flight or buffered on the write side
        drained = Signal()             # data_idle, and no row or table read left over
        moved = Signal(64)             # row bytes handed to the writer by this command
        wr_open = Signal()             # every check passed: the writer may write
        # Checked table entries on their way to the row generator: all of a buffered table's
        # (one pass: checked, then used), or the data pass's of a longer one.
        efifo, efifo_w, efifo_r = fifo_("entries", 32, DMA_TABLE_BUFFER)
        ent_push = Signal()
        m.d.comb += [efifo_w.eq(ent), efifo.w_en.eq(ent_push)]

        # -- phase FSM ----------------------------------------------------------------------------
        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.comb += clear.eq(1)
                    m.d.sync += [c.eq(self.cmd.payload), err.eq(0)]
                    m.next = "PREP"
            with m.State("PREP"):
                m.d.comb += self.busy.eq(1)
                for e, d in zip(ext, e_comb):
                    m.d.sync += [e[f].eq(d[f]) for f in e]
                m.d.sync += [t_lo.eq(t_lo_d), t_count.eq(t_count_d), rows_any.eq(rows_d),
                             src_space.eq(src_space_d), dst_space.eq(dst_space_d),
                             row_n.eq(row_n_d), serial.eq(overlap_d), merge.eq(merge_d),
                             buffered.eq(t_count_d <= DMA_TABLE_BUFFER),
                             ring_r0.eq(rg.r0 % rg.ring_rows)]
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                failed = Signal(8)
                m.d.comb += failed.eq(Mux(ext[0]["present"] & (ext_code[0] != 0), ext_code[0],
                                      Mux(ext[1]["present"] & (ext_code[1] != 0), ext_code[1],
                                      Mux(ext[2]["present"], ext_code[2], 0))))
                with m.If(bad_align):
                    m.d.comb += chk_err.eq(ErrorCode.ALIGNMENT)
                    m.next = "DONE"
                with m.Elif(bad_shape):
                    m.d.comb += chk_err.eq(ErrorCode.BAD_SHAPE)
                    m.next = "DONE"
                with m.Elif(failed != 0):
                    m.d.comb += chk_err.eq(failed)
                    m.next = "DONE"
                with m.Elif(paged & (t_count != 0)):
                    # a buffered table: reads start with the first checked entry
                    m.d.comb += [t_start.eq(1), gen_start.eq(buffered & rows_any)]
                    m.next = "TABLE"
                with m.Elif(rows_any):
                    m.d.comb += gen_start.eq(1)
                    m.d.sync += wr_open.eq(1)
                    m.next = "DATA"
                with m.Else():
                    m.next = "DONE"
            with m.State("TABLE"):
                # pre-pass: every entry the command uses must name a block inside the pool.
                # A buffered table's checked entries go on to the row generator at once (its
                # reads start; nothing is written before the last entry is checked); a longer
                # table is read again for the data pass.
                m.d.comb += [self.busy.eq(1), ent_ready.eq(1)]
                blocks = Mux(is_gather, ga.pool_blocks, sc.pool_blocks)
                blk = Mux(is_gather, ent, ent >> log2b)
                with m.If(err != 0):
                    m.next = "DRAIN"
                with m.Elif(ent_valid & (blk >= blocks)):
                    m.d.comb += chk_err.eq(ErrorCode.BLOCK_TABLE)
                    m.next = "DRAIN"
                with m.Else():
                    m.d.comb += ent_push.eq(ent_valid & buffered & rows_any)
                    with m.If(x_rem == 0):
                        with m.If(rows_any):
                            m.d.comb += [t_start.eq(~buffered), gen_start.eq(~buffered)]
                            m.d.sync += wr_open.eq(1)
                            m.next = "DATA"
                        with m.Else():
                            m.next = "DONE"
            with m.State("DATA"):
                m.d.comb += [self.busy.eq(1), ent_ready.eq(efifo.w_rdy),
                             ent_push.eq(ent_valid & efifo.w_rdy)]
                with m.If(~gen_active | (err != 0)):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(drained):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.valid.eq(1),
                             self.done.payload.error.eq(err)]
                with m.If(self.done.ready):
                    with m.If(err == 0):
                        m.d.sync += self.bytes_moved.eq(self.bytes_moved + moved)
                    m.next = "IDLE"

        # -- row generator: the rows of sw/fm/dma.py copies(), in order ----------------------------
        row_valid, row_take = Signal(), Signal()
        row_src, row_dst, row_len = Signal(64), Signal(64), Signal(SEG_BITS)
        i1, i2 = Signal(12), Signal(12)
        src_row, dst_row, src_plane, dst_plane = (Signal(64, name=n) for n in
                                                  ("src_row", "dst_row", "src_plane", "dst_plane"))
        t = Signal(16)                  # row (token) index of gather, scatter and ring
        lin = Signal(64)                # linear side: gather dst, scatter src, ring lin
        blk_q = Signal(32)              # gather: the current token's block
        ring_idx, ring_addr = Signal(16), Signal(64)
        lowmask = Signal(16)
        m.d.comb += lowmask.eq((Const(1, 17) << log2b) - 1)

        # scatter: the open run of consecutive slots (merged rows), not yet handed on
        run_valid, run_src, run_dst, run_len = Signal(), Signal(64), Signal(64), Signal(SEG_BITS)
        run_slot = Signal(32)
        with m.If(gen_start):
            m.d.sync += [gen_active.eq(1), row_valid.eq(0), t.eq(0), i1.eq(0), i2.eq(0),
                         run_valid.eq(0),
                         src_row.eq(cp.src), src_plane.eq(cp.src),
                         dst_row.eq(cp.dst), dst_plane.eq(cp.dst),
                         lin.eq(Mux(is_gather, ga.dst, Mux(is_scatter, sc.src, rg.lin))),
                         ring_idx.eq(ring_r0),
                         ring_addr.eq(rg.ring + ring_r0 * rg.ring_stride)]
        produce = Signal()
        can_produce = Signal()
        m.d.comb += can_produce.eq(gen_active & (err == 0) & (~row_valid | row_take))
        with m.If(row_take):
            m.d.sync += row_valid.eq(0)
        with m.Switch(c.opcode):
            with m.Case(Opcode.DMA_COPY):
                m.d.comb += produce.eq(can_produce)
                with m.If(produce):
                    m.d.sync += [row_src.eq(src_row), row_dst.eq(dst_row), row_len.eq(row_n)]
                    with m.If(i1 + 1 == cp.n1):
                        m.d.sync += [i1.eq(0), i2.eq(i2 + 1),
                                     src_plane.eq(src_plane + cp.src_stride2),
                                     dst_plane.eq(dst_plane + cp.dst_stride2),
                                     src_row.eq(src_plane + cp.src_stride2),
                                     dst_row.eq(dst_plane + cp.dst_stride2)]
                        with m.If(i2 + 1 == cp.n2):
                            m.d.sync += gen_active.eq(0)
                    with m.Else():
                        m.d.sync += [i1.eq(i1 + 1), src_row.eq(src_row + cp.src_stride1),
                                     dst_row.eq(dst_row + cp.dst_stride1)]
            with m.Case(Opcode.DMA_GATHER):
                # A token's row, or (merge) the run of tokens up to the end of its block or of
                # the transfer as one segment: a new table entry at each block.
                tok = Signal(17)
                off = Signal(16)
                need = Signal()
                run = Signal(17)
                m.d.comb += [tok.eq(ga.t0 + t), off.eq(tok & lowmask),
                             need.eq((t == 0) | (off == 0)),
                             produce.eq(can_produce & (~need | efifo.r_rdy))]
                left_in_block = (Const(1, 17) << ga.block_log2) - off
                m.d.comb += run.eq(Mux(merge, Mux(left_in_block < ga.n - t, left_in_block,
                                                  ga.n - t), 1))
                blk_now = Mux(need, efifo_r, blk_q)
                pool_addr = ga.pool + (((blk_now << ga.block_log2) | off) * ga.row_stride)
                with m.If(produce):
                    m.d.comb += efifo.r_en.eq(need)
                    m.d.sync += [blk_q.eq(blk_now), row_src.eq(pool_addr), row_dst.eq(lin),
                                 row_len.eq(Mux(merge, (run * ga.row_bytes)[:SEG_BITS], row_n)),
                                 lin.eq(lin + Mux(merge, (run * ga.row_bytes)[:SEG_BITS],
                                                  ga.dst_stride)),
                                 t.eq(t + run)]
                    with m.If(t + run == ga.n):
                        m.d.sync += gen_active.eq(0)
            with m.Case(Opcode.DMA_SCATTER):
                # One entry per token, gathered into a run while the slots are consecutive
                # within a block (merge); a run goes out when the next slot breaks it, or at
                # the end.
                slot = efifo_r
                more = (t != sc.n) & efifo.r_rdy & (err == 0)
                extend = merge & run_valid & (slot == run_slot + 1) & ((slot & lowmask) != 0)
                free = ~row_valid | row_take
                take_ent = Signal()
                emit = Signal()
                m.d.comb += [take_ent.eq(gen_active & more & (~run_valid | extend | free)),
                             emit.eq(gen_active & (err == 0) & run_valid & free
                                     & ((more & ~extend) | (t == sc.n))),
                             produce.eq(emit), efifo.r_en.eq(take_ent)]
                with m.If(emit):
                    m.d.sync += [row_src.eq(run_src), row_dst.eq(run_dst), row_len.eq(run_len),
                                 run_valid.eq(0)]
                    with m.If(t == sc.n):
                        m.d.sync += gen_active.eq(0)
                with m.If(take_ent):
                    m.d.sync += [run_valid.eq(1), run_slot.eq(slot), lin.eq(lin + sc.src_stride),
                                 t.eq(t + 1)]
                    with m.If(extend):
                        m.d.sync += run_len.eq(run_len + sc.row_bytes)
                    with m.Else():
                        m.d.sync += [run_src.eq(lin), run_dst.eq(sc.pool + slot * sc.row_stride),
                                     run_len.eq(row_n)]
            with m.Case(Opcode.DMA_RING):
                m.d.comb += produce.eq(can_produce)
                with m.If(produce):
                    m.d.sync += [row_len.eq(row_n), row_src.eq(Mux(rg.to_ring, lin, ring_addr)),
                                 row_dst.eq(Mux(rg.to_ring, ring_addr, lin)),
                                 lin.eq(lin + rg.lin_stride), t.eq(t + 1)]
                    with m.If(ring_idx + 1 == rg.ring_rows):
                        m.d.sync += [ring_idx.eq(0), ring_addr.eq(rg.ring)]
                    with m.Else():
                        m.d.sync += [ring_idx.eq(ring_idx + 1),
                                     ring_addr.eq(ring_addr + rg.ring_stride)]
                    with m.If(t + 1 == rg.n):
                        m.d.sync += gen_active.eq(0)
        with m.If(produce):
            m.d.sync += row_valid.eq(1)

        # -- queues between the segment issuer, the reader, the realigner and the writer ----------
        RdSeg = data.StructLayout({"space": 2, "addr": 64, "n": SEG_BITS})
        AlSeg = data.StructLayout({"so": lB, "do": lB, "endoff": lB, "ns": SEG_BITS, "nd": SEG_BITS})
        WrSeg = data.StructLayout({"space": 2, "addr": 64, "nd": SEG_BITS})
        rdq, rdq_w, rdq_r = fifo_("rdq", RdSeg, 4)
        alq, alq_w, alq_r = fifo_("alq", AlSeg, ROW_QUEUE_DEPTH)
        wq, wq_w, wq_r = fifo_("wq", WrSeg, ROW_QUEUE_DEPTH)

        # -- segment issuer: rows (or, when source and destination overlap, pieces of rows) -------
        seg_src, seg_dst, seg_n = Signal(64), Signal(64), Signal(SEG_BITS)
        push_rd, push_wr = Signal(), Signal()
        so, do = seg_src[:lB], seg_dst[:lB]
        m.d.comb += [
            rdq_w.space.eq(src_space), rdq_w.addr.eq(seg_src), rdq_w.n.eq(seg_n),
            alq_w.so.eq(so), alq_w.do.eq(do), alq_w.endoff.eq(do + seg_n),
            alq_w.ns.eq((so + seg_n + B - 1) >> lB), alq_w.nd.eq((do + seg_n + B - 1) >> lB),
            wq_w.space.eq(dst_space), wq_w.addr.eq(seg_dst),
            wq_w.nd.eq((do + seg_n + B - 1) >> lB),
            rdq.w_en.eq(push_rd), alq.w_en.eq(push_wr), wq.w_en.eq(push_wr),
        ]
        with m.If(push_wr):
            m.d.sync += moved.eq(moved + seg_n)

        reader_done = Signal()          # every beat the reader was given has arrived
        ser_src, ser_dst, ser_rem = Signal(64), Signal(64), Signal(SEG_BITS)
        ser_idle = Signal()
        chunk = Mux(ser_rem > SERIAL_CHUNK_BEATS * B, SERIAL_CHUNK_BEATS * B, ser_rem)
        backward = ser_dst > ser_src
        ser_off = Mux(backward, ser_rem - chunk, row_n - ser_rem)   # (serial rows never merge)
        with m.If(~serial):
            m.d.comb += [seg_src.eq(row_src), seg_dst.eq(row_dst), seg_n.eq(row_len),
                         ser_idle.eq(1)]
            with m.If(row_valid & (err == 0) & rdq.w_rdy & alq.w_rdy & wq.w_rdy):
                m.d.comb += [push_rd.eq(1), push_wr.eq(1), row_take.eq(1)]
        with m.Else():
            # Overlapping extents: each row (in pieces of at most SERIAL_CHUNK_BEATS beats,
            # last piece first when the destination lies above the source) is read completely
            # before it is written, and written completely before the next piece is read.
            m.d.comb += [seg_src.eq(ser_src + ser_off), seg_dst.eq(ser_dst + ser_off),
                         seg_n.eq(chunk)]
            with m.FSM(name="serial"):
                with m.State("IDLE"):
                    m.d.comb += ser_idle.eq(1)
                    with m.If(row_valid & (err == 0)):
                        m.d.comb += row_take.eq(1)
                        m.d.sync += [ser_src.eq(row_src), ser_dst.eq(row_dst),
                                     ser_rem.eq(row_n)]
                        m.next = "WAIT"
                with m.State("WAIT"):
                    with m.If(err != 0):
                        m.next = "IDLE"
                    with m.Elif(data_idle):
                        m.d.comb += push_rd.eq(1)
                        m.next = "READ"
                with m.State("READ"):
                    with m.If(err != 0):
                        m.next = "IDLE"
                    with m.Elif(reader_done):
                        m.d.comb += push_wr.eq(1)
                        m.d.sync += ser_rem.eq(ser_rem - chunk)
                        with m.If(ser_rem == chunk):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "WAIT"

        # -- reader: source beats into the data FIFO ----------------------------------------------
        dfifo, dfifo_w, dfifo_r = fifo_("data", 8 * B, D, buffered=True)
        tagq, tagq_w, tagq_r = fifo_("tags", 1, 16)         # DRAM read bursts: 1 = table
        tfifo, tfifo_w, tfifo_r = fifo_("table", 8 * B, TABLE_FIFO_BEATS)
        inflight = Signal(range(D + 1))  # data FIFO beats reserved (issued, not yet consumed)
        pend = Signal(range(D + 1))      # data beats issued, not yet arrived
        issued, arrived, consumed = Signal(range(BURST_BEATS + 1)), Signal(), Signal()
        m.d.sync += [inflight.eq(inflight + issued - consumed), pend.eq(pend + issued - arrived)]

        r_act, r_space = Signal(), Signal(2)
        r_beat, r_left = Signal(64 - lB), Signal(SEG_BITS)
        lBURST = _log2(BURST_BEATS)
        room = BURST_BEATS - r_beat[:lBURST]
        r_blen = Signal(range(BURST_BEATS + 1))
        m.d.comb += r_blen.eq(Mux(r_left < room, r_left, room))
        with m.If(~r_act):
            m.d.comb += rdq.r_en.eq(1)
            with m.If(rdq.r_rdy):
                m.d.sync += [r_act.eq(1), r_space.eq(rdq_r.space), r_beat.eq(rdq_r.addr[lB:]),
                             r_left.eq((rdq_r.addr[:lB] + rdq_r.n + B - 1) >> lB)]

        # AXI read-address holding registers (table reads have priority on the DRAM port)
        dar_valid, lar_valid = Signal(), Signal()
        dar_free = ~dar_valid | self.dram.ar.ready
        lar_free = ~lar_valid | self.link.ar.ready
        m.d.comb += [self.dram.ar.valid.eq(dar_valid), self.link.ar.valid.eq(lar_valid)]
        d_fits = r_act & (inflight + r_blen <= D)
        t_beat, t_left = Signal(64 - lB), Signal(18)
        t_inflight = Signal(range(TABLE_FIFO_BEATS + 1))
        t_blen = Signal(range(TABLE_BURST_BEATS + 1))
        t_room = TABLE_BURST_BEATS - t_beat[:_log2(TABLE_BURST_BEATS)]
        m.d.comb += t_blen.eq(Mux(t_left < t_room, t_left, t_room))
        t_want = (t_left != 0) & (err == 0) & (t_inflight + t_blen <= TABLE_FIFO_BEATS) \
            & tagq.w_rdy
        t_issue = Signal()
        r_issue = Signal()

        def load_ar(port, beat, blen):
            return [port.ar.payload.addr.eq(Cat(Const(0, lB), beat)),
                    port.ar.payload.len.eq(blen - 1), port.ar.payload.id.eq(0)]

        with m.If(dar_free):
            m.d.sync += dar_valid.eq(0)
            with m.If(t_want):
                m.d.comb += [t_issue.eq(1), tagq.w_en.eq(1), tagq_w.eq(1)]
                m.d.sync += [dar_valid.eq(1)] + load_ar(self.dram, t_beat, t_blen)
            with m.Elif(d_fits & (r_space == _DRAM) & tagq.w_rdy):
                m.d.comb += [r_issue.eq(1), tagq.w_en.eq(1), tagq_w.eq(0)]
                m.d.sync += [dar_valid.eq(1)] + load_ar(self.dram, r_beat, r_blen)
        with m.If(lar_free):
            m.d.sync += lar_valid.eq(0)
            with m.If(d_fits & (r_space == _LINK)):
                m.d.comb += r_issue.eq(1)
                m.d.sync += [lar_valid.eq(1)] + load_ar(self.link, r_beat, r_blen)
        m.d.comb += [self.sram.rd_addr.valid.eq(r_act & (r_space == _SRAM) & (inflight < D)),
                     self.sram.rd_addr.payload.eq(r_beat)]
        with m.If(self.sram.rd_addr.valid & self.sram.rd_addr.ready):
            m.d.comb += r_issue.eq(1)
        r_n = Mux(r_space == _SRAM, 1, r_blen)
        with m.If(r_issue):
            m.d.comb += issued.eq(r_n)
            m.d.sync += [r_beat.eq(r_beat + r_n), r_left.eq(r_left - r_n)]
            with m.If(r_left == r_n):
                m.d.sync += r_act.eq(0)
        with m.If(t_issue):
            m.d.sync += [t_beat.eq(t_beat + t_blen), t_left.eq(t_left - t_blen)]

        # read data: scratchpad words, DRAM beats (data or table, by tag), link beats
        t_arrived, t_consumed = Signal(), Signal()
        m.d.sync += [t_inflight.eq(t_inflight + Mux(t_issue, t_blen, 0) - t_consumed),
                     t_pend.eq(t_pend + Mux(t_issue, t_blen, 0) - t_arrived)]
        m.d.comb += [self.dram.r.ready.eq(1), self.link.r.ready.eq(1), self.dram.b.ready.eq(1),
                     self.link.b.ready.eq(1), tfifo_w.eq(self.dram.r.payload.data)]
        with m.If(self.sram.rd_data.valid):
            m.d.comb += [dfifo.w_en.eq(1), dfifo_w.eq(self.sram.rd_data.payload),
                         arrived.eq(1)]
        with m.If(self.dram.r.valid):
            with m.If(tagq_r):
                m.d.comb += [tfifo.w_en.eq(1), t_arrived.eq(1)]
            with m.Else():
                m.d.comb += [dfifo.w_en.eq(1), dfifo_w.eq(self.dram.r.payload.data),
                             arrived.eq(1)]
            with m.If(self.dram.r.payload.last):
                m.d.comb += tagq.r_en.eq(1)
        with m.If(self.link.r.valid):
            m.d.comb += [dfifo.w_en.eq(1), dfifo_w.eq(self.link.r.payload.data),
                         arrived.eq(1)]

        with m.If(self.dram.r.valid & self.dram.r.payload.resp[1]):
            m.d.comb += io_err.eq(ErrorCode.DMA_WINDOW)
        with m.Elif(self.link.r.valid & self.link.r.payload.resp[1]):
            m.d.comb += io_err.eq(link_error(self.link.r.payload.resp))
        with m.Elif(self.dram.b.valid & self.dram.b.payload.resp[1]):
            m.d.comb += io_err.eq(ErrorCode.DMA_WINDOW)
        with m.Elif(self.link.b.valid & self.link.b.payload.resp[1]):
            m.d.comb += io_err.eq(link_error(self.link.b.payload.resp))
        m.d.comb += reader_done.eq(~rdq.r_rdy & ~r_act & (pend == 0) & ~dar_valid & ~lar_valid)

        # -- table entries: u32s at any byte offset, out of the table FIFO, one per cycle ---------
        x_lo, x_hi = Signal(8 * B), Signal(8 * B)
        x_have_lo, x_have_hi = Signal(), Signal()
        x_o = Signal(lB)
        need_hi = x_o > B - 4
        m.d.comb += [ent_valid.eq((x_rem != 0) & x_have_lo & (~need_hi | x_have_hi)),
                     ent.eq(Cat(x_lo, x_hi).bit_select(x_o * 8, 32))]
        with m.If(t_start):
            m.d.sync += [t_beat.eq(t_lo[lB:]),
                         t_left.eq((t_lo[:lB] + 4 * t_count + B - 1) >> lB),
                         x_o.eq(t_lo[:lB]), x_rem.eq(t_count), x_have_lo.eq(0),
                         x_have_hi.eq(0)]
        with m.Else():
            # The window's empty half is refilled while entries are handed out, so a beat
            # boundary costs no cycle.
            o2 = x_o + 4
            deliver = ent_valid & ent_ready
            cross = deliver & (o2 >= B)
            load = (x_rem != 0) & tfifo.r_rdy & (~x_have_hi | cross)
            m.d.comb += [tfifo.r_en.eq(load), t_consumed.eq(load)]
            with m.If(deliver):
                m.d.sync += [x_rem.eq(x_rem - 1), x_o.eq(Mux(cross, o2 - B, o2))]
            with m.If(cross):
                m.d.sync += [x_lo.eq(x_hi), x_have_lo.eq(x_have_hi), x_have_hi.eq(0)]
            with m.If(load):
                with m.If(Mux(cross, x_have_hi, x_have_lo)):
                    m.d.sync += [x_hi.eq(tfifo_r), x_have_hi.eq(1)]
                with m.Else():
                    m.d.sync += [x_lo.eq(tfifo_r), x_have_lo.eq(1)]

        # -- realigner: source beats shifted to the destination's byte offset ---------------------
        al_act, al_skip, al_first_c, al_first_e = Signal(), Signal(), Signal(), Signal()
        al_off = Signal(lB + 1)            # in (0, B]: window byte of the output's byte 0
        al_sleft, al_dleft = Signal(SEG_BITS), Signal(SEG_BITS)
        al_fmask, al_lmask = Signal(B), Signal(B)
        cur = Signal(8 * B)                # the last source beat consumed
        o_valid, o_ready = Signal(), Signal()
        o_data, o_mask = Signal(8 * B), Signal(B)
        al_finished = al_act & (al_sleft == 0) & (al_dleft == 0)
        with m.If(al_finished):
            m.d.sync += al_act.eq(0)
        with m.If(~al_act | al_finished):
            m.d.comb += alq.r_en.eq(1)
            with m.If(alq.r_rdy):
                a = alq_r
                m.d.sync += [al_act.eq(1), al_skip.eq(a.so > a.do),
                             al_off.eq(Mux(a.so > a.do, a.so - a.do, a.so + B - a.do)),
                             al_sleft.eq(a.ns), al_dleft.eq(a.nd), al_first_c.eq(1),
                             al_first_e.eq(1), al_fmask.eq(Const(ones, B) << a.do),
                             al_lmask.eq(Mux(a.endoff == 0, ones,
                                             (Const(1, B + 1) << a.endoff) - 1))]
        can_out = ~o_valid | o_ready
        take = Signal()
        flush = Signal()
        emit = Signal()
        new_beat = Signal(8 * B)
        m.d.comb += [take.eq(al_act & (al_sleft != 0) & dfifo.r_rdy & can_out),
                     flush.eq(al_act & (al_sleft == 0) & (al_dleft != 0) & can_out),
                     emit.eq((take & ~(al_skip & al_first_c)) | flush),
                     new_beat.eq(Mux(take, dfifo_r, 0)),
                     dfifo.r_en.eq(take), consumed.eq(take)]
        with m.If(o_valid & o_ready):
            m.d.sync += o_valid.eq(0)
        with m.If(take):
            m.d.sync += [cur.eq(dfifo_r), al_sleft.eq(al_sleft - 1), al_first_c.eq(0)]
        with m.If(emit):
            m.d.sync += [o_valid.eq(1),
                         o_data.eq(Cat(cur, new_beat).bit_select(al_off * 8, 8 * B)),
                         o_mask.eq(Mux(al_first_e, al_fmask, ones)
                                   & Mux(al_dleft == 1, al_lmask, ones)),
                         al_dleft.eq(al_dleft - 1), al_first_e.eq(0)]

        # -- writer: bursts (AW or scratchpad word runs), then the realigned beats ----------------
        Burst = data.StructLayout({"space": 2, "addr": SAW, "len": 8})
        bq, bq_w, bq_r = fifo_("bursts", Burst, 4)
        w_act, w_space = Signal(), Signal(2)
        w_beat, w_left = Signal(64 - lB), Signal(SEG_BITS)
        w_room = BURST_BEATS - w_beat[:lBURST]
        w_blen = Signal(range(BURST_BEATS + 1))
        outb = Signal(range(MAX_WRITE_BURSTS + 1))
        m.d.comb += w_blen.eq(Mux(w_left < w_room, w_left, w_room))
        with m.If(~w_act):
            m.d.comb += wq.r_en.eq(1)
            with m.If(wq.r_rdy):
                m.d.sync += [w_act.eq(1), w_space.eq(wq_r.space), w_beat.eq(wq_r.addr[lB:]),
                             w_left.eq(wq_r.nd)]
        # Nothing is written before every check passed (a buffered table's reads run ahead of
        # its checks); after a failed check the segments read ahead are dropped: no AW, their
        # beats discarded like masked scratchpad writes.
        w_drop = ~wr_open & (err != 0)
        w_can = w_act & bq.w_rdy & (wr_open | w_drop)
        aw_fire = Signal()
        for port, space in ((self.dram, _DRAM), (self.link, _LINK)):
            m.d.comb += [port.aw.valid.eq(w_can & (w_space == space) & ~w_drop
                                          & (outb < MAX_WRITE_BURSTS)),
                         port.aw.payload.addr.eq(Cat(Const(0, lB), w_beat)),
                         port.aw.payload.len.eq(w_blen - 1), port.aw.payload.id.eq(0)]
            with m.If(port.aw.valid & port.aw.ready):
                m.d.comb += aw_fire.eq(1)
        b_fire = (self.dram.b.valid | self.link.b.valid)
        m.d.sync += outb.eq(outb + aw_fire - b_fire)
        with m.If(aw_fire | (w_can & ((w_space == _SRAM) | w_drop))):
            m.d.comb += [bq.w_en.eq(1), bq_w.space.eq(Mux(w_drop, _SRAM, w_space)),
                         bq_w.addr.eq(w_beat),
                         bq_w.len.eq(w_blen - 1)]
            m.d.sync += [w_beat.eq(w_beat + w_blen), w_left.eq(w_left - w_blen)]
            with m.If(w_left == w_blen):
                m.d.sync += w_act.eq(0)

        w_i = Signal(8)
        xfer = Signal()
        head = bq.r_rdy & o_valid
        masked = err != 0               # after an error nothing more is written
        m.d.comb += [self.sram.wr.payload.addr.eq(bq_r.addr + w_i),
                     self.sram.wr.payload.data.eq(o_data), self.sram.wr.payload.mask.eq(o_mask)]
        for port in (self.dram, self.link):
            m.d.comb += [port.w.payload.data.eq(o_data),
                         port.w.payload.strb.eq(Mux(masked, 0, o_mask)),
                         port.w.payload.last.eq(w_i == bq_r.len)]
        with m.Switch(bq_r.space):
            with m.Case(_SRAM):
                m.d.comb += [self.sram.wr.valid.eq(head & ~masked),
                             xfer.eq(head & (masked | self.sram.wr.ready))]
            with m.Case(_DRAM):
                m.d.comb += [self.dram.w.valid.eq(head), xfer.eq(head & self.dram.w.ready)]
            with m.Case(_LINK):
                m.d.comb += [self.link.w.valid.eq(head), xfer.eq(head & self.link.w.ready)]
        m.d.comb += o_ready.eq(xfer)
        with m.If(xfer):
            with m.If(w_i == bq_r.len):
                m.d.comb += bq.r_en.eq(1)
                m.d.sync += w_i.eq(0)
            with m.Else():
                m.d.sync += w_i.eq(w_i + 1)

        m.d.comb += [
            data_idle.eq(reader_done & ~alq.r_rdy & ~al_act & ~o_valid
                         & ~wq.r_rdy & ~w_act & ~bq.r_rdy & (outb == 0)),
            drained.eq(data_idle & ser_idle & (~row_valid | (err != 0)) & (t_pend == 0)),
        ]

        # -- a new command starts from a clean slate ----------------------------------------------
        with m.If(clear):
            m.d.sync += [gen_active.eq(0), row_valid.eq(0), r_act.eq(0), inflight.eq(0),
                         pend.eq(0), dar_valid.eq(0), lar_valid.eq(0), t_left.eq(0),
                         t_inflight.eq(0), t_pend.eq(0), x_rem.eq(0), x_have_lo.eq(0),
                         x_have_hi.eq(0), al_act.eq(0), o_valid.eq(0), w_act.eq(0), w_i.eq(0),
                         outb.eq(0), moved.eq(0), wr_open.eq(0), run_valid.eq(0)]
        return m
