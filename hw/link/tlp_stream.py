"""Whole-TLP merging and splitting of TLP streams (``tlp.tlp_beat``).

A TLP is never interleaved with another: :class:`TlpMerge` grants one input for a whole
TLP (round robin between TLPs), :class:`TlpSplit` steers each TLP, by its first beat, to
one of several outputs.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..axi_arbiter import RoundRobin
from .tlp import tlp_beat

__all__ = ["TlpMerge", "TlpSplit"]


class TlpMerge(wiring.Component):
    """``n`` TLP streams into one, a whole TLP at a time, round robin.

    Members
    -------
    inputs : ``In(stream.Signature(tlp_beat(W)))`` x n (``i0``, ``i1``, ...)
    o : ``Out(stream.Signature(tlp_beat(W)))``
    """

    def __init__(self, width, n):
        self.width, self.n = width, n
        members = {f"i{k}": In(stream.Signature(tlp_beat(width))) for k in range(n)}
        members["o"] = Out(stream.Signature(tlp_beat(width)))
        super().__init__(members)

    @property
    def inputs(self):
        return [getattr(self, f"i{k}") for k in range(self.n)]

    def elaborate(self, platform):
        m = Module()
        ins = self.inputs
        m.submodules.rr = rr = RoundRobin(self.n)
        busy = Signal()                      # inside a TLP from input `locked`
        locked = Signal(range(self.n))
        sel = Signal(range(self.n))
        m.d.comb += [rr.requests.eq(Cat(i.valid for i in ins)),
                     sel.eq(Mux(busy, locked, rr.grant))]
        for k, i in enumerate(ins):
            with m.If(sel == k):
                m.d.comb += [self.o.valid.eq(i.valid), self.o.payload.eq(i.payload),
                             i.ready.eq(self.o.ready)]
        accepted = self.o.valid & self.o.ready
        m.d.comb += rr.taken.eq(accepted & ~busy)
        with m.If(accepted):
            m.d.sync += [busy.eq(~self.o.payload.last), locked.eq(sel)]
        return m


class TlpSplit(wiring.Component):
    """One TLP stream to ``n`` outputs: ``route(m, first_beat)`` returns the output index
    (a Value) from a TLP's first beat; the rest of the TLP follows it.

    Members
    -------
    i : ``In(stream.Signature(tlp_beat(W)))``
    outputs : ``Out(stream.Signature(tlp_beat(W)))`` x n (``o0``, ``o1``, ...)
    """

    def __init__(self, width, n, route):
        self.width, self.n, self.route = width, n, route
        members = {"i": In(stream.Signature(tlp_beat(width)))}
        members.update({f"o{k}": Out(stream.Signature(tlp_beat(width))) for k in range(n)})
        super().__init__(members)

    @property
    def outputs(self):
        return [getattr(self, f"o{k}") for k in range(self.n)]

    def elaborate(self, platform):
        m = Module()
        first = Signal(init=1)
        held = Signal(range(self.n))
        target = Signal(range(self.n))
        m.d.comb += target.eq(held)
        with m.If(first):
            m.d.comb += target.eq(self.route(m, self.i.payload))
        for k, o in enumerate(self.outputs):
            m.d.comb += o.payload.eq(self.i.payload)
            with m.If(target == k):
                m.d.comb += [o.valid.eq(self.i.valid), self.i.ready.eq(o.ready)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [first.eq(self.i.payload.last), held.eq(target)]
        return m
