"""Tests of the fp32 multiplier (``hw/fpu/fp32_mul.py``) against the golden
:func:`npusim.sw.numerics.fp32_mul`.

The same two levels as ``test_fpu.py``, whose harness and testbench this file reuses:

* Amaranth's Python simulator on a sample of edge cases and hand-picked examples: no compile.
* Verilator through cocotb (``fpu_tb.py`` with ``FPU_OP=fp32_mul``) on an ``FpuLanes`` harness
  of 16 multipliers: every edge-case pair (``fp32_mul_edge_cases`` in ``fpu_vectors.py``), a
  sweep of the underflow region, and biased random vectors (:data:`DEFAULT_RANDOM_VECTORS` in
  the default suite, 1,000,000 in the slow one).
"""

from pathlib import Path

import numpy as np
import pytest

from fpu_vectors import OPS, mismatch_report
from npusim.cosim.verilator_flow import build, run
from npusim.hw.fpu.fp32_mul import Fp32Multiplier
from test_fpu import LANES, FpuLanes, _simulate


TESTBENCH = Path(__file__).with_name("fpu_tb.py")

DEFAULT_RANDOM_VECTORS = 20_000
SLOW_RANDOM_VECTORS = 1_000_000


# -- Amaranth simulator: a sample of edge cases, no compile ------------------------------------

def test_amaranth_sim_edge_cases():
    op = OPS["fp32_mul"]
    a, b = op.edge_cases()
    sample = np.random.default_rng(0).choice(len(a), 400, replace=False)
    a, b = a[sample], b[sample]
    dut = Fp32Multiplier()
    got = _simulate(dut, dut.p, a, b)
    report = mismatch_report(op, "edge cases (Amaranth simulator)", a, b, got, op.golden(a, b))
    assert not report, report


@pytest.mark.parametrize(("a", "b", "p"), [
    (0x3F80_0000, 0x4000_0000, 0x4000_0000),  # 1 * 2 = 2
    (0x3FB5_04F3, 0x3FB5_04F3, 0x3FFF_FFFF),  # sqrt(2) rounded down, squared: just below 2
    (0x3F80_0001, 0x3F80_0001, 0x3F80_0002),  # (1 + u)**2 = 1 + 2u + u**2: rounds down
    (0x1A00_0000, 0x1A00_0000, 0x0000_0000),  # 2**-75 squared = 2**-150: a tie, to even (0)
    (0x1A40_0000, 0x1A00_0000, 0x0000_0001),  # 1.5 * 2**-150: above the tie, up
    (0x9A40_0000, 0x1A00_0000, 0x8000_0001),  # the same, negative
    (0x0000_0001, 0x4B00_0000, 0x0080_0000),  # smallest subnormal * 2**23 = 2**-126, normal
    (0x007F_FFFF, 0x3F80_0001, 0x0080_0000),  # largest subnormal * (1 + u) rounds to the min normal
    (0x0000_0003, 0x3F00_0000, 0x0000_0002),  # 3 * 2**-150 = 1.5 ulp: a tie, to even (2)
    (0x0000_0001, 0x0000_0001, 0x0000_0000),  # subnormal squared underflows to +0
    (0x8000_0001, 0x0000_0001, 0x8000_0000),  # ... or to -0
    (0x7F7F_FFFF, 0x3F80_0001, 0x7F80_0000),  # overflow by rounding up past the largest finite
    (0x7F7F_FFFF, 0x3F7F_FFFF, 0x7F7F_FFFE),  # just below: no overflow
    (0xFF80_0000, 0x0000_0001, 0xFF80_0000),  # -inf * tiny = -inf
    (0x7F80_0000, 0x8000_0000, 0x7FC0_0000),  # inf * -0 = NaN
    (0xFFC0_0001, 0x3F80_0000, 0x7FC0_0000),  # any NaN in: the canonical NaN out
    (0x8000_0000, 0x8000_0000, 0x0000_0000),  # -0 * -0 = +0
])
def test_amaranth_sim_examples(a, b, p):
    dut = Fp32Multiplier()
    assert _simulate(dut, dut.p, np.array([a]), np.array([b]))[0] == p


# -- Verilator -----------------------------------------------------------------------------------

def _run_rtl(random_vectors, seed):
    design = build(FpuLanes(Fp32Multiplier, LANES), f"fpu_fp32_mul_x{LANES}")
    run(design, TESTBENCH, timeout=600, env={
        "FPU_OP": "fp32_mul",
        "FPU_RANDOM_VECTORS": str(random_vectors),
        "FPU_SEED": str(seed),
    })


@pytest.mark.rtl
def test_rtl():
    """Edge cases, the underflow sweep and DEFAULT_RANDOM_VECTORS random vectors on Verilator."""
    _run_rtl(DEFAULT_RANDOM_VECTORS, seed=1)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_million():
    """The same with 1,000,000 random vectors (another seed)."""
    _run_rtl(SLOW_RANDOM_VECTORS, seed=2)
