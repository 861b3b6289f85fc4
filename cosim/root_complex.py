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
from amaranth.lib.wiring import In, Out, connect

from ..hw.axi import AxiParams, AxiSignature
from ..hw.link.completer import Completer
from ..hw.link.tlp import Kind, KIND_FMT_TYPE, hdr_get, hdr_set, tlp_beat
from ..hw.link.tlp_stream import TlpMerge, TlpSplit

__all__ = ["HostOp", "HOST_REQUEST", "HOST_RESPONSE", "HostRequester", "InterruptCollector",
           "RootComplex"]


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

        # the request as header + payload bytes, registered when the request is taken (a
        # constant assigned alone to part of a combinational signal is never evaluated by
        # Verilator, so the header is not built combinationally)
        hdr = Signal(8 * _HDR_BYTES)
        four_dw = Signal()
        has_data = (r.op == HostOp.MEM_WRITE) | (r.op == HostOp.CFG_WRITE)

        def build_header(q):
            """Set ``hdr`` and ``four_dw`` (at the next edge) for request ``q``."""
            is_mem = q.op <= HostOp.MEM_WRITE
            wide = is_mem & (q.addr[32:] != 0)
            kinds = {HostOp.MEM_READ: (Kind.MRD32, Kind.MRD64),
                     HostOp.MEM_WRITE: (Kind.MWR32, Kind.MWR64),
                     HostOp.CFG_READ: (Kind.CFGRD0, Kind.CFGRD0),
                     HostOp.CFG_WRITE: (Kind.CFGWR0, Kind.CFGWR0)}
            fmt, typ = Signal(3), Signal(5)
            with m.Switch(q.op):
                for op, (k32, k64) in kinds.items():
                    with m.Case(op):
                        (f32, t32), (f64, t64) = KIND_FMT_TYPE[k32], KIND_FMT_TYPE[k64]
                        m.d.comb += [fmt.eq(Mux(wide, f64, f32)), typ.eq(Mux(wide, t64, t32))]
            m.d.sync += [four_dw.eq(wide), hdr.eq(0)]
            m.d.sync += hdr_set(hdr, "fmt", fmt) + hdr_set(hdr, "type", typ)
            m.d.sync += hdr_set(hdr, "length", q.dws) + hdr_set(hdr, "tag", tag)
            m.d.sync += hdr_set(hdr, "first_be", Const(0xF, 4))
            m.d.sync += hdr_set(hdr, "last_be", Mux(q.dws == 2, 0xF, 0))
            with m.If(~is_mem):
                m.d.sync += hdr_set(hdr, "cfg_id", q.cfg_id) + hdr_set(hdr, "cfg_reg", q.cfg_reg)
            with m.Elif(wide):
                m.d.sync += hdr_set(hdr, "addr_hi", q.addr[32:]) + \
                    hdr_set(hdr, "addr_lo", q.addr[2:32])
            with m.Else():
                m.d.sync += hdr_set(hdr, "addr32", q.addr[2:32])

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
                    build_header(self.req.payload)
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


def _route_from_link(m, beat):
    """Where a TLP from the link goes: 0 completions (to the host requester), 1 messages
    (interrupts), 2 requests (to host memory)."""
    typ = hdr_get(beat.data, "type")
    return Mux(typ == KIND_FMT_TYPE[Kind.CPL][1], 0,
               Mux(typ == KIND_FMT_TYPE[Kind.MSGD][1], 1, 2))


class RootComplex(wiring.Component):
    """The host end of the link: host requests out, device requests to host memory served,
    interrupts counted.

    Members
    -------
    req, resp
        As :class:`HostRequester`'s.
    tlp_tx : ``Out(stream.Signature(tlp_beat(W)))``, tlp_rx : ``In(...)``
        To and from the root port's data-link layer.
    dl_up : ``In(1)``
        The root port's data link is active; host requests wait for it.
    mem : ``Out(AxiSignature(mem_params))``
        Host memory (``bus.host_bytes`` at bus address 0).
    irq_count, irq_per_vector
        As :class:`InterruptCollector`'s ``count`` and ``per_vector``.
    """

    def __init__(self, params, bus, *, vectors):
        self.params, self.bus, self.vectors = params, bus, vectors
        W = params.link_bytes_per_cycle
        self.mem_params = AxiParams(addr_width=(bus.host_bytes - 1).bit_length(),
                                    data_bytes=params.dram_bytes_per_cycle, id_width=1)
        self._completer = Completer(params, mem_axi=self.mem_params, config=False,
                                    mem_window=(0, bus.host_bytes))
        super().__init__({
            "req": In(stream.Signature(HOST_REQUEST)),
            "resp": Out(stream.Signature(HOST_RESPONSE)),
            "tlp_tx": Out(stream.Signature(tlp_beat(W))),
            "tlp_rx": In(stream.Signature(tlp_beat(W))),
            "dl_up": In(1),
            "mem": Out(AxiSignature(self.mem_params)),
            "irq_count": Out(32),
            "irq_per_vector": Out(data.ArrayLayout(32, vectors)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        W = p.link_bytes_per_cycle
        m.submodules.requester = requester = HostRequester(p)
        m.submodules.irq = irq = InterruptCollector(W, self.vectors)
        m.submodules.completer = completer = self._completer
        m.submodules.split = split = TlpSplit(W, 3, _route_from_link)
        m.submodules.merge = merge = TlpMerge(W, 2)
        # a request waits for the data link to be active (as enumeration waits for training)
        m.d.comb += [requester.req.valid.eq(self.req.valid & self.dl_up),
                     requester.req.payload.eq(self.req.payload),
                     self.req.ready.eq(requester.req.ready & self.dl_up)]
        connect(m, requester.resp, wiring.flipped(self.resp))
        connect(m, wiring.flipped(self.tlp_rx), split.i)
        connect(m, split.o0, requester.cpl_rx)
        connect(m, split.o1, irq.msg_rx)
        connect(m, split.o2, completer.tlp_rx)
        connect(m, requester.tlp_tx, merge.i0)
        connect(m, completer.tlp_tx, merge.i1)
        connect(m, merge.o, wiring.flipped(self.tlp_tx))
        connect(m, completer.mem, wiring.flipped(self.mem))
        m.d.comb += [completer.completer_id.eq(0),   # the root complex is 00:00.0
                     self.irq_count.eq(irq.count), self.irq_per_vector.eq(irq.per_vector)]
        return m
