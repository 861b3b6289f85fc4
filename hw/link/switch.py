"""The switch: routes TLPs between the host's port and the devices' ports.

The link has one switch, PCIe-style, with an upstream port towards the root complex and
``n_ports`` downstream ports, one per device. It works at the transaction layer: each port's
data-link layer sits outside it, so the switch sees whole TLPs on :func:`~.tlp.tlp_beat`
streams. Memory requests go by the address windows the host programs into the switch's own
configuration space, completions by the requester's bus, configuration requests by the
target's bus, interrupt messages upstream (``docs/hw/link.md``, "Routing (switch)").

Every ingress stores a TLP whole before it is routed (store and forward): only then are its
length and boundaries known, and a malformed TLP can be dropped without anything of it
leaving the switch. Each egress takes whole TLPs from the ingresses round-robin; egresses
run in parallel, so host traffic and peer-to-peer traffic between devices pass at once.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..axi_arbiter import RoundRobin
from .tlp import KIND_FMT_TYPE, VENDOR_ID, CplStatus, Kind, hdr_get, hdr_set, tlp_beat

__all__ = ["SWITCH_DEVICE_ID", "WINDOW_REGS", "Switch"]

#: Device ID in register 0x00 of the switch's configuration space (above ``VENDOR_ID``).
SWITCH_DEVICE_ID = 0x5357
#: Dword register numbers of a port's windows: memory base lo/hi, memory limit lo/hi,
#: prefetchable base lo/hi, prefetchable limit lo/hi (byte offsets 0x20 to 0x3C).
WINDOW_REGS = range(0x20 // 4, 0x40 // 4)
#: Reset values of those registers: base all ones, limit zero, so every window is disabled.
_WINDOW_INIT = [0xFFFF_FFFF, 0xFFFF_FFFF, 0, 0] * 2

_HEADER_BYTES = 16   # the longest header (4DW); the routing decision needs no more


def _routed_beat(width, n_ports):
    """A TLP beat inside the switch, with where its TLP goes: ``dest`` is an egress (0 the
    upstream port, ``i + 1`` downstream port ``i``, ``n_ports + 1`` the switch's own
    responder); ``ur`` asks the responder for an Unsupported Request completion."""
    return data.StructLayout({"beat": tlp_beat(width), "dest": range(n_ports + 2), "ur": 1})


def _is_kind(fmt_type, *kinds):
    """``fmt_type`` (``Cat(type, fmt)``) is one of ``kinds``."""
    result = C(0, 1)
    for kind in kinds:
        fmt, typ = KIND_FMT_TYPE[kind]
        result = result | (fmt_type == (fmt << 5 | typ))
    return result


def _header_chunks(width):
    """(bytes per chunk, chunks): how the first 16 bytes of a TLP arrive in beats."""
    chunk = min(width, _HEADER_BYTES)
    return chunk, _HEADER_BYTES // chunk


class _Ingress(wiring.Component):
    """One port's ingress: a store-and-forward buffer that checks and routes each TLP.

    Beats are written into a ring of ``depth`` beats as they arrive (one per cycle while
    there is room). At a TLP's last beat its header (captured from the first 16 bytes) and
    its beat count decide, in that same cycle, whether it is malformed, where it goes, or
    whether it is unsupported; a TLP that goes nowhere is forgotten by moving the write
    pointer back. A TLP longer than the longest legal one stops being stored and is drained
    to its last beat, so a malformed stream never wedges the ingress. ``out`` presents the
    stored TLPs in order, one beat per cycle, each beat with its TLP's destination.

    Members
    -------
    rx : ``In(stream.Signature(tlp_beat(width)))``
        TLPs from the port.
    out : ``Out(stream.Signature(_routed_beat(width, n_ports)))``
        Stored TLPs with their routing.
    malformed, unsupported : ``Out(1)``
        One-cycle pulses: a TLP was dropped as malformed / found unsupported.
    """

    def __init__(self, port, n_ports, width, max_payload, windows):
        self.port, self.n_ports, self.width = port, n_ports, width
        self.max_payload = max_payload
        self.windows = windows          # per downstream port: [(base, limit), (base, limit)]
        self.max_beats = -(-(_HEADER_BYTES + max_payload) // width)
        self.depth = 1 << (2 * self.max_beats - 1).bit_length()   # room for two whole TLPs
        super().__init__({
            "rx": In(stream.Signature(tlp_beat(width))),
            "out": Out(stream.Signature(_routed_beat(width, n_ports))),
            "malformed": Out(1),
            "unsupported": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rx, out = self.rx, self.out
        width, depth, max_beats = self.width, self.depth, self.max_beats
        abits = depth.bit_length() - 1

        m.submodules.ring = ring = Memory(shape=tlp_beat(width), depth=depth, init=[])
        wr = ring.write_port()
        rd = ring.read_port()
        # One route per stored TLP: ``depth`` beats in the ring and one being shown.
        m.submodules.routes = routes = SyncFIFO(width=len(out.payload.dest) + 1,
                                                depth=depth + 1)

        wptr = Signal(abits + 1)   # next beat to write (the TLP being received)
        cptr = Signal(abits + 1)   # end of the last TLP kept
        rptr = Signal(abits + 1)   # next beat to read
        beat = Signal(range(max_beats + 1))   # beats of this TLP so far (saturating)
        ragged = Signal()          # a beat before the last was not full

        # The first 16 bytes, from the register and the beat now arriving.
        chunk, chunks = _header_chunks(width)
        captured = Signal(8 * _HEADER_BYTES)
        header = Signal(8 * _HEADER_BYTES)
        m.d.comb += header.eq(Cat(Mux(beat == k, rx.payload.data[:8 * chunk],
                                      captured[8 * chunk * k: 8 * chunk * (k + 1)])
                                  for k in range(chunks)))

        too_long = beat == max_beats
        full = (wptr - rptr)[:abits + 1] == depth
        m.d.comb += rx.ready.eq(~full)
        take = rx.valid & rx.ready
        # Past the longest legal TLP, beats land in the one free slot at wptr, which stays.
        m.d.comb += [wr.addr.eq(wptr[:abits]), wr.data.eq(rx.payload), wr.en.eq(take)]

        received = beat * (width // 4) + rx.payload.dws
        malformed, dest, ur, drop, unsupported = self._check_and_route(
            m, header, received, ragged | too_long | (rx.payload.dws == 0))

        with m.If(take):
            with m.If(~too_long):
                m.d.sync += wptr.eq(wptr + 1)
            for k in range(chunks):
                with m.If(beat == k):
                    m.d.sync += captured[8 * chunk * k: 8 * chunk * (k + 1)].eq(
                        rx.payload.data[:8 * chunk])
            with m.If(rx.payload.last):
                m.d.sync += [beat.eq(0), ragged.eq(0)]
                with m.If(malformed | drop):
                    m.d.sync += wptr.eq(cptr)
                with m.Else():
                    m.d.sync += cptr.eq(wptr + 1)
                m.d.comb += [self.malformed.eq(malformed),
                             self.unsupported.eq(~malformed & unsupported),
                             routes.w_en.eq(~malformed & ~drop),
                             routes.w_data.eq(Cat(dest, ur))]
            with m.Else():
                with m.If(~too_long):
                    m.d.sync += beat.eq(beat + 1)
                with m.If(rx.payload.dws != width // 4):
                    m.d.sync += ragged.eq(1)

        # Read side: a registered output; the next beat is read while this one is taken.
        shown = Signal()
        advance = ~shown | out.ready
        available = cptr != rptr
        m.d.comb += [rd.addr.eq(rptr[:abits]), rd.en.eq(advance)]
        with m.If(advance):
            m.d.sync += shown.eq(available)
            with m.If(available):
                m.d.sync += rptr.eq(rptr + 1)
        m.d.comb += [out.valid.eq(shown), out.payload.beat.eq(rd.data),
                     Cat(out.payload.dest, out.payload.ur).eq(routes.r_data),
                     routes.r_en.eq(out.valid & out.ready & rd.data.last)]
        return m

    def _check_and_route(self, m, header, received, bad_stream):
        """Combinational verdict on the TLP whose last beat is arriving: (malformed, dest,
        ur, drop, unsupported). ``received`` is its dwords so far including this beat's."""
        n, port = self.n_ports, self.port
        local = n + 1
        fmt, typ = hdr_get(header, "fmt"), hdr_get(header, "type")
        fmt_type = Cat(typ, fmt)
        is_mrd = _is_kind(fmt_type, Kind.MRD32, Kind.MRD64)
        is_mwr = _is_kind(fmt_type, Kind.MWR32, Kind.MWR64)
        is_cfg = _is_kind(fmt_type, Kind.CFGRD0, Kind.CFGWR0)
        is_cpl = _is_kind(fmt_type, Kind.CPL, Kind.CPLD)
        is_msg = _is_kind(fmt_type, Kind.MSGD)
        is_mem = is_mrd | is_mwr
        four_dw, has_data = fmt[0], fmt[1]
        length = hdr_get(header, "length")
        dwords, addr = Signal(11), Signal(64)
        m.d.comb += [
            dwords.eq(Mux(length == 0, 1024, length)),
            addr.eq(Mux(four_dw,
                        Cat(C(0, 2), hdr_get(header, "addr_lo"), hdr_get(header, "addr_hi")),
                        Cat(C(0, 2), hdr_get(header, "addr32"), C(0, 32)))),
        ]

        malformed = Signal()
        expected = Mux(four_dw, 4, 3) + Mux(has_data, dwords, 0)
        m.d.comb += malformed.eq(
            ~(is_mem | is_cfg | is_cpl | is_msg) | bad_stream | (received != expected)
            | (has_data & (dwords * 4 > self.max_payload))
            | (is_mem & (addr[2:12] + dwords > 1024))     # crosses a 4 KiB boundary
            | (is_cfg & (length != 1)))

        dest, ur, drop = Signal(range(n + 2)), Signal(), Signal()
        unsupported = Signal()

        def unclaimed(non_posted):
            """No one takes it: a request waiting for an answer gets a UR completion."""
            if non_posted is True:
                m.d.comb += [dest.eq(local), ur.eq(1), unsupported.eq(1)]
            else:
                m.d.comb += unsupported.eq(1)
                with m.If(non_posted):
                    m.d.comb += [dest.eq(local), ur.eq(1)]
                with m.Else():
                    m.d.comb += drop.eq(1)

        with m.If(is_mem):
            hits = [(addr >= base) & (addr <= limit)
                    for port_windows in self.windows for base, limit in port_windows]
            target = Signal(range(n + 1))          # upstream if no window holds it...
            for i in reversed(range(n)):           # ...else the lowest port whose does
                with m.If(hits[2 * i] | hits[2 * i + 1]):
                    m.d.comb += target.eq(i + 1)
            with m.If(target != port):             # never back out of its own ingress
                m.d.comb += dest.eq(target)
            with m.Else():
                unclaimed(is_mrd)
        with m.Elif(is_cpl):
            bus = hdr_get(header, "cpl_requester_id")[8:]
            with m.If((bus <= n) & (bus != port)):
                m.d.comb += dest.eq(bus)
            with m.Else():
                m.d.comb += [drop.eq(1), unsupported.eq(1)]
        with m.Elif(is_cfg):
            target_id = hdr_get(header, "cfg_id")
            bus, device, function = target_id[8:], target_id[3:8], target_id[:3]
            if port != 0:
                unclaimed(True)      # configuration flows only away from the root complex
            else:
                with m.If((bus == 0) & (device < n) & (function == 0)):
                    m.d.comb += dest.eq(local)
                with m.Elif((bus != 0) & (bus <= n)):
                    m.d.comb += dest.eq(bus)
                with m.Else():
                    unclaimed(True)
        with m.Else():   # MsgD: to the root complex
            if port != 0:
                m.d.comb += dest.eq(0)
            else:
                m.d.comb += [drop.eq(1), unsupported.eq(1)]
        return malformed, dest, ur, drop, unsupported


