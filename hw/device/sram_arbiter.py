"""Shares the scratchpad's DMA port among the DMA engines.

Reads and writes are granted separately, each round-robin among the requesters that want one
in the cycle, so every engine gets its turn and two engines streaming at once share the port's
bandwidth. A read's data comes back to the engine granted it, exactly one cycle later, as the
scratchpad port promises each requester.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..axi_arbiter import RoundRobin


__all__ = ["SramArbiter"]


class SramArbiter(wiring.Component):
    """``masters`` :class:`ScratchpadPort` requesters onto one.

    Members
    -------
    masters : ``In(ScratchpadPort).array(masters)``
    port : ``Out(ScratchpadPort)``
    """

    def __init__(self, port_signature, masters):
        self.count = masters
        super().__init__({
            "masters": In(port_signature).array(masters),
            "port": Out(port_signature),
        })

    def elaborate(self, platform):
        m = Module()
        port = self.port
        reads = Signal(self.count)
        writes = Signal(self.count)
        for i, master in enumerate(self.masters):
            m.d.comb += [reads[i].eq(master.rd_addr.valid), writes[i].eq(master.wr.valid)]

        # reads and writes each granted round-robin (the AXI arbiter's pointer logic)
        m.submodules.read_grant = read_grant = RoundRobin(self.count)
        m.submodules.write_grant = write_grant = RoundRobin(self.count)
        m.d.comb += [read_grant.requests.eq(reads), write_grant.requests.eq(writes),
                     read_grant.taken.eq(port.rd_addr.valid & port.rd_addr.ready),
                     write_grant.taken.eq(port.wr.valid & port.wr.ready)]
        read_to, write_to = read_grant.grant, write_grant.grant
        read_any, write_any = read_grant.valid, write_grant.valid
        returning = Signal(range(self.count))   # who gets this cycle's read data
        with m.If(port.rd_addr.valid & port.rd_addr.ready):
            m.d.sync += returning.eq(read_to)
        m.d.comb += [port.rd_addr.valid.eq(read_any), port.wr.valid.eq(write_any)]
        for i, master in enumerate(self.masters):
            with m.If(read_to == i):
                m.d.comb += [port.rd_addr.payload.eq(master.rd_addr.payload),
                             master.rd_addr.ready.eq(port.rd_addr.ready)]
            with m.If(write_to == i):
                m.d.comb += [port.wr.payload.eq(master.wr.payload),
                             master.wr.ready.eq(port.wr.ready)]
            m.d.comb += [master.rd_data.payload.eq(port.rd_data.payload),
                         master.rd_data.valid.eq(port.rd_data.valid & (returning == i))]
        return m
