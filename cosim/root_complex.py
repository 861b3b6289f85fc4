"""The host end of the link, in RTL: a PCIe-style root complex for the co-simulated system.

Python (the host driver, ``cosim/system.py``) issues one request at a time on
:class:`HostRequester`'s ``req`` port -- configuration reads and writes to enumerate the
devices and program the switch, memory reads and writes of 1 or 2 dwords to their registers
-- and sleeps until ``resp``. Everything busy every cycle stays in the design: devices'
reads and writes of host memory are served by a :class:`~npusim.hw.link.completer.Completer`
in front of the host-memory DRAM model, and interrupt messages are counted by
:class:`InterruptCollector`, whose counters Python waits on.
"""

import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.link.tlp import Kind, KIND_FMT_TYPE, hdr_get, hdr_set, tlp_beat

__all__ = ["HostOp", "HOST_REQUEST", "HOST_RESPONSE", "HostRequester", "InterruptCollector"]


class HostOp(enum.IntEnum):
    MEM_READ = 0
    MEM_WRITE = 1
    CFG_READ = 2
    CFG_WRITE = 3


#: A host request: ``op``, bus ``addr`` (memory) or ``cfg_id``/``cfg_reg`` (configuration),
#: ``dws`` dwords (1 or 2; configuration: 1) of ``data`` (little-endian, memory order).
HOST_REQUEST = data.StructLayout({"op": 2, "addr": 64, "cfg_id": 16, "cfg_reg": 10,
                                  "dws": 2, "data": 64})
#: Its answer: read ``data``, the completion ``status`` (CplStatus), ``timeout`` when no
#: completion came within ``link_completion_timeout`` cycles.
HOST_RESPONSE = data.StructLayout({"data": 64, "status": 3, "timeout": 1})

_HDR_BYTES = 16
_MAX_BYTES = _HDR_BYTES + 8


