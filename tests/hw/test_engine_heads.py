"""Engine heads (Amaranth simulator): semaphore waits and signals across engines, the
watchdog, remote signals on the link port, engine jobs and their faults, the consume race."""

from amaranth.sim import Simulator

from npusim.hw.axi import AxiParams
from npusim.hw.device.cp import QueueEntry
from npusim.hw.device.windows import WindowLayout
from npusim.hw.device.heads import EngineHeads
from npusim.hw.isa import Opcode
from npusim.sw import regmap
from npusim.sw.isa.enums import Engine, ErrorCode
from npusim.sw.params import HwParams

LINK = AxiParams(addr_width=64, data_bytes=32, id_width=1)


def wait(engine, sem, value, consume=True, addr=0):
    return QueueEntry.const({"cmd": {"opcode": Opcode.SEM_WAIT, "args": {"sem_wait": {
        "engine": engine, "sem": sem, "value": value, "consume": consume}}}, "addr": addr})


def signal(engine, sem, amount, remote=False, peer=0, addr=0):
    return QueueEntry.const({"cmd": {"opcode": Opcode.SEM_SIGNAL, "args": {"sem_signal": {
        "engine": engine, "sem": sem, "amount": amount, "remote": remote, "peer": peer}}},
        "addr": addr})


def dma(engine, length, addr=0, n1=1, n2=1):
    return QueueEntry.const({"cmd": {"opcode": Opcode.DMA_COPY, "args": {"dma_copy": {
        "engine": engine, "len": length, "n1": n1, "n2": n2}}}, "addr": addr})


def matmul(m, n, k, addr=0):
    return QueueEntry.const({"cmd": {"opcode": Opcode.MATMUL, "args": {"matmul": {
        "m": m, "n": n, "k": k}}}, "addr": addr})


async def handshake(ctx, valid, ready):
    """Hold ``valid`` high until a clock edge at which ``ready`` was high, then drop it."""
    ctx.set(valid, 1)
    while True:
        taken = ctx.get(ready)
        await ctx.tick()
        if taken:
            break
    ctx.set(valid, 0)


