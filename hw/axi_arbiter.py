"""Several AXI masters onto one slave port (``hw/axi.py`` conventions).

The device's memory masters (command fetch, DMA engines, completion writer) share one DRAM
port. :class:`AxiArbiter` grants AR and AW round-robin, independently, and tags each request
with the master's index in the top ID bits, so R beats and B responses go back by ID without
any state. W beats follow the order in which AWs were granted. Everything is combinational
except the grant pointers and that order queue, so the arbiter adds no latency and no bubbles.
See ``docs/hw/axi.md``.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import AxiSignature

__all__ = ["AxiArbiter", "RoundRobin"]


class RoundRobin(Elaboratable):
    """A round-robin pick among ``n`` requests, one per cycle, held until taken.

    The pick is the first requester after the last one taken (master 0 first after reset),
    decided combinationally. Once offered and not taken, it stays the pick in the next cycles
    (AXI forbids changing a valid request), so only a taken grant moves the pointer.

    Attributes
    ----------
    requests : Signal(n), in
        One bit per requester.
    taken : Signal(), in
        The current pick was accepted this cycle.
    grant : Signal(range(n)), out
        The pick.
    valid : Signal(), out
        The pick is requesting: ``requests[grant]``.
    """

    def __init__(self, n):
        self.n = n
        self.requests = Signal(n)
        self.taken = Signal()
        self.grant = Signal(range(n))
        self.valid = Signal()

    def elaborate(self, platform):
        m = Module()
        n = self.n
        last = Signal(range(n), init=n - 1)  # the last requester taken
        held = Signal()                       # the pick was offered and not taken
        held_grant = Signal(range(n))
        with m.If(held):
            m.d.comb += self.grant.eq(held_grant)
        with m.Else():
            with m.Switch(last):
                for previous in range(n):
                    with m.Case(previous):
                        # The last assignment wins: the first requester after `previous`.
                        for step in reversed(range(n)):
                            candidate = (previous + 1 + step) % n
                            with m.If(self.requests[candidate]):
                                m.d.comb += self.grant.eq(candidate)
        m.d.comb += self.valid.eq(self.requests.bit_select(self.grant, 1))
        m.d.sync += [held.eq(self.valid & ~self.taken), held_grant.eq(self.grant)]
        with m.If(self.taken):
            m.d.sync += last.eq(self.grant)
        return m


class AxiArbiter(wiring.Component):
    """``masters`` AXI masters onto one slave port.

    AR and AW are each granted round-robin, one request per cycle; a request waiting on
    ``ready`` keeps its grant. The slave sees the ID ``{master index, master's id}`` (index in
    the top ``slave_params.id_width - params.id_width`` bits); R beats and B responses return
    to the master named by those bits with the master's own ID. W beats pass from the master
    whose AW was granted earliest among bursts not yet finished (its ``last`` beat ends the
    burst); up to ``write_bursts`` granted AWs may wait for their W beats before AW grants
    stall. One beat per cycle on every channel, no idle cycle between bursts.

    Masters must keep to ``hw/axi.py``: a valid request stays until taken, W beats in AW order
    with ``last`` on each burst's final beat.

    Parameters
    ----------
    params : AxiParams
        Of the master ports.
    masters : int
        Number of master ports (at least 1).
    write_bursts : int
        Granted AWs whose W beats may be outstanding.

    Members
    -------
    masters : ``In(AxiSignature(params)).array(masters)``
        Where the masters connect (the arbiter is their slave).
    slave : ``Out(AxiSignature(slave_params))``
        To the slave; ``slave_params`` is ``params`` with ``ceil(log2(masters))`` more ID bits.
    """

    def __init__(self, params, masters, *, write_bursts=8):
        if masters < 1:
            raise ValueError(f"an arbiter needs at least one master, not {masters}")
        if write_bursts < 1:
            raise ValueError(f"write_bursts must be at least 1, not {write_bursts}")
        self.params = params
        self.index_bits = (masters - 1).bit_length()
        self.slave_params = params.with_id_width(params.id_width + self.index_bits)
        self.write_bursts = write_bursts
        super().__init__({
            "masters": In(AxiSignature(params)).array(masters),
            "slave": Out(AxiSignature(self.slave_params)),
        })

    def elaborate(self, platform):
        m = Module()
        masters, slave = self.masters, self.slave
        id_width = self.params.id_width

        # AR: granted round-robin, the master's index above its ID.
        m.submodules.ar_grant = ar_grant = RoundRobin(len(masters))
        self._request_channel(m, ar_grant, [master.ar for master in masters], slave.ar,
                              enable=1)

        # AW: the same, and each granted index is queued for W.
        m.submodules.w_order = w_order = SyncFIFO(width=max(self.index_bits, 1),
                                                  depth=self.write_bursts)
        m.submodules.aw_grant = aw_grant = RoundRobin(len(masters))
        self._request_channel(m, aw_grant, [master.aw for master in masters], slave.aw,
                              enable=w_order.w_rdy)
        m.d.comb += [w_order.w_data.eq(aw_grant.grant),
                     w_order.w_en.eq(slave.aw.valid & slave.aw.ready)]

        # W: only from the master at the head of the queue, until its last beat.
        head = w_order.r_data[:self.index_bits]
        with m.Switch(head):
            for index, master in enumerate(masters):
                with m.Case(index):
                    m.d.comb += [slave.w.valid.eq(w_order.r_rdy & master.w.valid),
                                 slave.w.payload.eq(master.w.payload),
                                 master.w.ready.eq(w_order.r_rdy & slave.w.ready)]
        m.d.comb += w_order.r_en.eq(slave.w.valid & slave.w.ready & slave.w.payload.last)

        # R and B: to the master named by the top ID bits, with the master's own ID.
        for channel in ("r", "b"):
            response = getattr(slave, channel)
            index = response.payload.id[id_width:]
            for number, master in enumerate(masters):
                port = getattr(master, channel)
                m.d.comb += port.valid.eq(response.valid & (index == number))
                for name, _ in response.payload.shape():
                    field = getattr(response.payload, name)
                    m.d.comb += getattr(port.payload, name).eq(
                        field[:id_width] if name == "id" else field)
            with m.Switch(index):
                for number, master in enumerate(masters):
                    with m.Case(number):
                        m.d.comb += response.ready.eq(getattr(master, channel).ready)
        return m

    def _request_channel(self, m, grant, requests, out, *, enable):
        """Connect request streams ``requests`` (AR or AW of each master) to ``out`` through
        the round-robin ``grant``; requests pass only while ``enable`` is high."""
        m.d.comb += [grant.requests.eq(Cat(request.valid for request in requests)),
                     out.valid.eq(grant.valid & enable),
                     grant.taken.eq(out.valid & out.ready)]
        with m.Switch(grant.grant):
            for index, request in enumerate(requests):
                with m.Case(index):
                    m.d.comb += [
                        out.payload.addr.eq(request.payload.addr),
                        out.payload.len.eq(request.payload.len),
                        out.payload.id.eq(Cat(request.payload.id,
                                              Const(index, self.index_bits))),
                        request.ready.eq(out.ready & enable),
                    ]
