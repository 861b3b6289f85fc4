"""Row-wise layer kernels (``firmware/rowops.py``) on the functional model against the
compiler's numpy reference (``sw/compiler/reference.py``): RMSNorm, RoPE, SwiGLU, residual
add and the bf16 conversion, within the error of the microcode and of bf16 rounding."""

import numpy as np
import pytest

from npusim.cosim.device_top import DEVICE_PARAMS as PARAMS
from npusim.firmware.rowops import Tile, add, convert, rmsnorm, rope, swiglu
from npusim.sw import numerics as nx
from npusim.sw.compiler import reference as ref
from npusim.sw.fm.system import System
from npusim.sw.isa import encode_stream
from npusim.sw.isa.enums import DType


def run(commands, inputs, regs=None):
    """Run ``commands`` on one model device whose scratchpad holds ``inputs``
    ({address: array}), with run-time registers ``regs``; the device."""
    s = System(1, PARAMS)
    d = s.devices[0]
    for addr, arr in inputs.items():
        d.sram.write(addr, np.ascontiguousarray(arr).view(np.uint8).ravel())
    s.launch(0, encode_stream(commands), 0x8000, regs=regs)
    s.run()
    s.check()
    return d


def read_f32(d, tile):
    raw = d.sram.read(tile.addr, tile.nbytes)
    if tile.dtype == DType.BF16:
        vals = nx.bf16_to_fp32(raw.view(np.uint16)).view(np.float32)
    else:
        vals = raw.view(np.float32)
    return np.lib.stride_tricks.as_strided(vals, (tile.rows, tile.cols),
                                           (tile.ld * 4, 4)).copy()


def close(got, want, rel):
    assert np.abs(got - want).max() <= rel * np.abs(want).max(), np.abs(got - want).max()


@pytest.mark.parametrize("rows, cols, out_dtype", [(5, 64, DType.FP32), (16, 96, DType.BF16)])
def test_rmsnorm(rows, cols, out_dtype):
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    X, W, SQ, ST, OUT = 0, 0x4000, 0x6000, 0xA000, 0xB000
    out = Tile(OUT, rows, cols, dtype=out_dtype)
    d = run(rmsnorm(Tile(X, rows, cols), W, out, 1e-5, squares=Tile(SQ, rows, cols), stats=ST),
            {X: x, W: w})
    close(read_f32(d, out), ref.rmsnorm(x, w, 1e-5),
          2 ** -8 if out_dtype == DType.BF16 else 1e-5)


def test_rmsnorm_in_place_with_row_stride():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 80)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    xt = Tile(0, 4, 64, ld=80)
    d = run(rmsnorm(xt, 0x4000, xt, 1e-6, squares=Tile(0x5000, 4, 64), stats=0x6000),
            {0: x, 0x4000: w})
    got = read_f32(d, Tile(0, 4, 80))
    close(got[:, :64], ref.rmsnorm(x[:, :64], w, 1e-6), 1e-5)
    assert np.array_equal(got[:, 64:], x[:, 64:])   # the stride's gap untouched


@pytest.mark.parametrize("heads, head_dim", [(2, 16), (3, 8)])
def test_rope(heads, head_dim):
    rows = 6
    rng = np.random.default_rng(heads)
    x = rng.standard_normal((rows, heads * head_dim)).astype(np.float32)
    positions = np.array([0, 1, 2, 7, 30, 100])
    cos, sin = ref.rope_tables(positions, head_dim, 10000.0)
    half = head_dim // 2
    X, C, S, SCR = 0, 0x2000, 0x3000, 0x4000
    xt = Tile(X, rows, heads * head_dim)
    d = run(rope(xt, Tile(C, rows, half), Tile(S, rows, half), heads, head_dim, scratch=SCR),
            {X: x, C: cos[:, :half], S: sin[:, :half]})
    want = ref.apply_rope(x.reshape(rows, heads, head_dim), cos, sin).reshape(rows, -1)
    close(read_f32(d, xt), want, 1e-6)


def test_swiglu_add_convert():
    rng = np.random.default_rng(3)
    g, u, r = (rng.standard_normal((8, 48)).astype(np.float32) * 4 for _ in range(3))
    G, U, O, R, B = 0, 0x1000, 0x2000, 0x3000, 0x4000
    cmds = swiglu(Tile(G, 8, 48), Tile(U, 8, 48), Tile(O, 8, 48))
    cmds += add(Tile(O, 8, 48), Tile(R, 8, 48), Tile(O, 8, 48))
    cmds += convert(Tile(O, 8, 48), Tile(B, 8, 48, dtype=DType.BF16))
    d = run(cmds, {G: g, U: u, R: r})
    want = ref.silu(g) * u + r
    close(read_f32(d, Tile(O, 8, 48)), want, 1e-6)
    bf = read_f32(d, Tile(B, 8, 48, dtype=DType.BF16))
    assert np.array_equal(bf, nx.round_bf16(read_f32(d, Tile(O, 8, 48)).view(np.uint32))
                          .view(np.float32))


def test_shape_errors():
    with pytest.raises(ValueError, match="different shapes"):
        add(Tile(0, 2, 8), Tile(64, 2, 4), Tile(128, 2, 8))
    with pytest.raises(ValueError, match="RoPE tables"):
        rope(Tile(0, 4, 32), Tile(0x1000, 4, 16), Tile(0x2000, 4, 8), 2, 16, scratch=0x3000)
    with pytest.raises(ValueError, match="row stride"):
        Tile(0, 2, 8, ld=4)
