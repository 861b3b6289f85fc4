# amaranth: UnusedElaboratable=no
"""Tests of the endpoint's completer (``hw/link/completer.py``) in Amaranth's simulator.

A Python requester sends request TLPs (built with ``tlp.Tlp``) on ``tlp_rx`` and decodes the
completions on ``tlp_tx``; a Python AXI memory (:class:`MemoryModel`, whose writes become
visible only when their B response leaves, so a read issued too early sees old data) serves
``mem``; a Python register block (:class:`MmioModel`) serves ``mmio``. A sequential Python
reference (:class:`Reference`) says what every request must do: which completions (split,
byte counts, lower addresses, data, status), which memory bytes and register accesses.
Configuration space is checked as a host enumerates it (bus capture, BAR sizing).
"""

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from npusim.hw.axi import AxiParams, Resp
from npusim.hw.link.completer import (BUS_MASTER, CFG_BAR0, CFG_BAR2, CFG_COMMAND, CLASS_CODE,
                                      Completer, ENDPOINT_DEVICE_ID, MEMORY_ENABLE)
from npusim.hw.link.tlp import CplStatus, Kind, Tlp, VENDOR_ID, decode, make_id
from npusim.sw import regmap
from npusim.sw.fm.system import BusMap
from npusim.sw.params import DEFAULT

from test_requester import mem_byte, mem_bytes, pause_gen

WIDTHS = [8, 16]
BEAT = DEFAULT.dram_bytes_per_cycle
BUS = BusMap()
BAR0, BAR2 = BUS.mmio(0), BUS.dram(0)
DRAM_AXI = AxiParams(addr_width=(DEFAULT.dram_bytes - 1).bit_length(), data_bytes=BEAT,
                     id_width=1)
#: Device-DRAM offsets from here on answer SLVERR in the memory model.
ERROR_FROM = 48 << 20
HOST = 0x5A5A                 # the requester ID of the Python requester


