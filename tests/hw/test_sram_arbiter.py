"""The scratchpad-port arbiter (Amaranth simulator): every engine gets its own read data one
cycle after its grant, writes land, and engines that keep asking all get turns."""

import random

from amaranth.sim import Simulator

from npusim.hw.device.sram_arbiter import SramArbiter
from npusim.hw.ne.scratchpad import ScratchpadPort

WORDS, MASTERS = 64, 3


def test_reads_and_writes_from_three_engines():
    dut = SramArbiter(ScratchpadPort(6, 4), MASTERS)
    rnd = random.Random(7)
    memory = [rnd.getrandbits(32) for _ in range(WORDS)]
    # each master owns the words i, i + 3, ...: its writes never race another's reads
    owned = [[w for w in range(WORDS) if w % MASTERS == i] for i in range(MASTERS)]
    expected = list(memory)
    grants = [0] * MASTERS
    checked = [0]

    async def scratchpad(ctx):
        port = dut.port
        ctx.set(port.rd_addr.ready, 1)
        write_ready = False
        while True:
            _, _, rv, ra, wv, w = await ctx.tick().sample(port.rd_addr.valid, port.rd_addr.payload,
                                                        port.wr.valid, port.wr.payload)
            ctx.set(port.rd_data.valid, rv)
            ctx.set(port.rd_data.payload, memory[ra] if rv else 0)
            if wv and write_ready:
                memory[w.addr] = w.data
            write_ready = rnd.random() < 0.8
            ctx.set(port.wr.ready, write_ready)

    def master_process(i):
        async def run(ctx):
            m = dut.masters[i]
            due = None   # the value of the read granted at the previous edge
            for _ in range(300):
                addr = rnd.choice(owned[i])
                want_read, want_write = rnd.random() < 0.7, rnd.random() < 0.4
                value = rnd.getrandbits(32)
                ctx.set(m.rd_addr.valid, want_read)
                ctx.set(m.rd_addr.payload, addr)
                ctx.set(m.wr.valid, want_write)
                ctx.set(m.wr.payload, {"addr": addr, "data": value, "mask": 0xF})
                # grants and rd_data as they were at the edge (every master has asked by then)
                _, _, read_ready, write_ready, data_valid, data = await ctx.tick().sample(
                    m.rd_addr.ready, m.wr.ready, m.rd_data.valid, m.rd_data.payload)
                read_granted, write_granted = want_read and read_ready, want_write and write_ready
                if due is not None:
                    assert data_valid and data == due
                    checked[0] += 1
                else:
                    assert not data_valid
                due = expected[addr] if read_granted else None   # a write this cycle is later
                if read_granted:
                    grants[i] += 1
                if write_granted:
                    expected[addr] = value
            ctx.set(m.rd_addr.valid, 0)
            ctx.set(m.wr.valid, 0)
        return run

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(scratchpad, background=True)
    for i in range(MASTERS):
        sim.add_testbench(master_process(i))
    sim.run()
    assert checked[0] > 200
    assert min(grants) > 0.6 * max(grants)    # round robin: nobody starves
