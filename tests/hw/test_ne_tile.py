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

from npusim.cosim.verilator_flow import build, run
from npusim.hw.ne.tile import NeTile
from npusim.sw.params import HwParams
from ne_tile_tb import NeTileHarness


TESTBENCH = Path(__file__).with_name("ne_tile_tb.py")

#: name: (parameters, panel depth). The 4x4 build has a short panel buffer, so random K
#: takes both the panel path (K <= 32) and the streaming path (K > 32).
GEOMETRIES = {
    "4x4": (HwParams(sram_bytes=16 * 1024, sram_banks=4, array_rows=4, array_cols=4,
                     vector_lanes=4), 32),
    "8x8": (HwParams(sram_bytes=32 * 1024, sram_banks=8, array_rows=8, array_cols=8), 256),
}


def _params_json(params):
    fields = ("array_rows", "array_cols", "vector_lanes", "sram_bytes", "sram_banks",
              "sram_bytes_per_cycle")
    return json.dumps({name: getattr(params, name) for name in fields})


@pytest.mark.parametrize(("params", "options"), [
    (HwParams(sram_bytes=3000), {}),
    (HwParams(), {"panel_depth": 100}),
    (HwParams(array_cols=80, vector_lanes=80), {}),
    (HwParams(vector_lanes=4), {}),
])
def test_bad_parameters(params, options):
    with pytest.raises(ValueError):
        NeTile(params, **options)


def _run_rtl(name, *, commands, seed, tmp_path, testcase=None):
    params, panel_depth = GEOMETRIES[name]
    started = time.monotonic()
    design = build(NeTileHarness(params, panel_depth=panel_depth), f"ne_tile_{name}")
    report = tmp_path / "timing.json"
    result = run(design, TESTBENCH, timeout=1800, testcase=testcase, env={
        "NE_TILE_PARAMS": _params_json(params),
        "NE_TILE_PANEL_DEPTH": str(panel_depth),
        "NE_TILE_SEED": str(seed),
        "NE_TILE_COMMANDS": str(commands),
        "NE_TILE_REPORT": str(report),
    })
    print(f"ne_tile {name}: build {design.seconds:.1f} s "
          f"({'cached' if design.cached else 'cold'}), {result.tests} cocotb tests in "
          f"{result.seconds:.1f} s, {time.monotonic() - started:.1f} s in all")
    if report.exists():
        table = json.loads(report.read_text())
        print(f"{'shape':28} {'M':>4} {'N':>4} {'K':>4} {'cycles':>7} {'model':>7} "
              f"{'ratio':>6} {'util':>6}")
        for row in table["shapes"]:
            print(f"{row['name']:28} {row['m']:4} {row['n']:4} {row['k']:4} {row['cycles']:7} "
                  f"{row['model']:7} {row['ratio']:6.2f} {100 * row['utilisation']:5.1f}%")


@pytest.mark.rtl
@pytest.mark.parametrize("name", ["4x4", "8x8"])
def test_rtl(name, tmp_path):
    """Every cocotb test of ne_tile_tb.py on one geometry."""
    _run_rtl(name, commands=40 if name == "4x4" else 16, seed=1, tmp_path=tmp_path)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_many_commands(tmp_path):
    """More random commands on 4x4, another seed."""
    _run_rtl("4x4", commands=400, seed=2, tmp_path=tmp_path)