class _Responder(wiring.Component):
    """The switch's own completer: its configuration space, and UR completions.

    It takes whole requests the ingresses send to it (configuration requests to bus 0 and
    requests nobody claims, the latter marked ``ur``) one at a time, keeps the first 16 bytes,
    and answers each with one completion: CplD with the register for a configuration read,
    Cpl for a configuration write (applied with its byte enables before the completion
    leaves), Cpl with status UR for a ``ur`` request. A completion whose requester's bus has
    no port is dropped and counted. Windows are read by the ingresses from ``windows``.

    Members
    -------
    requests : ``In(stream.Signature(_routed_beat(width, n_ports)))``
    completions : ``Out(stream.Signature(_routed_beat(width, n_ports)))``
    unsupported : ``Out(1)``
        A completion could not be routed (pulse).
    """

    def __init__(self, n_ports, width):
        self.n_ports, self.width = n_ports, width
        self.regs = [[Signal(32, init=init, name=f"port{i}_reg{r:02x}")
                      for r, init in zip(WINDOW_REGS, _WINDOW_INIT)] for i in range(n_ports)]
        #: Per port, [(memory base, limit), (prefetchable base, limit)], 64 bits each.
        self.windows = [[(Cat(r[0], r[1]), Cat(r[2], r[3])), (Cat(r[4], r[5]), Cat(r[6], r[7]))]
                        for r in self.regs]
        layout = _routed_beat(width, n_ports)
        super().__init__({
            "requests": In(stream.Signature(layout)),
            "completions": Out(stream.Signature(layout)),
            "unsupported": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, width = self.n_ports, self.width
        req, cpl_out = self.requests, self.completions
        chunk, chunks = _header_chunks(width)
        hdr = Signal(8 * _HEADER_BYTES)   # the request: header, and a CfgWr's data dword
        cpl = Signal(8 * _HEADER_BYTES)   # the completion: header, and a CplD's data dword
        cpl_dws = Signal(range(5))
        beat = Signal(range(chunks + 1))
        ur = Signal()
        cpl_dest = Signal(range(n + 1))

        fmt, typ = hdr_get(hdr, "fmt"), hdr_get(hdr, "type")
        is_cfg, is_write = typ == KIND_FMT_TYPE[Kind.CFGRD0][1], fmt[1]
        target_id = hdr_get(hdr, "cfg_id")
        bus, device = target_id[8:], target_id[3:8]
        reg = hdr_get(hdr, "cfg_reg")
        first_be, last_be = hdr_get(hdr, "first_be"), hdr_get(hdr, "last_be")
        length = hdr_get(hdr, "length")
        requester = hdr_get(hdr, "requester_id")

        # A configuration read's value.
        value = Signal(32)
        with m.Switch(device):
            for i in range(n):
                with m.Case(i), m.Switch(reg):
                    with m.Case(0):
                        m.d.comb += value.eq(VENDOR_ID | SWITCH_DEVICE_ID << 16)
                    for k, r in enumerate(WINDOW_REGS):
                        with m.Case(r):
                            m.d.comb += value.eq(self.regs[i][k])

        # A memory read's remaining bytes (PCIe byte count) and first byte's address.
        skipped_low = Signal(2)      # disabled bytes below the first enabled one
        skipped_high = Signal(2)     # disabled bytes above the last enabled one
        for bit in reversed(range(4)):
            with m.If(first_be[bit]):
                m.d.comb += skipped_low.eq(bit)
        for bit in range(4):
            with m.If((Mux(length == 1, first_be, last_be))[bit]):
                m.d.comb += skipped_high.eq(3 - bit)
        dwords = Mux(length == 0, 1024, length)
        read_bytes = Signal(13)
        with m.If((length == 1) & (first_be == 0)):
            m.d.comb += read_bytes.eq(1)
        with m.Else():
            m.d.comb += read_bytes.eq(dwords * 4 - skipped_low - skipped_high)
        addr_low = Mux(fmt[0], hdr_get(hdr, "addr_lo"), hdr_get(hdr, "addr32"))[:5]

        with m.FSM():
            with m.State("collect"):
                m.d.comb += req.ready.eq(1)
                with m.If(req.valid):
                    for k in range(chunks):
                        with m.If(beat == k):
                            m.d.sync += hdr[8 * chunk * k: 8 * chunk * (k + 1)].eq(
                                req.payload.beat.data[:8 * chunk])
                    with m.If(beat < chunks):
                        m.d.sync += beat.eq(beat + 1)
                    with m.If(req.payload.beat.last):
                        m.d.sync += [ur.eq(req.payload.ur), beat.eq(0)]
                        m.next = "respond"
            with m.State("respond"):
                with_data = is_cfg & ~is_write & ~ur
                m.d.sync += [cpl.eq(0), cpl_dws.eq(Mux(with_data, 4, 3)),
                             cpl[96:].eq(Mux(with_data, value, 0)),
                             cpl_dest.eq(requester[8:])]
                m.d.sync += [
                    *hdr_set(cpl, "fmt", Mux(with_data, KIND_FMT_TYPE[Kind.CPLD][0],
                                             KIND_FMT_TYPE[Kind.CPL][0])),
                    *hdr_set(cpl, "type", C(KIND_FMT_TYPE[Kind.CPL][1], 5)),
                    *hdr_set(cpl, "tc", hdr_get(hdr, "tc")),
                    *hdr_set(cpl, "attr", hdr_get(hdr, "attr")),
                    *hdr_set(cpl, "length", Mux(with_data, 1, 0)),
                    *hdr_set(cpl, "completer_id",
                             Mux(is_cfg & (bus == 0), Cat(C(0, 3), device, C(0, 8)), 0)),
                    *hdr_set(cpl, "status", Mux(ur, int(CplStatus.UR), int(CplStatus.SC))),
                    *hdr_set(cpl, "byte_count", Mux(is_cfg, 4, read_bytes[:12])),
                    *hdr_set(cpl, "cpl_requester_id", requester),
                    *hdr_set(cpl, "cpl_tag", hdr_get(hdr, "tag")),
                    *hdr_set(cpl, "lower_addr", Mux(is_cfg, 0, Cat(skipped_low, addr_low))),
                ]
                with m.If(is_cfg & is_write & ~ur), m.Switch(device):
                    for i in range(n):
                        with m.Case(i), m.Switch(reg):
                            for k, r in enumerate(WINDOW_REGS):
                                with m.Case(r):
                                    self._write(m, self.regs[i][k], hdr[96:], first_be)
                with m.If(requester[8:] <= n):
                    m.next = "send"
                with m.Else():
                    m.d.comb += self.unsupported.eq(1)
                    m.next = "collect"
            with m.State("send"):
                last = beat == chunks - 1
                m.d.comb += [
                    cpl_out.valid.eq(1),
                    cpl_out.payload.dest.eq(cpl_dest), cpl_out.payload.ur.eq(0),
                    cpl_out.payload.beat.last.eq(last),
                    cpl_out.payload.beat.dws.eq(Mux(last, cpl_dws - (chunks - 1) * (chunk // 4),
                                                    chunk // 4)),
                ]
                with m.Switch(beat):
                    for k in range(chunks):
                        with m.Case(k):
                            m.d.comb += cpl_out.payload.beat.data.eq(
                                cpl[8 * chunk * k: 8 * chunk * (k + 1)])
                with m.If(cpl_out.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(last):
                        m.d.sync += beat.eq(0)
                        m.next = "collect"
        return m

    @staticmethod
    def _write(m, register, value, byte_enables):
        for byte in range(4):
            with m.If(byte_enables[byte]):
                m.d.sync += register[8 * byte: 8 * byte + 8].eq(value[8 * byte: 8 * byte + 8])


class Switch(wiring.Component):
    """An ``(n_ports + 1)``-port PCIe-style switch at the transaction layer.

    Routing (``docs/hw/link.md``, "Routing (switch)"):

    * MRd/MWr: to downstream port ``i`` whose memory or prefetchable window (configuration
      registers 0x20-0x3C of bus 0 device ``i``; ``[base, limit]`` inclusive, 64-bit, off
      while ``limit < base``, off after reset) holds the address, the lowest ``i`` if windows
      overlap; otherwise upstream if the request came from a downstream port. A request from
      upstream that no window holds, or one whose window is its own ingress port, is an
      Unsupported Request: an MWr is dropped, an MRd answered with a UR completion.
    * Cpl/CplD: by the requester ID's bus: 0 upstream, ``b`` in ``1..n_ports`` downstream
      port ``b - 1``; anything else (or back out of its own ingress) is dropped.
    * CfgRd0/CfgWr0 (accepted from upstream only): bus 0 device ``i < n_ports`` function 0
      is the switch's own configuration space, answered by the switch (completer ID
      ``00:i.0``); bus ``b`` in ``1..n_ports`` is forwarded to port ``b - 1`` unchanged;
      anything else gets a UR completion.
    * MsgD: upstream (from upstream it is dropped).

    Malformed TLPs (unknown fmt/type, a length field disagreeing with the beats received,
    a beat before the last that is not full or a last beat that is empty, a payload over
    ``params.link_max_payload``, a memory request crossing a 4 KiB boundary, a configuration
    request whose length is not 1) are dropped at the ingress. Dropped and unsupported TLPs
    are counted.

    Timing: each ingress stores a whole TLP before it is routed (store and forward, room for
    two of the longest TLPs), so a TLP leaves from 2 cycles after its last beat came in.
    Each egress then sends whole TLPs, one beat per cycle, picking round-robin among the
    ingresses with a TLP for it; back-to-back TLPs follow with no idle cycle. TLPs from one
    ingress leave in their arrival order (a TLP waiting for a busy egress holds back the
    TLPs behind it in its ingress).

    Parameters
    ----------
    params : HwParams
        ``link_max_payload`` and, unless ``width`` is given, ``link_bytes_per_cycle``.
    n_ports : int
        Downstream ports (1 to 31).
    width : int
        Beat bytes ``W``: a power of two, at least 8.

    Members
    -------
    up_rx : ``In(stream.Signature(tlp_beat(W)))``
        TLPs from the root complex's side.
    up_tx : ``Out(stream.Signature(tlp_beat(W)))``
        TLPs to the root complex's side.
    down_rx : ``In(stream.Signature(tlp_beat(W))).array(n_ports)``
        TLPs from downstream port ``i`` (``down_rx[i]``).
    down_tx : ``Out(stream.Signature(tlp_beat(W))).array(n_ports)``
        TLPs to downstream port ``i``.
    malformed : ``Out(32)``
        Malformed TLPs dropped since reset.
    unsupported : ``Out(32)``
        TLPs nobody claims since reset: Unsupported Requests (dropped writes and messages,
        reads and configuration requests answered with UR) and completions with no route.
    """

    def __init__(self, params, n_ports, *, width=None):
        width = params.link_bytes_per_cycle if width is None else width
        if not 1 <= n_ports <= 31:
            raise ValueError(f"a switch has 1 to 31 downstream ports, not {n_ports}")
        if width < 8 or width & (width - 1):
            raise ValueError(f"the beat width must be a power of two >= 8, not {width}")
        if params.link_max_payload < 4 or params.link_max_payload % 4:
            raise ValueError(f"link_max_payload must be whole dwords, "
                             f"not {params.link_max_payload}")
        self.params, self.n_ports, self.width = params, n_ports, width
        beat = stream.Signature(tlp_beat(width))
        super().__init__({
            "up_rx": In(beat),
            "up_tx": Out(beat),
            "down_rx": In(beat).array(n_ports),
            "down_tx": Out(beat).array(n_ports),
            "malformed": Out(32),
            "unsupported": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        n, width = self.n_ports, self.width
        m.submodules.responder = responder = _Responder(n, width)
        rx_ports = [self.up_rx, *self.down_rx]
        tx_ports = [self.up_tx, *self.down_tx]
        ingresses = []
        for port, rx in enumerate(rx_ports):
            ingress = _Ingress(port, n, width, self.params.link_max_payload, responder.windows)
            m.submodules[f"ingress{port}"] = ingress
            wiring.connect(m, wiring.flipped(rx), ingress.rx)
            ingresses.append(ingress)

        # Crossbar: sources are the ingresses and the responder's completions; egresses the
        # ports and the responder's requests.
        sources = [ingress.out for ingress in ingresses] + [responder.completions]
        sinks = tx_ports + [responder.requests]
        grants = []   # per egress: (selected source, beat taken)
        for e, sink in enumerate(sinks):
            m.submodules[f"arbiter{e}"] = arbiter = RoundRobin(len(sources))
            requests = Cat(source.valid & (source.payload.dest == e) for source in sources)
            busy = Signal(name=f"busy{e}")               # a TLP is under way...
            owner = Signal(range(len(sources)), name=f"owner{e}")   # ...from this source
            select = Mux(busy, owner, arbiter.grant)
            valid = requests.bit_select(select, 1)
            taken = valid & sink.ready
            m.d.comb += [arbiter.requests.eq(Mux(busy, 0, requests)),
                         arbiter.taken.eq(~busy & taken), sink.valid.eq(valid)]
            with m.Switch(select):
                for s, source in enumerate(sources):
                    with m.Case(s):
                        if e == n + 1:
                            m.d.comb += sink.payload.eq(source.payload)
                        else:
                            m.d.comb += sink.payload.eq(source.payload.beat)
            with m.If(taken):
                m.d.sync += [busy.eq(~sink.payload.last if e <= n else
                                     ~sink.payload.beat.last), owner.eq(select)]
            grants.append((select, taken))
        for s, source in enumerate(sources):
            m.d.comb += source.ready.eq(
                Cat((select == s) & taken for select, taken in grants).any())

        m.d.sync += [
            self.malformed.eq(self.malformed + sum(ingress.malformed for ingress in ingresses)),
            self.unsupported.eq(self.unsupported + responder.unsupported
                                + sum(ingress.unsupported for ingress in ingresses)),
        ]
        return m
