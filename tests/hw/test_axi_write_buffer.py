# amaranth: UnusedElaboratable=no
"""Tests of ``hw/axi_write_buffer.py`` in Amaranth's simulator: traffic passes intact with
random pauses, an AW reaches the slave only after its burst's last W beat reached the buffer,
back-to-back bursts keep one beat per cycle, and the deadlock it exists for (a master whose
W data waits for another master's write on the same arbiter) resolves.
"""

import random
from functools import partial

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from npusim.hw.axi import AxiSignature
from npusim.hw.axi_arbiter import AxiArbiter
from npusim.hw.axi_write_buffer import WriteBuffer
from test_axi_arbiter import PARAMS, Master, SlaveModel, bursts, check_traffic
from test_engine_heads import handshake


def run(dut, *testbenches, background=()):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in testbenches:
        sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_traffic_with_pauses(seed):
    """Reads and writes of one master pass through unchanged, every W beat with its own AW
    (the slave model refuses a W beat before its AW), with random pauses everywhere."""
    rng = random.Random(seed)
    dut = WriteBuffer(PARAMS, beats=16)
    model = Master(dut.master, 0, bursts(rng, 12, base=0), bursts(rng, 12, base=0x8000), rng,
                   0.5)
    slave = SlaveModel(dut.slave, rng, 0.5)

    async def until_done(ctx):
        for _ in range(6000):
            if model.done():
                return
            await ctx.tick()
        raise AssertionError("traffic not finished")

    run(dut, until_done, background=[
        partial(model.requests, channel="ar", items=model.reads),
        partial(model.requests, channel="aw", items=model.writes),
        model.write_beats, model.responses, slave.run])
    check_traffic(dut, [model], slave)


def test_address_waits_for_the_last_beat():
    """The master sends AW at once and its 4 beats slowly: the slave sees the AW only after the
    last beat went into the buffer, and then all 4 beats on consecutive cycles."""
    dut = WriteBuffer(PARAMS, beats=8)
    events = {}

    async def master(ctx):
        ctx.set(dut.master.b.ready, 1)
        ctx.set(dut.master.aw.payload, {"addr": 0x40, "len": 3, "id": 1})
        ctx.set(dut.master.aw.valid, 1)
        await ctx.tick().until(dut.master.aw.ready)
        ctx.set(dut.master.aw.valid, 0)
        for beat in range(4):
            await ctx.tick().repeat(10)
            ctx.set(dut.master.w.payload, {"data": beat, "strb": 15, "last": beat == 3})
            ctx.set(dut.master.w.valid, 1)
            await ctx.tick().until(dut.master.w.ready)
            ctx.set(dut.master.w.valid, 0)
        events["last_w"] = events.get("cycle")

    async def slave(ctx):
        s = dut.slave
        ctx.set(s.aw.ready, 1)
        ctx.set(s.w.ready, 1)
        beats = []
        for cycle in range(100):
            events["cycle"] = cycle
            _, _, aw_valid, w_valid, w = await ctx.tick().sample(s.aw.valid, s.w.valid,
                                                                 s.w.payload)
            if aw_valid:
                events["aw"] = cycle
            if w_valid:
                beats.append((cycle, w.data))
        events["beats"] = beats

    run(dut, slave, background=[master])
    assert events["aw"] >= events["last_w"], events
    assert [data for _, data in events["beats"]] == [0, 1, 2, 3]
    cycles = [cycle for cycle, _ in events["beats"]]
    assert cycles == list(range(cycles[0], cycles[0] + 4)) and cycles[0] >= events["aw"]