class Bench:
    """Feeds each head its entries, plays the engines (a job finishes after ``job_cycles``
    with the error its length asks for: len 99 fails), records faults and link writes."""

    def __init__(self, params=HwParams(), windows=None, job_cycles=5):
        self.dut = EngineHeads(params, window_layout=WindowLayout, link_axi=LINK)
        self.params = params
        self.windows = windows or {}
        self.job_cycles = job_cycles
        self.faults, self.link_writes, self.jobs = [], [], []
        self.events = []   # (cycle, engine, what) in order
        self.spans = []    # (engine, start, end, held): as cosim/cluster_server.py traces

    def run(self, entries, until, max_cycles=3000):
        dut = self.dut
        cycle = [0]

        async def feed(ctx, e):
            q = dut.port("queue", e)
            for entry in entries.get(e, []):
                ctx.set(q.payload, entry)
                await handshake(ctx, q.valid, q.ready)

        async def engine(ctx, e):
            job, done = dut.port("job", e), dut.port("done", e)
            ctx.set(job.ready, 1)
            while True:
                _, _, valid, payload = await ctx.tick().sample(job.valid, job.payload)
                if not valid:
                    continue
                length = payload.args.dma_copy.len if e != Engine.COMPUTE else 0
                self.jobs.append((cycle[0], e, length))
                ctx.set(job.ready, 0)
                await ctx.tick().repeat(self.job_cycles)
                ctx.set(done.payload.error, ErrorCode.ALIGNMENT if length == 99 else 0)
                await handshake(ctx, done.valid, done.ready)
                ctx.set(job.ready, 1)

        async def link(ctx, e):
            port = dut.port("link", e)
            ctx.set(port.aw.ready, 1)
            ctx.set(port.w.ready, 1)
            while True:
                _, _, aw_v, aw, w_v, w = await ctx.tick().sample(
                    port.aw.valid, port.aw.payload, port.w.valid, port.w.payload)
                if aw_v and w_v:
                    self.link_writes.append((aw.addr, w.data, w.strb))
                    ctx.set(port.b.payload.resp, 0)
                    await handshake(ctx, port.b.valid, port.b.ready)

        async def bench(ctx):
            for i, (base, size, flags) in self.windows.items():
                ctx.set(dut.windows[i], {"base": base, "size": size, "flags": flags})
            ctx.set(dut.watchdog, self.params.watchdog_cycles)
            for e in Engine:
                ctx.set(dut.port("fault", e).ready, 1)
            held = {}
            for _ in range(max_cycles):
                await ctx.tick()
                cycle[0] += 1
                idle = ctx.get(dut.idle)
                for e in Engine:
                    if not idle >> e & 1 and e not in held:
                        held[e] = (cycle[0], ctx.get(dut.held[e]).as_bits())
                    elif idle >> e & 1 and e in held:
                        start, raw = held.pop(e)
                        self.spans.append((e, start, cycle[0], raw))
                for e in Engine:
                    f = dut.port("fault", e)
                    if ctx.get(f.valid):
                        self.faults.append((e, ErrorCode(ctx.get(f.payload.error).value),
                                            ctx.get(f.payload.addr)))
                if until(ctx, self):
                    self.sems = list(ctx.get(dut.sem_values))
                    self.idle = ctx.get(dut.idle)
                    return
            raise TimeoutError("the heads did not get there")

        sim = Simulator(dut)
        sim.add_clock(1e-9)
        def bound(process, e):
            async def run(ctx):
                await process(ctx, e)
            return run
        for e in Engine:
            for process in (feed, engine, link):
                sim.add_testbench(bound(process, e), background=True)
        sim.add_testbench(bench)
        sim.run()
        return self


def all_idle_after(n):
    state = {"count": 0}

    def until(ctx, b):
        state["count"] += 1
        return state["count"] > n and ctx.get(b.dut.idle) == 0b1111
    return until


def test_signal_orders_a_wait_on_another_engine():
    """DMA_OUT waits for the LINK engine's signal, which comes after LINK's job."""
    b = Bench().run({Engine.DMA_OUT: [wait(Engine.DMA_OUT, 3, 2), dma(Engine.DMA_OUT, 64)],
                     Engine.LINK: [dma(Engine.LINK, 32), signal(Engine.LINK, 3, 2),
                                   signal(Engine.LINK, 5, 7)]},
                    all_idle_after(40))
    assert not b.faults
    link_job, out_job = sorted(b.jobs)
    assert link_job[1] == Engine.LINK and out_job[1] == Engine.DMA_OUT
    assert out_job[0] > link_job[0] + b.job_cycles      # only after the signal
    assert b.sems[3] == 0 and b.sems[5] == 7


def test_watchdog_turns_a_stuck_wait_into_sem_timeout():
    b = Bench(HwParams(watchdog_cycles=60)).run(
        {Engine.COMPUTE: [wait(Engine.COMPUTE, 9, 1, addr=0x1234)]},
        lambda ctx, b: bool(b.faults))
    assert b.faults == [(Engine.COMPUTE, ErrorCode.SEM_TIMEOUT, 0x1234)]


