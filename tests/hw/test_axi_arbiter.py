# amaranth: UnusedElaboratable=no
"""Tests of ``hw/axi_arbiter.py`` in Amaranth's simulator (no Verilator): routing by ID,
round-robin fairness, one grant per cycle, requests held while waiting, and W beats in AW
grant order. The masters and the slave are small Python models (:class:`Master`,
:class:`SlaveModel`); every test runs with random pauses on all channels, and the
throughput tests without any.
"""

import random
from collections import defaultdict, deque
from functools import partial

import pytest
from amaranth.sim import Simulator

from npusim.hw.axi import AxiParams
from npusim.hw.axi_arbiter import AxiArbiter
from pauses import never, pauses


PARAMS = AxiParams(addr_width=16, data_bytes=4, id_width=2)
BEAT = PARAMS.data_bytes


def read_data(addr):
    """What the slave model returns for the beat at byte ``addr``."""
    return (addr * 2654435761 + 12345) & 0xFFFF_FFFF


def write_data(master, addr):
    """What master ``master`` writes to the beat at byte ``addr``."""
    return (master << 24) ^ (addr * 40503) & 0xFFFF_FFFF


def bursts(rng, count, *, base):
    """``count`` random (addr, len, id) bursts in this master's 4 KiB window at ``base``."""
    result = []
    for _ in range(count):
        beats = rng.randint(1, 8)
        addr = base + BEAT * rng.randrange(4096 // BEAT - beats)
        result.append((addr, beats - 1, rng.randrange(1 << PARAMS.id_width)))
    return result


class Master:
    """One master port: issues its read and write bursts (each channel pausing per its pause
    generator) and records the R beats and B responses it gets."""

    def __init__(self, port, index, reads, writes, rng, busy):
        self.port, self.index = port, index
        self.reads, self.writes = reads, writes
        self.pause = {name: pauses(random.Random(rng.random()), busy) if busy else never()
                      for name in ("ar", "aw", "w", "r", "b")}
        self.r_beats = []    # (id, data, resp, last)
        self.b_responses = []  # (id, resp)

    async def requests(self, ctx, channel, items):
        stream = getattr(self.port, channel)
        for addr, length, ident in items:
            while next(self.pause[channel]):
                await ctx.tick()
            ctx.set(stream.payload, {"addr": addr, "len": length, "id": ident})
            ctx.set(stream.valid, 1)
            await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)

    async def write_beats(self, ctx):
        w = self.port.w
        for addr, length, _ in self.writes:
            for beat in range(length + 1):
                while next(self.pause["w"]):
                    await ctx.tick()
                ctx.set(w.payload, {"data": write_data(self.index, addr + BEAT * beat),
                                    "strb": (1 << BEAT) - 1, "last": beat == length})
                ctx.set(w.valid, 1)
                await ctx.tick().until(w.ready)
                ctx.set(w.valid, 0)

    async def responses(self, ctx):
        r, b = self.port.r, self.port.b
        while True:
            ctx.set(r.ready, not next(self.pause["r"]))
            ctx.set(b.ready, not next(self.pause["b"]))
            _, _, r_valid, r_ready, r_payload, b_valid, b_ready, b_payload = \
                await ctx.tick().sample(r.valid, r.ready, r.payload, b.valid, b.ready, b.payload)
            if r_valid and r_ready:
                self.r_beats.append((r_payload.id, r_payload.data, r_payload.resp,
                                     r_payload.last))
            if b_valid and b_ready:
                self.b_responses.append((b_payload.id, b_payload.resp))

    def expected_r_beats(self):
        return {ident: [(ident, read_data(addr + BEAT * beat), 0, int(beat == length))
                        for addr, length, i in self.reads if i == ident
                        for beat in range(length + 1)]
                for ident in range(1 << PARAMS.id_width)}

    def done(self):
        return (len(self.r_beats) == sum(length + 1 for _, length, _ in self.reads)
                and len(self.b_responses) == len(self.writes))


