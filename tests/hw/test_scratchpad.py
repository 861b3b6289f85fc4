"""The scratchpad (``hw/ne/scratchpad.py``): random reads and writes on both ports against a
Python model, bank conflicts resolved in the compute port's favour, byte masks."""

import random

import pytest
from amaranth.sim import Simulator

from npusim.hw.ne.scratchpad import Scratchpad


def simulate(dut, cycles, seed, p_compute=0.7, p_dma=0.7):
    """Drive random traffic for ``cycles`` cycles, checking every response and ``ready``;
    returns counts of reads, writes and DMA stalls."""
    rng = random.Random(seed)
    words, word_bytes = dut.words, dut.word_bytes
    model = {}
    stats = {"dma_rd_stalls": 0, "dma_wr_stalls": 0, "reads": 0, "writes": 0}

    def bank(addr):
        return addr // dut.bank_words

    async def bench(ctx):
        for _ in range(cycles):
            reqs = {}
            for name, p in (("compute", p_compute), ("dma", p_dma)):
                port = getattr(dut, name)
                rd = rng.random() < p
                wr = rng.random() < p
                # make conflicts common: the DMA often aims at the compute port's bank
                ra = rng.randrange(words)
                wa = rng.randrange(words)
                if name == "dma" and rng.random() < 0.5 and reqs["compute"][0] is not None:
                    ra = reqs["compute"][0] ^ rng.randrange(dut.bank_words)
                    ra %= words
                data = rng.getrandbits(8 * word_bytes)
                mask = rng.getrandbits(word_bytes)
                ctx.set(port.rd_addr.valid, rd)
                ctx.set(port.rd_addr.payload, ra)
                ctx.set(port.wr.valid, wr)
                ctx.set(port.wr.payload.addr, wa)
                ctx.set(port.wr.payload.data, data)
                ctx.set(port.wr.payload.mask, mask)
                reqs[name] = (ra if rd else None, (wa, data, mask) if wr else None)
            # grants as the hardware decides them (compute always ready)
            assert ctx.get(dut.compute.rd_addr.ready) and ctx.get(dut.compute.wr.ready)
            c_rd, c_wr = reqs["compute"]
            d_rd, d_wr = reqs["dma"]
            expect_rd_ready = not (c_rd is not None and d_rd is not None and bank(c_rd) == bank(d_rd))
            expect_wr_ready = not (c_wr is not None and d_wr is not None and bank(c_wr[0]) == bank(d_wr[0]))
            assert bool(ctx.get(dut.dma.rd_addr.ready)) == expect_rd_ready or d_rd is None
            assert bool(ctx.get(dut.dma.wr.ready)) == expect_wr_ready or d_wr is None
            granted_reads = {"compute": c_rd,
                             "dma": d_rd if expect_rd_ready else None}
            stats["dma_rd_stalls"] += d_rd is not None and not expect_rd_ready
            stats["dma_wr_stalls"] += d_wr is not None and not expect_wr_ready
            # reads see the memory before this cycle's writes
            expected = {n: (model.get(a, 0) if a is not None else None)
                        for n, a in granted_reads.items()}
            for name, w in (("compute", c_wr), ("dma", d_wr if expect_wr_ready else None)):
                if w is None:
                    continue
                addr, data, mask = w
                old = model.get(addr, 0)
                for i in range(word_bytes):
                    if mask >> i & 1:
                        old = (old & ~(0xFF << 8 * i)) | (data & (0xFF << 8 * i))
                model[addr] = old
                stats["writes"] += 1
            await ctx.tick()
            for name in ("compute", "dma"):
                port = getattr(dut, name)
                valid = ctx.get(port.rd_data.valid)
                assert bool(valid) == (expected[name] is not None), name
                if valid:
                    assert ctx.get(port.rd_data.payload) == expected[name], name
                    stats["reads"] += 1
        for name in ("compute", "dma"):
            ctx.set(getattr(dut, name).rd_addr.valid, 0)
            ctx.set(getattr(dut, name).wr.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return stats


@pytest.mark.parametrize("size,banks,word", [(2048, 4, 8), (1024, 1, 4), (4096, 8, 32)])
def test_random_traffic_matches_model(size, banks, word):
    stats = simulate(Scratchpad(size, banks, word), cycles=1500, seed=size + banks)
    assert stats["reads"] > 1000 and stats["writes"] > 1000
    if banks > 1:
        assert stats["dma_rd_stalls"] > 0  # conflicts did happen, and were resolved


def test_no_stall_without_bank_conflict():
    dut = Scratchpad(2048, 4, 8)

    async def bench(ctx):
        # compute reads bank 0, DMA writes and reads bank 3: both proceed every cycle
        ctx.set(dut.compute.rd_addr.valid, 1)
        ctx.set(dut.compute.rd_addr.payload, 3)
        ctx.set(dut.dma.rd_addr.valid, 1)
        ctx.set(dut.dma.rd_addr.payload, 3 * dut.bank_words + 5)
        ctx.set(dut.dma.wr.valid, 1)
        ctx.set(dut.dma.wr.payload.addr, 3 * dut.bank_words + 6)
        for _ in range(10):
            assert ctx.get(dut.dma.rd_addr.ready) and ctx.get(dut.dma.wr.ready)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("args", [(1000, 4, 8), (2048, 3, 8), (64, 4, 32)])
def test_bad_parameters_are_refused(args):
    with pytest.raises(ValueError):
        Scratchpad(*args)