def test_back_to_back_bursts_one_beat_per_cycle():
    """With room for two bursts, a master writing 16-beat bursts without pause gets them out
    at one beat per cycle after the first burst filled."""
    dut = WriteBuffer(PARAMS, beats=32)
    n_bursts, length = 6, 16

    async def master(ctx):
        ctx.set(dut.master.b.ready, 1)
        for k in range(n_bursts):
            ctx.set(dut.master.aw.payload, {"addr": 0x40 * length * k, "len": length - 1,
                                            "id": 0})
            ctx.set(dut.master.aw.valid, 1)
            await ctx.tick().until(dut.master.aw.ready)
        ctx.set(dut.master.aw.valid, 0)

    async def w_driver(ctx):
        for k in range(n_bursts):
            for beat in range(length):
                ctx.set(dut.master.w.payload, {"data": k * 100 + beat, "strb": 15,
                                               "last": beat == length - 1})
                ctx.set(dut.master.w.valid, 1)
                await ctx.tick().until(dut.master.w.ready)
        ctx.set(dut.master.w.valid, 0)

    seen = []

    async def slave(ctx):
        s = dut.slave
        ctx.set(s.aw.ready, 1)
        ctx.set(s.w.ready, 1)
        for cycle in range(200):
            _, _, valid, payload = await ctx.tick().sample(s.w.valid, s.w.payload)
            if valid:
                seen.append((cycle, payload.data))

    run(dut, slave, background=[master, w_driver])
    assert [data for _, data in seen] == [k * 100 + b for k in range(n_bursts)
                                          for b in range(length)]
    cycles = [cycle for cycle, _ in seen]
    assert cycles == list(range(cycles[0], cycles[0] + n_bursts * length)), "bubbles"


class TwoWriters(wiring.Component):
    """Master 0 (optionally through a WriteBuffer) and master 1 on one arbiter."""

    def __init__(self, buffered):
        self.buffered = buffered
        self.arbiter = AxiArbiter(PARAMS, 2)
        super().__init__({"m0": wiring.In(AxiSignature(PARAMS)),
                          "m1": wiring.In(AxiSignature(PARAMS)),
                          "slave": wiring.Out(AxiSignature(self.arbiter.slave_params))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = arbiter = self.arbiter
        if self.buffered:
            m.submodules.buffer = buffer = WriteBuffer(PARAMS, beats=8)
            wiring.connect(m, wiring.flipped(self.m0), buffer.master)
            wiring.connect(m, buffer.slave, arbiter.masters[0])
        else:
            wiring.connect(m, wiring.flipped(self.m0), arbiter.masters[0])
        wiring.connect(m, wiring.flipped(self.m1), arbiter.masters[1])
        wiring.connect(m, arbiter.slave, wiring.flipped(self.slave))
        return m


@pytest.mark.parametrize("buffered", [False, True])
def test_data_that_waits_for_another_master(buffered):
    """Master 0 issues AW first, but its data depends on master 1's write being answered (a
    DMA engine's data waiting for a link completion queued behind a peer's write). Straight
    into the arbiter this deadlocks: the W channel waits for master 0. Through the buffer both
    writes complete."""
    dut = TwoWriters(buffered)
    done = {}

    async def write(ctx, port, addr, after=None):
        ctx.set(port.b.ready, 1)
        ctx.set(port.aw.payload, {"addr": addr, "len": 1, "id": 0})
        await handshake(ctx, port.aw.valid, port.aw.ready)
        while after is not None and after not in done:
            await ctx.tick()
        for beat in range(2):
            ctx.set(port.w.payload, {"data": addr + beat, "strb": 15, "last": beat == 1})
            await handshake(ctx, port.w.valid, port.w.ready)
        while True:
            answered = ctx.get(port.b.valid)
            await ctx.tick()
            if answered:
                break
        done[addr] = True

    async def slave(ctx):
        s = dut.slave
        ctx.set(s.aw.ready, 1)
        ctx.set(s.w.ready, 1)
        pending = []
        while True:
            _, _, aw_valid, aw, w_valid, w, b_ready = await ctx.tick().sample(
                s.aw.valid, s.aw.payload, s.w.valid, s.w.payload, s.b.ready)
            if aw_valid:
                pending.append(aw.id)
            ctx.set(s.b.valid, 0)
            if w_valid and w.last:
                ctx.set(s.b.payload, {"id": pending.pop(0), "resp": 0})
                ctx.set(s.b.valid, 1)

    async def master1(ctx):
        await ctx.tick().repeat(3)       # after master 0's AW was granted
        await write(ctx, dut.m1, 0x200)

    async def watch(ctx):
        for _ in range(300):
            if len(done) == 2:
                return
            await ctx.tick()

    run(dut, watch, background=[partial(write, port=dut.m0, addr=0x100, after=0x200),
                                master1, slave])
    assert (len(done) == 2) == buffered, done


def test_bad_parameters():
    with pytest.raises(ValueError):
        WriteBuffer(PARAMS, beats=0)
    with pytest.raises(ValueError):
        WriteBuffer(PARAMS, beats=4, bursts=0)
