"""The completer half of a link endpoint: requests from the link, served by local targets.

Inbound requests (MRd, MWr, CfgRd0, CfgWr0) are parsed one at a time, in arrival order, and
steered by address:

* a **memory window** (a device's BAR2, or the root complex's host memory at a fixed base)
  is an AXI master port ``mem``, addresses relative to the window: an MWr's payload is
  stored in a slot (two slots of twice ``link_max_payload``), then written as one AXI burst
  with strobes from the byte enables; an MRd is read in ``link_max_payload``-aligned
  chunks, one AXI burst each (several outstanding), and each chunk answered by one CplD (so
  completions end on 64-byte RCB boundaries and never carry more than the max payload) --
  or, if the AXI read failed, one Cpl with status CA, and nothing more for that request;
* the **register window** (a device's BAR0) is the ``mmio`` stream of the command
  processor's register block: 8-byte aligned 8-byte reads and writes only (anything else:
  a read gets a UR completion, a write is dropped and counted);
* **configuration space** (endpoints only): vendor/device ID, command (memory space enable,
  bus master enable), two 64-bit BARs sized the PCIe way; the bus number comes from every
  CfgWr0's target ID.

An address no window claims gets a UR completion (reads) or is dropped and counted (writes).
Completions leave in request order.

Ordering (PCIe: a read must see the posted writes before it; posted writes stay in order):
the AR of a memory read is issued only once every earlier MWr's AXI write has answered B, and
a register access waits until no memory write is outstanding (so a doorbell written after a
command never overtakes it into the device). See ``docs/hw/link.md``, "Endpoint".
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ...sw import regmap
from ...sw.params import DEFAULT
from ..axi import AxiSignature, Resp
from ..device.cp import Mmio
from ..refuse import refuse
from .requester import (DwordBuffer, TlpEmitter, _highest, _log2, _lowest, _pow2, _set,
                        check_widths, field_const)
from .tlp import CplStatus, Kind, KIND_FMT_TYPE, VENDOR_ID, hdr_get, tlp_beat

__all__ = ["Completer", "ENDPOINT_DEVICE_ID", "CLASS_CODE", "READ_SLOTS", "WRITE_SLOTS",
           "CFG_COMMAND", "CFG_BAR0", "CFG_BAR2", "MEMORY_ENABLE", "BUS_MASTER"]

#: Device ID of an endpoint's configuration space ("N1", with VENDOR_ID "NP").
ENDPOINT_DEVICE_ID = 0x4E31
#: Class code register (0x08): class 0x12, processing accelerator; revision 0.
CLASS_CODE = 0x1200_0000
#: Configuration registers (byte offsets) and command bits.
CFG_COMMAND, CFG_BAR0, CFG_BAR2 = 0x04, 0x10, 0x18
MEMORY_ENABLE, BUS_MASTER = 1 << 1, 1 << 2
#: Slots of ``link_max_payload`` bytes between AXI read data and completions.
READ_SLOTS = 4
#: Slots (of twice ``link_max_payload``: a TLP may straddle a payload-aligned boundary)
#: between MWr payloads and AXI writes.
WRITE_SLOTS = 2
#: Memory writes in flight (accepted, B not yet back) before MWrs stall.
_MAX_WRITES = 64


class _Act(enum.Enum, shape=2):
    SKIP = 0     # nothing more to do with the rest of the TLP
    MEMW = 1     # payload -> write slot
    MMIOW = 2    # payload -> register write at the last beat


class _Job(enum.Enum, shape=3):
    MEM = 0      # memory read: chunks, AXI reads, CplDs
    MMIO = 1     # register read: one CplD of 2 dwords from mmio_rdata
    CFG = 2      # configuration read: one CplD of 1 dword
    CPL = 3      # configuration write: a Cpl (SC)
    UR = 4       # unsupported request: a Cpl (UR)


class _Pend(enum.Enum, shape=2):
    MEM = 0      # a chunk of a memory read
    MMIO = 1
    CFG = 2
    NODATA = 3


class Completer(wiring.Component):
    """Serves requests from the link with a memory window, a register window and (for an
    endpoint) configuration space.

    Parameters
    ----------
    params : HwParams
        ``link_bytes_per_cycle`` (``W``), ``link_max_payload``, ``dram_bytes`` (BAR2 size).
    mem_axi : AxiParams or None
        The ``mem`` port (its beat is the buffers' row; a power of two >= W); none: no
        memory window.
    mmio : bool
        A register window (``mmio``/``mmio_rdata``), ``regmap.MMIO_BYTES`` large.
    config : bool
        Endpoint: windows are BAR2 (memory, ``dram_bytes``, prefetchable) and BAR0
        (registers), placed by configuration writes; the ID is learned from CfgWr0. Otherwise
        (root complex) the windows are fixed -- ``mem_window`` / ``mmio_window`` = (base,
        size), size a power of two and base aligned to it -- configuration requests get UR,
        and the ID is the ``completer_id`` input.
    device_id : int
        Device ID in configuration register 0x00.
    requests : int
        Non-posted requests taken ahead of their completions (default twice
        ``link_read_tags``: all a peer's outstanding reads). While their completions cannot
        leave, the queue fills; only then does a request wait on ``tlp_rx`` -- and with it
        the completions behind it, which is how two endpoints reading each other could
        deadlock, so keep it at least the reads that can be outstanding towards this one.

    Members
    -------
    tlp_rx : ``In(stream.Signature(tlp_beat(W)))``
        Requests; a TLP waits at its header beat until what it needs is free.
    tlp_tx : ``Out(stream.Signature(tlp_beat(W)))``
        Completions, in request order.
    mem : ``Out(AxiSignature(mem_axi))``
        ID 0; B responses always taken.
    mmio : ``Out(stream.Signature(Mmio))``, mmio_rdata : ``In(stream.Signature(64))``
    id : ``Out(16)`` (config)
        ``make_id(bus)``: completer and requester ID.
    memory_enable, bus_master : ``Out(1)`` (config)
        Command register bits 1 and 2.
    completer_id : ``In(16)`` (no config)
    dropped_writes : ``Out(32)``
        Posted writes nobody took (no window, a register write other than 8 aligned bytes,
        longer than the max payload or crossing 4 KiB or the window's end).
    unsupported : ``Out(32)``
        UR completions sent.
    mem_errors : ``Out(32)``
        AXI error responses (a B, or a read chunk answered CA).
    dropped : ``Out(32)``
        Other TLPs dropped (messages, completions, unknown or truncated ones).
    """

    def __init__(self, params=DEFAULT, *, mem_axi=None, mmio=False, config=True,
                 mem_window=None, mmio_window=None, device_id=ENDPOINT_DEVICE_ID,
                 requests=None):
        self.params = params
        self.requests = requests or 2 * params.link_read_tags
        self.width = W = params.link_bytes_per_cycle
        self.mem_axi, self.has_mmio, self.config = mem_axi, mmio, config
        self.device_id = device_id
        beat = mem_axi.data_bytes if mem_axi else max(W, 32)
        self.beat = beat
        problem = check_widths(params, W, beat)
        if config:
            mem_window = (0, params.dram_bytes) if mem_axi else None
            mmio_window = (0, regmap.MMIO_BYTES) if mmio else None
        elif problem is None and ((mem_axi is None) != (mem_window is None)
                                  or mmio != (mmio_window is not None)):
            problem = "without config, a fixed window goes with each target (and only then)"
        for window in (mem_window, mmio_window):
            if problem is None and window is not None:
                base, size = window
                if not _pow2(size) or size < 4096 or base % size:
                    problem = f"window {window}: size a power of two >= 4096, base aligned"
        if problem is None and mem_axi and (1 << mem_axi.addr_width) < mem_window[1]:
            problem = f"mem_axi addresses cannot cover {mem_window[1]:#x} bytes"
        if problem:
            refuse(self, ValueError(problem))
        self.mem_window, self.mmio_window = mem_window, mmio_window
        members = {
            "tlp_rx": In(stream.Signature(tlp_beat(W))),
            "tlp_tx": Out(stream.Signature(tlp_beat(W))),
            "dropped_writes": Out(32),
            "unsupported": Out(32),
            "mem_errors": Out(32),
            "dropped": Out(32),
        }
        if mem_axi:
            members["mem"] = Out(AxiSignature(mem_axi))
        if mmio:
            members["mmio"] = Out(stream.Signature(Mmio))
            members["mmio_rdata"] = In(stream.Signature(64))
        if config:
            members.update({"id": Out(16), "memory_enable": Out(1), "bus_master": Out(1)})
        else:
            members["completer_id"] = In(16)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        p, W = self.params, self.width
        W4 = W // 4
        D, nb = self.beat, self.beat // 4
        lg_d = _log2(D)
        MPS = p.link_max_payload
        wrows = 2 * MPS // D                  # rows per write slot
        mem_lg = _log2(self.mem_window[1]) if self.mem_window else 12
        addr_bits = max(mem_lg, 12)           # a request's address as the jobs keep it

        rx = self.tlp_rx
        take = rx.valid & rx.ready

        # -- configuration space and windows ----------------------------------------------------
        bus = Signal(8)
        mse, bme = Signal(), Signal()
        bars = {}
        if self.config:
            m.d.comb += [self.id.eq(Cat(Const(0, 8), bus)), self.memory_enable.eq(mse),
                         self.bus_master.eq(bme)]
            my_id = self.id
            for name, window in (("bar0", self.mmio_window), ("bar2", self.mem_window)):
                if window:
                    bars[name] = Signal(64, name=name)
        else:
            my_id = self.completer_id

        def hit(window, name, addr):
            if window is None:
                return Const(0)
            lg = _log2(window[1])
            if self.config:
                base = bars[name]
                return mse & (base != 0) & (addr[lg:] == base[lg:])
            return addr[lg:] == window[0] >> lg

        # -- request parsing ----------------------------------------------------------------------
        hb = 15 // W                           # the beat that completes a 3DW or 4DW header
        p_tdw = Signal(11)                     # TLP dword index of this beat's first dword
        p_hdr = Signal(128)
        view = Signal(128)
        for b in range(16):
            m.d.comb += view.word_select(b, 8).eq(
                Mux(p_tdw == (b // W) * W4, rx.payload.data.word_select(b % W, 8),
                    p_hdr.word_select(b, 8)))
        with m.If(take):
            m.d.sync += [p_tdw.eq(Mux(rx.payload.last, 0, p_tdw + W4)), p_hdr.eq(view)]
        at_hb = p_tdw == hb * W4

        fmt, typ = hdr_get(view, "fmt"), hdr_get(view, "type")
        four = fmt[0]
        hdws = Mux(four, 4, 3)
        raw_length = hdr_get(view, "length")
        length = Signal(11)
        m.d.comb += length.eq(Mux(raw_length == 0, 1024, raw_length))
        first_be, last_be = hdr_get(view, "first_be"), hdr_get(view, "last_be")
        addr = Signal(64)
        m.d.comb += addr.eq(Mux(four, Cat(Const(0, 2), hdr_get(view, "addr_lo"),
                                          hdr_get(view, "addr_hi")),
                                Cat(Const(0, 2), hdr_get(view, "addr32"))))
        mem_type = KIND_FMT_TYPE[Kind.MRD32][1]
        cfg_type = KIND_FMT_TYPE[Kind.CFGRD0][1]
        is_mrd = (typ == mem_type) & (fmt[1:] == 0)
        is_mwr = (typ == mem_type) & (fmt[1:] == 1)
        is_cfgrd = (typ == cfg_type) & (fmt == KIND_FMT_TYPE[Kind.CFGRD0][0])
        is_cfgwr = (typ == cfg_type) & (fmt == KIND_FMT_TYPE[Kind.CFGWR0][0])
        cfg_id, cfg_reg = hdr_get(view, "cfg_id"), hdr_get(view, "cfg_reg")
        cfg_data = view[96:128]

        hit_mem = hit(self.mem_window, "bar2", addr)
        hit_mmio = hit(self.mmio_window, "bar0", addr)
        span_end = Signal(14)                   # past the last byte, within a 4 KiB page
        m.d.comb += span_end.eq(addr[:12] + 4 * length)
        in_mem = (addr[:mem_lg] + 4 * length) <= (1 << mem_lg)
        mem_write_ok = (length * 4 <= MPS) & (span_end <= 4096) & in_mem
        mmio_ok = (length == 2) & (first_be == 0xF) & (last_be == 0xF) & (addr[:3] == 0)

        # writes in flight: accepted MWrs (at their last beat) against B responses
        writes_in, writes_done = Signal(8), Signal(8)
        b_error, r_error = Signal(), Signal()     # an AXI error response (pulses)
        outstanding = Signal(8)
        m.d.comb += outstanding.eq(writes_in - writes_done)

        # the register port: one access held until taken
        mmio_busy = Signal()
        mmio_req = Signal(Mmio)
        if self.has_mmio:
            m.d.comb += [self.mmio.valid.eq(mmio_busy), self.mmio.payload.eq(mmio_req)]
            with m.If(self.mmio.ready):
                m.d.sync += mmio_busy.eq(0)

        # jobs: every non-posted request, in order
        job = data.StructLayout({"kind": _Job, "rid": 16, "cid": 16, "tag": 8, "addr": addr_bits,
                                 "length": 11, "first_be": 4, "last_be": 4, "data": 32,
                                 "wseq": 8})
        m.submodules.jobs = jobs = SyncFIFO(width=job.size, depth=self.requests)
        new_job = data.View(job, jobs.w_data)
        m.d.comb += [new_job.rid.eq(hdr_get(view, "requester_id")), new_job.cid.eq(my_id),
                     new_job.tag.eq(hdr_get(view, "tag")), new_job.addr.eq(addr[:addr_bits]),
                     new_job.length.eq(length), new_job.first_be.eq(first_be),
                     new_job.last_be.eq(last_be), new_job.wseq.eq(writes_in)]

        # write slots
        wused = Signal(range(WRITE_SLOTS + 1))
        wfill = Signal(range(WRITE_SLOTS))
        wdesc = data.StructLayout({"slot": range(WRITE_SLOTS), "addr": addr_bits,
                                   "beats": range(wrows + 1), "off": lg_d - 2,
                                   "length": range(MPS // 4 + 1), "first_be": 4, "last_be": 4})
        m.submodules.wq = wq = SyncFIFO(width=wdesc.size, depth=WRITE_SLOTS)
        wslot_free = (wused < WRITE_SLOTS) & wq.w_rdy & (outstanding < _MAX_WRITES)

        act_hb = Signal(_Act)
        can = Signal()                          # what the request needs is free
        push_job = Signal()
        count_dropped_write, count_dropped, count_ur = Signal(), Signal(), Signal()
        mmio_read = Signal()
        cfg_write = Signal()
        m.d.comb += can.eq(1)
        with m.If(is_mwr):
            with m.If(hit_mem & mem_write_ok):
                m.d.comb += [act_hb.eq(_Act.MEMW), can.eq(wslot_free)]
            with m.Elif(hit_mmio & mmio_ok):
                m.d.comb += [act_hb.eq(_Act.MMIOW), can.eq((outstanding == 0) & ~mmio_busy)]
            with m.Else():
                m.d.comb += count_dropped_write.eq(1)
        with m.Elif(is_mrd):
            m.d.comb += [push_job.eq(1), can.eq(jobs.w_rdy), new_job.kind.eq(_Job.UR)]
            with m.If(hit_mem & in_mem):
                m.d.comb += new_job.kind.eq(_Job.MEM)
            with m.Elif(hit_mmio & mmio_ok):
                m.d.comb += [new_job.kind.eq(_Job.MMIO), mmio_read.eq(1),
                             can.eq(jobs.w_rdy & (outstanding == 0) & ~mmio_busy)]
        with m.Elif(is_cfgrd | is_cfgwr):
            m.d.comb += [push_job.eq(1), can.eq(jobs.w_rdy), new_job.kind.eq(_Job.UR)]
            if self.config:
                with m.If(cfg_id[:8] == 0):            # device 0, function 0
                    m.d.comb += [new_job.kind.eq(Mux(is_cfgwr, _Job.CPL, _Job.CFG)),
                                 cfg_write.eq(is_cfgwr)]
        with m.Else():
            m.d.comb += count_dropped.eq(1)
        with m.If(push_job & (new_job.kind == _Job.UR)):
            m.d.comb += count_ur.eq(1)

        p_act = Signal(_Act)
        act = Signal(_Act)
        m.d.comb += [act.eq(Mux(at_hb, act_hb, p_act)),
                     rx.ready.eq(~at_hb | can)]
        hb_take = take & at_hb
        truncated = take & rx.payload.last & (p_tdw < hb * W4)
        with m.If(hb_take):
            m.d.sync += p_act.eq(act_hb)
        with m.If(take & rx.payload.last):
            m.d.sync += p_act.eq(_Act.SKIP)
        for counter, pulse in ((self.dropped_writes, hb_take & count_dropped_write),
                               (self.dropped, (hb_take & count_dropped) | truncated),
                               (self.unsupported, hb_take & count_ur)):
            with m.If(pulse):
                m.d.sync += counter.eq(counter + 1)
        m.d.comb += jobs.w_en.eq(hb_take & push_job)

        # register accesses
        cap = [Signal(32, name=f"cap{k}") for k in range(2)]   # a register write's dwords
        p_hdws = Signal(3)
        with m.If(hb_take):
            m.d.sync += p_hdws.eq(hdws)
        cur_hdws = Mux(at_hb, hdws, p_hdws)
        cap_now = []
        for k in range(2):
            value = cap[k]
            for i in range(W4):
                value = Mux(p_tdw + i == cur_hdws + k, rx.payload.data.word_select(i, 32), value)
            cap_now.append(value)
            with m.If(take):
                m.d.sync += cap[k].eq(value)
        if self.has_mmio:
            with m.If(hb_take & mmio_read):
                m.d.sync += [mmio_busy.eq(1), mmio_req.addr.eq(addr[:12]), mmio_req.write.eq(0),
                             mmio_req.data.eq(0)]
            with m.If(take & rx.payload.last & (act == _Act.MMIOW)):
                m.d.sync += [mmio_busy.eq(1), mmio_req.addr.eq(addr[:12]), mmio_req.write.eq(1),
                             mmio_req.data.eq(Cat(*cap_now))]

        # configuration registers
        cfg_value = Signal(32)
        m.d.comb += new_job.data.eq(cfg_value)
        if self.config:
            self._config(m, bars, cfg_reg, cfg_value, cfg_data, first_be,
                         hb_take & cfg_write, mse, bme)
            with m.If(hb_take & cfg_write):
                m.d.sync += bus.eq(cfg_id[8:])
            with m.If(cfg_write):                  # its completion already has the new ID
                m.d.comb += new_job.cid.eq(Cat(Const(0, 8), cfg_id[8:]))

        # memory write payloads into the write slots
        if self.mem_axi:
            m.submodules.wbuf = wbuf = DwordBuffer(row_bytes=D, rows=WRITE_SLOTS * wrows,
                                                   window_dws=W4, window_writes=True)
            p_slot = Signal(range(WRITE_SLOTS))
            slot_now = Mux(at_hb, wfill, p_slot)
            end_now = Signal(11)
            m.d.comb += end_now.eq(cur_hdws + length)
            slot_dw = Signal(len(wbuf.win_addr))
            m.d.comb += slot_dw.eq((slot_now << _log2(wrows * nb)) + addr[2:lg_d])
            m.d.comb += [
                wbuf.win_addr.eq(slot_dw - cur_hdws + p_tdw),
                wbuf.win_data.eq(rx.payload.data),
                wbuf.win_mask.eq(Cat((p_tdw + i >= cur_hdws) & (p_tdw + i < end_now)
                                     for i in range(W4))),
                wbuf.win_en.eq(take & (act == _Act.MEMW)),
            ]
            with m.If(hb_take & (act_hb == _Act.MEMW)):
                m.d.sync += [p_slot.eq(wfill), wfill.eq(wfill + 1)]
            done_write = take & rx.payload.last & (act == _Act.MEMW)
            new_w = data.View(wdesc, wq.w_data)
            nbytes = Signal(range(MPS + D + 1))
            m.d.comb += nbytes.eq(Cat(Const(0, 2), addr[2:lg_d]) + 4 * length)
            m.d.comb += [new_w.slot.eq(slot_now), new_w.addr.eq(addr[:addr_bits]),
                         new_w.beats.eq(((nbytes - 1) >> lg_d) + 1), new_w.off.eq(addr[2:lg_d]),
                         new_w.length.eq(length), new_w.first_be.eq(first_be),
                         new_w.last_be.eq(last_be), wq.w_en.eq(done_write)]
            with m.If(done_write):
                m.d.sync += writes_in.eq(writes_in + 1)
            wfreed = self._write_engine(m, wbuf, wq, wdesc, writes_done, b_error)
            m.d.sync += wused.eq(wused + (hb_take & (act_hb == _Act.MEMW)) - wfreed)

        # -- reads and completions ----------------------------------------------------------------
        self._reads(m, jobs, job, writes_done, r_error)
        m.d.sync += self.mem_errors.eq(self.mem_errors + b_error + r_error)
        return m

    # -- configuration space -----------------------------------------------------------------------

    def _config(self, m, bars, reg, value, wdata, first_be, write, mse, bme):
        bar_regs = {}
        for name, window, number, low_bits in (("bar0", self.mmio_window, 4, 0b0100),
                                               ("bar2", self.mem_window, 6, 0b1100)):
            if window:
                bar_regs[number] = (bars[name], window[1], low_bits)
        with m.Switch(reg):
            with m.Case(0):
                m.d.comb += value.eq(VENDOR_ID | self.device_id << 16)
            with m.Case(CFG_COMMAND // 4):
                m.d.comb += value.eq(Cat(Const(0, 1), mse, bme))
            with m.Case(2):
                m.d.comb += value.eq(CLASS_CODE)
            for number, (bar, _, low_bits) in bar_regs.items():
                with m.Case(number):
                    m.d.comb += value.eq(Cat(Const(low_bits, 4), bar[4:32]))
                with m.Case(number + 1):
                    m.d.comb += value.eq(bar[32:])
        mask = Cat(first_be[i].replicate(8) for i in range(4))
        merged = Signal(32)
        m.d.comb += merged.eq((value & ~mask) | (wdata & mask))
        with m.If(write):
            with m.Switch(reg):
                with m.Case(CFG_COMMAND // 4):
                    m.d.sync += [mse.eq(merged[1]), bme.eq(merged[2])]
                for number, (bar, size, _) in bar_regs.items():
                    writable = ~(size - 1) & (2**64 - 1)
                    with m.Case(number):
                        m.d.sync += bar[:32].eq(merged & (writable & 0xFFFF_FFF0))
                    with m.Case(number + 1):
                        m.d.sync += bar[32:].eq(merged & (writable >> 32))

    # -- memory writes: slots -> AXI ---------------------------------------------------------------

    def _write_engine(self, m, wbuf, wq, wdesc, writes_done, b_error):
        """AW + W bursts from the write slots; returns the pulse that frees a slot."""
        D, nb = self.beat, self.beat // 4
        lg_d = _log2(D)
        wrows = 2 * self.params.link_max_payload // D
        mem = self.mem
        d = data.View(wdesc, wq.r_data)
        aw_done, w_done = Signal(), Signal()
        beat = Signal(range(wrows + 1))
        o_valid, o_last = Signal(), Signal()
        o_strb = Signal(D)

        aw_take = mem.aw.valid & mem.aw.ready
        m.d.comb += [mem.aw.valid.eq(wq.r_rdy & ~aw_done),
                     mem.aw.payload.addr.eq(Cat(Const(0, lg_d), d.addr[lg_d:])),
                     mem.aw.payload.len.eq(d.beats - 1), mem.aw.payload.id.eq(0)]

        adv = ~o_valid | mem.w.ready
        issue = adv & wq.r_rdy & ~w_done & (aw_done | aw_take)     # W only after its AW
        last_issue = issue & (beat == d.beats - 1)
        m.d.comb += [wbuf.row_addr.eq(Cat(beat[:_log2(wrows)], d.slot)), wbuf.row_en.eq(adv)]
        # strobes of this beat: dword g of the burst is payload dword g - off
        nibbles = []
        for q in range(nb):
            g = Signal(range(wrows * nb + 1), name=f"g{q}")
            m.d.comb += g.eq(beat * nb + q)
            inside = (g >= d.off) & (g < d.off + d.length)
            nibble = Mux(g == d.off, d.first_be,
                         Mux(g == d.off + d.length - 1, d.last_be, 0xF))
            nibbles.append(Mux(inside, nibble, 0))
        with m.If(issue):
            m.d.sync += [o_valid.eq(1), o_last.eq(beat == d.beats - 1), o_strb.eq(Cat(nibbles)),
                         beat.eq(beat + 1)]
            with m.If(beat == d.beats - 1):
                m.d.sync += w_done.eq(1)
        with m.Elif(adv):
            m.d.sync += o_valid.eq(0)
        with m.If(aw_take):
            m.d.sync += aw_done.eq(1)
        finish = wq.r_rdy & (aw_done | aw_take) & (w_done | last_issue)
        m.d.comb += wq.r_en.eq(finish)
        with m.If(finish):
            m.d.sync += [aw_done.eq(0), w_done.eq(0), beat.eq(0)]
        m.d.comb += [mem.w.valid.eq(o_valid), mem.w.payload.data.eq(wbuf.row_data),
                     mem.w.payload.strb.eq(o_strb), mem.w.payload.last.eq(o_last)]

        m.d.comb += [mem.b.ready.eq(1),
                     b_error.eq(mem.b.valid & (mem.b.payload.resp != Resp.OKAY))]
        with m.If(mem.b.valid):
            m.d.sync += writes_done.eq(writes_done + 1)
        return finish

    # -- reads: jobs -> AXI reads / registers / config -> completions ------------------------------

    def _reads(self, m, jobs, job, writes_done, r_error):
        p, W = self.params, self.width
        D = self.beat
        lg_d = _log2(D)
        MPS = p.link_max_payload
        lg_mps = _log2(MPS)
        rrows = MPS // D
        addr_bits = len(data.View(job, jobs.r_data).addr)

        m.submodules.rbuf = rbuf = DwordBuffer(row_bytes=D, rows=READ_SLOTS * rrows,
                                               window_dws=W // 4, window_writes=False)
        m.submodules.cemit = emit = TlpEmitter(rbuf, W, max_dws=MPS // 4)
        wiring.connect(m, emit.tlp, wiring.flipped(self.tlp_tx))

        pend = data.StructLayout({
            "kind": _Pend, "status": 3, "slot": range(READ_SLOTS), "beats": range(rrows + 1),
            "last": 1, "rid": 16, "cid": 16, "tag": 8, "bc": 13, "lower": 7,
            "dws": range(MPS // 4 + 1), "off": lg_d - 2, "data": 32})
        m.submodules.pq = pq = SyncFIFO(width=pend.size, depth=READ_SLOTS + 2)
        rused = Signal(range(READ_SLOTS + 1))
        rfill = Signal(range(READ_SLOTS))

        # the job at the head: its byte count and first byte (PCIe rules for byte enables)
        j = data.View(job, jobs.r_data)
        lo = _lowest(m, j.first_be, "fbe_lo")
        hi_first, hi_last = _highest(m, j.first_be, "fbe_hi"), _highest(m, j.last_be, "lbe_hi")
        bc = Signal(13)
        with m.If(j.length == 1):
            m.d.comb += bc.eq(Mux(j.first_be == 0, 1, hi_first - lo + 1))
        with m.Else():
            m.d.comb += bc.eq(4 * j.length - lo - (3 - hi_last))
        first_byte = Signal(addr_bits + 1)
        m.d.comb += first_byte.eq(j.addr + lo)
        end_byte = Signal(addr_bits + 2)
        m.d.comb += end_byte.eq(first_byte + bc)

        # memory reads: the chunk at cur (first: the job's address)
        cur = Signal(addr_bits + 1)
        started = Signal()
        cs = Signal(addr_bits + 1)
        m.d.comb += cs.eq(Mux(started, cur, j.addr))
        block_end = Signal(addr_bits + 2)
        m.d.comb += block_end.eq(Cat(Const(0, lg_mps), cs[lg_mps:] + 1))
        req_end = Signal(addr_bits + 2)
        m.d.comb += req_end.eq(j.addr + 4 * j.length)
        ce = Signal(addr_bits + 2)
        m.d.comb += ce.eq(Mux(req_end < block_end, req_end, block_end))
        final = ce == req_end
        first = ~started
        new = data.View(pend, pq.w_data)
        m.d.comb += [new.rid.eq(j.rid), new.cid.eq(j.cid), new.tag.eq(j.tag), new.slot.eq(rfill),
                     new.data.eq(j.data), new.last.eq(1), new.bc.eq(bc),
                     new.lower.eq(first_byte[:7]), new.status.eq(CplStatus.SC)]
        slot_free = rused < READ_SLOTS
        use_slot = Signal()
        pop_job = Signal()
        kind = j.kind
        with m.Switch(kind):
            with m.Case(_Job.MEM):
                if self.mem_axi:
                    mem = self.mem
                    wseq_ok = ~(writes_done - j.wseq)[7]
                    go = jobs.r_rdy & slot_free & pq.w_rdy & wseq_ok
                    beats = Signal(range(rrows + 1))
                    m.d.comb += beats.eq(((ce - 1) >> lg_d) - cs[lg_d:] + 1)
                    m.d.comb += [
                        mem.ar.valid.eq(go),
                        mem.ar.payload.addr.eq(Cat(Const(0, lg_d), cs[lg_d:])),
                        mem.ar.payload.len.eq(beats - 1),
                        mem.ar.payload.id.eq(0),
                        new.kind.eq(_Pend.MEM),
                        new.beats.eq(beats),
                        new.last.eq(final),
                        new.bc.eq(Mux(first, bc, end_byte - cs)),
                        new.lower.eq(Mux(first, first_byte[:7], cs[:7])),
                        new.dws.eq((ce - cs) >> 2), new.off.eq(cs[2:lg_d]),
                    ]
                    ar_take = mem.ar.valid & mem.ar.ready
                    m.d.comb += [pq.w_en.eq(ar_take), use_slot.eq(ar_take),
                                 pop_job.eq(ar_take & final)]
                    with m.If(ar_take):
                        m.d.sync += [cur.eq(ce), started.eq(~final)]
            with m.Case(_Job.MMIO, _Job.CFG):
                m.d.comb += [new.kind.eq(Mux(kind == _Job.MMIO, _Pend.MMIO, _Pend.CFG)),
                             new.dws.eq(Mux(kind == _Job.MMIO, 2, 1)),
                             new.bc.eq(Mux(kind == _Job.MMIO, 8, 4)),
                             new.lower.eq(Mux(kind == _Job.MMIO, j.addr[:7], 0)),
                             new.off.eq(0), new.beats.eq(1)]
                go = jobs.r_rdy & slot_free & pq.w_rdy
                m.d.comb += [pq.w_en.eq(go), use_slot.eq(go), pop_job.eq(go)]
            with m.Default():    # CPL, UR
                m.d.comb += [new.kind.eq(_Pend.NODATA),
                             new.status.eq(Mux(kind == _Job.UR, CplStatus.UR, CplStatus.SC))]
                with m.If(kind == _Job.CPL):
                    m.d.comb += [new.bc.eq(4), new.lower.eq(0)]
                go = jobs.r_rdy & pq.w_rdy
                m.d.comb += [pq.w_en.eq(go), pop_job.eq(go)]
        m.d.comb += jobs.r_en.eq(pop_job)
        with m.If(use_slot):
            m.d.sync += rfill.eq(rfill + 1)
        m.d.sync += rused.eq(rused + use_slot - emit.freed)

        # filling: read data, register data or config data into the slot, then the completion
        f = data.View(pend, pq.r_data)
        f_beat = Signal(range(rrows + 1))
        f_err = Signal()
        f_have = Signal()
        failed = Signal()                    # an earlier chunk of this read failed
        row0 = Cat(Const(0, _log2(rrows)), f.slot)
        ready_to_send = Signal()
        with m.Switch(f.kind):
            with m.Case(_Pend.MEM):
                if self.mem_axi:
                    r = self.mem.r
                    m.d.comb += [r.ready.eq(pq.r_rdy & (f_beat < f.beats)),
                                 rbuf.row_addr.eq(row0 + f_beat), rbuf.row_data.eq(r.payload.data),
                                 rbuf.row_mask.eq(-1), rbuf.row_en.eq(r.valid & r.ready),
                                 ready_to_send.eq(f_beat == f.beats)]
                    with m.If(r.valid & r.ready):
                        m.d.sync += f_beat.eq(f_beat + 1)
                        with m.If(r.payload.resp != Resp.OKAY):
                            m.d.sync += f_err.eq(1)
            with m.Case(_Pend.MMIO):
                if self.has_mmio:
                    rd = self.mmio_rdata
                    m.d.comb += [rd.ready.eq(pq.r_rdy & ~f_have),
                                 rbuf.row_addr.eq(row0), rbuf.row_data.eq(rd.payload),
                                 rbuf.row_mask.eq(0b11), rbuf.row_en.eq(rd.valid & rd.ready),
                                 ready_to_send.eq(f_have)]
                    with m.If(rd.valid & rd.ready):
                        m.d.sync += f_have.eq(1)
            with m.Case(_Pend.CFG):
                m.d.comb += [rbuf.row_addr.eq(row0), rbuf.row_data.eq(f.data),
                             rbuf.row_mask.eq(0b1), rbuf.row_en.eq(pq.r_rdy & ~f_have),
                             ready_to_send.eq(f_have)]
                with m.If(pq.r_rdy):
                    m.d.sync += f_have.eq(1)
            with m.Default():
                m.d.comb += ready_to_send.eq(1)

        is_mem = f.kind == _Pend.MEM
        error = is_mem & f_err
        with_data = (f.kind != _Pend.NODATA) & ~error
        hdr = Signal(128)
        _set(m, hdr, "fmt", Mux(with_data, Const(KIND_FMT_TYPE[Kind.CPLD][0], 3),
                                Const(KIND_FMT_TYPE[Kind.CPL][0], 3)))
        _set(m, hdr, "length", Mux(with_data, f.dws, 0))
        _set(m, hdr, "completer_id", f.cid)
        _set(m, hdr, "status", Mux(error, Const(CplStatus.CA, 3), f.status))
        _set(m, hdr, "byte_count", f.bc[:12])
        _set(m, hdr, "cpl_requester_id", f.rid)
        _set(m, hdr, "cpl_tag", f.tag)
        _set(m, hdr, "lower_addr", f.lower)
        d = emit.desc.payload
        m.d.comb += [emit.desc.valid.eq(pq.r_rdy & ready_to_send),
                     d.hdr.eq(hdr | field_const(type=KIND_FMT_TYPE[Kind.CPL][1])),
                     d.hdr4.eq(0), d.dws.eq(Mux(with_data, f.dws, 0)),
                     d.addr.eq(Cat(f.off, Const(0, _log2(rrows)), f.slot)),
                     d.skip.eq(is_mem & failed), d.frees.eq(f.kind != _Pend.NODATA),
                     d.user.eq(0)]
        sent = emit.desc.valid & emit.desc.ready
        m.d.comb += pq.r_en.eq(sent)
        with m.If(sent):
            m.d.sync += [f_beat.eq(0), f_err.eq(0), f_have.eq(0)]
            with m.If(is_mem):
                m.d.sync += failed.eq(~f.last & (failed | f_err))
        m.d.comb += r_error.eq(sent & error & ~failed)
