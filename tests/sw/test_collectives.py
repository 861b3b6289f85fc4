"""The ring collectives (``firmware/collectives.py``) on the functional model: all-reduce,
broadcast and reduce of random fp32 vectors on 1, 2, 4 and 8 devices, with buffers in SRAM and
DRAM, uneven and tiny sizes, bit for bit against numpy references that sum in the documented
order (and close to a float64 sum); semaphores end where they started, so a stream can run
the collective twice; bad plans are ValueErrors; the all-reduce's bus bandwidth is measured
(printed, not asserted)."""

import numpy as np
import pytest

from npusim.firmware import collectives as col
from npusim.firmware.collectives import Buffer
from npusim.sw import numerics as nx
from npusim.sw import regmap
from npusim.sw.fm.system import BusMap, System
from npusim.sw.isa import Command, Engine, VectorOp, encode_stream
from npusim.sw.isa.table import NUM_SEMAPHORES
from npusim.sw.params import HwParams

PARAMS = HwParams(array_rows=4, array_cols=4, vector_lanes=4, sram_bytes=64 * 1024,
                  dram_bytes=1 << 22)
BUS = BusMap()
# SRAM: two vector buffers and the staging slots; DRAM: two vectors, receive slots, the stream
SA, SB, STAGE = 0x0000, 0x6000, 0xC000
DA, DB, RECV, STREAM = 0x10_0000, 0x18_0000, 0x20_0000, 0x28_0000
MAX_CYCLES = 2_000_000
OTHER_SEMS = 7      # semaphores the plan does not use start here and must stay here

BUFFERS = {"sram": Buffer.sram(SA), "sram_b": Buffer.sram(SB), "dram": Buffer.dram(DA),
           "dram_b": Buffer.dram(DB)}
# (src, dst) pairs: in place and out of place, every combination of spaces
PLACES = [("sram", "sram"), ("sram", "sram_b"), ("dram", "dram"), ("dram", "dram_b"),
          ("dram", "sram_b"), ("sram", "dram_b")]


# -- references: the documented summation order, in fp32 -----------------------------------------

