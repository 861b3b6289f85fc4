"""Tests of the FPU operators (``hw/fpu``) against the golden numerics (``npusim.sw.numerics``).

Two levels:

* Amaranth's Python simulator on a sample of edge cases: no compile, runs in a second.
* Verilator through cocotb (``fpu_tb.py``) on a harness of :data:`LANES` copies of each
  operator: every edge-case pair, an exponent sweep of the rounding-heavy region and biased
  random vectors (:data:`DEFAULT_RANDOM_VECTORS` in the default suite, 1,000,000 in the slow one).
"""

from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fpu_vectors import OPS, mismatch_report
from npusim.cosim.verilator_flow import build, run
from npusim.hw.fpu.bf16_mul import Bf16Multiplier
from npusim.hw.fpu.fp32_add import Fp32Adder


TESTBENCH = Path(__file__).with_name("fpu_tb.py")

#: Copies of the operator in the RTL harness: the testbench applies one vector per lane per
#: Python wake-up. 16 lanes run ~300k vectors/s and build in a few seconds; 64 lanes are
#: ~1.5x faster to simulate but take 25-30 s to build.
LANES = 16

DEFAULT_RANDOM_VECTORS = 20_000
SLOW_RANDOM_VECTORS = 1_000_000

COMPONENTS = {"bf16_mul": Bf16Multiplier, "fp32_add": Fp32Adder}


class FpuLanes(wiring.Component):
    """``lanes`` independent copies of one two-operand FPU operator, side by side.

    A test harness: it lets a testbench apply ``lanes`` vectors per simulation step.

    Members
    -------
    a : ``In(lanes * operand width)``
        First operands, lane 0 in the low bits.
    b : ``In(lanes * operand width)``
        Second operands, packed like ``a``.
    y : ``Out(lanes * 32)``
        Results (the operator's only output), lane 0 in the low bits.
    """

    def __init__(self, operator, lanes):
        self._units = [operator() for _ in range(lanes)]
        unit = self._units[0]
        self._output = next(name for name, member in unit.signature.members.items()
                            if member.flow == Out)
        super().__init__({
            "a": In(len(unit.a) * lanes),
            "b": In(len(unit.b) * lanes),
            "y": Out(len(getattr(unit, self._output)) * lanes),
        })

    def elaborate(self, platform):
        m = Module()
        for lane, unit in enumerate(self._units):
            m.submodules[f"lane{lane}"] = unit
            width_a, width_y = len(unit.a), len(getattr(unit, self._output))
            m.d.comb += [
                unit.a.eq(self.a.word_select(lane, width_a)),
                unit.b.eq(self.b.word_select(lane, width_a)),
                self.y.word_select(lane, width_y).eq(getattr(unit, self._output)),
            ]
        return m


# -- Amaranth simulator: a sample of edge cases, no compile ------------------------------------

def _simulate(component, output, a, b):
    """Apply each (a, b) pair to a combinational component in Amaranth's simulator."""
    results = []

    async def bench(ctx):
        for x, y in zip(a.tolist(), b.tolist()):
            ctx.set(component.a, x)
            ctx.set(component.b, y)
            results.append(ctx.get(output))

    simulator = Simulator(component)
    simulator.add_testbench(bench)
    simulator.run()
    return np.array(results, dtype=np.uint32)


@pytest.mark.parametrize("op_name", ["bf16_mul", "fp32_add"])
def test_amaranth_sim_edge_cases(op_name):
    op = OPS[op_name]
    a, b = op.edge_cases()
    sample = np.random.default_rng(0).choice(len(a), 400, replace=False)
    a, b = a[sample], b[sample]
    component = COMPONENTS[op_name]()
    output = component.p if op_name == "bf16_mul" else component.s
    got = _simulate(component, output, a, b)
    report = mismatch_report(op, "edge cases (Amaranth simulator)", a, b, got, op.golden(a, b))
    assert not report, report


@pytest.mark.parametrize(("a", "b", "p"), [
    (0x3F80, 0x4000, 0x4000_0000),  # 1 * 2 = 2
    (0x0001, 0x3700, 0x0000_0000),  # 2**-133 * 2**-17 = 2**-150: a tie, to even (zero)
    (0x0001, 0x37C0, 0x0000_0002),  # 1.5 * 2**-149: a tie, to even (2 ulps)
    (0x8001, 0x3700, 0x8000_0000),  # the same with a negative operand: -0
    (0x7F7F, 0x7F7F, 0x7F80_0000),  # overflow to +inf
    (0x7F80, 0x0000, 0x7FC0_0000),  # inf * 0 = NaN
    (0xFFC1, 0x3F80, 0x7FC0_0000),  # any NaN in: the canonical NaN out
])
def test_amaranth_sim_bf16_mul_examples(a, b, p):
    dut = Bf16Multiplier()
    assert _simulate(dut, dut.p, np.array([a]), np.array([b]))[0] == p


@pytest.mark.parametrize(("a", "b", "s"), [
    (0x3F80_0000, 0x3380_0000, 0x3F80_0000),  # 1 + 2**-24: a tie, to even (1)
    (0x3F80_0001, 0x3380_0000, 0x3F80_0002),  # (1 + ulp) + 2**-24: a tie, to even (up)
    (0x3F80_0000, 0xBF80_0000, 0x0000_0000),  # x + -x = +0
    (0x8000_0000, 0x8000_0000, 0x8000_0000),  # -0 + -0 = -0
    (0x007F_FFFF, 0x0000_0001, 0x0080_0000),  # subnormals adding up to the smallest normal
    (0x7F7F_FFFF, 0x7300_0000, 0x7F80_0000),  # largest finite + half its ulp: rounds to inf
    (0x7F80_0000, 0xFF80_0000, 0x7FC0_0000),  # inf + -inf = NaN
])
def test_amaranth_sim_fp32_add_examples(a, b, s):
    dut = Fp32Adder()
    assert _simulate(dut, dut.s, np.array([a]), np.array([b]))[0] == s


# -- Verilator -----------------------------------------------------------------------------------

def _run_rtl(op_name, random_vectors, seed):
    design = build(FpuLanes(COMPONENTS[op_name], LANES), f"fpu_{op_name}_x{LANES}")
    run(design, TESTBENCH, timeout=600, env={
        "FPU_OP": op_name,
        "FPU_RANDOM_VECTORS": str(random_vectors),
        "FPU_SEED": str(seed),
    })


@pytest.mark.rtl
@pytest.mark.parametrize("op_name", ["bf16_mul", "fp32_add"])
def test_rtl(op_name):
    """Edge cases, the sweep and DEFAULT_RANDOM_VECTORS random vectors on Verilator."""
    _run_rtl(op_name, DEFAULT_RANDOM_VECTORS, seed=1)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("op_name", ["bf16_mul", "fp32_add"])
def test_rtl_million(op_name):
    """The same with 1,000,000 random vectors (another seed)."""
    _run_rtl(op_name, SLOW_RANDOM_VECTORS, seed=2)
