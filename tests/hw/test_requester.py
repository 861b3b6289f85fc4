# amaranth: UnusedElaboratable=no
"""Tests of the endpoint's requester (``hw/link/requester.py``) in Amaranth's simulator.

A Python AXI master (:class:`AxiMaster`) drives the link port; a Python link partner
(:class:`LinkPartner`) decodes every TLP on ``tlp_tx`` with ``tlp.decode`` and answers MRds
with completions -- split on 64-byte boundaries at random, delayed, tags interleaved -- from
a memory whose bytes are a function of their address (:func:`mem_byte`). The checks compare
against a reference computed here in Python: which TLPs a burst must become (bytes, byte
enables, 3DW or 4DW, splitting), which R beats a read must return. Every channel pauses at
random unless a test measures throughput.
"""

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from npusim.hw.axi import Resp
from npusim.hw.link.requester import Requester
from npusim.hw.link.tlp import (CplStatus, Kind, MSG_VENDOR_TYPE1, Tlp, VENDOR_ID, decode,
                                make_id)
from npusim.sw.fm.system import BusMap
from npusim.sw.params import DEFAULT
from pauses import never, pauses

WIDTHS = [8, 16]
BEAT = DEFAULT.dram_bytes_per_cycle
MSI = BusMap().msi_base
RID = make_id(3)