def chunk_bounds(count, n):
    sizes = [count // n + (k < count % n) for k in range(n)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(starts[k], starts[k + 1]) for k in range(n)]


def ring_sum(parts, first):
    """fp32 sum of ``parts`` (one per device) starting at device ``first``, round the ring."""
    n = len(parts)
    acc = parts[first % n]
    for j in range(1, n):
        acc = nx.fp32_add(acc, parts[(first + j) % n])
    return np.asarray(acc, np.uint32)


def allreduce_ref(xs):
    """Chunk k summed from device k+1 round the ring."""
    out = np.empty_like(xs[0])
    for k, (lo, hi) in enumerate(chunk_bounds(len(xs[0]), len(xs))):
        out[lo:hi] = ring_sum([x[lo:hi] for x in xs], k + 1)
    return out


def reduce_ref(xs, root):
    return ring_sum(xs, root + 1)


def assert_close_to_f64(got, xs):
    """Within the error bound of an n-term sequential fp32 sum of the float64 sum."""
    f = np.stack([x.view(np.float32).astype(np.float64) for x in xs])
    bound = len(xs) * 2.0 ** -24 * np.abs(f).sum(0)
    assert np.all(np.abs(got.view(np.float32).astype(np.float64) - f.sum(0)) <= bound)


# -- running on the functional model --------------------------------------------------------------

def random_inputs(n, count, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(count).astype(np.float32).view(np.uint32) for _ in range(n)]


def write(dev, buf, x):
    (dev.sram if buf.space.name == "SRAM" else dev.dram).write(buf.addr, x.view(np.uint8))


def read(dev, buf, count):
    mem = dev.sram if buf.space.name == "SRAM" else dev.dram
    return mem.read(buf.addr, 4 * count).view(np.uint32).copy()


def plan_for(kind, n, count, src, dst, **kw):
    src, dst = BUFFERS[src], BUFFERS[dst]
    if kind == "broadcast":
        return col.plan_broadcast(PARAMS, n, count, src, dst, recv=RECV, **kw)
    work = SB if dst.space.name == "DRAM" else None
    plan = col.plan_allreduce if kind == "allreduce" else col.plan_reduce
    return plan(PARAMS, n, count, src, dst, recv=RECV, stage=STAGE, work=work, **kw)


KERNELS = {"allreduce": col.ring_allreduce, "broadcast": col.broadcast, "reduce": col.reduce}


def run(plan, inputs, runs=1, commands=None):
    """Every device runs ``runs`` copies of its commands (by default the plan's collective;
    ``commands(d)`` to choose) from one stream; returns the system after checking that the
    plan's semaphores are back at 0 and the others untouched."""
    commands = commands or (lambda d: KERNELS[plan.kind](plan, d))
    s = System(plan.n_devices, PARAMS, BUS)
    for d, dev in enumerate(s.devices):
        write(dev, plan.src, inputs[d])
        for i in set(range(NUM_SEMAPHORES)) - set(plan.sems):
            dev.mmio_write(regmap.SEM_VALUE + 8 * i, OTHER_SEMS)
        s.launch(d, encode_stream(commands(d) * runs), STREAM,
                 regs=col.ring_registers(plan, d, BUS))
    s.run(MAX_CYCLES)
    s.check()
    for dev in s.devices:
        assert dev.sems == [0 if i in plan.sems else OTHER_SEMS for i in range(NUM_SEMAPHORES)]
        assert dev.state.name == "IDLE"
    return s


# -- all-reduce -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,count", [(1, 777), (2, 1001), (4, 4099), (8, 2003)])
@pytest.mark.parametrize("src,dst", PLACES)
def test_allreduce_bit_exact(n, count, src, dst):
    plan = plan_for("allreduce", n, count, src, dst)
    xs = random_inputs(n, count, seed=n * count)
    s = run(plan, xs)
    want = allreduce_ref(xs)
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), want)
        if plan.dst != plan.src:     # out of place: the input is left alone
            assert np.array_equal(read(dev, plan.src, count), xs[dev.index])
    assert_close_to_f64(want, xs)
    # each device sends every chunk but its own in the reduce-scatter and every chunk but its
    # right neighbour's in the all-gather: the ring's minimum traffic, all of it on LINK
    sizes = [hi - lo for lo, hi in chunk_bounds(count, n)]
    for r in s.report():
        d = r["device"]
        sent = 0 if n == 1 else 4 * (2 * count - sizes[d] - sizes[(d + 1) % n])
        assert r["engines"]["LINK"]["bytes"] == sent


@pytest.mark.parametrize("n,count", [(2, 1), (4, 3), (8, 1), (8, 5), (8, 9)])
def test_allreduce_fewer_elements_than_devices(n, count):
    """Empty chunks move nothing; the result is still the ring-order sum."""
    plan = plan_for("allreduce", n, count, "sram", "sram")
    xs = random_inputs(n, count, seed=count)
    s = run(plan, xs)
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), allreduce_ref(xs))


@pytest.mark.parametrize("src,dst", [("sram", "sram"), ("dram", "dram_b")])
def test_allreduce_twice_in_one_stream(src, dst):
    """Semaphores restored and receive slots free after a run: the next run starts clean. In
    place the second run sums the first one's result; out of place it repeats the first."""
    n, count = 4, 3001
    plan = plan_for("allreduce", n, count, src, dst, slot_bytes=1024)
    xs = random_inputs(n, count, seed=7)
    s = run(plan, xs, runs=2)
    once = allreduce_ref(xs)
    want = allreduce_ref([once] * n) if plan.dst == plan.src else once
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), want)


@pytest.mark.parametrize("recv_slots,stage_slots", [(1, 1), (2, 1), (3, 2)])
def test_allreduce_few_slots(recv_slots, stage_slots):
    """Credits hold a sender back when the receiver has few slots; still exact."""
    n, count = 4, 2500
    plan = plan_for("allreduce", n, count, "sram", "sram", slot_bytes=512,
                    recv_slots=recv_slots, stage_slots=stage_slots)
    xs = random_inputs(n, count, seed=recv_slots)
    s = run(plan, xs)
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), allreduce_ref(xs))


