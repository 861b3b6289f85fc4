"""cocotb testbench for the FPU operators, run by ``test_fpu.py`` through
:func:`npusim.cosim.verilator_flow.run`.

The design under test is an ``FpuLanes`` harness (see ``test_fpu.py``): ``lanes`` copies of one
combinational operator side by side, operands packed into the wide ports ``a`` and ``b``
(lane 0 in the low bits) and results in ``y``. Each 1 ns step applies one operand pair per lane,
so Python wakes up once per ``lanes`` vectors. Results are checked per batch against
:mod:`npusim.sw.numerics`.

Environment (set by the pytest side):

``FPU_OP``
    ``bf16_mul`` or ``fp32_add``: which operator the harness holds.
``FPU_RANDOM_VECTORS``
    Number of random vectors for :func:`random_vectors` (default 10,000).
``FPU_SEED``
    Seed of the vector generators (default 1).
"""

import os
import time

import cocotb
import numpy as np
from cocotb.triggers import Timer

from fpu_vectors import OPS, mismatch_report


class TB:
    """Drives an ``FpuLanes`` harness and checks it against the golden model."""

    def __init__(self, dut):
        self.dut = dut
        self.op = OPS[os.environ["FPU_OP"]]
        self.seed = int(os.environ.get("FPU_SEED", "1"))
        self.lanes = len(dut.a) // self.op.operand_bits
        assert len(dut.y) == 32 * self.lanes, "harness output is not 32 bits per lane"

    def rng(self, stream):
        """A generator per vector set, so one set's size does not change another's vectors."""
        return np.random.default_rng([self.seed, stream])

    async def apply(self, a, b):
        """Apply operand arrays ``a`` and ``b``, ``lanes`` pairs per step; return the results."""
        n = len(a)
        steps = -(-n // self.lanes)
        padded = np.zeros((2, steps * self.lanes), dtype=self.op.operand_dtype)
        padded[0, :n] = a
        padded[1, :n] = b
        row = self.lanes * self.op.operand_bits // 8
        a_bytes, b_bytes = padded[0].tobytes(), padded[1].tobytes()
        results = []
        started = time.perf_counter()
        for i in range(steps):
            self.dut.a.value = int.from_bytes(a_bytes[i * row:(i + 1) * row], "little")
            self.dut.b.value = int.from_bytes(b_bytes[i * row:(i + 1) * row], "little")
            await Timer(1, unit="ns")
            results.append(self.dut.y.value.to_unsigned().to_bytes(4 * self.lanes, "little"))
        seconds = time.perf_counter() - started
        self.dut._log.info("%s: %d vectors in %.2f s (%.0f vectors/s, %d lanes)",
                           self.op.name, n, seconds, n / max(seconds, 1e-9), self.lanes)
        return np.frombuffer(b"".join(results), dtype=np.uint32)[:n]

    async def check(self, what, a, b):
        got = await self.apply(a, b)
        expected = self.op.golden(a, b)
        report = mismatch_report(self.op, what, a, b, got, expected)
        if report:  # raised rather than asserted: the report is the whole message
            raise AssertionError(f"{report}\n(FPU_SEED={self.seed})")


@cocotb.test()
async def edge_cases(dut):
    """Every pair of special values: zeros, subnormals, extremes, ties, infinities, NaNs."""
    tb = TB(dut)
    await tb.check("edge cases", *tb.op.edge_cases())


@cocotb.test()
async def sweep(dut):
    """The rounding-heavy region of each operator, swept exponent by exponent."""
    tb = TB(dut)
    await tb.check("sweep", *tb.op.sweep(tb.rng(1)))


@cocotb.test()
async def random_vectors(dut):
    """``FPU_RANDOM_VECTORS`` random vectors, biased toward interesting exponents."""
    tb = TB(dut)
    n = int(os.environ.get("FPU_RANDOM_VECTORS", "10000"))
    rng = tb.rng(2)
    batch = 200_000  # bounds the memory of the 1M-vector runs
    for start in range(0, n, batch):
        await tb.check(f"random vectors {start}..", *tb.op.random(rng, min(batch, n - start)))
