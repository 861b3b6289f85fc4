"""The requester half of a link endpoint: the device's AXI link port as PCIe requests.

Everything the device sends to a bus address (DMA reads and writes, completion records,
MSIs, remote semaphore signals) arrives here as AXI bursts (``hw/axi.py``) and leaves as
TLPs (``hw/link/tlp.py``); read data comes back in completions and leaves as AXI R beats.

* **Writes** are posted. Each AW burst and its W beats become MWr TLPs that carry exactly
  the strobed bytes, split on ``link_max_payload``-aligned addresses (so never across a
  4 KiB boundary either); MWr32 when the TLP lies below 4 GiB, else MWr64. A write into the
  MSI page becomes a MsgD instead (vendor-defined type 1 to the root complex, the written
  dwords as payload). One chunk (the part of a burst inside one ``link_max_payload`` block)
  is stored in a buffer slot before its TLP leaves, because the header needs the length;
  two slots, so a chunk fills while the previous one is sent. B is OKAY once the burst's
  last TLP was handed on, SLVERR if the link was down (``dl_up`` low) when one of its TLPs
  was due (that TLP is discarded).
* **Reads** are split on ``link_max_read_request``-aligned addresses into MRds, each with a
  tag of its own (``link_read_tags`` of them, used in order). Completions are matched by tag
  and their data written into the tag's slot of a reorder buffer; R beats leave in AR order
  as soon as their bytes are in (cut-through). A completion status UR answers DECERR, any
  other non-SC status SLVERR, and a read incomplete ``link_completion_timeout`` cycles after
  its MRd left answers SLVERR (``timeouts`` counts them); an error holds for the rest of
  the burst. While the link is down, new reads answer SLVERR at once.

The dword-banked buffer (:class:`DwordBuffer`) and the TLP emitter (:class:`TlpEmitter`)
are shared with the completer (``hw/link/completer.py``), which needs the same two moves:
AXI beats into a buffer and TLPs out of it, and back. See ``docs/hw/link.md``, "Endpoint".
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...sw.fm.system import BusMap
from ...sw.params import DEFAULT
from ..axi import AxiParams, AxiSignature, BOUNDARY_BYTES, Resp
from ..refuse import refuse
from .tlp import (CplStatus, FIELDS, Kind, KIND_FMT_TYPE, MSG_VENDOR_TYPE1, VENDOR_ID, hdr_get,
                  hdr_set, tlp_beat)
from .tlp_stream import TlpMerge

__all__ = ["DwordBuffer", "TlpEmitter", "emit_layout", "Requester", "WRITE_SLOTS",
           "B_QUEUE", "link_axi_params", "check_widths", "field_const"]

#: Buffer slots of ``link_max_payload`` bytes between AXI writes and MWr TLPs.
WRITE_SLOTS = 2
#: Write bursts accepted whose B has not been taken yet (AW stalls beyond).
B_QUEUE = 8
#: Header bytes the emitter can hold (a 4DW header).
_HDR_BYTES = 16


def _log2(x):
    return x.bit_length() - 1


def _pow2(x):
    return x > 0 and x & (x - 1) == 0


def link_axi_params(params, id_width=4):
    """The device's link port (``hw/device/top.py``): 64-bit bus addresses, DRAM-wide beats,
    ``id_width`` ID bits (the link arbiter's: 1 + 3 master-index bits)."""
    return AxiParams(addr_width=64, data_bytes=params.dram_bytes_per_cycle, id_width=id_width)


def check_widths(params, width, beat_bytes):
    """The problem with these widths, or None: ``W`` (``width``) a power of two from 8 up to
    the AXI beat, the beat a power of two, TLP size limits powers of two between the beat
    and 4 KiB."""
    if not _pow2(beat_bytes) or beat_bytes < 8:
        return f"the AXI beat must be a power of two >= 8 bytes, not {beat_bytes}"
    if not _pow2(width) or not 8 <= width <= beat_bytes:
        return f"W must be a power of two from 8 to the AXI beat ({beat_bytes}), not {width}"
    for name in ("link_max_payload", "link_max_read_request"):
        value = getattr(params, name)
        if not _pow2(value) or not beat_bytes <= value <= BOUNDARY_BYTES:
            return f"{name} must be a power of two from {beat_bytes} to 4096, not {value}"
    return None


# -- shared building blocks ----------------------------------------------------------------------

class DwordBuffer(Elaboratable):
    """A buffer of ``rows`` rows of ``row_bytes`` bytes, one memory per dword (bank), so
    that one side moves whole rows (AXI beats) and the other ``window_dws`` consecutive
    dwords starting at any dword address (TLP beats, whose payload sits at any dword offset
    after a 3- or 4-dword header). No wide shifter: each bank computes its own row, and one
    rotation mux per window dword picks its bank.

    ``window_writes`` chooses the direction: False = rows in, windows out (AXI -> TLP);
    True = windows in, rows out (TLP -> AXI). Reads have one cycle of latency; with ``en``
    low a read port holds its data (so a stalled output keeps its beat). Reads do not see a
    write of the same cycle. Dword address ``a`` is row ``a // banks``, bank ``a % banks``;
    addresses wrap modulo the buffer (``rows`` is a power of two).

    Attributes
    ----------
    row_addr, row_en : in
    row_data : in (row writes) or out (row reads), ``8 * row_bytes`` bits
    row_mask : in, one bit per bank: which banks a row write writes
    win_addr, win_en : in (dword address)
    win_data : in (window writes) or out (window reads), ``32 * window_dws`` bits
    win_mask : in, one bit per window dword: which dwords a window write writes
    """

    def __init__(self, *, row_bytes, rows, window_dws, window_writes):
        self.banks = row_bytes // 4
        if not (_pow2(self.banks) and self.banks >= 2 and _pow2(rows)
                and 1 <= window_dws <= self.banks):
            raise ValueError("DwordBuffer: banks and rows powers of two, window within a row")
        self.rows, self.window_dws, self.window_writes = rows, window_dws, window_writes
        self.row_addr = Signal(range(rows))
        self.row_en = Signal()
        self.row_data = Signal(32 * self.banks)
        self.row_mask = Signal(self.banks)
        self.win_addr = Signal(range(rows * self.banks))
        self.win_en = Signal()
        self.win_data = Signal(32 * window_dws)
        self.win_mask = Signal(window_dws)

    def elaborate(self, platform):
        m = Module()
        nb, wd = self.banks, self.window_dws
        rot = self.win_addr[:_log2(nb)]
        row0 = self.win_addr[_log2(nb):]
        rot_q = Signal.like(rot)
        bank_data = []
        for k in range(nb):
            m.submodules[f"bank{k}"] = mem = Memory(shape=32, depth=self.rows, init=[])
            wp, rp = mem.write_port(), mem.read_port()
            # the row bank k holds of the window starting at win_addr
            win_row = Signal(range(self.rows), name=f"win_row{k}")
            m.d.comb += win_row.eq(row0 + (rot > k) if k < nb - 1 else row0)
            if self.window_writes:
                m.d.comb += wp.addr.eq(win_row)
                with m.Switch(rot):
                    for r in range(nb):
                        p = (k - r) % nb     # the window dword that lands in bank k
                        if p < wd:
                            with m.Case(r):
                                m.d.comb += [wp.data.eq(self.win_data.word_select(p, 32)),
                                             wp.en.eq(self.win_en & self.win_mask[p])]
                m.d.comb += [rp.addr.eq(self.row_addr), rp.en.eq(self.row_en),
                             self.row_data.word_select(k, 32).eq(rp.data)]
            else:
                m.d.comb += [wp.addr.eq(self.row_addr),
                             wp.data.eq(self.row_data.word_select(k, 32)),
                             wp.en.eq(self.row_en & self.row_mask[k]),
                             rp.addr.eq(win_row), rp.en.eq(self.win_en)]
                bank_data.append(rp.data)
        if not self.window_writes:
            with m.If(self.win_en):
                m.d.sync += rot_q.eq(rot)
            with m.Switch(rot_q):
                for r in range(nb):
                    with m.Case(r):
                        m.d.comb += self.win_data.eq(
                            Cat(bank_data[(r + i) % nb] for i in range(wd)))
        return m


def emit_layout(addr_width, max_dws, user_width):
    """What :class:`TlpEmitter` sends: a header (``hdr``, 16 bytes in wire order; ``hdr4``:
    4 dwords, else 3) and ``dws`` payload dwords from buffer dword address ``addr``.
    ``skip``: send nothing (the descriptor only keeps its place in order); ``frees``: the
    descriptor holds a buffer slot, reported on ``freed`` once read; ``user``: returned on
    ``done_user``."""
    return data.StructLayout({"hdr": 8 * _HDR_BYTES, "hdr4": 1, "dws": range(max_dws + 1),
                              "addr": addr_width, "skip": 1, "frees": 1,
                              "user": max(user_width, 1)})


class TlpEmitter(wiring.Component):
    """Sends TLPs (header + payload from a :class:`DwordBuffer` with window reads), one beat
    per cycle, back to back.

    Two stages: the first reads the buffer window of the next beat (and picks its header
    bytes), the second holds the beat for ``tlp``. A descriptor is taken in the cycle the
    previous one issues its last read, so TLPs follow without idle cycles.

    Members
    -------
    desc : ``In(stream.Signature(emit_layout(...)))``
    tlp : ``Out(stream.Signature(tlp_beat(W)))``
    freed : ``Out(1)``
        Pulse: the last buffer read of a descriptor with ``frees`` was issued (its slot may be
        refilled; the beat read is held in the read port).
    done : ``Out(1)``, done_user : ``Out(user_width)``
        Pulse, in descriptor order: a TLP's last beat was taken (or a ``skip`` descriptor
        passed the output stage).
    """

    def __init__(self, buffer, width, *, max_dws, user_width=1):
        self.buffer, self.width = buffer, width
        self.max_dws = max_dws
        self.layout = emit_layout(len(buffer.win_addr), max_dws, user_width)
        super().__init__({
            "desc": In(stream.Signature(self.layout)),
            "tlp": Out(stream.Signature(tlp_beat(width))),
            "freed": Out(1),
            "done": Out(1),
            "done_user": Out(max(user_width, 1)),
        })

    def elaborate(self, platform):
        m = Module()
        W, buf = self.width, self.buffer
        W4 = W // 4
        max_beats = -(-(4 + self.max_dws) // W4)
        hdr_beats = max(1, _HDR_BYTES // W)       # beats that can hold header bytes
        desc = self.desc.payload

        a_active = Signal()
        a_t = Signal(range(max_beats + 1))
        a_n = Signal(range(max_beats + 1))
        a_addr = Signal.like(buf.win_addr)
        a_hdr = Signal(8 * max(W, _HDR_BYTES))    # the header, padded to whole beats
        a_hdws = Signal(3)
        a_lastdws = Signal(range(W4 + 1))
        a_user = Signal.like(self.done_user)
        a_skip, a_frees = Signal(), Signal()

        o_valid, o_last, o_skip = Signal(), Signal(), Signal()
        o_hdr = Signal(8 * W)
        o_mask = Signal(W4)
        o_dws = Signal(range(W4 + 1))
        o_user = Signal.like(self.done_user)

        take = o_valid & (o_skip | self.tlp.ready)
        adv = ~o_valid | take
        issue = adv & a_active
        last_issue = issue & (a_t == a_n - 1)
        m.d.comb += [self.desc.ready.eq(adv & (~a_active | last_issue)),
                     buf.win_addr.eq(a_addr), buf.win_en.eq(adv),
                     self.freed.eq(last_issue & a_frees),
                     self.done.eq(take & o_last), self.done_user.eq(o_user)]

        with m.If(issue):
            m.d.sync += [o_valid.eq(1), o_last.eq(a_t == a_n - 1),
                         o_dws.eq(Mux(a_t == a_n - 1, a_lastdws, W4)),
                         o_user.eq(a_user), o_skip.eq(a_skip),
                         a_t.eq(a_t + 1), a_addr.eq(a_addr + W4), o_mask.eq(0)]
            with m.Switch(a_t):
                for t in range(hdr_beats):
                    with m.Case(t):
                        m.d.sync += [o_hdr.eq(a_hdr.word_select(t, 8 * W)),
                                     o_mask.eq(Cat(a_hdws > t * W4 + i for i in range(W4)))]
            with m.If(a_t == a_n - 1):
                m.d.sync += a_active.eq(0)
        with m.Elif(adv):
            m.d.sync += o_valid.eq(0)

        with m.If(self.desc.valid & self.desc.ready):
            hdws = Mux(desc.hdr4, 4, 3)
            total = Signal(range(4 + self.max_dws + 1))
            m.d.comb += total.eq(hdws + desc.dws)
            m.d.sync += [a_active.eq(1), a_t.eq(0),
                         a_n.eq(Mux(desc.skip, 1, (total + W4 - 1) >> _log2(W4))),
                         a_lastdws.eq(((total - 1) & (W4 - 1)) + 1),
                         a_addr.eq(desc.addr - hdws), a_hdr.eq(desc.hdr), a_hdws.eq(hdws),
                         a_user.eq(desc.user), a_skip.eq(desc.skip), a_frees.eq(desc.frees)]

        m.d.comb += [
            self.tlp.valid.eq(o_valid & ~o_skip),
            self.tlp.payload.data.eq(Cat(
                Mux(o_mask[i], o_hdr.word_select(i, 32), buf.win_data.word_select(i, 32))
                for i in range(W4))),
            self.tlp.payload.dws.eq(o_dws),
            self.tlp.payload.last.eq(o_last),
        ]
        return m


class _PerSlot:
    """One register per slot, read and written at a computed slot index through explicit
    multiplexers and decoders (Array proxies multiply out inside larger expressions)."""

    def __init__(self, n, shape, name):
        self.name = name
        self.regs = [Signal(shape, name=f"{name}{s}") for s in range(n)]

    def read(self, m, index, tag):
        """The register at ``index`` (call outside any ``If``: the mux is combinational)."""
        out = Signal.like(self.regs[0], name=f"{self.name}_{tag}")
        with m.Switch(index):
            for s, reg in enumerate(self.regs):
                with m.Case(s):
                    m.d.comb += out.eq(reg)
        return out

    def write(self, m, index, value):
        with m.Switch(index):
            for s, reg in enumerate(self.regs):
                with m.Case(s):
                    m.d.sync += reg.eq(value)


def _set(m, hdr, name, value):
    m.d.comb += hdr_set(hdr, name, value)


def field_const(**fields):
    """Header fields with constant values as one integer (byte ``i`` at bits ``8i``), to OR
    into a header. (A constant assigned to a slice on its own becomes an ``always @*`` that
    reads nothing, which Verilator never runs: such bits would stay 0.)"""
    value = 0
    for name, v in fields.items():
        shift = sum(msb - lsb + 1 for _, msb, lsb in FIELDS[name])
        for byte, msb, lsb in FIELDS[name]:
            n = msb - lsb + 1
            shift -= n
            value |= (v >> shift & ((1 << n) - 1)) << (8 * byte + lsb)
    return value


def _kind(m, hdr, kind):
    fmt, typ = KIND_FMT_TYPE[kind]
    _set(m, hdr, "fmt", Const(fmt, 3))
    _set(m, hdr, "type", Const(typ, 5))


def _lowest(m, bits, name):
    """Index of the lowest set bit of ``bits`` (0 if none)."""
    out = Signal(range(max(len(bits), 2)), name=name)
    for i in reversed(range(len(bits))):
        with m.If(bits[i]):
            m.d.comb += out.eq(i)
    return out


def _highest(m, bits, name):
    """Index of the highest set bit of ``bits`` (0 if none)."""
    out = Signal(range(max(len(bits), 2)), name=name)
    for i in range(len(bits)):
        with m.If(bits[i]):
            m.d.comb += out.eq(i)
    return out


# -- the requester -------------------------------------------------------------------------------

class Requester(wiring.Component):
    """AXI slave (the device's link port) to TLPs, and completions back to AXI R.

    Parameters
    ----------
    params : HwParams
        ``link_bytes_per_cycle`` (``W``), ``link_max_payload``, ``link_max_read_request``,
        ``link_read_tags`` (a power of two from 2 to 256), ``link_completion_timeout``
        (at least twice the tags).
    axi_params : AxiParams
        Of the ``axi`` port (default :func:`link_axi_params`).
    msi_base : int
        Bus address of the 4 KiB MSI page: writes there leave as MsgD.

    Members
    -------
    axi : ``In(AxiSignature(axi_params))``
        The link port. Writes must strobe one contiguous run of bytes per burst (leading and
        trailing beats may have no strobes at all; a burst without any strobe sends nothing
        and answers OKAY). R and B come back in request order (whatever the IDs).
    tlp_tx : ``Out(stream.Signature(tlp_beat(W)))``
        MWr, MsgD and MRd TLPs (writes and reads merged round robin, whole TLPs).
    cpl_rx : ``In(stream.Signature(tlp_beat(W)))``
        Completions for this requester (always ready).
    requester_id : ``In(16)``
    dl_up : ``In(1)``
        The link can carry requests (and bus mastering is enabled); low: writes are
        discarded (B SLVERR) and new reads answer SLVERR.
    timeouts : ``Out(32)``
        Reads failed by the completion timeout.
    dropped_completions : ``Out(32)``
        Completions that matched no outstanding read (late, unknown tag, inconsistent).
    discarded : ``Out(32)``
        Write TLPs discarded because the link was down.

    Timing: a W beat per cycle into a free slot; TLPs leave back to back (a stream of
    16-beat bursts keeps ``tlp_tx`` busy every cycle). At the earliest, an MRd's first beat
    is on ``tlp_tx`` 3 cycles after its AR, a chunk's MWr 3 cycles after the chunk's last W
    beat, B 1 cycle after the burst's last TLP beat was taken, and an R beat 2 cycles after
    the completion beat that brought its last byte.
    """

    def __init__(self, params=DEFAULT, *, axi_params=None, msi_base=BusMap().msi_base):
        self.params = params
        self.axi_params = axi_params or link_axi_params(params)
        self.width = W = params.link_bytes_per_cycle
        D = self.axi_params.data_bytes
        problem = check_widths(params, W, D)
        tags = params.link_read_tags
        if problem is None and (not _pow2(tags) or not 2 <= tags <= 256):
            problem = f"link_read_tags must be a power of two from 2 to 256, not {tags}"
        if problem is None and msi_base % BOUNDARY_BYTES:
            problem = f"msi_base must be 4 KiB aligned, not {msi_base:#x}"
        if problem is None and params.link_completion_timeout < 2 * tags:
            problem = "link_completion_timeout must be at least twice link_read_tags"
        if problem:
            refuse(self, ValueError(problem))
        self.msi_base = msi_base
        super().__init__({
            "axi": In(AxiSignature(self.axi_params)),
            "tlp_tx": Out(stream.Signature(tlp_beat(W))),
            "cpl_rx": In(stream.Signature(tlp_beat(W))),
            "requester_id": In(16),
            "dl_up": In(1),
            "timeouts": Out(32),
            "dropped_completions": Out(32),
            "discarded": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.merge = merge = TlpMerge(self.width, 2)
        wiring.connect(m, wiring.flipped(self.tlp_tx), merge.o)
        self._writes(m, merge.i0)
        self._reads(m, merge.i1)
        return m

    # -- writes: AW/W -> slots -> MWr / MsgD -----------------------------------------------------

    def _writes(self, m, tlp_out):
        p, axi = self.params, self.axi
        D, W = self.axi_params.data_bytes, self.width
        MPS = p.link_max_payload
        lg_d, lg_mps = _log2(D), _log2(MPS)
        slot_rows = MPS // D
        id_width = self.axi_params.id_width

        m.submodules.wbuf = buf = DwordBuffer(row_bytes=D, rows=WRITE_SLOTS * slot_rows,
                                              window_dws=W // 4, window_writes=False)
        m.submodules.wemit = emit = TlpEmitter(buf, W, max_dws=MPS // 4,
                                               user_width=2 + id_width)
        wiring.connect(m, emit.tlp, tlp_out)

        chunk = data.StructLayout({
            "block": 64 - lg_mps,       # address of the max-payload block
            "first": lg_mps, "last": lg_mps,   # first and last strobed byte in the block
            "any": 1, "slot": range(WRITE_SLOTS), "burst_last": 1, "id": id_width})
        # (unbuffered: holds exactly `depth`, which the slot count relies on)
        m.submodules.chunks = chunks = SyncFIFO(width=chunk.size, depth=WRITE_SLOTS)

        # AW/W: the burst being received, the chunk being filled
        active = Signal()
        addr = Signal(64)
        left = Signal(8)                 # beats after this one
        burst_id = Signal(id_width)
        fill = Signal(range(WRITE_SLOTS))
        used = Signal(range(WRITE_SLOTS + 1))
        ch_any = Signal()
        ch_first, ch_last = Signal(lg_mps), Signal(lg_mps)
        b_out = Signal(range(B_QUEUE + 1))

        w = axi.w
        strb = w.payload.strb
        row_in_block = addr[lg_d:lg_mps]
        beat_byte = Cat(Const(0, lg_d), row_in_block)
        lo, hi = _lowest(m, strb, "strb_lo"), _highest(m, strb, "strb_hi")
        has = strb != 0
        chunk_end = (row_in_block == slot_rows - 1) | (left == 0)
        w_take = w.valid & w.ready
        m.d.comb += [
            w.ready.eq(active & (used < WRITE_SLOTS) & chunks.w_rdy),
            buf.row_addr.eq(Cat(row_in_block, fill)),
            buf.row_data.eq(w.payload.data & Cat(strb[i].replicate(8) for i in range(D))),
            buf.row_mask.eq(-1), buf.row_en.eq(w_take),
        ]
        new = data.View(chunk, chunks.w_data)
        m.d.comb += [
            new.block.eq(addr[lg_mps:]),
            new.first.eq(Mux(ch_any, ch_first, beat_byte + lo)),
            new.last.eq(Mux(has, beat_byte + hi, ch_last)),
            new.any.eq(ch_any | has), new.slot.eq(fill), new.burst_last.eq(left == 0),
            new.id.eq(burst_id),
            chunks.w_en.eq(w_take & chunk_end),
        ]
        with m.If(w_take):
            m.d.sync += [addr.eq(addr + D), left.eq(left - 1)]
            with m.If(left == 0):
                m.d.sync += active.eq(0)
            with m.If(has):
                m.d.sync += ch_last.eq(beat_byte + hi)
                with m.If(~ch_any):
                    m.d.sync += [ch_first.eq(beat_byte + lo), ch_any.eq(1)]
            with m.If(chunk_end):
                m.d.sync += [fill.eq(fill + 1), ch_any.eq(0)]
        m.d.sync += used.eq(used + (w_take & chunk_end) - emit.freed)

        aw_take = axi.aw.valid & axi.aw.ready
        m.d.comb += axi.aw.ready.eq((~active | (w_take & (left == 0))) & (b_out < B_QUEUE))
        with m.If(aw_take):
            m.d.sync += [active.eq(1), addr.eq(Cat(Const(0, lg_d), axi.aw.payload.addr[lg_d:])),
                         left.eq(axi.aw.payload.len), burst_id.eq(axi.aw.payload.id)]

        # chunk -> TLP header
        c = data.View(chunk, chunks.r_data)
        first_dw, last_dw = c.first[2:], c.last[2:]
        ndws = Signal(range(MPS // 4 + 1))
        m.d.comb += ndws.eq(last_dw - first_dw + 1)
        msi = c.block[12 - lg_mps:] == self.msi_base >> 12
        high = c.block[32 - lg_mps:] != 0
        first_be, last_be = Signal(4), Signal(4)
        fbe = Const(0xF, 4) << c.first[:2]
        lbe = Const(0xF, 4) >> (~c.last[:2])[:2]        # 3 - last[1:0]
        m.d.comb += [first_be.eq(Mux(ndws == 1, fbe & lbe, fbe)),
                     last_be.eq(Mux(ndws == 1, 0, lbe))]
        hdr = Signal(8 * _HDR_BYTES)
        _set(m, hdr, "length", ndws)
        _set(m, hdr, "requester_id", self.requester_id)
        with m.If(msi):
            _kind(m, hdr, Kind.MSGD)
            _set(m, hdr, "msg_code", Const(MSG_VENDOR_TYPE1, 8))
            _set(m, hdr, "msg_vendor", Const(VENDOR_ID, 16))
        with m.Else():
            _set(m, hdr, "fmt", Mux(high, Const(KIND_FMT_TYPE[Kind.MWR64][0], 3),
                                    Const(KIND_FMT_TYPE[Kind.MWR32][0], 3)))
            _set(m, hdr, "first_be", first_be)
            _set(m, hdr, "last_be", last_be)
            tlp_addr = Cat(first_dw, c.block)     # address bits [63:2]
            with m.If(high):
                _set(m, hdr, "addr_hi", tlp_addr[30:])
                _set(m, hdr, "addr_lo", tlp_addr[:30])
            with m.Else():
                _set(m, hdr, "addr32", tlp_addr[:30])

        err = c.any & ~self.dl_up
        d = emit.desc.payload
        m.d.comb += [
            emit.desc.valid.eq(chunks.r_rdy), chunks.r_en.eq(emit.desc.ready),
            d.hdr.eq(hdr), d.hdr4.eq(msi | high), d.dws.eq(ndws),
            d.addr.eq(Cat(first_dw, c.slot)), d.skip.eq(~c.any | ~self.dl_up), d.frees.eq(1),
            d.user.eq(Cat(c.burst_last, err, c.id)),
        ]
        with m.If(emit.desc.valid & emit.desc.ready & err):
            m.d.sync += self.discarded.eq(self.discarded + 1)

        # B: once the burst's last chunk is done; SLVERR if any of its TLPs was discarded
        m.submodules.bq = bq = SyncFIFO(width=2 + id_width, depth=B_QUEUE)
        b_err = Signal()
        u_last, u_err, u_id = emit.done_user[0], emit.done_user[1], emit.done_user[2:]
        with m.If(emit.done):
            with m.If(u_last):
                m.d.sync += b_err.eq(0)
            with m.Else():
                m.d.sync += b_err.eq(b_err | u_err)
        m.d.comb += [bq.w_en.eq(emit.done & u_last),
                     bq.w_data.eq(Cat(Mux(b_err | u_err, Resp.SLVERR, Resp.OKAY), u_id)),
                     axi.b.valid.eq(bq.r_rdy), axi.b.payload.resp.eq(bq.r_data[:2]),
                     axi.b.payload.id.eq(bq.r_data[2:]), bq.r_en.eq(axi.b.ready)]
        m.d.sync += b_out.eq(b_out + aw_take - (axi.b.valid & axi.b.ready))

    # -- reads: AR -> MRd (tags), CplD -> reorder buffer -> R -----------------------------------

    def _reads(self, m, tlp_out):
        p, axi = self.params, self.axi
        D, W = self.axi_params.data_bytes, self.width
        W4, nb = W // 4, D // 4
        MRRS = p.link_max_read_request
        lg_d, lg_rr = _log2(D), _log2(MRRS)
        rows = MRRS // D                       # rows (beats) per tag
        T = p.link_read_tags
        sb = _log2(T)
        gb = 8 - sb                            # tag bits above the slot: a generation
        id_width = self.axi_params.id_width
        timeout = p.link_completion_timeout
        tbits = timeout.bit_length() + 1

        m.submodules.rbuf = buf = DwordBuffer(row_bytes=D, rows=T * rows, window_dws=W4,
                                              window_writes=True)

        # per tag (slot): the request and its progress
        beats = _PerSlot(T, range(rows + 1), "beats")
        last = _PerSlot(T, 1, "last")
        ids = _PerSlot(T, id_width, "id")
        gen = _PerSlot(T, gb, "gen")
        rcv = _PerSlot(T, range(MRRS // 4 + 1), "rcv")    # dwords received, in order
        err = _PerSlot(T, 2, "err")                        # an AXI resp, 0 while fine
        sent = _PerSlot(T, 1, "sent")
        stamp = _PerSlot(T, tbits, "stamp")
        complete = _PerSlot(T, 1, "complete")              # all data in, or failed
        for s in range(T):
            m.d.comb += complete.regs[s].eq((err.regs[s] != 0)
                                            | (rcv.regs[s] == beats.regs[s] * nb))

        alloc, head, scan = Signal(sb + 1), Signal(sb + 1), Signal(sb + 1)
        full = (alloc[:sb] == head[:sb]) & (alloc[sb] != head[sb])
        now = Signal(tbits)
        m.d.sync += now.eq(now + 1)

        # AR -> requests of at most MRRS bytes, each on a slot
        mrd = data.StructLayout({"slot": sb, "tag": 8, "addr": 64,
                                 "dws": range(MRRS // 4 + 1)})
        m.submodules.mrds = mrds = SyncFIFOBuffered(width=mrd.size, depth=2)
        ar_active = Signal()
        ar_addr = Signal(64)
        ar_left = Signal(9)
        ar_id = Signal(id_width)
        room = rows - ar_addr[lg_d:lg_rr]
        sub = Signal(range(rows + 1))
        final = ar_left <= room
        m.d.comb += sub.eq(Mux(final, ar_left, room))
        split = ar_active & ~full & mrds.w_rdy
        s_new = alloc[:sb]
        new_gen = (gen.read(m, s_new, "new") + 1)[:gb]
        m.d.comb += axi.ar.ready.eq(~ar_active)
        with m.If(axi.ar.valid & axi.ar.ready):
            m.d.sync += [ar_active.eq(1),
                         ar_addr.eq(Cat(Const(0, lg_d), axi.ar.payload.addr[lg_d:])),
                         ar_left.eq(axi.ar.payload.len + 1), ar_id.eq(axi.ar.payload.id)]
        q = data.View(mrd, mrds.w_data)
        m.d.comb += [q.slot.eq(s_new), q.tag.eq(Cat(s_new, new_gen)), q.addr.eq(ar_addr),
                     q.dws.eq(sub * nb), mrds.w_en.eq(split & self.dl_up)]
        with m.If(split):
            for regs, value in ((beats, sub), (last, final), (ids, ar_id), (gen, new_gen),
                                (rcv, 0), (sent, 0), (err, Mux(self.dl_up, 0, Resp.SLVERR))):
                regs.write(m, s_new, value)
            m.d.sync += [alloc.eq(alloc + 1), ar_addr.eq(ar_addr + sub * D),
                         ar_left.eq(ar_left - sub)]
            with m.If(final):
                m.d.sync += ar_active.eq(0)

        # MRd TLPs
        r = data.View(mrd, mrds.r_data)
        hdr = Signal(8 * _HDR_BYTES)
        high = r.addr[32:] != 0
        _set(m, hdr, "fmt", Mux(high, Const(KIND_FMT_TYPE[Kind.MRD64][0], 3),
                                Const(KIND_FMT_TYPE[Kind.MRD32][0], 3)))
        _set(m, hdr, "length", r.dws[:10])
        _set(m, hdr, "requester_id", self.requester_id)
        _set(m, hdr, "tag", r.tag)
        _set(m, hdr, "last_be", Mux(r.dws > 1, 0xF, 0))
        with m.If(high):
            _set(m, hdr, "addr_hi", r.addr[32:])
            _set(m, hdr, "addr_lo", r.addr[2:32])
        with m.Else():
            _set(m, hdr, "addr32", r.addr[2:32])
        n_hdr_beats = max(1, _HDR_BYTES // W)
        hbeat = Signal(range(n_hdr_beats + 1))
        hbytes = Mux(high, 16, 12)
        hlast = (hbeat + 1) * W >= hbytes
        full = Signal(8 * max(_HDR_BYTES, n_hdr_beats * W))
        m.d.comb += full.eq(hdr | field_const(first_be=0xF))
        padded = full
        m.d.comb += [tlp_out.valid.eq(mrds.r_rdy),
                     tlp_out.payload.data.eq(padded.word_select(hbeat, 8 * W)),
                     tlp_out.payload.dws.eq(Mux(hlast, (hbytes - hbeat * W) >> 2, W4)),
                     tlp_out.payload.last.eq(hlast),
                     mrds.r_en.eq(mrds.r_rdy & tlp_out.ready & hlast)]
        with m.If(tlp_out.valid & tlp_out.ready):
            m.d.sync += hbeat.eq(Mux(hlast, 0, hbeat + 1))
            with m.If(hlast):
                sent.write(m, r.slot, 1)
                stamp.write(m, r.slot, now)

        # completions -> reorder buffer
        cpl = self.cpl_rx
        m.d.comb += cpl.ready.eq(1)
        hb = 11 // W                           # the beat that ends a 3DW header
        c_tdw = Signal(11)                     # TLP dword index of this beat's first dword
        c_hdr = Signal(96)
        view = Signal(96)
        for b in range(12):
            cur = cpl.payload.data.word_select(b % W, 8)
            m.d.comb += view.word_select(b, 8).eq(
                Mux(c_tdw == (b // W) * W4, cur, c_hdr.word_select(b, 8)))
        at_hb = c_tdw == hb * W4
        with m.If(cpl.valid):
            m.d.sync += [c_tdw.eq(Mux(cpl.payload.last, 0, c_tdw + W4)), c_hdr.eq(view)]

        fmt, typ = hdr_get(view, "fmt"), hdr_get(view, "type")
        tag = hdr_get(view, "cpl_tag")
        h_slot = tag[:sb]
        status = hdr_get(view, "status")
        bc = Signal(13)
        length = Signal(11)
        raw_bc, raw_length = hdr_get(view, "byte_count"), hdr_get(view, "length")
        m.d.comb += [bc.eq(Mux(raw_bc == 0, 4096, raw_bc)),
                     length.eq(Mux(raw_length == 0, 1024, raw_length))]
        is_cpl = ((fmt == KIND_FMT_TYPE[Kind.CPL][0]) | (fmt == KIND_FMT_TYPE[Kind.CPLD][0])) \
            & (typ == KIND_FMT_TYPE[Kind.CPL][1])
        match = Signal()
        m.d.comb += match.eq(is_cpl & (tag[sb:] == gen.read(m, h_slot, "cpl"))
                             & sent.read(m, h_slot, "cpl") & ~complete.read(m, h_slot, "cpl"))
        req_bytes = Signal(range(MRRS + 1))
        off = Signal(14)                       # bytes before this completion's data
        m.d.comb += [req_bytes.eq(beats.read(m, h_slot, "cpl") * D), off.eq(req_bytes - bc)]
        h_rcv = rcv.read(m, h_slot, "cpl")
        data_ok = Signal()
        m.d.comb += data_ok.eq((status == CplStatus.SC) & fmt[1] & (bc <= req_bytes)
                               & (off[:2] == 0) & (off[2:] == h_rcv)
                               & (length * 4 <= bc))
        header_now = cpl.valid & at_hb
        with m.If(header_now):
            with m.If(match & (status != CplStatus.SC)):
                err.write(m, h_slot, Mux(status == CplStatus.UR, Resp.DECERR, Resp.SLVERR))
            with m.If(~match | ((status == CplStatus.SC) & ~data_ok)):
                m.d.sync += self.dropped_completions.eq(self.dropped_completions + 1)

        c_ok = Signal()
        c_slot = Signal.like(h_slot)
        c_off = Signal(lg_rr - 2)                   # dwords before the payload in the slot
        c_end = Signal(11)                          # TLP dword index after the payload
        ok_now = Mux(at_hb, match & data_ok, c_ok)
        slot_now = Mux(at_hb, h_slot, c_slot)
        off_now = Mux(at_hb, off[2:lg_rr], c_off)
        end_now = Mux(at_hb, 3 + length, c_end)
        with m.If(cpl.valid):
            m.d.sync += c_ok.eq(ok_now & ~cpl.payload.last)
            with m.If(at_hb):
                m.d.sync += [c_slot.eq(h_slot), c_off.eq(off[2:lg_rr]), c_end.eq(3 + length)]
        mask = Cat((c_tdw + i >= 3) & (c_tdw + i < end_now) for i in range(W4))
        m.d.comb += [buf.win_addr.eq(Cat(off_now, slot_now) - 3 + c_tdw),
                     buf.win_data.eq(cpl.payload.data), buf.win_mask.eq(mask),
                     buf.win_en.eq(cpl.valid & ok_now)]
        upto = Mux(c_tdw + W4 < end_now, c_tdw + W4, end_now)
        with m.If(cpl.valid & ok_now & (mask != 0)):
            rcv.write(m, slot_now, off_now + upto - 3)

        # completion timeout: the oldest incomplete request (deadlines are in slot order)
        s_scan = scan[:sb]
        scan_done, scan_sent = complete.read(m, s_scan, "scan"), sent.read(m, s_scan, "scan")
        scan_stamp = stamp.read(m, s_scan, "scan")
        with m.If(scan != alloc):
            with m.If(scan_done):
                m.d.sync += scan.eq(scan + 1)
            with m.Elif(scan_sent & ((now - scan_stamp)[:tbits] >= timeout)):
                err.write(m, s_scan, Resp.SLVERR)
                m.d.sync += self.timeouts.eq(self.timeouts + 1)

        # R beats in order, as soon as their data is in (or the request failed)
        h = head[:sb]
        r_b = Signal(range(rows))
        o_valid, o_last = Signal(), Signal()
        o_resp = Signal(2)
        o_id = Signal(id_width)
        sticky = Signal(2)                     # the burst's first error, for its later beats
        h_err, h_last = err.read(m, h, "head"), last.read(m, h, "head")
        h_id = ids.read(m, h, "head")
        avail = (head != alloc) & ((h_err != 0) | (rcv.read(m, h, "head") >= (r_b + 1) * nb))
        adv = ~o_valid | axi.r.ready
        resp_now = Mux(h_err != 0, h_err, sticky)
        last_in_slot = r_b == beats.read(m, h, "head") - 1
        m.d.comb += [buf.row_addr.eq(Cat(r_b, h)), buf.row_en.eq(adv)]
        with m.If(adv & avail):
            m.d.sync += [o_valid.eq(1), o_resp.eq(resp_now), o_id.eq(h_id),
                         o_last.eq(h_last & last_in_slot),
                         sticky.eq(Mux(h_last & last_in_slot, 0, resp_now)),
                         r_b.eq(Mux(last_in_slot, 0, r_b + 1)),
                         head.eq(head + last_in_slot)]
        with m.Elif(adv):
            m.d.sync += o_valid.eq(0)
        m.d.comb += [axi.r.valid.eq(o_valid),
                     axi.r.payload.data.eq(Mux(o_resp != 0, 0, buf.row_data)),
                     axi.r.payload.resp.eq(o_resp), axi.r.payload.last.eq(o_last),
                     axi.r.payload.id.eq(o_id)]