def busy(engine):
    """Unrelated earlier work that keeps ``engine`` busy for thousands of cycles: a 128 KiB
    DRAM copy, or for COMPUTE a SiLU over 1024 elements in an SRAM area the tests leave free."""
    if engine == Engine.COMPUTE:
        return Command("VECTOR", op=VectorOp.SILU, dst=SB, ldd=1024, a=SB, lda=1024, rows=1,
                       cols=1024)
    return Command("DMA_COPY", engine=engine, src_off=0x30_0000, dst_off=0x34_0000,
                   len=128 * 1024, n1=1, n2=1)


@pytest.mark.parametrize("engine", list(Engine))
@pytest.mark.parametrize("kind", ["allreduce", "broadcast", "reduce"])
def test_busy_engine_delays_but_never_breaks(kind, engine):
    """One device starts with one engine busy: whatever runs late, every wait holds its queue
    back until its data is there (credits: a sender may not overwrite receive slots the late
    receiver has not read; READY_ADD and READY_COPY: a late add is not overtaken by a load)."""
    n, count, late = 4, 3000, 2
    plan = plan_for(kind, n, count, "sram", "sram", slot_bytes=1024, recv_slots=2)
    xs = random_inputs(n, count, seed=5)
    s = run(plan, xs, commands=lambda d: ([busy(engine)] if d == late else [])
            + KERNELS[kind](plan, d))
    want = {"allreduce": allreduce_ref(xs), "broadcast": xs[0], "reduce": reduce_ref(xs, 0)}
    for dev in s.devices if kind != "reduce" else s.devices[:1]:
        assert np.array_equal(read(dev, plan.dst, count), want[kind])
    if engine == Engine.DMA_IN:      # the late receiver's left neighbour waited for credits
        assert s.report()[late - 1]["engines"]["LINK"]["wait_cycles"] > 4096


def test_late_last_add_is_not_overtaken_by_all_gather_loads():
    """Work slipped into one device's COMPUTE queue just before its last add: the all-gather
    pieces it loads meanwhile (READY_COPY) must not release the send that waits for that add
    (READY_ADD) -- one semaphore for both would send an unfinished sum."""
    n, count, late = 4, 3000, 2
    plan = plan_for("allreduce", n, count, "sram", "sram", slot_bytes=1024)
    xs = random_inputs(n, count, seed=5)

    def commands(d):
        cmds = col.ring_allreduce(plan, d)
        if d == late:
            last_add = max(i for i, c in enumerate(cmds) if c.name == "VECTOR")
            cmds.insert(last_add, busy(Engine.COMPUTE))
        return cmds
    s = run(plan, xs, commands=commands)
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), allreduce_ref(xs))


def test_collectives_back_to_back_share_semaphores_and_slots():
    """A reduce, a broadcast and an all-reduce in one stream with the same semaphores and
    receive area but other piece sizes: each finds every slot free and its semaphores at 0.
    The broadcast spreads the reduce's sum over the partial sums it left elsewhere."""
    n, count = 4, 2000
    rd = plan_for("reduce", n, count, "sram", "sram", root=2, slot_bytes=1500)
    bc = plan_for("broadcast", n, count, "sram", "sram", root=2, slot_bytes=1000)
    ar = plan_for("allreduce", n, count, "sram", "sram", slot_bytes=2048)
    xs = random_inputs(n, count, seed=2)
    s = run(ar, xs, commands=lambda d: col.reduce(rd, d) + col.broadcast(bc, d)
            + col.ring_allreduce(ar, d))
    want = allreduce_ref([reduce_ref(xs, 2)] * n)
    for dev in s.devices:
        assert np.array_equal(read(dev, ar.dst, count), want)


def test_special_values_sum_in_ring_order():
    """Infinities, NaN, signed zeros and cancellation follow the fp32 add in the defined
    order (where the order matters, e.g. big + -big + small, the reference decides)."""
    n, count = 4, 16
    big = np.float32(3e38)
    cols = [[1.0, big, np.inf, -0.0, 1e-45, 1.0],
            [2.0, big, -np.inf, -0.0, 1e-45, 1e8],
            [3.0, -big, 0.0, -0.0, -1e-45, -1e8],
            [4.0, -big, 1.0, -0.0, 1e-45, 1.0]]
    xs = []
    for d in range(n):
        x = np.resize(np.array(cols[d], np.float32), count)
        xs.append(x.view(np.uint32))
    plan = plan_for("allreduce", n, count, "sram", "sram")
    s = run(plan, xs)
    want = allreduce_ref(xs)
    assert want[2] == nx.CANONICAL_NAN
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), want)