def params_for(width, **extra):
    return DEFAULT.replace(link_lanes=width // 4, link_bytes_per_lane=4, **extra)


def mem_byte(addr):
    """The partner's memory: a byte that depends on its whole address."""
    return (addr * 2654435761 >> 11 ^ addr >> 29) & 0xFF


def mem_bytes(addr, n):
    return bytes(mem_byte(addr + i) for i in range(n))


def pause_gen(rng, busy):
    return pauses(random.Random(rng.random()), busy) if busy else never()


# -- the AXI side ---------------------------------------------------------------------------------

class WriteBurst:
    """An AXI write burst: ``beats`` of (data, strb); its strobed bytes are one contiguous run
    (possibly empty)."""

    def __init__(self, addr, beats, ident):
        self.addr, self.beats, self.id = addr, beats, ident

    def written(self):
        """{byte address: value} of the strobed bytes."""
        out = {}
        for k, (value, strb) in enumerate(self.beats):
            raw = value.to_bytes(BEAT, "little")
            for i in range(BEAT):
                if strb >> i & 1:
                    out[self.addr + BEAT * k + i] = raw[i]
        return out


def random_write(rng, addr, beats, ident, *, start=None, end=None):
    """A burst of ``beats`` beats at ``addr`` strobing bytes ``[start, end)`` of the burst
    (random when not given)."""
    n = BEAT * beats
    if start is None:
        start = rng.randrange(BEAT) if rng.random() < 0.7 else 0
        end = n - (rng.randrange(BEAT) if rng.random() < 0.7 else 0)
        if end <= start:
            start, end = 0, n
    out = []
    for k in range(beats):
        strb = 0
        for i in range(BEAT):
            if start <= BEAT * k + i < end:
                strb |= 1 << i
        out.append((rng.getrandbits(8 * BEAT), strb))
    return WriteBurst(addr, out, ident)


class AxiMaster:
    """Issues write bursts (AW, W) and read bursts (AR) on an AXI slave port and collects B
    responses and R beats; ``busy`` sets how often each channel pauses."""

    def __init__(self, port, rng, busy, *, writes=(), reads=(), gate=None):
        self.port, self.gate = port, gate or (lambda: True)
        self.writes = list(writes)   # WriteBurst
        self.reads = list(reads)     # (addr, beats, id)
        self.pause = {name: pause_gen(rng, busy) for name in ("ar", "aw", "w", "r", "b")}
        self.b = []                   # (id, resp) in arrival order
        self.r = []                   # (id, data, resp, last) in arrival order
        self.b_cycles, self.r_cycles = [], []
        self.cycle = 0

    def add(self, sim):
        sim.add_testbench(self.aw, background=True)
        sim.add_testbench(self.w, background=True)
        sim.add_testbench(self.ar, background=True)
        sim.add_testbench(self.responses, background=True)

    async def _send(self, ctx, stream, pause, payload):
        while not self.gate() or next(pause):
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, payload)
        ctx.set(stream.valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            if ready:
                break
        ctx.set(stream.valid, 0)

    async def aw(self, ctx):
        for burst in self.writes:
            await self._send(ctx, self.port.aw, self.pause["aw"],
                             {"addr": burst.addr, "len": len(burst.beats) - 1, "id": burst.id})

    async def w(self, ctx):
        for burst in self.writes:
            for k, (value, strb) in enumerate(burst.beats):
                await self._send(ctx, self.port.w, self.pause["w"],
                                 {"data": value, "strb": strb,
                                  "last": k == len(burst.beats) - 1})

    async def ar(self, ctx):
        for addr, beats, ident in self.reads:
            await self._send(ctx, self.port.ar, self.pause["ar"],
                             {"addr": addr, "len": beats - 1, "id": ident})

    async def responses(self, ctx):
        r, b = self.port.r, self.port.b
        while True:
            ctx.set(r.ready, not next(self.pause["r"]))
            ctx.set(b.ready, not next(self.pause["b"]))
            _, _, rv, rr, rp, bv, br, bp = await ctx.tick().sample(
                r.valid, r.ready, r.payload, b.valid, b.ready, b.payload)
            self.cycle += 1
            if rv and rr:
                self.r.append((rp.id, rp.data, rp.resp, rp.last))
                self.r_cycles.append(self.cycle)
            if bv and br:
                self.b.append((bp.id, bp.resp))
                self.b_cycles.append(self.cycle)

    def done(self):
        return (len(self.b) == len(self.writes)
                and len(self.r) == sum(beats for _, beats, _ in self.reads))


# -- the link partner -----------------------------------------------------------------------------

class LinkPartner:
    """The far side of the requester: takes TLPs from ``tx`` (pausing), decodes and logs
    them, and answers MRds with completions on ``rx``.

    ``policy(addr)`` says how an MRd at ``addr`` is answered: ``"ok"`` (CplDs of memory data,
    split at random 64-byte boundaries, at most ``mps`` bytes each), a ``CplStatus`` (one Cpl
    with that status), ``"drop"`` (never) or ``("late", cycles)`` (correct data after that
    long). Completions of different tags interleave at random (``in_order``: oldest first),
    ``delay`` cycles at most after their MRd; those of one tag stay in address order.
    """

    def __init__(self, tx, rx, width, rng, busy, *, mps=256, delay=40, policy=None,
                 completer_id=make_id(0), in_order=False):
        self.tx, self.rx, self.width, self.rng = tx, rx, width, rng
        self.in_order, self.seq = in_order, 0
        self.mps, self.delay, self.completer_id = mps, delay, completer_id
        self.policy = policy or (lambda addr: "ok")
        self.tx_pause, self.rx_pause = pause_gen(rng, busy), pause_gen(rng, busy)
        self.log = []          # (cycle of the last beat, Tlp)
        self.pending = {}      # tag -> deque of (due cycle, sequence number, raw TLP)
        self.cycle = 0
        self.tx_beats = []     # cycles of the beats taken
        self.rx_beats = []     # cycles of the beats given
        self.rx_bytes = self.rx_payload = 0

    def add(self, sim):
        sim.add_testbench(self.take, background=True)
        sim.add_testbench(self.give, background=True)

    def tlps(self, *kinds):
        return [t for _, t in self.log if not kinds or t.kind in kinds]

    async def take(self, ctx):
        raw = bytearray()
        while True:
            ready = not next(self.tx_pause)
            ctx.set(self.tx.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(self.tx.valid, self.tx.payload)
            self.cycle += 1
            if not (valid and ready):
                continue
            self.tx_beats.append(self.cycle)
            assert 1 <= payload.dws <= self.width // 4
            assert payload.last or payload.dws == self.width // 4, "a short beat inside a TLP"
            raw += payload.data.to_bytes(self.width, "little")[:4 * payload.dws]
            if payload.last:
                tlp = decode(raw)
                raw = bytearray()
                self.log.append((self.cycle, tlp))
                if tlp.kind in (Kind.MRD32, Kind.MRD64):
                    self.answer(tlp)

    def answer(self, mrd):
        assert mrd.kind == (Kind.MRD32 if mrd.addr + 4 * mrd.length <= 1 << 32 else Kind.MRD64)
        policy = self.policy(mrd.addr)
        due = self.cycle + self.rng.randint(1, self.delay)
        queue = self.pending.setdefault(mrd.tag, deque())
        assert not queue, f"tag {mrd.tag} reused while outstanding"
        n = 4 * mrd.length
        if isinstance(policy, CplStatus):
            self.queue(queue, due, Tlp(Kind.CPL, requester_id=mrd.requester_id, tag=mrd.tag,
                                       completer_id=self.completer_id, status=policy,
                                       byte_count=n, lower_addr=mrd.addr & 0x7F,
                                       length=0).encode())
            return
        if policy == "drop":
            del self.pending[mrd.tag]
            return
        if isinstance(policy, tuple):
            due = self.cycle + policy[1]
        addr, end = mrd.addr, mrd.addr + n
        while addr < end:
            # a random RCB (64-byte) boundary, at most mps bytes on
            limit = min(end, addr + self.mps - (addr % 64 if addr % 64 else 0))
            stops = [b for b in range((addr // 64 + 1) * 64, limit + 1, 64)] + [limit]
            stop = min(self.rng.choice(stops), end)
            self.queue(queue, due, Tlp(Kind.CPLD, requester_id=mrd.requester_id, tag=mrd.tag,
                                       completer_id=self.completer_id, byte_count=end - addr,
                                       lower_addr=addr & 0x7F,
                                       payload=mem_bytes(addr, stop - addr)).encode())
            addr = stop
            due += self.rng.randint(0, 4)

    def queue(self, queue, due, raw):
        queue.append((due, self.seq, raw))
        self.seq += 1

    def request(self, raw):
        """Queue a request TLP for ``rx``; requests go in order (among completions)."""
        self.queue(self.pending.setdefault("requests", deque()), 0, raw)

    async def give(self, ctx):
        while True:
            ready = [tag for tag, q in self.pending.items() if q and q[0][0] <= self.cycle]
            if not ready or next(self.rx_pause):
                ctx.set(self.rx.valid, 0)
                await ctx.tick()
                continue
            if self.in_order:
                tag = min(ready, key=lambda t: self.pending[t][0][1])
            else:
                tag = self.rng.choice(ready)
            _, _, raw = self.pending[tag].popleft()
            W = self.width
            for k in range(0, len(raw), W):
                while next(self.rx_pause):
                    ctx.set(self.rx.valid, 0)
                    await ctx.tick()
                chunk = raw[k:k + W]
                ctx.set(self.rx.payload, {"data": int.from_bytes(chunk, "little"),
                                          "dws": len(chunk) // 4, "last": k + W >= len(raw)})
                ctx.set(self.rx.valid, 1)
                while True:
                    _, _, taken = await ctx.tick().sample(self.rx.ready)
                    if taken:
                        self.rx_beats.append(self.cycle)
                        break
            ctx.set(self.rx.valid, 0)
            t = decode(raw)
            self.rx_bytes += len(raw)
            self.rx_payload += len(t.payload)


# -- the reference ------------------------------------------------------------------------------

def expected_write_tlps(burst, mps, msi_base=MSI):
    """(kind, dword address, first_be, last_be, {byte address: value}) of every TLP the burst
    must become, in order."""
    written = burst.written()
    if not written:
        return []
    start, end = min(written), max(written) + 1
    out = []
    while start < end:
        stop = min(end, (start // mps + 1) * mps)
        dw0, dw1 = start // 4, (stop - 1) // 4
        fbe = (0xF << start % 4) & 0xF
        lbe = 0xF >> (3 - (stop - 1) % 4)
        if dw0 == dw1:
            fbe, lbe = fbe & lbe, 0
        if msi_base <= start < msi_base + 4096:
            kind = Kind.MSGD
        else:
            kind = Kind.MWR32 if stop <= 1 << 32 else Kind.MWR64
        out.append((kind, 4 * dw0, fbe, lbe,
                    {a: written[a] for a in range(start, stop)}))
        start = stop
    return out


def tlp_bytes(t):
    """{byte address: value} a decoded MWr writes."""
    out = {}
    n = len(t.payload) // 4
    for k in range(n):
        be = t.first_be if k == 0 else (t.last_be if k == n - 1 else 0xF)
        for i in range(4):
            if be >> i & 1:
                out[t.addr + 4 * k + i] = t.payload[4 * k + i]
    return out


def check_write_tlps(partner, bursts, mps, rid=RID):
    got = partner.tlps(Kind.MWR32, Kind.MWR64, Kind.MSGD)
    want = [e for burst in bursts for e in expected_write_tlps(burst, mps)]
    assert len(got) == len(want), f"{len(got)} write TLPs, expected {len(want)}"
    for t, (kind, addr, fbe, lbe, written) in zip(got, want):
        assert t.kind == kind and t.requester_id == rid
        if kind == Kind.MSGD:
            assert (t.msg_code, t.msg_vendor) == (MSG_VENDOR_TYPE1, VENDOR_ID)
            assert t.payload == bytes(written.get(addr + i, 0) for i in range(len(t.payload)))
            continue
        assert (t.addr, t.first_be, t.last_be) == (addr, fbe, lbe), \
            f"{t.kind.value} at {t.addr:#x} BEs {t.first_be:x}/{t.last_be:x}; expected " \
            f"{addr:#x} {fbe:x}/{lbe:x}"
        assert len(t.payload) <= mps and t.addr // 4096 == (t.addr + len(t.payload) - 1) // 4096
        assert tlp_bytes(t) == written


def expected_r(reads, policy, mrrs):
    """R beats (id, data, resp, last) of ``reads`` in order: an error answers every beat of
    its request and holds for the rest of the burst."""
    resp_of = {CplStatus.UR: Resp.DECERR, CplStatus.CA: Resp.SLVERR, "drop": Resp.SLVERR}
    out = []
    for addr, beats, ident in reads:
        sticky = Resp.OKAY
        for k in range(beats):
            a = addr + BEAT * k
            if k == 0 or a % mrrs == 0:
                p = policy(a)
                own = resp_of.get(p, Resp.OKAY) if not isinstance(p, tuple) else Resp.SLVERR
                sticky = own if own else sticky
            resp = sticky
            value = 0 if resp else int.from_bytes(mem_bytes(a, BEAT), "little")
            out.append((ident, value, resp, int(k == beats - 1)))
    return out


COUNTERS = ("timeouts", "dropped_completions", "discarded")


def simulate(dut, master, partner, *, cycles, dl_up=1, rid=RID, until=None):
    """Run until ``until()`` (default: the master got every response), at most ``cycles``;
    return the requester's counters."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    master.add(sim)
    partner.add(sim)
    counters = {}

    async def bench(ctx):
        ctx.set(dut.requester_id, rid)
        ctx.set(dut.dl_up, dl_up)
        for _ in range(cycles):
            await ctx.tick()
            if (until or master.done)():
                for _ in range(20):       # let stray traffic show
                    await ctx.tick()
                counters.update({name: ctx.get(getattr(dut, name)) for name in COUNTERS})
                return
        raise AssertionError(f"not done after {cycles} cycles: {len(master.b)} B of "
                             f"{len(master.writes)}, {len(master.r)} R beats")
    sim.add_testbench(bench)
    sim.run()
    return counters


def random_writes(rng, count):
    """Bursts of random sizes and strobe runs: host memory below and above 4 GiB, a peer's
    BAR, MSIs, some without any strobe."""
    out = []
    for k in range(count):
        ident = rng.randrange(16)
        region = rng.choice(["low", "high", "peer", "msi", "single", "empty"])
        if region == "msi":
            out.append(random_write(rng, MSI, 1, ident, start=4 * (k % 8), end=4 * (k % 8) + 4))
            continue
        base = {"low": 0x0123_0000, "high": 0x1_2345_0000, "peer": BusMap().dram(1)}.get(
            region, 0x40_0000)
        beats = rng.randint(1, 20)
        addr = base + BEAT * rng.randrange(4096 // BEAT)
        addr = min(addr, (addr // 4096 + 1) * 4096 - BEAT * beats)   # no 4 KiB crossing
        if region == "single":
            s = rng.randrange(BEAT)
            out.append(random_write(rng, addr, 1, ident, start=s,
                                    end=rng.randint(s + 1, BEAT)))
        elif region == "empty":
            out.append(random_write(rng, addr, beats, ident, start=0, end=0))
        else:
            out.append(random_write(rng, addr, beats, ident))
    # a 4 GiB boundary: the burst just below it is 3DW
    out.append(random_write(rng, (1 << 32) - 2 * BEAT, 2, 1))
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("seed", [1, 2])
def test_writes_become_mwr_tlps(width, seed):
    rng = random.Random(seed * 10 + width)
    p = params_for(width)
    dut = Requester(p)
    bursts = random_writes(rng, 40)
    master = AxiMaster(dut.axi, rng, 0.4, writes=bursts)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.4)
    simulate(dut, master, partner, cycles=20_000)
    check_write_tlps(partner, bursts, p.link_max_payload)
    assert master.b == [(b.id, Resp.OKAY) for b in bursts]


@pytest.mark.parametrize("width", WIDTHS)
def test_write_splitting_at_small_max_payload(width):
    """With a 128-byte max payload a 4 KiB-aligned 16-beat burst is four MWrs."""
    rng = random.Random(width)
    p = params_for(width, link_max_payload=128)
    dut = Requester(p)
    bursts = [random_write(rng, 0x2000, 16, 0, start=0, end=512),
              random_write(rng, 0x3000 - 4 * BEAT, 4, 1, start=5, end=4 * BEAT - 3)]
    master = AxiMaster(dut.axi, rng, 0.3, writes=bursts)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.3)
    simulate(dut, master, partner, cycles=5_000)
    check_write_tlps(partner, bursts, 128)
    assert len(partner.tlps()) == 4 + 1


def random_reads(rng, count, bases):
    out = []
    for _ in range(count):
        beats = rng.choice([1, 2, 16, rng.randint(1, 40)])
        base = rng.choice(bases)
        addr = base + BEAT * rng.randrange(4096 // BEAT)
        addr = min(addr, (addr // 4096 + 1) * 4096 - BEAT * beats)
        out.append((addr, beats, rng.randrange(16)))
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("seed", [1, 2])
def test_reads_return_data_in_order(width, seed):
    rng = random.Random(seed * 100 + width)
    p = params_for(width, link_read_tags=8)
    dut = Requester(p)
    reads = random_reads(rng, 30, [0x0040_0000, 0x1_0000_0000, BusMap().dram(2)])
    master = AxiMaster(dut.axi, rng, 0.4, reads=reads)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.4)
    counters = simulate(dut, master, partner, cycles=30_000)
    assert master.r == expected_r(reads, partner.policy, p.link_max_read_request)
    mrds = partner.tlps(Kind.MRD32, Kind.MRD64)
    assert all(t.requester_id == RID and t.first_be == 0xF
               and t.last_be == (0xF if t.length > 1 else 0)
               and 4 * t.length <= p.link_max_read_request
               and t.addr // 4096 == (t.addr + 4 * t.length - 1) // 4096 for t in mrds)
    assert sum(4 * t.length for t in mrds) == BEAT * sum(b for _, b, _ in reads)
    assert counters == {"timeouts": 0, "dropped_completions": 0, "discarded": 0}


LATE = 1200


def errors_policy(addr):
    """By 1 MiB region: 1 UR, 2 CA, 3 no answer, 4 an answer after the timeout; 5: CA
    in odd 512-byte blocks."""
    region = addr >> 20 & 0xF
    if region == 5:
        return CplStatus.CA if addr >> 9 & 1 else "ok"
    return {1: CplStatus.UR, 2: CplStatus.CA, 3: "drop", 4: ("late", LATE)}.get(region, "ok")


@pytest.mark.parametrize("width", WIDTHS)
def test_read_errors_and_timeouts(width):
    """UR -> DECERR, CA -> SLVERR, no completion -> SLVERR after the timeout; completions
    arriving after it are dropped, and the tags are reused safely afterwards."""
    rng = random.Random(width)
    p = params_for(width, link_completion_timeout=600, link_read_tags=4)
    dut = Requester(p)
    reads = random_reads(rng, 24, [0x10_0000 * r for r in range(5)])
    reads[3:3] = [(0x50_0000, 32, 5),    # OKAY, then CA in the burst's second MRd
                  (0x50_0200, 32, 6),    # CA, then the error holds for the OKAY MRd
                  (0x00_0000, 32, 7)]
    master = AxiMaster(dut.axi, rng, 0.3, reads=reads)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.3, policy=errors_policy)
    counters = simulate(dut, master, partner, cycles=60_000,
                        until=lambda: master.done() and not any(partner.pending.values()))
    mrrs = p.link_max_read_request
    assert master.r == expected_r(reads, errors_policy, mrrs)
    lost = [t for t in partner.tlps(Kind.MRD32, Kind.MRD64)
            if isinstance(errors_policy(t.addr), tuple) or errors_policy(t.addr) == "drop"]
    assert counters["timeouts"] == len(lost) > 0
    late = sum(1 for t in lost if isinstance(errors_policy(t.addr), tuple))
    assert late and counters["dropped_completions"] >= late


@pytest.mark.parametrize("width", WIDTHS)
def test_link_down(width):
    """dl_up low: writes are discarded (B SLVERR, no TLP), reads answer SLVERR at once."""
    rng = random.Random(7)
    p = params_for(width)
    dut = Requester(p)
    bursts = [random_write(rng, 0x1000 * k, 4, k) for k in range(4)]
    reads = [(0x8000 + 0x200 * k, 16, k) for k in range(4)]
    master = AxiMaster(dut.axi, rng, 0.2, writes=bursts, reads=reads)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.2)
    counters = simulate(dut, master, partner, cycles=3_000, dl_up=0)
    assert partner.log == [] and counters["discarded"] == 4
    assert master.b == [(k, Resp.SLVERR) for k in range(4)]
    assert master.r == [(k, 0, Resp.SLVERR, int(i == 15)) for k in range(4) for i in range(16)]


def measure_writes(width, bursts_n=40, addr=0x1_0000_0000):
    rng = random.Random(3)
    p = params_for(width)
    dut = Requester(p)
    bursts = [random_write(rng, addr + 512 * k, 16, 0, start=0, end=512)
              for k in range(bursts_n)]
    master = AxiMaster(dut.axi, rng, 0.0, writes=bursts)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.0)
    simulate(dut, master, partner, cycles=20_000)
    check_write_tlps(partner, bursts, p.link_max_payload)
    beats = partner.tx_beats
    return len(beats) / (beats[-1] - beats[0] + 1)


@pytest.mark.parametrize("width", WIDTHS)
def test_write_throughput(width):
    """16-beat bursts back to back: MWr beats leave on nearly every cycle."""
    rate = measure_writes(width)
    print(f"W={width}: {rate:.3f} TLP beats per cycle")
    assert rate >= 0.95


def measure_reads(width, bursts_n=24):
    rng = random.Random(4)
    p = params_for(width)
    dut = Requester(p)
    reads = [(0x10_0000 + 512 * k, 16, 1) for k in range(bursts_n)]
    master = AxiMaster(dut.axi, rng, 0.0, reads=reads)
    partner = LinkPartner(dut.tlp_tx, dut.cpl_rx, width, rng, 0.0, delay=1, in_order=True)
    simulate(dut, master, partner, cycles=20_000)
    assert master.r == expected_r(reads, partner.policy, p.link_max_read_request)
    # from the first completion beat in to the last R beat out
    cycles = master.r_cycles[-1] - partner.rx_beats[0] + 1
    rate = len(master.r) / cycles
    # what the completion stream carries: W bytes a cycle, less the headers
    ideal = width * partner.rx_payload / partner.rx_bytes / BEAT
    return rate, ideal, master.r_cycles[-1] - partner.rx_beats[-1]


@pytest.mark.parametrize("width", WIDTHS)
def test_read_throughput(width):
    """Completions streaming back one beat per cycle (split on 64-byte boundaries): R beats
    keep up with the completions' payload, W : 32 B less header beats."""
    rate, ideal, tail = measure_reads(width)
    print(f"W={width}: {rate:.3f} R beats per cycle (completion payload {ideal:.3f}, "
          f"last R beat {tail} cycles after the last completion beat)")
    assert rate >= 0.97 * ideal and tail <= 4


def test_bad_parameters():
    with pytest.raises(ValueError):
        Requester(DEFAULT.replace(link_read_tags=24))
    with pytest.raises(ValueError):
        Requester(DEFAULT.replace(link_max_payload=100))
    with pytest.raises(ValueError):
        Requester(params_for(64))
    with pytest.raises(ValueError):
        Requester(DEFAULT, msi_base=0xFEE0_0100)