def test_remote_signal_is_a_posted_write_inside_a_link_window():
    peer = 0x10_0000_0000
    rw = regmap.WINDOW_READ | regmap.WINDOW_WRITE | regmap.WINDOW_LINK
    b = Bench(windows={2: (peer, 1 << 32, rw)}).run(
        {Engine.LINK: [signal(Engine.LINK, 6, 0x1234, remote=True, peer=peer)]},
        lambda ctx, b: bool(b.link_writes) and ctx.get(b.dut.idle) == 0b1111)
    (addr, data, strb), = b.link_writes
    target = peer + regmap.SEM_INC + 8 * 6
    assert addr == target & ~31
    lane = (target % 32) // 8
    assert strb == 0xFF << (8 * lane)
    assert (data >> (64 * lane)) & (2**64 - 1) == 0x1234
    # no window: DMA_WINDOW, nothing written
    b = Bench().run({Engine.LINK: [signal(Engine.LINK, 6, 1, remote=True, peer=peer,
                                          addr=0x40)]}, lambda ctx, b: bool(b.faults))
    assert b.faults == [(Engine.LINK, ErrorCode.DMA_WINDOW, 0x40)] and not b.link_writes


def test_engine_fault_carries_the_command_address():
    b = Bench().run({Engine.DMA_IN: [dma(Engine.DMA_IN, 64), dma(Engine.DMA_IN, 99,
                                                                addr=0x2220)]},
                    lambda ctx, b: bool(b.faults))
    assert b.faults == [(Engine.DMA_IN, ErrorCode.ALIGNMENT, 0x2220)]


def test_two_consumers_of_one_semaphore_take_turns():
    """Two heads wait for 1 on a semaphore that reaches 1 once: one goes, the other waits
    until the second signal, and the semaphore never goes below zero."""
    b = Bench().run({Engine.DMA_IN: [wait(Engine.DMA_IN, 2, 1), dma(Engine.DMA_IN, 8)],
                     Engine.DMA_OUT: [wait(Engine.DMA_OUT, 2, 1), dma(Engine.DMA_OUT, 8)],
                     Engine.LINK: [signal(Engine.LINK, 2, 1), dma(Engine.LINK, 8),
                                   dma(Engine.LINK, 8), signal(Engine.LINK, 2, 1)]},
                    all_idle_after(80))
    assert not b.faults
    assert b.sems[2] == 0
    starts = sorted(c for c, e, _ in b.jobs if e in (Engine.DMA_IN, Engine.DMA_OUT))
    assert starts[1] - starts[0] > b.job_cycles   # the second waited for the second signal


def test_held_commands_trace_as_the_functional_model_counts_them():
    """What a head holds while busy is what the RTL engine trace decodes
    (``cosim/rtl_backend.py``): each command's name, DRAM address and bytes, its span from
    taking it to letting it go -- a job's span covers the engine's cycles."""
    from npusim.cosim.rtl_backend import _trace_event
    b = Bench().run({Engine.DMA_IN: [dma(Engine.DMA_IN, 64, addr=0x100, n1=3, n2=2),
                                     signal(Engine.DMA_IN, 4, 1, addr=0x120)],
                     Engine.COMPUTE: [wait(Engine.COMPUTE, 4, 1, addr=0x200),
                                      matmul(5, 6, 7, addr=0x220)]},
                    all_idle_after(40))
    assert not b.faults
    events = sorted((_trace_event(*span) for span in b.spans), key=lambda ev: ev.start)
    got = [(ev.engine, ev.name, ev.offset, ev.bytes, ev.macs) for ev in events]
    assert sorted(got) == sorted([(Engine.DMA_IN, "DMA_COPY", 0x100, 64 * 3 * 2, 0),
                                  (Engine.DMA_IN, "SEM_SIGNAL", 0x120, 0, 0),
                                  (Engine.COMPUTE, "SEM_WAIT", 0x200, 0, 0),
                                  (Engine.COMPUTE, "MATMUL", 0x220, 0, 5 * 6 * 7)])
    copy, = (ev for ev in events if ev.name == "DMA_COPY")
    wait_, = (ev for ev in events if ev.name == "SEM_WAIT")
    signal_, = (ev for ev in events if ev.name == "SEM_SIGNAL")
    assert copy.end - copy.start > b.job_cycles
    assert signal_.start >= copy.end                    # in order on its engine
    assert wait_.start < copy.end and wait_.end > signal_.start    # waited for the signal
