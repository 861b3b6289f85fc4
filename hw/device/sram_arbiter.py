"""Shares the scratchpad's DMA port among the DMA engines.

Reads and writes are granted separately, each round-robin among the requesters that want one
in the cycle, so every engine gets its turn and two engines streaming at once share the port's
bandwidth. A read's data comes back to the engine granted it, exactly one cycle later, as the
scratchpad port promises each requester.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


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

    def _round_robin(self, m, name, requests, grant_to, advance):
        """``grant_to`` = the first requester at or after the one after the last granted."""
        n = self.count
        last = Signal(range(n), name=f"{name}_last")
        chosen = Signal(range(n), name=f"{name}_chosen")
        any_request = Signal(name=f"{name}_any")
        m.d.comb += any_request.eq(requests.any())
        # highest priority first: last + 1, last + 2, ..., last
        for offset in reversed(range(1, n + 1)):
            for lst in range(n):
                candidate = (lst + offset) % n
                with m.If((last == lst) & requests[candidate]):
                    m.d.comb += chosen.eq(candidate)
        m.d.comb += grant_to.eq(chosen)
        with m.If(advance):
            m.d.sync += last.eq(chosen)
        return any_request

    def elaborate(self, platform):
        m = Module()
        port = self.port
        reads = Signal(self.count)
        writes = Signal(self.count)
        for i, master in enumerate(self.masters):
            m.d.comb += [reads[i].eq(master.rd_addr.valid), writes[i].eq(master.wr.valid)]

        read_to = Signal(range(self.count))
        read_any = self._round_robin(m, "read", reads, read_to,
                                     port.rd_addr.valid & port.rd_addr.ready)
        write_to = Signal(range(self.count))
        write_any = self._round_robin(m, "write", writes, write_to,
                                      port.wr.valid & port.wr.ready)
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
