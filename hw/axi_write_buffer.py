"""A write buffer that holds each AXI write burst's address until all of its data is in
(``docs/hw/axi.md``, "WriteBuffer").

A master that issues AW before it has the burst's data (a DMA engine writing what it is
still reading from the link) makes every other master on the same arbiter wait: W beats
pass in AW order, so the arbiter's write channel belongs to that burst until its last beat.
If the missing data can only arrive through one of those other masters -- a read completion
from the link queued behind a peer's posted write into this device's DRAM -- nothing moves
again. With this buffer in front of the arbiter, AW reaches the slave only once the burst
can be written without waiting for anything, which breaks the cycle (store and forward per
burst, as a "packet mode" AXI data FIFO does).
"""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .axi import AxiSignature, address_layout, write_layout

__all__ = ["WriteBuffer"]


class WriteBuffer(wiring.Component):
    """Passes an AXI port through, holding each AW until its burst's W beats are buffered.

    AR, R and B pass combinationally. AW requests queue (``bursts`` deep) and W beats are
    buffered (``beats`` deep); the oldest queued AW goes to the slave once the buffer holds its
    burst's ``last`` beat, and W beats leave only for bursts whose AW has gone. The master's
    bursts must be at most ``beats`` long (a longer one never completes in the buffer); with
    ``beats`` at twice the longest burst, one burst fills while the previous one drains and
    the port keeps one beat per cycle. Cost: the first beat of a burst leaves when its last
    beat came in, one burst's beats later than without the buffer.

    Parameters
    ----------
    params : AxiParams
    beats : int
        W beats buffered (at least the master's longest burst).
    bursts : int
        AW requests queued.

    Members
    -------
    master : ``In(AxiSignature(params))``
        Where the master connects.
    slave : ``Out(AxiSignature(params))``
        To the slave (or an arbiter's master port).
    """

    def __init__(self, params, *, beats, bursts=4):
        if beats < 1 or bursts < 1:
            raise ValueError(f"a write buffer needs at least one beat and one burst, "
                             f"not {beats} beats and {bursts} bursts")
        self.params, self.beats, self.bursts = params, beats, bursts
        super().__init__({
            "master": In(AxiSignature(params)),
            "slave": Out(AxiSignature(params)),
        })

    def elaborate(self, platform):
        m = Module()
        master, slave = self.master, self.slave
        for channel in ("ar", "r", "b"):     # both are this component's own ports
            wiring.connect(m, wiring.flipped(getattr(master, channel)),
                           wiring.flipped(getattr(slave, channel)))

        aw_shape = Shape.cast(address_layout(self.params))
        w_shape = Shape.cast(write_layout(self.params))
        m.submodules.aw_queue = aw_queue = SyncFIFO(width=aw_shape.width, depth=self.bursts)
        m.submodules.w_queue = w_queue = SyncFIFO(width=w_shape.width, depth=self.beats)

        complete = Signal(range(self.beats + 1))   # bursts fully buffered, AW not yet sent
        sent = Signal(range(self.bursts + self.beats + 1))   # AW sent, W not yet all out
        w_in = master.w.valid & master.w.ready
        aw_out = slave.aw.valid & slave.aw.ready
        w_out_last = slave.w.valid & slave.w.ready & slave.w.payload.last
        m.d.comb += [
            aw_queue.w_data.eq(master.aw.payload), aw_queue.w_en.eq(master.aw.valid),
            master.aw.ready.eq(aw_queue.w_rdy),
            slave.aw.payload.eq(aw_queue.r_data),
            slave.aw.valid.eq(aw_queue.r_rdy & (complete != 0)),
            aw_queue.r_en.eq(aw_out),

            w_queue.w_data.eq(master.w.payload), w_queue.w_en.eq(master.w.valid),
            master.w.ready.eq(w_queue.w_rdy),
            slave.w.payload.eq(w_queue.r_data),
            slave.w.valid.eq(w_queue.r_rdy & (sent != 0)),
            w_queue.r_en.eq(slave.w.valid & slave.w.ready),
        ]
        m.d.sync += [complete.eq(complete + (w_in & master.w.payload.last) - aw_out),
                     sent.eq(sent + aw_out - w_out_last)]
        return m