def test_bus_bandwidth_is_measured(capsys):
    """nccl-tests' busbw of a 32 KiB all-reduce in SRAM (the compiler's case) at n = 2, 4:
    printed for the record; the planner's estimate beside the functional model's cycles."""
    count = 8192
    lines = []
    for n in (2, 4):
        plan = col.plan_allreduce(PARAMS, n, count, Buffer.sram(0), recv=RECV, stage=4 * count)
        xs = random_inputs(n, count, seed=n)
        s = run(plan, xs)
        for dev in s.devices:
            assert np.array_equal(read(dev, plan.dst, count), allreduce_ref(xs))
        cycles = max(r["cycles"] for r in s.report())
        busbw = col.bus_bandwidth(plan, cycles)
        assert busbw > 0
        lines.append(f"all-reduce n={n} S={4 * count} B slot={plan.slot_bytes} B: "
                     f"{cycles} cycles (estimate {col.estimate_cycles(plan)}), busbw "
                     f"{busbw:.2f} B/cycle = {busbw / PARAMS.link_bytes_per_cycle:.3f} of "
                     "the link")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# -- broadcast and reduce -------------------------------------------------------------------------

@pytest.mark.parametrize("n,root", [(1, 0), (2, 1), (4, 0), (4, 3), (8, 5)])
@pytest.mark.parametrize("src,dst", [("sram", "sram"), ("sram", "sram_b"), ("dram", "dram"),
                                     ("dram", "sram_b"), ("sram", "dram_b")])
def test_broadcast(n, root, src, dst):
    count = 2047
    plan = plan_for("broadcast", n, count, src, dst, root=root)
    xs = random_inputs(n, count, seed=root + n)
    s = run(plan, xs)
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), xs[root])
    assert np.array_equal(read(s.devices[root], plan.src, count), xs[root])


@pytest.mark.parametrize("n,root", [(1, 0), (2, 0), (4, 2), (8, 7), (8, 0)])
@pytest.mark.parametrize("src,dst", PLACES)
def test_reduce(n, root, src, dst):
    count = 1999
    plan = plan_for("reduce", n, count, src, dst, root=root)
    xs = random_inputs(n, count, seed=root * 8 + n)
    s = run(plan, xs)
    got = read(s.devices[root], plan.dst, count)
    assert np.array_equal(got, reduce_ref(xs, root))
    assert_close_to_f64(got, xs)
    if plan.dst != plan.src:            # out of place: nobody's input changes
        for dev in s.devices:
            assert np.array_equal(read(dev, plan.src, count), xs[dev.index])


def test_reduce_matches_allreduce_chunk_order():
    """Reduce to root r sums in the order of the all-reduce's chunk r."""
    n, count = 4, 400
    xs = random_inputs(n, count, seed=3)
    lo, hi = chunk_bounds(count, n)[2]
    assert np.array_equal(allreduce_ref(xs)[lo:hi], reduce_ref(xs, 2)[lo:hi])


def test_broadcast_pipelines_along_the_chain():
    """Pieces are forwarded as they arrive: an 8-device broadcast of many pieces takes far
    less than 7 whole-vector hops in turn (a structural check, not a timing bound: the
    un-pipelined time is counted in the same model's link costs)."""
    n, count = 8, 8192
    plan = plan_for("broadcast", n, count, "sram", "sram", slot_bytes=2048)
    s = run(plan, random_inputs(n, count, seed=1))
    busy = s.report()[0]["engines"]["LINK"]["busy_cycles"]      # the root's sends
    assert max(r["cycles"] for r in s.report()) < (n - 1) * busy


# -- plans ----------------------------------------------------------------------------------------