class SlaveModel:
    """The slave side: accepts AR/AW/W with random ready, returns R beats interleaved across
    IDs in random order (in order within an ID) and B responses likewise, and records every
    request and W beat. Checks that a request or beat offered and not taken stays the same."""

    def __init__(self, port, rng, busy):
        self.port, self.rng = port, rng
        self.pause = {name: pauses(random.Random(rng.random()), busy) if busy else never()
                      for name in ("ar", "aw", "w", "r", "b")}
        self.ar_log, self.aw_log = [], []  # (cycle, addr, len, id) in acceptance order
        self.w_bursts = []                  # per accepted AW: its W beats (data, strb, last)
        self.reads = defaultdict(deque)     # id -> [addr, len, next beat] in order
        self.b_pending = defaultdict(deque)  # id -> count of B to send
        self.cycle = 0

    def _pick(self, queues):
        ids = [ident for ident, queue in queues.items() if queue]
        return self.rng.choice(ids) if ids else None

    async def run(self, ctx):
        s = self.port
        r_id = b_id = None      # the ID whose R beat / B response is on offer
        held = {}               # channel -> payload offered and not taken last cycle
        w_burst = 0             # index into aw_log of the burst receiving W beats
        while True:
            if r_id is None:
                r_id = self._pick(self.reads)
            if r_id is not None:
                addr, length, beat = self.reads[r_id][0]
                ctx.set(s.r.payload, {"data": read_data(addr + BEAT * beat), "resp": 0,
                                      "last": beat == length, "id": r_id})
            ctx.set(s.r.valid, r_id is not None)
            if b_id is None:
                b_id = self._pick(self.b_pending)
            if b_id is not None:
                ctx.set(s.b.payload, {"resp": 0, "id": b_id})
            ctx.set(s.b.valid, b_id is not None)
            for channel in ("ar", "aw", "w"):
                ctx.set(getattr(s, channel).ready, not next(self.pause[channel]))

            sampled = await ctx.tick().sample(
                s.ar.valid, s.ar.ready, s.ar.payload, s.aw.valid, s.aw.ready, s.aw.payload,
                s.w.valid, s.w.ready, s.w.payload, s.r.valid, s.r.ready, s.b.valid, s.b.ready)
            (ar_valid, ar_ready, ar, aw_valid, aw_ready, aw, w_valid, w_ready, w,
             r_valid, r_ready, b_valid, b_ready) = sampled[2:]
            for channel, valid, ready, payload in (("ar", ar_valid, ar_ready, ar),
                                                   ("aw", aw_valid, aw_ready, aw)):
                value = (payload.addr, payload.len, payload.id)
                if channel in held:
                    assert valid and value == held[channel], \
                        f"{channel} changed while waiting: {held[channel]} -> {value}"
                held.pop(channel, None)
                if valid and not ready:
                    held[channel] = value
            if ar_valid and ar_ready:
                self.ar_log.append((self.cycle, ar.addr, ar.len, ar.id))
                self.reads[ar.id].append([ar.addr, ar.len, 0])
            if aw_valid and aw_ready:
                self.aw_log.append((self.cycle, aw.addr, aw.len, aw.id))
                self.w_bursts.append([])
            if w_valid and w_ready:
                assert w_burst < len(self.aw_log), "a W beat before its AW"
                self.w_bursts[w_burst].append((w.data, w.strb, w.last))
                if w.last:
                    self.b_pending[self.aw_log[w_burst][3]].append(1)
                    w_burst += 1
            if r_valid and r_ready:
                entry = self.reads[r_id][0]
                if entry[2] == entry[1]:
                    self.reads[r_id].popleft()
                else:
                    entry[2] += 1
                r_id = None  # the next beat may come from another ID
            if b_valid and b_ready:
                self.b_pending[b_id].popleft()
                b_id = None
            self.cycle += 1


def simulate(masters, *, seed, busy, reads=12, writes=12, cycles=6000, write_bursts=4):
    """Run ``masters`` Python masters with random traffic through an arbiter into the slave
    model until all is answered (or ``cycles`` pass); return (dut, masters, slave)."""
    rng = random.Random(seed)
    dut = AxiArbiter(PARAMS, masters, write_bursts=write_bursts)
    models = [Master(dut.masters[i], i, bursts(rng, reads, base=0x1000 * i),
                     bursts(rng, writes, base=0x8000 + 0x1000 * i), rng, busy)
              for i in range(masters)]
    slave = SlaveModel(dut.slave, rng, busy)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for model in models:
        sim.add_testbench(partial(model.requests, channel="ar", items=model.reads),
                          background=True)
        sim.add_testbench(partial(model.requests, channel="aw", items=model.writes),
                          background=True)
        sim.add_testbench(model.write_beats, background=True)
        sim.add_testbench(model.responses, background=True)
    sim.add_testbench(slave.run, background=True)

    async def until_done(ctx):
        for _ in range(cycles):
            if all(model.done() for model in models):
                return
            await ctx.tick()
        raise AssertionError(f"traffic not finished after {cycles} cycles: "
                             f"{[(len(m.r_beats), len(m.b_responses)) for m in models]}")
    sim.add_testbench(until_done)
    sim.run()
    return dut, models, slave


