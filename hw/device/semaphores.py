"""The device's semaphores: 64 counters the host, the engine heads and remote signals update.

Every source may update in the same cycle, each semaphore taking the sum of the changes made to
it (a host write to SEM_VALUE replaces the value, and the cycle's other changes apply on top).
Reads are combinational: a head waiting for ``value >= n`` sees every update the cycle after it
is made. The functional model's semaphores are unbounded integers; here they are 64-bit (the
width of the MMIO registers), wrapping.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...sw.isa.table import NUM_SEMAPHORES, SEM_BITS

__all__ = ["SemUpdate", "SemaphoreBank"]

#: One change: ``add`` (signal, remote increment) or ``sub`` (a wait's consume) of ``value``
#: to semaphore ``index``.
SemUpdate = data.StructLayout({"index": SEM_BITS, "sub": 1, "value": 64})


class SemaphoreBank(wiring.Component):
    """``NUM_SEMAPHORES`` 64-bit semaphores with ``sources`` update ports.

    Members
    -------
    update_<i> : ``In(stream.Signature(SemUpdate, always_ready=True))``
        A change per cycle per source.
    host_set : ``In(stream.Signature({index, value}, always_ready=True))``
        The host's SEM_VALUE write.
    values : ``Out(ArrayLayout(64, NUM_SEMAPHORES))``
        Every semaphore's value.
    """

    def __init__(self, sources):
        self.sources = sources
        members = {f"update_{i}": In(stream.Signature(SemUpdate, always_ready=True))
                   for i in range(sources)}
        members["host_set"] = In(stream.Signature(
            data.StructLayout({"index": SEM_BITS, "value": 64}), always_ready=True))
        members["values"] = Out(data.ArrayLayout(64, NUM_SEMAPHORES))
        super().__init__(members)

    def update(self, i):
        return getattr(self, f"update_{i}")

    def elaborate(self, platform):
        m = Module()
        values = Signal(data.ArrayLayout(64, NUM_SEMAPHORES))
        m.d.comb += self.values.eq(values)
        for s in range(NUM_SEMAPHORES):
            value = Signal(64, name=f"sem{s}_host")
            m.d.comb += value.eq(values[s])
            with m.If(self.host_set.valid & (self.host_set.payload.index == s)):
                m.d.comb += value.eq(self.host_set.payload.value)
            for i in range(self.sources):
                u = self.update(i)
                after = Signal(64, name=f"sem{s}_after{i}")
                m.d.comb += after.eq(value)
                with m.If(u.valid & (u.payload.index == s)):
                    m.d.comb += after.eq(Mux(u.payload.sub, value - u.payload.value,
                                             value + u.payload.value))
                value = after
            m.d.sync += values[s].eq(value)
        return m
