"""Command fetcher: reads commands ahead of the decoder from the ring or a called stream.

The fetcher keeps up to :data:`PREFETCH` commands requested or queued, one single-beat AXI
read each, so with a DRAM latency of ``L`` cycles it delivers a command every ``L /
PREFETCH`` cycles or faster. It reads from one of two places:

* the ring: ``ring_base + off`` for ``off`` from the consumed head up to the tail (the host's
  doorbell), wrapping at ``ring_size``;
* a called stream: ``base + 32 + 32 pc`` for ``pc < n``.

A change of flow (a taken branch, a call, the end of a called stream, a fault, a queue reset)
*restarts* it at a new place: the queued commands are dropped and the reads still in flight
are discarded as they arrive. A command outside DRAM is not read: it arrives with
``error`` TRUNCATED_STREAM (as does one whose read returns an error response).
"""

from amaranth.hdl import Module, Mux, ResetInserter, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ...sw.isa.enums import ErrorCode
from ...sw.isa.table import COMMAND_BITS, COMMAND_BYTES, HEADER_BYTES
from ..axi import AxiSignature
from ..isa import ErrorShape

__all__ = ["PREFETCH", "FetchMode", "Fetched", "CommandFetcher"]

#: Commands requested or queued ahead of the decoder.
PREFETCH = 16
#: Width of a command index within a called stream (BRANCH targets are 24-bit).
INDEX_BITS = 32


class FetchMode(enum.Enum, shape=2):
    IDLE = 0    #: fetch nothing
    RING = 1    #: the ring, from ``off`` to the tail
    FRAME = 2   #: a called stream, from index ``pc`` to ``n``


Fetched = data.StructLayout({
    "raw": COMMAND_BITS,
    "addr": 64,                 # DRAM byte address of the command (ERROR_OFFSET on a fault)
    "index": INDEX_BITS,        # index in the called stream (FRAME mode)
    "error": ErrorShape,
})

_Restart = data.StructLayout({
    "mode": FetchMode,
    "base": 64,       # RING: ring base; FRAME: the called stream's header address
    "pos": INDEX_BITS,  # RING: byte offset of the first command; FRAME: its index
    "n": INDEX_BITS,  # FRAME: commands in the stream
})