def test_ring_registers_name_the_neighbours():
    plan = plan_for("allreduce", 4, 100, "sram", "sram")
    regs = col.ring_registers(plan, 0, BUS)
    assert regs == {plan.regs.right_dram: BUS.dram(1), plan.regs.right_mmio: BUS.mmio(1),
                    plan.regs.left_mmio: BUS.mmio(3)}


def test_one_stream_serves_any_bus_map():
    """Peer addresses come from registers: the same commands run under another BAR layout."""
    n, count = 2, 500
    plan = plan_for("allreduce", n, count, "sram", "sram")
    bus = BusMap(mmio_base=0x40_0000_0000, dram_base=0x80_0000_0000, device_stride=1 << 36)
    s = System(n, PARAMS, bus)
    xs = random_inputs(n, count, seed=11)
    for d, dev in enumerate(s.devices):
        write(dev, plan.src, xs[d])
        s.launch(d, encode_stream(col.ring_allreduce(plan, d)), STREAM,
                 regs=col.ring_registers(plan, d, bus))
    s.run(MAX_CYCLES)
    s.check()
    for dev in s.devices:
        assert np.array_equal(read(dev, plan.dst, count), allreduce_ref(xs))


def test_commands_use_only_the_plans_semaphores_and_queues():
    plan = plan_for("allreduce", 4, 3000, "dram", "dram_b", sems=(1, 9, 17, 25, 33, 41, 49, 63))
    for d in range(4):
        for c in col.ring_allreduce(plan, d):
            if c.name in ("SEM_WAIT", "SEM_SIGNAL"):
                assert c.sem in plan.sems
            if c.name == "DMA_COPY" and c.dst_space.name == "LINK":
                assert c.engine == Engine.LINK and c.dst_reg == plan.regs.right_dram
            if c.name == "SEM_SIGNAL" and c.remote:
                assert c.peer_reg in (plan.regs.right_mmio, plan.regs.left_mmio)


def bad(match, **changes):
    args = dict(params=PARAMS, n_devices=4, count=1000, src=Buffer.sram(SA), dst=None,
                recv=RECV, stage=STAGE, work=None)
    args.update(changes)
    p, n, count, src, dst = (args.pop(k) for k in ("params", "n_devices", "count", "src", "dst"))
    with pytest.raises(ValueError, match=match):
        col.plan_allreduce(p, n, count, src, dst, **args)


def test_bad_plans_are_value_errors():
    bad("at least one device", n_devices=0)
    bad("at least one element", count=0)
    bad("overlap", stage=SA + 64)                                  # staging over the data
    bad("overlap", dst=Buffer.sram(SA + 4))                        # dst partly over src
    bad("overlap", src=Buffer.dram(RECV), dst=Buffer.sram(SB))     # input over receive slots
    bad("too big for SRAM", count=20000, stage=0xF000)             # 80 KB in a 64 KB SRAM
    bad("too big for SRAM", stage=0xFF00, slot_bytes=1024)         # slots past the end
    bad("too big for DRAM", recv=PARAMS.dram_bytes - 64)
    bad("aligned", src=Buffer.sram(SA + 2))
    bad("semaphore indices", sems=tuple(range(60, 68)))            # past 63
    bad("semaphore indices", sems=(0,) * 8)                        # not distinct
    bad("semaphore indices", sems=(0, 1, 2))                       # too few
    bad("run-time registers", regs=(0, 1, 2))                      # r0 holds no address
    bad("recv", recv=None)
    bad("stage", stage=None)
    bad("work", dst=Buffer.dram(DB))
    bad("multiple of 4", slot_bytes=6)
    bad("SRAM or DRAM", src=0x100)
    with pytest.raises(ValueError, match="root"):
        col.plan_reduce(PARAMS, 4, 100, Buffer.sram(SA), recv=RECV, stage=STAGE, root=4)
    with pytest.raises(ValueError, match="root"):
        col.plan_broadcast(PARAMS, 2, 100, Buffer.sram(SA), recv=RECV, root=-1)
    plan = plan_for("broadcast", 2, 100, "sram", "sram")
    with pytest.raises(ValueError, match="broadcast plan"):
        col.ring_allreduce(plan, 0)
    with pytest.raises(ValueError, match="device 2"):
        col.broadcast(plan, 2)
