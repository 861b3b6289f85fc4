"""Tests of the NE tile top (``hw/ne/tile.py``, ``hw/ne/operand_stream.py``) against the
functional model (:mod:`npusim.sw.fm.compute`): MATMUL and REDUCE.

Verilator through cocotb (``ne_tile_tb.py``): the testbench loads a random SRAM image through
the ``dma`` port, sends commands, reads the whole SRAM back after each and compares it bit for
bit with the functional model run on the same image; error codes must match too. The timing
test's table (cycles, the model's estimate, utilisation) is printed with ``-s``. One build per
geometry, one ``run()`` for all its cocotb tests: a 4x4 array on a 16 KiB, 4-bank SRAM and an
8x8 array on a 32 KiB, 8-bank one in the default suite.
"""

import json
import time
from pathlib import Path

import pytest

from npusim.cosim.ne_tile import NeTileHarness
from npusim.cosim.verilator_flow import build, run
from npusim.hw.ne.tile import NeTile
from npusim.sw.params import HwParams


TESTBENCH = Path(__file__).with_name("ne_tile_tb.py")          # MATMUL and REDUCE
VECTOR_TESTBENCH = Path(__file__).with_name("ne_tile_vector_tb.py")  # VECTOR and MASK

#: name: parameters. The 4x4 build has a short panel buffer, so random K takes both the panel
#: path (K <= 32) and the streaming path (K > 32); the 16x16 one (in the slow suite) has a
#: 64-byte scratchpad word: the word scales with the array.
GEOMETRIES = {
    "4x4": HwParams(sram_bytes=16 * 1024, sram_banks=4, array_rows=4, array_cols=4,
                    vector_lanes=4, panel_depth=32),
    "8x8": HwParams(sram_bytes=32 * 1024, sram_banks=8, array_rows=8, array_cols=8),
    "16x16": HwParams(sram_bytes=64 * 1024, sram_banks=8, array_rows=16, array_cols=16,
                      vector_lanes=16, sram_bytes_per_cycle=64),
}


def _params_json(params):
    return json.dumps(params.as_dict())


@pytest.mark.parametrize(("params", "options"), [
    (HwParams(sram_bytes=3000), {}),
    (HwParams(panel_depth=100), {}),
    (HwParams(array_cols=80, vector_lanes=80), {}),
    (HwParams(vector_lanes=4), {}),
])
def test_bad_parameters(params, options):
    with pytest.raises(ValueError):
        NeTile(params, **options)


def _run_rtl(name, *, commands, seed, tmp_path, testbenches=(TESTBENCH, VECTOR_TESTBENCH)):
    params = GEOMETRIES[name]
    started = time.monotonic()
    design = build(NeTileHarness(params), f"ne_tile_{name}")
    report = tmp_path / "timing.json"
    vector_report = tmp_path / "vector_timing.json"
    tests = 0
    for testbench in testbenches:
        result = run(design, testbench, timeout=1800, env={
            "NE_TILE_PARAMS": _params_json(params),
            "NE_TILE_SEED": str(seed),
            "NE_TILE_COMMANDS": str(commands),
            "NE_TILE_REPORT": str(report),
            "NE_TILE_REPORT_VECTOR": str(vector_report),
        })
        tests += result.tests
    print(f"ne_tile {name}: build {design.seconds:.1f} s "
          f"({'cached' if design.cached else 'cold'}), {tests} cocotb tests, "
          f"{time.monotonic() - started:.1f} s in all")
    if report.exists():
        table = json.loads(report.read_text())
        print(f"{'shape':28} {'M':>4} {'N':>4} {'K':>4} {'cycles':>7} {'model':>7} "
              f"{'ratio':>6} {'util':>6}")
        for row in table["shapes"]:
            print(f"{row['name']:28} {row['m']:4} {row['n']:4} {row['k']:4} {row['cycles']:7} "
                  f"{row['model']:7} {row['ratio']:6.2f} {100 * row['utilisation']:5.1f}%")
    if vector_report.exists():
        for row in json.loads(vector_report.read_text())["shapes"]:
            print(f"{row['name']:28} {row['rows']:4} {row['cols']:4} {'':4} {row['cycles']:7} "
                  f"{row['model']:7} {row['ratio']:6.2f}")


@pytest.mark.rtl
@pytest.mark.parametrize("name", ["4x4", "8x8"])
def test_rtl(name, tmp_path):
    """Every cocotb test of ne_tile_tb.py and ne_tile_vector_tb.py on one geometry."""
    _run_rtl(name, commands=40 if name == "4x4" else 16, seed=1, tmp_path=tmp_path)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_16x16(tmp_path):
    """Every cocotb test on the 16x16 array (a long build)."""
    _run_rtl("16x16", commands=16, seed=3, tmp_path=tmp_path)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_many_commands(tmp_path):
    """More random commands on 4x4, another seed."""
    _run_rtl("4x4", commands=400, seed=2, tmp_path=tmp_path)
