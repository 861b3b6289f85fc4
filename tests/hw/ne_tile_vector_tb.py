"""cocotb testbench for the NE tile's VECTOR and MASK commands (``hw/ne/tile.py``), run by
``test_ne_tile.py`` on the same build as ``ne_tile_tb.py``.

Every command also runs on the functional model (:func:`npusim.cosim.ne_tile.fm_run`); after
it the tile's error code must equal the model's and the whole SRAM, read back through the
``dma`` port, must equal the model's memory bit for bit. Besides random commands (every op,
every operand mode, ragged shapes, strides, alignments, bf16 operands and results, in-place
results) and every error path, two kernels are built from commands: a row softmax (with the
online-softmax rescaling step) and an RMSNorm.

Environment: ``NE_TILE_PARAMS`` (JSON of the :class:`~npusim.sw.params.HwParams` fields the DUT
was built with), ``NE_TILE_SEED``, ``NE_TILE_COMMANDS`` (random commands per random test) and
``NE_TILE_REPORT_VECTOR`` (a path: the timing test writes its table there).
"""

import json
import os
from pathlib import Path

import cocotb
import numpy as np

from npusim.cosim.ne_tile import NeTileDriver, fm_run
from npusim.sw import numerics as nx
from npusim.sw.fm import timing
from npusim.sw.isa.enums import DType, ErrorCode, RedOp, VBMode, VectorOp
from npusim.sw.params import HwParams
from systolic_tb import random_bf16, random_fp32

TIMEOUT = dict(timeout_time=200, timeout_unit="ms")

#: Bytes at the top of SRAM holding SELECT masks (words of 0 or all ones).
MASK_REGION = 1024


def f32(values):
    return np.asarray(values, np.float32).view(np.uint32)