class HostRequester(wiring.Component):
    """Turns one host request at a time into a TLP and waits for its completion.

    Memory writes are posted: ``resp`` comes when the TLP has been handed on. Other requests
    get their answer from the completion whose tag matches (tags count up); completions for
    other tags (late ones) are dropped.

    Members
    -------
    req : ``In(stream.Signature(HOST_REQUEST))``
    resp : ``Out(stream.Signature(HOST_RESPONSE))``
    tlp_tx : ``Out(stream.Signature(tlp_beat(W)))``
    cpl_rx : ``In(stream.Signature(tlp_beat(W)))``
        Completions addressed to the host.
    """

    def __init__(self, params, *, width=None):
        self.params = params
        self.width = W = width or params.link_bytes_per_cycle
        super().__init__({
            "req": In(stream.Signature(HOST_REQUEST)),
            "resp": Out(stream.Signature(HOST_RESPONSE)),
            "tlp_tx": Out(stream.Signature(tlp_beat(W))),
            "cpl_rx": In(stream.Signature(tlp_beat(W))),
        })

    def elaborate(self, platform):
        m = Module()
        W, p = self.width, self.params
        r = Signal(HOST_REQUEST)
        tag = Signal(8)

        # the request as header + payload bytes
        hdr = Signal(8 * _HDR_BYTES)
        four_dw = Signal()
        is_mem = r.op <= HostOp.MEM_WRITE
        has_data = (r.op == HostOp.MEM_WRITE) | (r.op == HostOp.CFG_WRITE)
        m.d.comb += four_dw.eq(is_mem & (r.addr[32:] != 0))
        kinds = {HostOp.MEM_READ: (Kind.MRD32, Kind.MRD64),
                 HostOp.MEM_WRITE: (Kind.MWR32, Kind.MWR64),
                 HostOp.CFG_READ: (Kind.CFGRD0, Kind.CFGRD0),
                 HostOp.CFG_WRITE: (Kind.CFGWR0, Kind.CFGWR0)}
        with m.Switch(r.op):
            for op, (k32, k64) in kinds.items():
                with m.Case(op):
                    (f32, t32), (f64, t64) = KIND_FMT_TYPE[k32], KIND_FMT_TYPE[k64]
                    m.d.comb += hdr_set(hdr, "fmt", Mux(four_dw, f64, f32))
                    m.d.comb += hdr_set(hdr, "type", Mux(four_dw, t64, t32))
        m.d.comb += hdr_set(hdr, "length", r.dws)
        m.d.comb += hdr_set(hdr, "tag", tag)
        m.d.comb += hdr_set(hdr, "first_be", Const(0xF, 4))
        m.d.comb += hdr_set(hdr, "last_be", Mux(r.dws == 2, 0xF, 0))
        with m.If(is_mem):
            with m.If(four_dw):
                m.d.comb += hdr_set(hdr, "addr_hi", r.addr[32:])
                m.d.comb += hdr_set(hdr, "addr_lo", r.addr[2:32])
            with m.Else():
                m.d.comb += hdr_set(hdr, "addr32", r.addr[2:32])
        with m.Else():
            m.d.comb += hdr_set(hdr, "cfg_id", r.cfg_id)
            m.d.comb += hdr_set(hdr, "cfg_reg", r.cfg_reg)
        nbytes_out = Signal(range(_MAX_BYTES + 1))
        m.d.comb += nbytes_out.eq(Mux(four_dw, 16, 12) + Mux(has_data, 4 * r.dws, 0))
        beats_out = -(-_MAX_BYTES // W)
        out = Signal(8 * W * beats_out)
        m.d.comb += out.eq(Mux(four_dw, Cat(hdr, r.data), Cat(hdr[:96], r.data)))

        # the completion's first bytes
        beats_in = -(-_MAX_BYTES // W)
        cpl = Signal(8 * W * beats_in)
        beat = Signal(range(max(beats_out, beats_in) + 1))
        timer = Signal(range(p.link_completion_timeout + 1))
        result = Signal(HOST_RESPONSE)

        m.d.comb += self.resp.payload.eq(result)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    m.d.sync += [r.eq(self.req.payload), beat.eq(0), result.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                last = (beat + 1) * W >= nbytes_out
                m.d.comb += [self.tlp_tx.valid.eq(1),
                             self.tlp_tx.payload.data.eq(out.word_select(beat, 8 * W)),
                             self.tlp_tx.payload.last.eq(last),
                             self.tlp_tx.payload.dws.eq(
                                 Mux(last, (nbytes_out - beat * W) >> 2, W // 4))]
                with m.If(self.tlp_tx.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(last):
                        m.d.sync += [beat.eq(0), timer.eq(0)]
                        m.next = "WAIT"
                        with m.If(r.op == HostOp.MEM_WRITE):     # posted: no completion
                            m.next = "RESPOND"
            with m.State("WAIT"):
                m.d.comb += self.cpl_rx.ready.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(self.cpl_rx.valid):
                    with m.If(beat < beats_in):
                        m.d.sync += cpl.word_select(beat, 8 * W).eq(self.cpl_rx.payload.data)
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(self.cpl_rx.payload.last):
                        m.d.sync += beat.eq(0)
                        m.next = "CHECK"
                with m.Elif(timer == p.link_completion_timeout):
                    m.d.sync += result.timeout.eq(1)
                    m.next = "RESPOND"
            with m.State("CHECK"):
                with m.If(hdr_get(cpl, "cpl_tag") == tag):
                    m.d.sync += [result.status.eq(hdr_get(cpl, "status")),
                                 result.data.eq(cpl[96:160])]
                    m.next = "RESPOND"
                with m.Else():
                    m.next = "WAIT"
            with m.State("RESPOND"):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.d.sync += tag.eq(tag + 1)
                    m.next = "IDLE"
        return m


class InterruptCollector(wiring.Component):
    """Counts interrupt messages (MsgD vendor-defined to the root complex) by vector.

    Members
    -------
    msg_rx : ``In(stream.Signature(tlp_beat(W)))``
        Messages (always accepted).
    count : ``Out(32)``
        Interrupts received.
    per_vector : ``Out(ArrayLayout(32, vectors))``
        Interrupts received per vector (vectors beyond ``vectors`` count only in ``count``).
    last_vector : ``Out(32)``
    """

    def __init__(self, width, vectors):
        self.width, self.vectors = width, vectors
        super().__init__({
            "msg_rx": In(stream.Signature(tlp_beat(width))),
            "count": Out(32),
            "per_vector": Out(data.ArrayLayout(32, vectors)),
            "last_vector": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.width
        # the payload dword sits at bytes 16..19 (4DW message header)
        pos = Signal(range(16 // W + 2))
        m.d.comb += self.msg_rx.ready.eq(1)
        with m.If(self.msg_rx.valid):
            m.d.sync += pos.eq(Mux(self.msg_rx.payload.last, 0, pos + 1))
            with m.If(pos == 16 // W):
                vector = self.msg_rx.payload.data.word_select((16 % W) // 4, 32)
                m.d.sync += [self.last_vector.eq(vector), self.count.eq(self.count + 1)]
                for v in range(self.vectors):
                    with m.If(vector == v):
                        m.d.sync += self.per_vector[v].eq(self.per_vector[v] + 1)
        return m
