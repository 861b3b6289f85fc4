"""One single-beat AXI write at a time, carried through to its response whatever happens.

The command processor (completion records, MSIs) and the engine heads (remote semaphore
signals) each write one beat and wait for its response. AW and W are separate channels: an
interconnect may take the address in one cycle and the data in a later one, so each is held
until its own handshake. Once started, a write is always finished and its response always
taken, even if the device stops or the host resets the queue meanwhile: an address without
its data, or a response left in the channel, would block every other master behind the same
interconnect.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..axi import address_layout, response_layout, write_layout

__all__ = ["PostedWriter"]


class PostedWriter(wiring.Component):
    """Drives the write channels (``aw``, ``w``, ``b``) of an AXI port (``params``: an
    :class:`~npusim.hw.axi.AxiParams`) one beat at a time.

    Members
    -------
    start : ``In(stream.Signature({addr, data, strb}))``
        A write to begin; taken only while idle.
    aw, w : ``Out(stream...)``, b : ``In(stream...)``
        The port's write channels (connect them to an :class:`~npusim.hw.axi.AxiSignature`
        port's members of the same names).
    busy : ``Out(1)``
        A write has begun and its response has not come yet.
    resp : ``Out(2)``
        The last response (valid once ``busy`` falls).
    """

    def __init__(self, params):
        self.params = params
        super().__init__({
            "start": In(stream.Signature(data.StructLayout({
                "addr": params.addr_width, "data": params.data_width,
                "strb": params.data_bytes}))),
            "aw": Out(stream.Signature(address_layout(params))),
            "w": Out(stream.Signature(write_layout(params))),
            "b": In(stream.Signature(response_layout(params))),
            "busy": Out(1),
            "resp": Out(2),
        })

    def connect_port(self, m, port):
        """Drive ``port``'s write channels (an AXI master port) from this writer; its read
        channels are left to their other user."""
        m.d.comb += [port.aw.valid.eq(self.aw.valid), port.aw.payload.eq(self.aw.payload),
                     self.aw.ready.eq(port.aw.ready),
                     port.w.valid.eq(self.w.valid), port.w.payload.eq(self.w.payload),
                     self.w.ready.eq(port.w.ready),
                     self.b.valid.eq(port.b.valid), self.b.payload.eq(port.b.payload),
                     port.b.ready.eq(self.b.ready)]

    def elaborate(self, platform):
        m = Module()
        aw_owed, w_owed, b_owed = Signal(), Signal(), Signal()
        addr = Signal.like(self.start.payload.addr)
        beat = Signal.like(self.start.payload.data)
        strb = Signal.like(self.start.payload.strb)
        m.d.comb += [
            self.busy.eq(aw_owed | w_owed | b_owed),
            self.start.ready.eq(~self.busy),
            self.aw.valid.eq(aw_owed), self.aw.payload.addr.eq(addr),
            self.aw.payload.len.eq(0), self.aw.payload.id.eq(0),
            self.w.valid.eq(w_owed), self.w.payload.data.eq(beat),
            self.w.payload.strb.eq(strb), self.w.payload.last.eq(1),
            self.b.ready.eq(b_owed),
        ]
        with m.If(self.start.valid & self.start.ready):
            m.d.sync += [aw_owed.eq(1), w_owed.eq(1), b_owed.eq(1),
                         addr.eq(self.start.payload.addr), beat.eq(self.start.payload.data),
                         strb.eq(self.start.payload.strb)]
        with m.If(self.aw.valid & self.aw.ready):
            m.d.sync += aw_owed.eq(0)
        with m.If(self.w.valid & self.w.ready):
            m.d.sync += w_owed.eq(0)
        with m.If(self.b.valid & self.b.ready):
            m.d.sync += [b_owed.eq(0), self.resp.eq(self.b.payload.resp)]
        return m
