"""Hardware parameters: the one place every size, width, bandwidth and latency is set.

The RTL generators (``npusim.hw``), the functional model's timing model and the compiler all
read a :class:`HwParams`; defaults favour simulation speed (design brief section 6).
"""

from dataclasses import asdict, dataclass, replace

__all__ = ["HwParams", "DEFAULT"]


@dataclass(frozen=True)
class HwParams:
    """Parameters of one device and of the link between devices.

    All times are in device clock cycles, all bandwidths in bytes per cycle.
    """

    # NE tile
    array_rows: int = 8            #: R: rows of the systolic matrix unit
    array_cols: int = 8            #: C: columns of the systolic matrix unit
    vector_lanes: int = 8          #: fp32 lanes of the vector unit
    sram_bytes: int = 256 * 1024   #: scratchpad size
    sram_banks: int = 8            #: scratchpad banks
    panel_depth: int = 256         #: vectors per panel buffer: MATMULs with K up to this reuse panels
    # NE-tile timing, fitted to the RTL's cycle counts (docs/hw/ne_tile.md, "Timing")
    matmul_overhead: int = 4       #: cycles per MATMUL besides fill, drain and beats
    matmul_fill_per_edge: float = 1.625  #: fill and drain cycles per array row and column
    vector_overhead: int = 7       #: cycles per VECTOR, REDUCE or MASK besides its beats
    # memory
    dram_bytes: int = 64 * 1024 * 1024  #: device DRAM size
    dram_bytes_per_cycle: int = 32      #: DRAM port bandwidth (one 256-bit beat per cycle)
    dram_latency: int = 40              #: cycles from a read request to its first beat, and
                                        #: from a write's last beat to its response
    dram_outstanding: int = 8           #: read (and write) bursts the DRAM port accepts at once
    sram_bytes_per_cycle: int = 32      #: scratchpad DMA-port bandwidth
    dma_align: int = 4                  #: addresses, lengths and strides of DMAs: multiples of this
    dma_burst_beats: int = 16           #: longest DMA burst; bursts start on multiples of it
    # DMA and command-processor timing, fitted to the device RTL's cycle counts
    # (docs/hw/dma.md, "Timing"; tests/hw/test_device_timing.py)
    dma_setup: int = 13                 #: cycles from dispatch to a DMA's first request, and its end
    dma_row_overhead: int = 1           #: cycles per row besides its beats
    dma_table_overhead: int = 4         #: a gather/scatter table pass besides a latency + entries
    # command processor
    cp_dispatch: int = 2           #: cycles to decode and dispatch one fetched command
    cp_prefetch: int = 16          #: commands the fetcher reads ahead (one single-beat read each)
    cp_record_overhead: int = 5    #: a COMPLETE's cycles after its record's write response
    engine_queue_depth: int = 16   #: commands an engine queue holds
    watchdog_cycles: int = 1_000_000  #: a wait longer than this is SEM_TIMEOUT
    # link (PCIe-like; docs/hw/link.md). Gen5 runs ~4 B per lane per cycle at 1 GHz; the
    # simulated default is a x2 link, 8 B per cycle, a quarter of the DRAM port
    link_lanes: int = 2
    link_bytes_per_lane: int = 4       #: bytes per lane per cycle
    link_wire_latency: int = 32        #: cycles a flit spends on the wire, per hop and direction
    # the functional model's link timing, fitted to the RTL system (docs/hw/link.md, "Timing";
    # tests/hw/test_system_timing.py)
    link_latency: int = 105            #: one-way trip of a small posted write (a remote signal)
    link_tlp_forward: int = 180        #: what a max-payload TLP adds to a trip (store and forward)
    link_post_latency: int = 50        #: a posted link write's last beat to its write response
    link_max_payload: int = 256        #: max TLP payload (bytes)
    link_max_read_request: int = 512   #: max read request (bytes)
    link_tlp_overhead: int = 24        #: framing + header + LCRC bytes per TLP
    link_read_tags: int = 32           #: reads a requester keeps outstanding (tags)
    link_replay_bytes: int = 4096      #: data-link replay buffer
    link_replay_timeout: int = 1024    #: cycles without an ACK before a replay
    link_ack_latency: int = 32         #: cycles a receiver may hold back an ACK (coalescing)
    # receive-buffer flow-control credits a link end advertises (data credits: 16 bytes)
    link_ph_credits: int = 32          #: posted headers
    link_pd_credits: int = 256         #: posted data
    link_nph_credits: int = 32         #: non-posted headers
    link_npd_credits: int = 32         #: non-posted data
    link_cplh_credits: int = 32        #: completion headers
    link_cpld_credits: int = 256       #: completion data
    link_completion_timeout: int = 50_000  #: a read with no completion by then is LINK_TIMEOUT
    clock_hz: float = 1.0e9

    @property
    def link_bytes_per_cycle(self):
        """Raw lane bandwidth of one link direction: the bytes (``W``) the physical layer
        moves per cycle, one flit."""
        return self.link_lanes * self.link_bytes_per_lane

    @property
    def group_tiles(self):
        """Column tiles one scratchpad word of a bf16 B row covers: the NE tile's group mode
        fetches B that wide and serves that many output tiles from it."""
        return max(1, self.sram_bytes_per_cycle // (2 * self.array_cols))

    @property
    def macs_per_cycle(self):
        return self.array_rows * self.array_cols

    def replace(self, **changes):
        return replace(self, **changes)

    def as_dict(self):
        return asdict(self)


DEFAULT = HwParams()