class TB(NeTileDriver):
    """The driver plus the oracle for VECTOR, REDUCE and MASK."""

    def __init__(self, dut):
        params = HwParams(**json.loads(os.environ["NE_TILE_PARAMS"]))
        super().__init__(dut, params, seed=int(os.environ.get("NE_TILE_SEED", "1")))
        self.command_count = int(os.environ.get("NE_TILE_COMMANDS", "40"))

    def rng(self, stream):
        return np.random.default_rng([self.seed, 100 + stream])

    def random_image(self, rng):
        """fp32 patterns (with specials) in the lower half, bf16 pairs above, and the mask
        region at the top."""
        half = self.size // 2
        image = np.concatenate([random_fp32(rng, half // 4, specials=0.03).view(np.uint8),
                                random_bf16(rng, half // 2, specials=0.03).view(np.uint8)])
        masks = np.where(rng.random(MASK_REGION // 4) < 0.5, 0xFFFFFFFF, 0).astype(np.uint32)
        image[-MASK_REGION:] = masks.view(np.uint8)
        return image

    async def run(self, name, f, what=""):
        """Run compute command ``name`` on the tile and on the model; compare the error code
        and the whole SRAM. Returns the :class:`~npusim.cosim.ne_tile.Outcome`."""
        return await self.checked(name, f, f"{what}: {name} {describe(f)}")


def describe(f):
    return " ".join(f"{k}={v:#x}" if k in ("a", "b", "c", "dst", "imm") else f"{k}={int(v)}"
                    for k, v in f.items())


def _dim(rng, lanes, zero=0.03):
    if rng.random() < zero:
        return 0
    return int(rng.choice([1, 2, lanes - 1 or 1, lanes, lanes + 1, 2 * lanes + 3,
                           int(rng.integers(1, 3 * lanes + 1))]))


def random_vector(rng, tb, op=None):
    """A random VECTOR the functional model accepts: every op and operand mode, ragged
    shapes, padded and unpadded strides, element and word alignments, bf16 a and dst, now and
    then an in-place result."""
    size, lanes, wb = tb.size, tb.cols, tb.word_bytes
    for _ in range(1000):
        op = VectorOp(op if op is not None else rng.choice(list(VectorOp)))
        rows, cols = _dim(rng, lanes), _dim(rng, lanes)
        f = dict(op=op, rows=rows, cols=cols,
                 a_dtype=DType(rng.integers(2)) if rng.random() < 0.4 else DType.FP32,
                 d_dtype=DType(rng.integers(2)) if rng.random() < 0.4 else DType.FP32,
                 b_mode=VBMode(rng.integers(len(VBMode))),
                 imm=int(f32(rng.standard_normal()).item()))
        pad = lambda: int(rng.choice([0, 0, 1, 3, 8, int(rng.integers(0, 20))]))  # noqa: E731
        f["lda"], f["ldd"], f["ldb"] = cols + pad(), cols + pad(), cols + pad()
        es_a = 2 if f["a_dtype"] == DType.BF16 else 4
        es_d = 2 if f["d_dtype"] == DType.BF16 else 4

        def place(span, es, region=(0, size - MASK_REGION)):
            lo, hi = region
            unit = wb if rng.random() < 0.3 else es
            top = (hi - span - lo) // unit
            return None if top < 0 else lo + int(rng.integers(0, top + 1)) * unit

        span = lambda ld, es: max(((rows - 1) * ld + cols) * es, 0)  # noqa: E731
        f["a"] = place(span(f["lda"], es_a), es_a)
        f["b"] = place(span(f["ldb"], 4), 4)
        f["c"] = place(span(f["lda"], 4), 4, (size - MASK_REGION, size)
                       if rng.random() < 0.7 else (0, size))
        if rng.random() < 0.2 and f["a"] is not None:      # in place
            f["dst"], f["ldd"], f["d_dtype"] = f["a"], f["lda"], f["a_dtype"]
        else:
            f["dst"] = place(span(f["ldd"], es_d), es_d)
        if None in (f["a"], f["b"], f["c"], f["dst"]):
            continue
        if fm_run(tb.image, "VECTOR", f)[0] == ErrorCode.OK:
            return f
    raise AssertionError("no valid random VECTOR found")


def random_mask(rng, tb):
    """A random MASK the model accepts: positions, shifts, windows and key lengths around the
    tile's extent, sometimes in place."""
    size, lanes = tb.size, tb.cols
    for _ in range(1000):
        rows, cols = _dim(rng, lanes), _dim(rng, lanes)
        ld = cols + int(rng.choice([0, 1, 5]))
        q0, k0 = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        f = dict(rows=rows, cols=cols, ld=ld, causal=int(rng.integers(2)),
                 q_shift=int(rng.choice([0, 0, 1, 2])), q0=q0, k0=k0,
                 klen=int(k0 + rng.integers(-2, cols + 3)) if rng.random() < 0.8
                 else int(rng.integers(0, 1 << 20)),
                 window=int(rng.choice([0, 0, 1, 3, 8, int(rng.integers(0, 30))])))
        f["klen"] = max(f["klen"], 0)
        span = max(((rows - 1) * ld + cols) * 4, 0)
        top = (size - span) // 4
        if top < 0:
            continue
        f["a"] = int(rng.integers(0, top + 1)) * 4
        f["dst"] = f["a"] if rng.random() < 0.3 else int(rng.integers(0, top + 1)) * 4
        if fm_run(tb.image, "MASK", f)[0] == ErrorCode.OK:
            return f
    raise AssertionError("no valid random MASK found")


# -- Tests -------------------------------------------------------------------------------------

@cocotb.test(**TIMEOUT)
async def vector_every_op(dut):
    """Each VECTOR op, several times, on random operands (every b mode, bf16 in and out)."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(1)
    await tb.load(tb.random_image(rng))
    for op in VectorOp:
        for n in range(3):
            await tb.run("VECTOR", random_vector(rng, tb, op), f"{op.name} #{n}")


@cocotb.test(**TIMEOUT)
async def vector_random(dut):
    """Random VECTORs and MASKs, interleaved, on one image."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(2)
    await tb.load(tb.random_image(rng))
    for n in range(tb.command_count):
        if rng.random() < 0.3:
            await tb.run("MASK", random_mask(rng, tb), f"random MASK #{n}")
        else:
            await tb.run("VECTOR", random_vector(rng, tb), f"random VECTOR #{n}")


def _vector_error_cases(tb):
    """``(name, expected code, fields)``: each check of the model's VECTOR and MASK."""
    top = tb.size
    base = dict(op=VectorOp.ADD, dst=0x400, ldd=8, a=0x100, lda=8, b=0x200, ldb=8,
                b_mode=VBMode.TILE, rows=3, cols=5)
    cases = []

    def vec(name, code, **changes):
        cases.append((name, "VECTOR", code, {**base, **changes}))

    def mask(name, code, **changes):
        fields = dict(dst=0x400, a=0x100, ld=8, rows=3, cols=5, klen=4, causal=1)
        cases.append((name, "MASK", code, {**fields, **changes}))

    vec("ok", ErrorCode.OK)
    vec("a misaligned", ErrorCode.ALIGNMENT, a=0x102)
    vec("a bf16 at an odd address", ErrorCode.ALIGNMENT, a=0x101, a_dtype=DType.BF16)
    vec("a bf16 at 2 mod 4", ErrorCode.OK, a=0x102, a_dtype=DType.BF16)
    vec("a past the end", ErrorCode.SRAM_BOUNDS, a=top - 16)
    vec("dst misaligned", ErrorCode.ALIGNMENT, dst=0x402)
    vec("dst row stride short", ErrorCode.BAD_SHAPE, ldd=4)
    vec("dst row stride short, one row", ErrorCode.OK, ldd=0, rows=1)
    vec("dst past the end", ErrorCode.SRAM_BOUNDS, dst=top - 64)
    vec("b misaligned", ErrorCode.ALIGNMENT, b=0x201)
    vec("b past the end", ErrorCode.SRAM_BOUNDS, b=top - 8)
    vec("b ROW past the end", ErrorCode.SRAM_BOUNDS, b=top - 8, b_mode=VBMode.ROW)
    vec("b ROW fits", ErrorCode.OK, b=top - 12, b_mode=VBMode.ROW)
    vec("b COL past the end", ErrorCode.SRAM_BOUNDS, b=top - 16, b_mode=VBMode.COL)
    vec("b SCALAR at the last word", ErrorCode.OK, b=top - 4, b_mode=VBMode.SCALAR)
    vec("b unused by a unary op", ErrorCode.OK, op=VectorOp.EXP, b=top - 2)
    vec("b unused in IMM mode", ErrorCode.OK, b=top - 2, b_mode=VBMode.IMM)
    vec("c past the end (SELECT)", ErrorCode.SRAM_BOUNDS, op=VectorOp.SELECT, c=top - 8)
    vec("c unused (ADD)", ErrorCode.OK, c=top - 2)
    vec("in place on a", ErrorCode.OK, dst=0x100)
    vec("in place on a, bf16", ErrorCode.OK, dst=0x100, a_dtype=DType.BF16,
        d_dtype=DType.BF16)
    vec("dst a shifted", ErrorCode.OPERAND_OVERLAP, dst=0x104)
    vec("dst a, another stride", ErrorCode.OPERAND_OVERLAP, dst=0x100, ldd=9)
    vec("dst a, another stride, one row", ErrorCode.OK, dst=0x100, ldd=9, rows=1)
    vec("dst a, narrower", ErrorCode.OPERAND_OVERLAP, dst=0x100, d_dtype=DType.BF16)
    vec("in place on b", ErrorCode.OK, dst=0x200)
    vec("dst over b ROW", ErrorCode.OPERAND_OVERLAP, dst=0x200, b_mode=VBMode.ROW)
    vec("dst over b COL", ErrorCode.OPERAND_OVERLAP, dst=0x1F0, b=0x200,
        b_mode=VBMode.COL)
    vec("dst over b, unused", ErrorCode.OK, dst=0x200, op=VectorOp.RSQRT)
    vec("dst over c", ErrorCode.OPERAND_OVERLAP, op=VectorOp.SELECT, c=0x404)
    vec("in place on c", ErrorCode.OK, op=VectorOp.SELECT, c=0x400, lda=8)
    vec("empty: no checks", ErrorCode.OK, rows=0, a=top + 1, dst=top + 3)
    mask("ok", ErrorCode.OK)
    mask("a misaligned", ErrorCode.ALIGNMENT, a=0x102)
    mask("dst past the end", ErrorCode.SRAM_BOUNDS, dst=top - 8)
    mask("dst row stride short", ErrorCode.BAD_SHAPE, ld=3)
    mask("in place", ErrorCode.OK, dst=0x100)
    mask("dst a shifted", ErrorCode.OPERAND_OVERLAP, dst=0x108)
    return cases


@cocotb.test(**TIMEOUT)
async def vector_errors(dut):
    """Every check, in the model's order: the same code, nothing written on a fault."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(3)
    await tb.load(tb.random_image(rng))
    for name, command, code, f in _vector_error_cases(tb):
        expected = fm_run(tb.image, command, f)[0]
        assert expected == code, f"{name}: the model says {expected.name}, the case {code.name}"
        await tb.run(command, f, name)


def allocate(*sizes, align=64):
    """Consecutive addresses for buffers of ``sizes`` bytes, each ``align``-aligned."""
    addrs, at = [], 0
    for size in sizes:
        addrs.append(at)
        at += -(-size // align) * align
    return addrs


def put(image, addr, value):
    raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
    image[addr:addr + len(raw)] = raw


@cocotb.test(**TIMEOUT)
async def softmax_from_commands(dut):
    """Causal row softmax of a scores tile, then the online-softmax step for a second block
    of keys (m' = max(m, rowmax), scale = exp(m - m'), l' = l scale + rowsum(exp(s - m')),
    o = o scale): every command checked bit for bit, the results close to numpy's."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(4)
    rows, cols, d = tb.cols + 3, 2 * tb.cols + 1, tb.cols
    tile, vec_, out_ = rows * cols * 4, rows * 4, rows * d * 4
    S, S2, P, MX, MX2, SC, L, L2, T, O = allocate(tile, tile, tile, vec_, vec_, vec_, vec_,
                                                 vec_, vec_, out_)
    scores = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    scores2 = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    out = rng.standard_normal((rows, d)).astype(np.float32)
    image = np.zeros(tb.size, np.uint8)
    for addr, value in ((S, scores), (S2, scores2), (O, out)):
        put(image, addr, value)
    await tb.load(image)

    def tile_op(op, dst, a, b=0, b_mode=VBMode.TILE):
        return dict(op=op, dst=dst, a=a, b=b, b_mode=b_mode, rows=rows, cols=cols,
                    lda=cols, ldd=cols, ldb=cols)

    def vec_op(op, dst, a, b=0):   # on the per-row vectors: one row of `rows` values
        return dict(op=op, dst=dst, a=a, b=b, b_mode=VBMode.TILE, rows=1, cols=rows,
                    lda=rows, ldd=rows, ldb=rows)

    steps = [
        ("MASK", dict(dst=S, a=S, ld=cols, rows=rows, cols=cols, causal=1, q0=cols - rows,
                      k0=0, klen=cols)),
        ("REDUCE", dict(op=RedOp.MAX, dst=MX, a=S, lda=cols, rows=rows, cols=cols)),
        ("VECTOR", tile_op(VectorOp.SUB, P, S, MX, VBMode.ROW)),
        ("VECTOR", tile_op(VectorOp.EXP, P, P)),
        ("REDUCE", dict(op=RedOp.SUM, dst=L, a=P, lda=cols, rows=rows, cols=cols)),
        ("VECTOR", vec_op(VectorOp.RECIP, T, L)),
        ("VECTOR", tile_op(VectorOp.MUL, P, P, T, VBMode.ROW)),
        # the online step, for a second block of keys
        ("REDUCE", dict(op=RedOp.MAX, dst=MX2, a=S2, lda=cols, rows=rows, cols=cols)),
        ("VECTOR", vec_op(VectorOp.MAX, MX2, MX2, MX)),
        ("VECTOR", vec_op(VectorOp.SUB, SC, MX, MX2)),
        ("VECTOR", vec_op(VectorOp.EXP, SC, SC)),
        ("VECTOR", tile_op(VectorOp.SUB, S2, S2, MX2, VBMode.ROW)),
        ("VECTOR", tile_op(VectorOp.EXP, S2, S2)),
        ("REDUCE", dict(op=RedOp.SUM, dst=L2, a=S2, lda=cols, rows=rows, cols=cols)),
        ("VECTOR", vec_op(VectorOp.MUL, L, L, SC)),
        ("VECTOR", vec_op(VectorOp.ADD, L, L, L2)),
        ("VECTOR", dict(op=VectorOp.MUL, dst=O, a=O, b=SC, b_mode=VBMode.ROW, rows=rows,
                        cols=d, lda=d, ldd=d)),
    ]
    for n, (command, f) in enumerate(steps):
        outcome = await tb.run(command, f, f"softmax step {n}")
        assert outcome.error == ErrorCode.OK, f"softmax step {n}: {outcome.error.name}"

    def read(addr, shape):
        return tb.image[addr:addr + 4 * int(np.prod(shape))].view(np.float32).reshape(shape)

    keys, queries = np.arange(cols)[None, :], (cols - rows) + np.arange(rows)[:, None]
    masked = np.where(keys > queries, -np.inf, scores.astype(np.float64))
    m1 = masked.max(1)
    m2 = np.maximum(m1, scores2.max(1))
    e1 = np.exp(masked - m1[:, None])
    np.testing.assert_allclose(read(P, (rows, cols)), e1 / e1.sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    scale = np.exp(m1 - m2)
    l_expect = e1.sum(1) * scale + np.exp(scores2 - m2[:, None]).sum(1)
    np.testing.assert_allclose(read(L, (rows,)), l_expect, rtol=1e-5)
    np.testing.assert_allclose(read(O, (rows, d)), out * scale[:, None], rtol=1e-5,
                               atol=1e-7)


@cocotb.test(**TIMEOUT)
async def rmsnorm_from_commands(dut):
    """RMSNorm of bf16 activations with an fp32 weight vector and a bf16 result,
    y = x rsqrt(mean(x^2) + eps) w: bit for bit with the model, close to numpy."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(5)
    rows, hidden = tb.cols + 1, 3 * tb.cols + 2
    X, W, SQ, SS, R_, Y = allocate(2 * rows * hidden, 4 * hidden, 4 * rows * hidden,
                                   4 * rows, 4 * rows, 2 * rows * hidden)
    x = nx.fp32_to_bf16(f32(rng.standard_normal((rows, hidden))))
    w = f32(1 + 0.1 * rng.standard_normal(hidden))
    image = np.zeros(tb.size, np.uint8)
    put(image, X, x)
    put(image, W, w)
    await tb.load(image)
    inv_n = int(f32(1.0 / hidden).item())
    eps = int(f32(1e-5).item())
    full = dict(rows=rows, cols=hidden, lda=hidden, ldd=hidden, ldb=hidden)
    per_row = dict(rows=1, cols=rows, lda=rows, ldd=rows, ldb=rows)
    steps = [
        # x^2: widen x to fp32 (b is always fp32), then square it in place
        ("VECTOR", dict(op=VectorOp.MOV, dst=SQ, a=X, a_dtype=DType.BF16, **full)),
        ("VECTOR", dict(op=VectorOp.MUL, dst=SQ, a=SQ, b=SQ, b_mode=VBMode.TILE, **full)),
        ("REDUCE", dict(op=RedOp.SUM, dst=SS, a=SQ, lda=hidden, rows=rows, cols=hidden)),
        ("VECTOR", dict(op=VectorOp.MUL, dst=R_, a=SS, b_mode=VBMode.IMM, imm=inv_n,
                        **per_row)),
        ("VECTOR", dict(op=VectorOp.ADD, dst=R_, a=R_, b_mode=VBMode.IMM, imm=eps,
                        **per_row)),
        ("VECTOR", dict(op=VectorOp.RSQRT, dst=R_, a=R_, **per_row)),
        ("VECTOR", dict(op=VectorOp.MUL, dst=SQ, a=X, b=R_, b_mode=VBMode.ROW,
                        a_dtype=DType.BF16, **full)),
        ("VECTOR", dict(op=VectorOp.MUL, dst=Y, a=SQ, b=W, b_mode=VBMode.COL,
                        d_dtype=DType.BF16, **full)),
    ]
    for n, (command, f) in enumerate(steps):
        outcome = await tb.run(command, f, f"rmsnorm step {n}")
        assert outcome.error == ErrorCode.OK, f"rmsnorm step {n}: {outcome.error.name}"
    xf = nx.bf16_to_fp32(x).view(np.float32).astype(np.float64)
    expect = xf / np.sqrt((xf ** 2).mean(1, keepdims=True) + 1e-5) * w.view(np.float32)
    got = nx.bf16_to_fp32(tb.image[Y:Y + 2 * rows * hidden].view(np.uint16))
    np.testing.assert_allclose(got.view(np.float32).reshape(rows, hidden), expect,
                               rtol=2 ** -7, atol=1e-6)


def vector_timing_shapes(lanes, size):
    """``(name, command, fields)`` for the cycle report: elementwise ops of each kind on dense
    tiles, and MASK."""
    rows, cols = 4 * lanes, 4 * lanes
    tile = dict(rows=rows, cols=cols, lda=cols, ldd=cols, ldb=cols, a=0, b=size // 4,
                dst=size // 2, c=3 * size // 4)
    shapes = []
    for op, mode in ((VectorOp.ADD, VBMode.TILE), (VectorOp.MUL, VBMode.ROW),
                     (VectorOp.MUL, VBMode.IMM), (VectorOp.SELECT, VBMode.TILE),
                     (VectorOp.EXP, VBMode.TILE), (VectorOp.RSQRT, VBMode.TILE)):
        shapes.append((f"VECTOR {op.name} {mode.name}", "VECTOR",
                       dict(tile, op=op, b_mode=mode)))
    shapes.append(("MASK causal", "MASK", dict(rows=rows, cols=cols, ld=cols, a=0,
                                                dst=size // 2, causal=1, klen=cols)))
    return shapes


@cocotb.test(**TIMEOUT)
async def vector_timing(dut):
    """Cycles per VECTOR and MASK command against the functional model's estimate."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(6)
    await tb.load(tb.random_image(rng))
    table = []
    for name, command, f in vector_timing_shapes(tb.cols, tb.size):
        outcome = await tb.run(command, f, name)
        assert outcome.error == ErrorCode.OK
        model = timing.compute_cycles(tb.params, command, f)
        table.append(dict(name=name, command=command, rows=f["rows"], cols=f["cols"],
                          op=int(f.get("op", 0)), cycles=outcome.cycles, model=model,
                          ratio=outcome.cycles / model))
        tb.log.info("%-24s %3d x %3d: %6d cycles (model %6d, x%.2f)", name, f["rows"],
                    f["cols"], outcome.cycles, model, outcome.cycles / model)
    report = os.environ.get("NE_TILE_REPORT_VECTOR")
    if report:
        Path(report).write_text(json.dumps({"shapes": table}, indent=1))
    off = [f"{r['name']}: {r['cycles']} cycles, model {r['model']}" for r in table
           if abs(r["ratio"] - 1) > 0.05]
    assert not off, "the timing model is off by more than 5 %:\n" + "\n".join(off)