def check_traffic(dut, models, slave):
    """Every master got exactly its own read data and B responses, in order per ID, and the
    slave got every master's W beats for the right AW."""
    for model in models:
        got = defaultdict(list)
        for beat in model.r_beats:
            got[beat[0]].append(beat)
        expected = model.expected_r_beats()
        for ident in expected:
            assert got[ident] == expected[ident], f"master {model.index} id {ident}: R beats"
        assert sorted(model.b_responses) == sorted((ident, 0) for _, _, ident in model.writes)
    # AR and AW reached the slave with the master index above the master's ID, in each
    # master's order.
    for log, attribute in ((slave.ar_log, "reads"), (slave.aw_log, "writes")):
        for model in models:
            mine = [(addr, length, ident & ((1 << PARAMS.id_width) - 1))
                    for _, addr, length, ident in log
                    if ident >> PARAMS.id_width == model.index]
            assert mine == getattr(model, attribute), f"master {model.index}: {attribute}"
    # W beats: each AW got the beats of its own master's burst.
    for (_, addr, length, ident), beats in zip(slave.aw_log, slave.w_bursts):
        master = ident >> PARAMS.id_width
        assert beats == [(write_data(master, addr + BEAT * beat), (1 << BEAT) - 1,
                          int(beat == length)) for beat in range(length + 1)], \
            f"W beats of the AW at {addr:#x} from master {master}"


@pytest.mark.parametrize("masters", [1, 2, 3])
@pytest.mark.parametrize("seed", [1, 2])
def test_routing_with_pauses(masters, seed):
    check_traffic(*simulate(masters, seed=seed, busy=0.5))


def test_routing_without_pauses():
    check_traffic(*simulate(3, seed=3, busy=0.0))


def test_round_robin_one_grant_per_cycle():
    """Three masters always requesting, a slave always ready: AR and AW grants rotate
    0, 1, 2, 0, ... and one is taken every cycle."""
    dut, models, slave = simulate(3, seed=4, busy=0.0, reads=10, writes=10, write_bursts=32)
    for log in (slave.ar_log, slave.aw_log):
        masters = [ident >> PARAMS.id_width for _, _, _, ident in log]
        assert masters == [0, 1, 2] * 10
        cycles = [cycle for cycle, *_ in log]
        assert cycles == list(range(cycles[0], cycles[0] + 30)), "a cycle without a grant"


def test_w_beats_without_bubbles():
    """With nothing pausing, W beats of back-to-back bursts from several masters follow one
    per cycle: the order queue does not insert idle cycles between bursts."""
    dut = AxiArbiter(PARAMS, 2, write_bursts=4)
    beats_seen = []

    async def master(ctx, index):
        port = dut.masters[index]
        ctx.set(port.b.ready, 1)
        ctx.set(port.aw.payload, {"addr": 0x100 * index, "len": 3, "id": 0})
        ctx.set(port.aw.valid, 1)
        await ctx.tick().until(port.aw.ready)
        ctx.set(port.aw.valid, 0)

    async def w_driver(ctx, index):
        port = dut.masters[index]
        for beat in range(4):
            ctx.set(port.w.payload, {"data": 10 * index + beat, "strb": 15, "last": beat == 3})
            ctx.set(port.w.valid, 1)
            await ctx.tick().until(port.w.ready)
        ctx.set(port.w.valid, 0)

    async def slave(ctx):
        s = dut.slave
        ctx.set(s.aw.ready, 1)
        ctx.set(s.w.ready, 1)
        for cycle in range(40):
            _, _, valid, payload = await ctx.tick().sample(s.w.valid, s.w.payload)
            if valid:
                beats_seen.append((cycle, payload.data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for index in range(2):
        sim.add_testbench(partial(master, index=index), background=True)
        sim.add_testbench(partial(w_driver, index=index), background=True)
    sim.add_testbench(slave)
    sim.run()
    assert [data for _, data in beats_seen] == [0, 1, 2, 3, 10, 11, 12, 13]
    cycles = [cycle for cycle, _ in beats_seen]
    assert cycles == list(range(cycles[0], cycles[0] + 8)), f"bubbles: {cycles}"


def test_bad_parameters():
    with pytest.raises(ValueError):
        AxiArbiter(PARAMS, 0)
    with pytest.raises(ValueError):
        AxiArbiter(PARAMS, 2, write_bursts=0)
    assert AxiArbiter(PARAMS, 3).slave_params.id_width == PARAMS.id_width + 2
    assert AxiArbiter(PARAMS, 1).slave_params == PARAMS