def params_for(width, **extra):
    return DEFAULT.replace(link_lanes=width // 4, link_bytes_per_lane=4, **extra)


def mmio_init(offset):
    return (offset * 0x9E3779B97F4A7C15 + 0x1234) & (2**64 - 1)


class MemoryModel:
    """An AXI slave: R beats in order after a random latency, B after a random delay; a
    write's bytes become visible when its B leaves. Checks the AXI rules it relies on."""

    def __init__(self, port, rng, busy, *, errors_from=ERROR_FROM):
        self.port, self.rng = port, rng
        self.errors_from = errors_from
        self.pause = {c: pause_gen(rng, busy) for c in ("ar", "aw", "w", "r", "b")}
        self.written = {}               # byte offset -> value (visible)
        self.reads = deque()            # [due, addr, beats, next beat]
        self.writes = deque()           # [addr, beats, {offset: value}, beats seen]
        self.bs = deque()               # [due, resp, {offset: value}]
        self.cycle = 0
        self.ar_log, self.aw_log = [], []
        self.b_cycles = []

    def byte(self, offset):
        return self.written.get(offset, mem_byte(offset))

    def resp(self, addr):
        return Resp.SLVERR if addr >= self.errors_from else Resp.OKAY

    def check_burst(self, addr, length):
        assert addr % BEAT == 0 and 0 <= length <= 255
        assert addr // 4096 == (addr + BEAT * (length + 1) - 1) // 4096, "crosses 4 KiB"

    async def run(self, ctx):
        s = self.port
        while True:
            for c in ("ar", "aw", "w"):
                ctx.set(getattr(s, c).ready, not next(self.pause[c]))
            r_on = bool(self.reads) and self.reads[0][0] <= self.cycle and not next(self.pause["r"])
            if r_on:
                due, addr, beats, k = self.reads[0]
                a = addr + BEAT * k
                resp = self.resp(addr)
                value = 0 if resp else int.from_bytes(bytes(self.byte(a + i)
                                                            for i in range(BEAT)), "little")
                ctx.set(s.r.payload, {"data": value, "resp": resp, "last": k == beats - 1,
                                      "id": 0})
            ctx.set(s.r.valid, r_on)
            b_on = bool(self.bs) and self.bs[0][0] <= self.cycle and not next(self.pause["b"])
            if b_on:
                ctx.set(s.b.payload, {"resp": self.bs[0][1], "id": 0})
            ctx.set(s.b.valid, b_on)
            (_, _, arv, arr, ar, awv, awr, aw, wv, wr, w, rr, br) = await ctx.tick().sample(
                s.ar.valid, s.ar.ready, s.ar.payload, s.aw.valid, s.aw.ready, s.aw.payload,
                s.w.valid, s.w.ready, s.w.payload, s.r.ready, s.b.ready)
            self.cycle += 1
            if arv and arr:
                self.check_burst(ar.addr, ar.len)
                self.ar_log.append((self.cycle, ar.addr, ar.len + 1))
                self.reads.append([self.cycle + self.rng.randint(2, 12), ar.addr, ar.len + 1, 0])
            if awv and awr:
                self.check_burst(aw.addr, aw.len)
                self.aw_log.append((self.cycle, aw.addr, aw.len + 1))
                self.writes.append([aw.addr, aw.len + 1, {}, 0])
            if wv and wr:
                assert self.writes, "W before AW"   # (the completer sends AW first)
                burst = self.writes[0]
                raw = w.data.to_bytes(BEAT, "little")
                for i in range(BEAT):
                    if w.strb >> i & 1:
                        burst[2][burst[0] + BEAT * burst[3] + i] = raw[i]
                burst[3] += 1
                assert bool(w.last) == (burst[3] == burst[1]), "W last misplaced"
                if w.last:
                    self.writes.popleft()
                    self.bs.append([self.cycle + self.rng.randint(1, 10),
                                    self.resp(burst[0]), burst[2]])
            if r_on and rr:
                self.reads[0][3] += 1
                if self.reads[0][3] == self.reads[0][2]:
                    self.reads.popleft()
            if b_on and br:
                self.b_cycles.append(self.cycle)
                _, resp, stored = self.bs.popleft()
                if resp == Resp.OKAY:
                    self.written.update(stored)


class MmioModel:
    """The register block's port: takes accesses (pausing), answers reads in order after a
    random delay; logs every access."""

    def __init__(self, dut, rng, busy):
        self.dut, self.rng = dut, rng
        self.pause, self.rpause = pause_gen(rng, busy), pause_gen(rng, busy)
        self.regs = {}
        self.log = []                  # ("w", offset, value) / ("r", offset)
        self.cycles = []               # when each access was taken
        self.answers = deque()         # (due, value)
        self.cycle = 0

    async def run(self, ctx):
        req, rdata = self.dut.mmio, self.dut.mmio_rdata
        while True:
            ctx.set(req.ready, not next(self.pause))
            on = bool(self.answers) and self.answers[0][0] <= self.cycle and not next(self.rpause)
            if on:
                ctx.set(rdata.payload, self.answers[0][1])
            ctx.set(rdata.valid, on)
            _, _, v, r, pl, taken = await ctx.tick().sample(req.valid, req.ready, req.payload,
                                                             rdata.ready)
            self.cycle += 1
            if v and r:
                self.cycles.append(self.cycle)
                if pl.write:
                    self.regs[pl.addr] = pl.data
                    self.log.append(("w", pl.addr, pl.data))
                else:
                    self.log.append(("r", pl.addr))
                    self.answers.append((self.cycle + self.rng.randint(1, 6),
                                         self.regs.get(pl.addr, mmio_init(pl.addr))))
            if on and taken:
                self.answers.popleft()


class Requests:
    """Sends request TLPs (pausing) and collects completions (pausing)."""

    def __init__(self, dut, width, rng, busy):
        self.dut, self.width = dut, width
        self.pause_rx, self.pause_tx = pause_gen(rng, busy), pause_gen(rng, busy)
        self.to_send = deque()
        self.completions = []
        self.cycle = 0
        self.cpl_beats = []            # cycles of completion beats taken

    def send(self, tlp):
        self.to_send.append(tlp.encode())

    async def sender(self, ctx):
        port, W = self.dut.tlp_rx, self.width
        while True:
            if not self.to_send:
                await ctx.tick()
                continue
            raw = self.to_send.popleft()
            for k in range(0, len(raw), W):
                while next(self.pause_rx):
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                chunk = raw[k:k + W]
                ctx.set(port.payload, {"data": int.from_bytes(chunk, "little"),
                                       "dws": len(chunk) // 4, "last": k + W >= len(raw)})
                ctx.set(port.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(port.ready)
                    if ready:
                        break
            ctx.set(port.valid, 0)

    async def receiver(self, ctx):
        port, W = self.dut.tlp_tx, self.width
        raw = bytearray()
        while True:
            ready = not next(self.pause_tx)
            ctx.set(port.ready, ready)
            _, _, valid, pl = await ctx.tick().sample(port.valid, port.payload)
            self.cycle += 1
            if valid and ready:
                self.cpl_beats.append(self.cycle)
                assert pl.last or pl.dws == W // 4
                raw += pl.data.to_bytes(W, "little")[:4 * pl.dws]
                if pl.last:
                    self.completions.append(decode(raw))
                    raw = bytearray()


def byte_count(length, fbe, lbe):
    """PCIe's byte count of a read and the offset of its first enabled byte."""
    lo = (fbe & -fbe).bit_length() - 1 if fbe else 0
    if length == 1:
        return (fbe.bit_length() - lo if fbe else 1), lo
    return 4 * length - lo - (4 - lbe.bit_length()), lo


class Reference:
    """What the completer must do, request by request (endpoint with BAR0 at ``bar0``, BAR2
    at ``bar2``, ID ``cid``)."""

    def __init__(self, mps, bar0=BAR0, bar2=BAR2, cid=make_id(1)):
        self.mps, self.bar0, self.bar2, self.cid = mps, bar0, bar2, cid
        self.memory = {}               # DRAM offset -> value, as written
        self.mmio = {}
        self.mmio_log = []
        self.completions = []
        self.dropped_writes = self.unsupported = self.mem_errors = 0

    def byte(self, offset):
        return self.memory.get(offset, mem_byte(offset))

    def where(self, addr, n):
        if self.bar2 <= addr and addr + n <= self.bar2 + DEFAULT.dram_bytes:
            return "mem", addr - self.bar2
        if self.bar0 <= addr < self.bar0 + regmap.MMIO_BYTES:
            return "mmio", addr - self.bar0
        return None, None

    def cpl(self, t, status, **kw):
        return Tlp(Kind.CPL if status != CplStatus.SC or "payload" not in kw else Kind.CPLD,
                   requester_id=t.requester_id, tag=t.tag, completer_id=self.cid,
                   status=status, **kw)

    def request(self, t):
        if t.has_data:
            t.length = len(t.payload) // 4
        n = 4 * t.length
        where, off = self.where(t.addr, n)
        if t.kind in (Kind.MWR32, Kind.MWR64):
            if where == "mem" and n <= self.mps and off // 4096 == (off + n - 1) // 4096:
                if off >= ERROR_FROM:
                    self.mem_errors += 1
                    return
                for k in range(t.length):
                    be = t.first_be if k == 0 else (t.last_be if k == t.length - 1 else 0xF)
                    for i in range(4):
                        if be >> i & 1:
                            self.memory[off + 4 * k + i] = t.payload[4 * k + i]
            elif where == "mmio" and (t.length, t.first_be, t.last_be, off % 8) == (2, 15, 15, 0):
                value = int.from_bytes(t.payload, "little")
                self.mmio[off] = value
                self.mmio_log.append(("w", off, value))
            else:
                self.dropped_writes += 1
            return
        bc, lo = byte_count(t.length, t.first_be, t.last_be)
        if where == "mmio" and (t.length, t.first_be, t.last_be, off % 8) == (2, 15, 15, 0):
            self.mmio_log.append(("r", off))
            value = self.mmio.get(off, mmio_init(off))
            self.completions.append(self.cpl(t, CplStatus.SC, byte_count=8,
                                             lower_addr=t.addr & 0x7F,
                                             payload=value.to_bytes(8, "little")))
            return
        if where != "mem":
            self.unsupported += 1
            self.completions.append(self.cpl(t, CplStatus.UR, byte_count=bc,
                                             lower_addr=(t.addr + lo) & 0x7F))
            return
        start, end, first = off, off + n, off + lo
        cs = start
        while cs < end:
            ce = min(end, (cs // self.mps + 1) * self.mps)
            remaining = first + bc - max(cs, first)
            lower = max(cs, first) & 0x7F
            if any(a >= ERROR_FROM for a in range(cs // BEAT * BEAT, ce, BEAT)):
                self.mem_errors += 1
                self.completions.append(self.cpl(t, CplStatus.CA, byte_count=remaining,
                                                 lower_addr=lower))
                return
            self.completions.append(self.cpl(t, CplStatus.SC, byte_count=remaining,
                                             lower_addr=lower,
                                             payload=bytes(self.byte(a) for a in range(cs, ce))))
            cs = ce


def run_completer(dut, width, rng, busy, requests, *, cycles, expect, counters=False,
                  setup=None):
    """Send ``requests`` (Tlps) and wait for ``expect`` completions; return the models."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    req = Requests(dut, width, rng, busy)
    memory = MemoryModel(dut.mem, rng, busy) if hasattr(dut, "mem") else None
    mmio = MmioModel(dut, rng, busy) if hasattr(dut, "mmio") else None
    for t in requests:
        req.send(t)
    sim.add_testbench(req.sender, background=True)
    sim.add_testbench(req.receiver, background=True)
    if memory:
        sim.add_testbench(memory.run, background=True)
    if mmio:
        sim.add_testbench(mmio.run, background=True)
    result = {}

    async def bench(ctx):
        if setup:
            setup(ctx)
        for _ in range(cycles):
            await ctx.tick()
            if len(req.completions) >= expect and not req.to_send:
                for _ in range(60):          # writes drain, stray completions show
                    await ctx.tick()
                for name in ("dropped_writes", "unsupported", "mem_errors", "dropped"):
                    result[name] = ctx.get(getattr(dut, name))
                if hasattr(dut, "id"):
                    result["id"] = ctx.get(dut.id)
                    result["bus_master"] = ctx.get(dut.bus_master)
                return
        raise AssertionError(f"{len(req.completions)} of {expect} completions after "
                             f"{cycles} cycles")
    sim.add_testbench(bench)
    sim.run()
    return req, memory, mmio, result


def cfg(kind, reg, tag, *, value=0, be=0xF, target=make_id(1)):
    return Tlp(kind, requester_id=HOST, tag=tag, cfg_id=target, cfg_reg=reg // 4, first_be=be,
               length=1, payload=value.to_bytes(4, "little") if kind == Kind.CFGWR0 else b"")


def enumeration(bus=1, bar0=BAR0, bar2=BAR2, command=MEMORY_ENABLE | BUS_MASTER):
    """The host's enumeration (as ``cosim/system.py`` does it) and what each step answers:
    [(request, expected completion status, expected data or None)]."""
    t = iter(range(1000))
    steps = [(cfg(Kind.CFGWR0, CFG_COMMAND, next(t), target=make_id(bus)), None),
             (cfg(Kind.CFGRD0, 0x00, next(t), target=make_id(bus)),
              VENDOR_ID | ENDPOINT_DEVICE_ID << 16),
             (cfg(Kind.CFGRD0, 0x08, next(t), target=make_id(bus)), CLASS_CODE)]
    for reg, base, size, low in ((CFG_BAR0, bar0, regmap.MMIO_BYTES, 0b0100),
                                 (CFG_BAR2, bar2, DEFAULT.dram_bytes, 0b1100)):
        steps += [(cfg(Kind.CFGWR0, reg, next(t), value=0xFFFF_FFFF, target=make_id(bus)), None),
                  (cfg(Kind.CFGWR0, reg + 4, next(t), value=0xFFFF_FFFF, target=make_id(bus)),
                   None),
                  (cfg(Kind.CFGRD0, reg, next(t), target=make_id(bus)),
                   (~(size - 1) & 0xFFFF_FFF0) | low),
                  (cfg(Kind.CFGRD0, reg + 4, next(t), target=make_id(bus)), 0xFFFF_FFFF),
                  (cfg(Kind.CFGWR0, reg, next(t), value=base & 0xFFFF_FFFF, target=make_id(bus)),
                   None),
                  (cfg(Kind.CFGWR0, reg + 4, next(t), value=base >> 32, target=make_id(bus)),
                   None),
                  (cfg(Kind.CFGRD0, reg, next(t), target=make_id(bus)),
                   (base & 0xFFFF_FFFF) | low),
                  (cfg(Kind.CFGRD0, reg + 4, next(t), target=make_id(bus)), base >> 32)]
    steps += [(cfg(Kind.CFGWR0, CFG_COMMAND, next(t), value=command, target=make_id(bus)), None),
              (cfg(Kind.CFGRD0, CFG_COMMAND, next(t), target=make_id(bus)), command)]
    return steps


def check_enumeration(steps, completions, bus=1):
    assert len(completions) >= len(steps)
    for (request, value), c in zip(steps, completions):
        assert (c.tag, c.requester_id, c.completer_id, c.status) == \
            (request.tag, HOST, make_id(bus), CplStatus.SC)
        if value is None:
            assert c.kind == Kind.CPL and c.byte_count == 4
        else:
            assert c.kind == Kind.CPLD and int.from_bytes(c.payload, "little") == value, \
                f"register {4 * request.cfg_reg:#x}: {c.payload.hex()} != {value:#x}"
    return completions[len(steps):]


def endpoint(width, **extra):
    return Completer(params_for(width, **extra), mem_axi=DRAM_AXI, mmio=True)


@pytest.mark.parametrize("width", WIDTHS)
def test_configuration_space(width):
    """Enumeration as the host does it: bus capture, IDs, BAR sizing and placement, command
    bits; then a CfgWr0 for another bus moves the ID, and config to function 1 is UR."""
    rng = random.Random(width)
    dut = endpoint(width)
    steps = enumeration(bus=3)
    extra = [cfg(Kind.CFGWR0, 0x3C, 200, value=0x1234, target=make_id(5)),   # bus 5 now
             cfg(Kind.CFGRD0, 0x3C, 201, target=make_id(5)),
             cfg(Kind.CFGRD0, 0x00, 202, target=make_id(5, 0, 1)),
             cfg(Kind.CFGWR0, CFG_COMMAND, 203, value=0xFFFF_FF00 | MEMORY_ENABLE, be=0b0001,
                 target=make_id(5)),
             cfg(Kind.CFGRD0, CFG_COMMAND, 204, target=make_id(5))]
    req, _, _, result = run_completer(dut, width, rng, 0.3, [s for s, _ in steps] + extra,
                                      cycles=4000, expect=len(steps) + len(extra))
    rest = check_enumeration(steps, req.completions, bus=3)
    assert [(c.kind, c.tag, c.completer_id, c.status) for c in rest] == [
        (Kind.CPL, 200, make_id(5), CplStatus.SC), (Kind.CPLD, 201, make_id(5), CplStatus.SC),
        (Kind.CPL, 202, make_id(5), CplStatus.UR), (Kind.CPL, 203, make_id(5), CplStatus.SC),
        (Kind.CPLD, 204, make_id(5), CplStatus.SC)]
    assert rest[1].payload == bytes(4)
    assert int.from_bytes(rest[4].payload, "little") == MEMORY_ENABLE
    assert result["id"] == make_id(5) and result["bus_master"] == 0
    assert result["unsupported"] == 1


def random_traffic(rng, n, mps, *, reads_only=False):
    """Requests to BAR2 (reads with random byte enables, writes of random sizes, reads of
    just-written data), BAR0 (registers, good and bad), nobody; tags 0, 1, ...;
    returns the list and the reference that predicts them."""
    out = []
    fresh = 0x10_0000            # writes go to fresh DRAM, reads of it only after
    written = []
    for tag in range(n):
        tag &= 0xFF
        what = rng.choice(["read", "read", "write", "reread", "mmio_w", "mmio_r", "bad_mmio",
                           "nobody", "error_read", "error_write"])
        if reads_only and what in ("write", "mmio_w", "error_write"):
            what = "read"
        if what == "reread" and not written:
            what = "read"
        fbe = rng.choice([0xF, 0xF, 0xE, 0x8, 0x3])
        lbe = rng.choice([0xF, 0xF, 0x1, 0x7])
        if what in ("read", "reread", "error_read"):
            if what == "reread":
                addr, length = rng.choice(written)
            else:
                length = rng.choice([1, 2, 8, 16, 64, 128, rng.randint(1, 256)])
                base = ERROR_FROM - 256 if what == "error_read" else 0x4000 * rng.randrange(64)
                addr = base + 4 * rng.randrange(256)
            if length == 1:
                lbe = 0
            out.append(Tlp(Kind.MRD64, requester_id=HOST, tag=tag, addr=BAR2 + addr,
                           length=length, first_be=fbe, last_be=lbe))
        elif what in ("write", "error_write"):
            length = rng.choice([1, 2, 3, 16, 63, 64])
            if what == "error_write":
                addr = ERROR_FROM + 4 * rng.randrange(256)
            else:
                addr = fresh + 4 * rng.randrange(BEAT // 4)
                fresh = (addr + 4 * length + 63) // 64 * 64
                if addr // 4096 != (addr + 4 * length - 1) // 4096:
                    addr = (addr // 4096 + 1) * 4096
                    fresh = addr + 4 * length
                written.append((addr, length))
            if length == 1:
                lbe = 0
            out.append(Tlp(Kind.MWR64, requester_id=HOST, tag=tag, addr=BAR2 + addr,
                           first_be=fbe, last_be=lbe, payload=rng.randbytes(4 * length)))
        elif what == "mmio_w":
            out.append(Tlp(Kind.MWR64, requester_id=HOST, tag=tag,
                           addr=BAR0 + 8 * rng.randrange(8), first_be=0xF, last_be=0xF,
                           payload=rng.randbytes(8)))
        elif what == "mmio_r":
            out.append(Tlp(Kind.MRD64, requester_id=HOST, tag=tag,
                           addr=BAR0 + 8 * rng.randrange(8), length=2, first_be=0xF,
                           last_be=0xF))
        elif what == "bad_mmio":
            kind = rng.choice([Kind.MRD64, Kind.MWR64])
            addr = BAR0 + 4 * rng.randrange(16) + 4
            out.append(Tlp(kind, requester_id=HOST, tag=tag, addr=addr, length=1,
                           first_be=0xF, last_be=0,
                           payload=rng.randbytes(4) if kind == Kind.MWR64 else b""))
        else:
            kind = rng.choice([Kind.MRD32, Kind.MWR32, Kind.MRD64])
            addr = rng.choice([0x1000, 0x8000_0000]) if kind != Kind.MRD64 else BUS.dram(3)
            out.append(Tlp(kind, requester_id=HOST, tag=tag, addr=addr, length=2, last_be=0xF,
                           payload=rng.randbytes(8) if kind == Kind.MWR32 else b""))
    ref = Reference(mps)
    for t in out:
        ref.request(t)
    return out, ref


def check_against(ref, req, memory, mmio, result, completions):
    assert len(completions) == len(ref.completions)
    for got, want in zip(completions, ref.completions):
        assert (got.kind, got.status, got.tag, got.requester_id, got.completer_id,
                got.byte_count, got.lower_addr) == \
            (want.kind, want.status, want.tag, want.requester_id, want.completer_id,
             want.byte_count, want.lower_addr), f"{got} != {want}"
        assert got.payload == want.payload, f"tag {got.tag}: data"
    assert {a: v for a, v in memory.written.items()} == ref.memory
    assert mmio.log == ref.mmio_log
    assert (result["dropped_writes"], result["unsupported"], result["mem_errors"]) == \
        (ref.dropped_writes, ref.unsupported, ref.mem_errors)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("seed", [1, 2])
def test_memory_and_register_requests(width, seed):
    rng = random.Random(seed * 10 + width)
    p = params_for(width)
    dut = endpoint(width)
    steps = enumeration()
    traffic, ref = random_traffic(rng, 60, p.link_max_payload)
    req, memory, mmio, result = run_completer(
        dut, width, rng, 0.3, [s for s, _ in steps] + traffic, cycles=30_000,
        expect=len(steps) + len(ref.completions))
    rest = check_enumeration(steps, req.completions)
    check_against(ref, req, memory, mmio, result, rest)


@pytest.mark.parametrize("width", WIDTHS)
def test_ordering_after_writes(width):
    """A read right behind a write of the same bytes sees them (its AR waits for the write's
    B, and the memory model only shows a write once its B left), and a register write (a
    doorbell) is not taken before the memory writes ahead of it answered."""
    rng = random.Random(9)
    p = params_for(width)
    dut = endpoint(width)
    steps = enumeration()
    reqs = []
    for k in range(8):
        addr = BAR2 + 0x20_0000 + 0x100 * k + 4 * k
        reqs.append(Tlp(Kind.MWR64, requester_id=HOST, tag=2 * k, addr=addr, last_be=0xF,
                        payload=rng.randbytes(4 * (k + 2))))
        reqs.append(Tlp(Kind.MRD64, requester_id=HOST, tag=2 * k + 1, addr=addr, length=k + 2,
                        last_be=0xF))
    reqs.append(Tlp(Kind.MWR64, requester_id=HOST, tag=99, addr=BAR2 + 0x30_0000, last_be=0xF,
                    payload=rng.randbytes(256)))
    reqs.append(Tlp(Kind.MWR64, requester_id=HOST, tag=100, addr=BAR0 + 0x40, last_be=0xF,
                    payload=rng.randbytes(8)))
    ref = Reference(p.link_max_payload)
    for t in reqs:
        ref.request(t)
    req, memory, mmio, result = run_completer(dut, width, rng, 0.5,
                                              [s for s, _ in steps] + reqs, cycles=8000,
                                              expect=len(steps) + len(ref.completions))
    check_against(ref, req, memory, mmio, result, check_enumeration(steps, req.completions))
    assert mmio.cycles[-1] > memory.b_cycles[-1]


@pytest.mark.parametrize("width", WIDTHS)
def test_small_payload_splits_completions(width):
    """With a 128-byte max payload, a 512-byte read is answered in 128-byte completions, the
    first ending on the first 128-byte boundary."""
    rng = random.Random(5)
    dut = endpoint(width, link_max_payload=128)
    steps = enumeration()
    reads = [Tlp(Kind.MRD64, requester_id=HOST, tag=k, addr=BAR2 + 0x2000 + 0x44 * k,
                 length=128, first_be=0xF, last_be=0xF) for k in range(3)]
    ref = Reference(128)
    for t in reads:
        ref.request(t)
    req, memory, mmio, result = run_completer(dut, width, rng, 0.2, [s for s, _ in steps] + reads,
                                              cycles=8000,
                                              expect=len(steps) + len(ref.completions))
    rest = check_enumeration(steps, req.completions)
    check_against(ref, req, memory, mmio, result, rest)
    assert [len(c.payload) for c in rest[:5]] == [128, 128, 128, 128, 128 - 0x44]
    assert all(len(c.payload) <= 128 for c in rest)


@pytest.mark.parametrize("width", WIDTHS)
def test_unclaimed_before_enable(width):
    """Before memory space is enabled, every memory request is unsupported; register reads
    never reach the register block."""
    rng = random.Random(6)
    dut = endpoint(width)
    steps = enumeration(command=BUS_MASTER)
    reqs = [Tlp(Kind.MRD64, requester_id=HOST, tag=1, addr=BAR2, length=4),
            Tlp(Kind.MWR64, requester_id=HOST, tag=2, addr=BAR2, payload=bytes(8), last_be=0xF),
            Tlp(Kind.MRD64, requester_id=HOST, tag=3, addr=BAR0, length=2, last_be=0xF)]
    req, memory, mmio, result = run_completer(dut, width, rng, 0.2,
                                              [s for s, _ in steps] + reqs, cycles=4000,
                                              expect=len(steps) + 2)
    rest = check_enumeration(steps, req.completions)
    assert [(c.kind, c.tag, c.status) for c in rest] == [(Kind.CPL, 1, CplStatus.UR),
                                                          (Kind.CPL, 3, CplStatus.UR)]
    assert mmio.log == [] and memory.ar_log == [] and memory.aw_log == []
    assert result["dropped_writes"] == 1 and result["bus_master"] == 1


def test_root_complex_window():
    """Without configuration space: a fixed memory window (host memory at 0), completer ID
    from the input, configuration requests UR."""
    width = 8
    rng = random.Random(7)
    p = params_for(width)
    host_axi = AxiParams(addr_width=28, data_bytes=BEAT, id_width=1)
    dut = Completer(p, mem_axi=host_axi, config=False, mem_window=(0, 1 << 28))
    reqs = [Tlp(Kind.MWR32, requester_id=make_id(2), tag=0, addr=0x1000 + 4 * k,
                payload=bytes(range(4 * k, 4 * k + 8)), last_be=0xF) for k in range(4)]
    reqs += [Tlp(Kind.MSGD, requester_id=make_id(2), payload=bytes(4)),     # not for it
             Tlp(Kind.MRD32, requester_id=make_id(2), tag=9, addr=0x1000, length=5,
                 last_be=0xF),
             Tlp(Kind.MRD64, requester_id=make_id(2), tag=10, addr=1 << 28, length=1),
             cfg(Kind.CFGRD0, 0, 11)]
    req, memory, _, result = run_completer(dut, width, rng, 0.3, reqs, cycles=3000, expect=3,
                                           setup=lambda ctx: ctx.set(dut.completer_id, 0x0001))
    want = bytearray(mem_bytes(0x1000, 20))
    for k in range(4):
        want[4 * k: 4 * k + 8] = bytes(range(4 * k, 4 * k + 8))
    c = req.completions
    assert (c[0].kind, c[0].tag, c[0].completer_id, c[0].payload) == \
        (Kind.CPLD, 9, 0x0001, bytes(want))
    assert [(x.kind, x.tag, x.status) for x in c[1:]] == [(Kind.CPL, 10, CplStatus.UR),
                                                          (Kind.CPL, 11, CplStatus.UR)]
    assert (result["dropped"], result["unsupported"]) == (1, 2)


@pytest.mark.parametrize("width", WIDTHS)
def test_read_completion_throughput(width):
    """512-byte reads back to back, nothing pausing: CplD beats leave on nearly every cycle
    (the AXI side is four times faster than the link at W = 8)."""
    rng = random.Random(8)
    dut = endpoint(width)
    steps = enumeration()
    reads = [Tlp(Kind.MRD64, requester_id=HOST, tag=k, addr=BAR2 + 0x8000 + 512 * k,
                 length=128, last_be=0xF) for k in range(24)]
    req, *_ = run_completer(dut, width, rng, 0.0, [s for s, _ in steps] + reads,
                            cycles=20_000, expect=len(steps) + 48)
    # the steady stream: from the first CplD beat of the third read to the last
    beats = req.cpl_beats[-(24 - 2) * 2 * (-(-(12 + 256) // width)):]
    rate = len(beats) / (beats[-1] - beats[0] + 1)
    print(f"W={width}: {rate:.3f} completion beats per cycle")
    assert rate >= 0.95


def test_bad_parameters():
    with pytest.raises(ValueError):
        Completer(DEFAULT, mem_axi=DRAM_AXI, config=False)
    with pytest.raises(ValueError):
        Completer(DEFAULT, mem_axi=DRAM_AXI, config=False, mem_window=(0x1000, 1 << 20))
    with pytest.raises(ValueError):
        Completer(DEFAULT, mem_axi=AxiParams(addr_width=20, data_bytes=BEAT, id_width=1))
