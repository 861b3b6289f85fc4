"""The double-buffered GEMM kernel (``firmware/gemm.py``) on the functional model: the result
is bit-exact with ``matmul_bf16`` over the whole of K, for single and multiple tiles and
k-steps, and the engines overlap (loads run ahead of the MATMULs)."""

import numpy as np
import pytest

from npusim.cosim.device_top import DEVICE_PARAMS as PARAMS   # the benchmarked device
from npusim.firmware.gemm import gemm_commands, plan_gemm
from npusim.sw import numerics as nx
from npusim.sw.fm.system import System
from npusim.sw.isa import encode_stream

A, B, C = 0x100000, 0x180000, 0x200000


def bf16(rng, shape):
    return nx.fp32_to_bf16(rng.standard_normal(shape).astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("m,n,k,tiles", [(64, 64, 64, None), (128, 128, 128, None),
                                         (32, 64, 96, (16, 32, 32))])
def test_gemm_kernel_matches_matmul_bf16(m, n, k, tiles):
    rng = np.random.default_rng(m + n + k)
    a, b = bf16(rng, (m, k)), bf16(rng, (k, n))
    tm, tn, tk = tiles or (None, None, None)
    plan = plan_gemm(PARAMS, m, n, k, tm=tm, tn=tn, tk=tk)
    s = System(1, PARAMS)
    d = s.devices[0]
    d.dram.write(A, a.view(np.uint8))
    d.dram.write(B, b.view(np.uint8))
    s.launch(0, encode_stream(gemm_commands(plan, A, B, C)), 0x8000)
    s.run()
    s.check()
    got = d.dram.read(C, 4 * m * n).view(np.uint32).reshape(m, n)
    assert np.array_equal(got, nx.matmul_bf16(a, b))
    # every MAC once, and the loads overlapped the MATMULs (less time than both in turn)
    report = s.report()[0]
    engines = report["engines"]
    assert engines["COMPUTE"]["macs"] == m * n * k
    if (m // plan.tm) * (n // plan.tn) * (k // plan.tk) > 1:
        assert report["cycles"] < engines["DMA_IN"]["busy_cycles"] \
            + engines["COMPUTE"]["busy_cycles"]

def test_tiles_must_fit():
    with pytest.raises(ValueError, match="scratchpad"):
        plan_gemm(PARAMS, 128, 128, 128, tm=128, tn=128, tk=64)
    with pytest.raises(ValueError, match="multiple"):
        plan_gemm(PARAMS, 100, 64, 64)
