"""cocotb testbench of the GEMM benchmark (``npusim bench gemm``, built and run by
:func:`npusim.benchmarks.bench_gemm` through :func:`npusim.cosim.verilator_flow.run`).

The design is :class:`~npusim.cosim.ne_tile.NeTileHarness`. One test: load a random bf16 image
into SRAM, run each MATMUL of the list, and for each record the tile's own cycle count
(``done.payload.cycles``) and the wall-clock time of the command; every result is read back
and compared bit for bit with the functional model, because a fast tile that computes garbage
measures nothing.

Environment (set by the benchmark):

``NPUSIM_GEMM_BENCH``
    Path of a JSON file: ``{"params": {HwParams fields}, "seed": int, "shapes": [{"name":
    str, "fields": {MATMUL fields}}, ...]}``; other keys of a shape are ignored.
``NPUSIM_GEMM_RESULT``
    Path the results are written to, as JSON: ``{"params", "shapes": [{"name", "m", "n",
    "k", "cycles", "wall_s", "checked"}, ...], "cycles", "command_wall_s",
    "rtl_cycles_per_second"}``.
"""

import json
import os
from pathlib import Path

import cocotb
import numpy as np

from npusim.cosim.ne_tile import NeTileDriver, fm_run
from npusim.sw.isa.enums import ErrorCode
from npusim.sw.params import HwParams


def random_finite_bf16(rng, count):
    """``count`` bf16 bit patterns of normal numbers within a factor 256 of 1: sums and
    products stay far from overflow and underflow, so every command takes the common path
    (the tile's timing does not depend on the data; this keeps the check meaningful)."""
    sign = rng.integers(0, 2, count, dtype=np.uint16)
    exponent = rng.integers(127 - 8, 127 + 9, count, dtype=np.uint16)
    mantissa = rng.integers(0, 1 << 7, count, dtype=np.uint16)
    return (sign << 15) | (exponent << 7) | mantissa


@cocotb.test(timeout_time=2000, timeout_unit="ms")  # simulated time: 200M cycles
async def gemm_bench(dut):
    """Each MATMUL of the list on one image: cycles and wall time, result checked."""
    spec = json.loads(Path(os.environ["NPUSIM_GEMM_BENCH"]).read_text())
    params = HwParams(**spec["params"])
    driver = NeTileDriver(dut, params, seed=spec.get("seed", 1))
    await driver.reset()
    rng = np.random.default_rng(spec.get("seed", 1))
    await driver.load(random_finite_bf16(rng, params.sram_bytes // 2).view(np.uint8))
    rows = []
    for shape in spec["shapes"]:
        f, name = shape["fields"], shape["name"]
        expected_error, _ = fm_run(driver.image, "MATMUL", f)
        assert expected_error == ErrorCode.OK, f"{name}: the model faults with " \
            f"{expected_error.name}: the benchmark's shape is wrong"
        outcome = await driver.checked("MATMUL", f, name)
        rows.append({"name": name, "m": f["m"], "n": f["n"], "k": f["k"],
                     "cycles": outcome.cycles, "wall_s": outcome.wall, "checked": True})
        driver.log.info("%-24s M=%4d N=%4d K=%4d: %7d cycles in %.3f s", name, f["m"], f["n"],
                        f["k"], outcome.cycles, outcome.wall)
    cycles = sum(r["cycles"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    Path(os.environ["NPUSIM_GEMM_RESULT"]).write_text(json.dumps({
        "params": params.as_dict(), "shapes": rows, "cycles": cycles, "command_wall_s": wall,
        "rtl_cycles_per_second": cycles / wall if wall else None}, indent=1) + "\n")
