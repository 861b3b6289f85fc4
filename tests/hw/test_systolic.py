"""Tests of the systolic matrix unit (``hw/ne/systolic.py``) against the golden model
(:func:`npusim.sw.numerics.matmul_bf16`).

Two levels:

* Amaranth's Python simulator on small and non-square arrays (1x1, 2x3, 3x2): no compile,
  random tiles with random stalls on every port; plus parameter checks.
* Verilator through cocotb (``systolic_tb.py``) at 4x4, 8x8 (default suite) and 16x16
  (``slow``: its cold build takes minutes): random tiles with specials, with and without
  stalls, chained initial values, exact latency, full rate for K >= rows, a saturated
  result port for K < rows.
"""

import inspect
import random
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment, Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from npusim.cosim.verilator_flow import build, run
from npusim.hw.ne.systolic import SystolicArray
from systolic_tb import Packer, expected_results, random_tiles


TESTBENCH = Path(__file__).with_name("systolic_tb.py")


# -- Parameters and interface --------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "cols", "error"), [
    (0, 8, ValueError), (8, 0, ValueError), (-1, 4, ValueError),
    (8.0, 8, TypeError), (8, "8", TypeError), (True, 8, TypeError),
])
def test_bad_parameters(rows, cols, error):
    with pytest.raises(error, match="rows|cols"):
        SystolicArray(rows, cols)


def test_interface():
    assert inspect.signature(SystolicArray).parameters["rows"].default == 8
    assert inspect.signature(SystolicArray).parameters["cols"].default == 8
    dut = SystolicArray(2, 3)
    assert (dut.rows, dut.cols) == (2, 3)
    layout = SystolicArray.feed_layout(2, 3)
    assert layout["a"].shape == data.ArrayLayout(16, 2)
    assert layout["b"].shape == data.ArrayLayout(16, 3)
    assert layout.size == 16 * (2 + 3) + 3
    assert Shape.cast(SystolicArray.row_layout(3)).width == 3 * 32
    assert dut.signature.members["init"].signature.members["payload"].shape \
        == SystolicArray.row_layout(3)
    assert dut.latency == 3 + 3
    assert dut.init_depth == 2 + 2
    Fragment.get(dut, None)  # elaborates (and marks it used)


# -- Amaranth simulator: small and non-square arrays ------------------------------------------

def _simulate(rows, cols, tiles, seed, *, stalls):
    """Drive ``tiles`` through a ``rows`` x ``cols`` array in Amaranth's simulator, with
    random gaps on feed and init and random back-pressure on result if ``stalls``."""
    dut = SystolicArray(rows, cols)
    packer = Packer(rows, cols)
    pause = random.Random(seed)
    beats = [beat for tile in tiles for beat in packer.feed_beats(tile)]
    init_rows = [row for tile in tiles if tile.init is not None
                 for row in packer.rows_of(tile.init)]
    received = []

    async def source(ctx, stream, payloads, gaps):
        for payload in payloads:
            while stalls and pause.random() < gaps:
                await ctx.tick()
            ctx.set(stream.payload.as_value(), payload)
            ctx.set(stream.valid, 1)
            await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)

    async def feed(ctx):
        await source(ctx, dut.feed, beats, gaps=0.3)

    async def init(ctx):
        await source(ctx, dut.init, init_rows, gaps=0.7)

    async def result(ctx):
        for _ in range(20 * (len(beats) + rows * len(tiles)) + 200):
            ready = not (stalls and pause.random() < 0.4)
            ctx.set(dut.result.ready, ready)
            if ready and ctx.get(dut.result.valid):
                received.append(ctx.get(dut.result.payload.as_value()))
            if len(received) == rows * len(tiles):
                return
            await ctx.tick()

    simulator = Simulator(dut)
    simulator.add_clock(1e-8)
    simulator.add_testbench(feed, background=True)
    simulator.add_testbench(init, background=True)
    simulator.add_testbench(result)
    simulator.run()
    return packer.matrix_of(received)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("stalls", [False, True], ids=["free", "stalls"])
def test_amaranth_sim_small_arrays(rows, cols, stalls):
    rng = np.random.default_rng([rows, cols, stalls])
    tiles = random_tiles(rng, rows, cols, 12)
    got = _simulate(rows, cols, tiles, seed=rows * 10 + cols, stalls=stalls)
    expected = np.concatenate(expected_results(tiles))
    assert got.shape == expected.shape
    bad = np.argwhere(got != expected)
    assert not len(bad), f"{len(bad)} values differ, first at row/col {bad[0]}: " \
                         f"got 0x{int(got[tuple(bad[0])]):08X}, " \
                         f"expected 0x{int(expected[tuple(bad[0])]):08X}"


# -- Verilator -----------------------------------------------------------------------------------

def _run_rtl(size, tiles, seed):
    started = time.monotonic()
    design = build(SystolicArray(size, size), f"systolic_{size}x{size}")
    result = run(design, TESTBENCH, timeout=900, env={
        "SYSTOLIC_TILES": str(tiles),
        "SYSTOLIC_SEED": str(seed),
    })
    print(f"systolic {size}x{size}: build {design.seconds:.1f} s "
          f"({'cached' if design.cached else 'cold'}), {result.tests} cocotb tests in "
          f"{result.seconds:.1f} s, {time.monotonic() - started:.1f} s in all")


@pytest.mark.rtl
@pytest.mark.parametrize("size", [4, 8])
def test_rtl(size):
    """Every cocotb test of systolic_tb.py on a size x size array."""
    _run_rtl(size, tiles=100, seed=1)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_16x16():
    """The same on 16x16 (slow: its cold build takes minutes)."""
    _run_rtl(16, tiles=100, seed=2)