class CommandFetcher(wiring.Component):
    """Reads commands ahead on :attr:`mem` (read channels only) and queues them on :attr:`out`.

    Members
    -------
    restart : ``In(stream.Signature(_Restart))``
        Start fetching at a new place (``mode`` IDLE stops); always taken at once.
    ring_size, ring_tail : ``In(64)``
        The ring registers, read live (the doorbell moves the tail).
    out : ``Out(stream.Signature(Fetched))``
        Commands in order.
    quiet : ``Out(1)``
        No read in flight: another reader may use :attr:`mem`'s read channels.
    mem : ``Out(AxiSignature)``
        DRAM port; only ``ar`` and ``r`` are used (``aw``, ``w`` idle, ``b`` ready).
    """

    def __init__(self, axi_params, dram_bytes):
        if axi_params.data_bytes < COMMAND_BYTES:
            raise ValueError(f"the DRAM port must carry a whole command per beat "
                             f"({axi_params.data_bytes} < {COMMAND_BYTES} bytes)")
        self.axi_params, self.dram_bytes = axi_params, dram_bytes
        super().__init__({
            "restart": In(stream.Signature(_Restart, always_ready=True)),
            "ring_size": In(64),
            "ring_tail": In(64),
            "out": Out(stream.Signature(Fetched)),
            "mem": Out(AxiSignature(axi_params)),
            "quiet": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.axi_params
        beat_shift = (p.data_bytes - 1).bit_length()

        mode = Signal(FetchMode)
        base = Signal(64)
        pos = Signal(INDEX_BITS)       # RING: next byte offset to request; FRAME: next index
        n = Signal(INDEX_BITS)
        in_flight = Signal(range(PREFETCH + 1))   # requested, not arrived
        discard = Signal(range(PREFETCH + 1))     # of those, to be dropped (before a restart)

        # -- what the next request is ---------------------------------------------------------
        addr = Signal(65)
        more = Signal()
        m.d.comb += [
            addr.eq(Mux(mode == FetchMode.RING, base + pos,
                        base + HEADER_BYTES + pos * COMMAND_BYTES)),
            more.eq(Mux(mode == FetchMode.RING, pos != self.ring_tail,
                        (mode == FetchMode.FRAME) & (pos < n))),
        ]
        outside = Signal()
        m.d.comb += outside.eq(addr + COMMAND_BYTES > self.dram_bytes)

        # Request tags: the command's address and index travel with it.
        m.submodules.tags = tags = SyncFIFO(width=64 + INDEX_BITS + 1, depth=PREFETCH)
        # A restart empties the queue (the tags of reads in flight stay: they still arrive).
        queue = SyncFIFOBuffered(width=Fetched.size, depth=PREFETCH)
        m.submodules.queue = ResetInserter(self.restart.valid)(queue)
        room = Signal()
        m.d.comb += room.eq(in_flight + queue.level < PREFETCH)

        ar = self.mem.ar
        issue = Signal()
        m.d.comb += [
            ar.payload.addr.eq(addr[beat_shift:] << beat_shift),
            ar.payload.len.eq(0),
            ar.payload.id.eq(0),
            ar.valid.eq(more & room & ~outside & ~self.restart.valid & tags.w_rdy),
            issue.eq(ar.valid & ar.ready),
        ]
        # A command outside DRAM is queued at once as an error (and fetching stops there).
        bad_entry = Signal()
        m.d.comb += bad_entry.eq(more & room & outside & ~self.restart.valid & (in_flight == 0))

        # -- responses ------------------------------------------------------------------------
        r = self.mem.r
        m.d.comb += r.ready.eq(1)   # room was reserved when the read was issued
        arrive = Signal()
        m.d.comb += arrive.eq(r.valid)
        tag_addr = Signal(64)
        tag_index = Signal(INDEX_BITS)
        m.d.comb += [tag_addr.eq(tags.r_data[:64]), tag_index.eq(tags.r_data[64:64 + INDEX_BITS]),
                     tags.r_en.eq(arrive),
                     tags.w_en.eq(issue),
                     tags.w_data.eq(addr[:64] | (pos.as_unsigned() << 64))]
        with m.If(mode == FetchMode.RING):
            m.d.comb += tags.w_data[64:64 + INDEX_BITS].eq(0)
        lane = Signal(range(max(2, p.data_bytes // COMMAND_BYTES)))
        if p.data_bytes > COMMAND_BYTES:
            m.d.comb += lane.eq(tag_addr[5:beat_shift])
        entry = Signal(Fetched)
        m.d.comb += [
            entry.raw.eq(r.payload.data.word_select(lane, COMMAND_BITS)
                         if p.data_bytes > COMMAND_BYTES else r.payload.data),
            entry.addr.eq(tag_addr),
            entry.index.eq(tag_index),
            entry.error.eq(Mux(r.payload.resp != 0, ErrorCode.TRUNCATED_STREAM, ErrorCode.OK)),
        ]
        bad = Signal(Fetched)
        m.d.comb += [bad.addr.eq(addr[:64]), bad.index.eq(pos), bad.error.eq(
            ErrorCode.TRUNCATED_STREAM)]
        with m.If(arrive & (discard == 0)):
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(entry)]
        with m.Elif(bad_entry):
            m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(bad)]
        m.d.comb += [
            self.out.valid.eq(queue.r_rdy),
            self.out.payload.eq(queue.r_data),
            queue.r_en.eq(self.out.ready),
        ]

        # -- bookkeeping ----------------------------------------------------------------------
        m.d.sync += in_flight.eq(in_flight + issue - arrive)
        m.d.comb += self.quiet.eq(in_flight == 0)
        with m.If(arrive & (discard != 0)):
            m.d.sync += discard.eq(discard - 1)
        with m.If(issue):
            m.d.sync += pos.eq(Mux(mode == FetchMode.RING,
                                   Mux(pos + COMMAND_BYTES >= self.ring_size, 0,
                                       pos + COMMAND_BYTES),
                                   pos + 1))
        with m.If(bad_entry):
            m.d.sync += mode.eq(FetchMode.IDLE)
        with m.If(self.restart.valid):
            rs = self.restart.payload
            m.d.sync += [mode.eq(rs.mode), base.eq(rs.base), pos.eq(rs.pos), n.eq(rs.n),
                         discard.eq(in_flight - arrive)]

        # the write channels are not used
        m.d.comb += [self.mem.aw.valid.eq(0), self.mem.w.valid.eq(0), self.mem.b.ready.eq(1)]
        return m
