"""Vector-unit microcode (``npusim.firmware.microcode``): format rules, special values and the
error bounds stated in ``docs/numerics.md``, measured against float64 references."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.firmware.microcode import (
    INPUT_REG, NUM_REGS, PROGRAMS, RESULT_REG, Imm, Reg, UOp, microcode_length,
)
from npusim.sw import numerics as nx
from npusim.sw.isa.enums import VectorOp as V

CANON = nx.CANONICAL_NAN
SETTINGS = settings(max_examples=200, deadline=None, database=None)

# Max error in ulps, measured exhaustively over every fp32 input (docs/numerics.md), plus margin.
EXP_ULP = 1.2            # x in [-87.34, 88.72] (normal results); measured 1.176
EXP_SUBNORMAL_ULP = 0.9  # x in [-104, -87.34), in units of 2^-149; measured 0.817
RECIP_ULP = 0.55         # |x| <= 2^126, subnormals included; measured 0.506
RECIP_SUBNORMAL_ULP = 0.8  # |x| > 2^126 (result subnormal, rounded twice); measured 0.752
RSQRT_ULP = 0.8          # every positive finite x; measured 0.751
SILU_ULP = 3.8           # x in [-87.34, 80]; measured 3.647


def bits_of(values):
    with np.errstate(over="ignore"):
        return np.asarray(values, np.float32).view(np.uint32)


def floats_of(bits):
    return np.asarray(bits, np.uint32).view(np.float32).astype(np.float64)


def run(op, x):
    return nx.vector_op(op, np.asarray(x, np.uint32))


def ulp_error(got_bits, ref):
    """|got - ref| in ulps of ``ref`` (ulp of a subnormal is 2^-149; inf counts as 2^128)."""
    got = floats_of(got_bits)
    got = np.where(np.isinf(got), np.copysign(2.0**128, got), got)
    magnitude = np.abs(ref)
    exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    return np.abs(got - ref) / np.exp2(np.maximum(exponent, -126) - 23)


def reference(op, x):
    with np.errstate(all="ignore"):
        if op == V.EXP:
            return np.exp(x)
        if op == V.RECIP:
            return 1 / x
        if op == V.RSQRT:
            return 1 / np.sqrt(x)
        return np.where(x < 0, x * np.exp(x) / (1 + np.exp(x)), x / (1 + np.exp(-x)))


# --- format ------------------------------------------------------------------------------------

def arity(op):
    return nx.PRIMITIVE_OPS[op].__code__.co_argcount


@pytest.mark.parametrize("op", list(PROGRAMS))
def test_program_is_well_formed(op):
    written = {INPUT_REG}
    for uop in PROGRAMS[op]:
        operands = (uop.a, uop.b, uop.c)
        assert uop.op in nx.PRIMITIVE_OPS, str(uop)
        assert operands[arity(uop.op):] == (None,) * (3 - arity(uop.op)), str(uop)
        assert None not in operands[:arity(uop.op)], str(uop)
        for o in operands[:arity(uop.op)]:
            assert isinstance(o, Imm) or o.index in written, f"{uop}: t{o.index} read unwritten"
        assert sum(isinstance(o, Imm) for o in operands) <= 1
        written.add(uop.dst)
    assert PROGRAMS[op][-1].dst == RESULT_REG


def test_uop_format_rules():
    with pytest.raises(ValueError, match="microcoded"):
        UOp(V.EXP, 0, Reg(0))
    with pytest.raises(ValueError, match="at most one immediate"):
        UOp(V.ADD, 0, Imm(1), Imm(2))
    with pytest.raises(ValueError, match="does not exist"):
        UOp(V.MOV, NUM_REGS, Reg(0))
    with pytest.raises(ValueError, match="does not exist"):
        Reg(-1)
    with pytest.raises(ValueError, match="32-bit"):
        Imm(1 << 32)
    assert str(UOp(V.SELECT, 0, Imm(0x7FC00000), Reg(3), Reg(4))) == \
        "t0 = SELECT #0x7fc00000, t3, t4"


def test_microcode_length():
    for op in V:
        assert microcode_length(op) == (len(PROGRAMS[op]) if op in PROGRAMS else 1)
    assert set(PROGRAMS) == {op for op in V if op >= V.EXP}


def test_interpreter_shapes_and_scalars():
    x = bits_of(np.linspace(-3, 3, 12).reshape(3, 4))
    for op in PROGRAMS:
        got = run(op, x)
        assert got.dtype == np.uint32 and got.shape == (3, 4)
        assert np.array_equal(got.ravel(), run(op, x.ravel()))
        assert int(nx.vector_op(op, int(x[1, 2]))) == got[1, 2]


# --- special values ----------------------------------------------------------------------------

PZ, NZ, PINF, NINF = 0x00000000, 0x80000000, 0x7F800000, 0xFF800000
MIN_SUB, MAX_SUB, MAX_NORM = 0x00000001, 0x007FFFFF, 0x7F7FFFFF
NANS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF]

SPECIALS = {
    V.EXP: {PZ: 0x3F800000, NZ: 0x3F800000, PINF: PINF, NINF: PZ, MIN_SUB: 0x3F800000,
            0x42B20000: PINF, 0xC3480000: PZ, MAX_NORM: PINF, 0xFF7FFFFF: PZ},
    V.RECIP: {PZ: PINF, NZ: NINF, PINF: PZ, NINF: NZ, MIN_SUB: PINF, 0x80000001: NINF,
              0x00200000: PINF, 0x00400000: 0x7F000000, 0x7F000000: 0x00400000,
              0x3F800000: 0x3F800000, 0xC0000000: 0xBF000000},
    V.RSQRT: {PZ: PINF, NZ: NINF, PINF: PZ, NINF: CANON, 0xBF800000: CANON, 0x80000001: CANON,
              0xFF7FFFFF: CANON, 0x3F800000: 0x3F800000, 0x40800000: 0x3F000000,
              0x3E800000: 0x40000000, 0x00000002: 0x64800000},
    V.SILU: {PZ: PZ, NZ: NZ, PINF: PINF, NINF: NZ, MAX_NORM: MAX_NORM, 0xFF7FFFFF: NZ,
             MIN_SUB: PZ, 0xC3480000: NZ, 0x41A00000: 0x41A00000},
}


@pytest.mark.parametrize("op", list(PROGRAMS))
def test_special_values(op):
    x = np.array(list(SPECIALS[op]) + NANS, np.uint32)
    expected = np.array(list(SPECIALS[op].values()) + [CANON] * len(NANS), np.uint32)
    got = run(op, x)
    wrong = [f"{a:#010x} -> {g:#010x}, want {w:#010x}"
             for a, g, w in zip(x, got, expected) if g != w]
    assert not wrong, wrong


def test_exact_powers_of_two():
    k = np.arange(-149, 128)
    x = bits_of(np.exp2(k.astype(np.float64)))
    assert np.array_equal(run(V.RECIP, x), bits_of(np.exp2(-k.astype(np.float64))))
    even = k[k % 2 == 0]
    assert np.array_equal(run(V.RSQRT, bits_of(np.exp2(even.astype(np.float64)))),
                          bits_of(np.exp2(-even / 2)))


def test_recip_is_odd_and_silu_large_x_is_x():
    x = bits_of(np.random.default_rng(0).standard_normal(10_000) * 1e3)
    assert np.array_equal(run(V.RECIP, x ^ np.uint32(0x80000000)),
                          run(V.RECIP, x) ^ np.uint32(0x80000000))
    big = bits_of(np.geomspace(17, 3e38, 10_000))
    assert np.array_equal(run(V.SILU, big), big)  # x e^-x is below half an ulp of x


# --- error bounds ------------------------------------------------------------------------------

def dense(lo, hi, n=100_000, seed=0):
    """Evenly spaced plus uniformly random fp32 points in [lo, hi]."""
    rng = np.random.default_rng(seed)
    return bits_of(np.concatenate([np.linspace(lo, hi, n), rng.uniform(lo, hi, n)]))


def random_mantissas(lo_exp, hi_exp, n=200_000, seed=0):
    """Positive normal fp32 values with uniformly random bits, exponents in [lo_exp, hi_exp]."""
    rng = np.random.default_rng(seed)
    exponent = rng.integers(lo_exp + 127, hi_exp + 128, n).astype(np.uint32)
    return (exponent << np.uint32(23)) | rng.integers(0, 1 << 23, n, dtype=np.uint32)


@pytest.mark.parametrize("op, x, bound", [
    (V.EXP, dense(-87, 88.72), EXP_ULP),
    (V.EXP, dense(-104, -87.34), EXP_SUBNORMAL_ULP),
    (V.RECIP, random_mantissas(-126, 125), RECIP_ULP),
    (V.RECIP, random_mantissas(-126, 125) | np.uint32(0x80000000), RECIP_ULP),
    (V.RECIP, random_mantissas(126, 127), RECIP_SUBNORMAL_ULP),
    (V.RSQRT, random_mantissas(-126, 127), RSQRT_ULP),
    (V.SILU, dense(-80, 80), SILU_ULP),
    (V.SILU, dense(-1e-3, 1e-3), SILU_ULP),
], ids=["exp", "exp-subnormal", "recip+", "recip-", "recip-subnormal", "rsqrt", "silu",
        "silu-near-0"])
def test_error_bound_dense(op, x, bound):
    err = ulp_error(run(op, x), reference(op, floats_of(x)))
    assert err.max() <= bound, f"max {err.max():.3f} ulp at x={floats_of(x)[err.argmax()]!r}"


def test_subnormal_inputs():
    sub = np.arange(1, 1 << 23, 97, dtype=np.uint32)
    x = floats_of(sub)
    recip = run(V.RECIP, sub)
    overflows = 1 / x >= 2.0**128
    assert np.all(recip[overflows] == PINF) and overflows.any()
    assert ulp_error(recip[~overflows], 1 / x[~overflows]).max() <= RECIP_ULP
    assert ulp_error(run(V.RSQRT, sub), 1 / np.sqrt(x)).max() <= RSQRT_ULP
    assert np.all(run(V.EXP, sub) == 0x3F800000)


fp32_bits = st.one_of(
    st.integers(0, 2**32 - 1),
    st.floats(width=32).map(lambda f: struct.unpack("<I", struct.pack("<f", f))[0]),
)


@SETTINGS
@given(fp32_bits)
def test_every_input(a):
    """Over the whole fp32 domain: NaN exactly where the reference is NaN, and the bounds."""
    x = floats_of(a)
    for op, bound in ((V.EXP, EXP_ULP), (V.RECIP, RECIP_ULP), (V.RSQRT, RSQRT_ULP),
                      (V.SILU, SILU_ULP)):
        got, ref = run(op, a), reference(op, x)
        if op == V.SILU and x == -np.inf:
            continue  # silu(-inf) = -0, the limit (special values above)
        if np.isnan(ref):
            assert int(got) == CANON, op.name
        elif abs(ref) >= 2.0**128:
            assert floats_of(got) == np.copysign(np.inf, ref), op.name
        elif op == V.RECIP and abs(x) > 2.0**126:
            assert ulp_error(got, ref) <= RECIP_SUBNORMAL_ULP
        elif op == V.EXP and x < -87.34:
            assert ulp_error(got, ref) <= EXP_SUBNORMAL_ULP
        elif op == V.SILU and x < -87.34:
            # e^-|x| is subnormal: the result is tiny and within |x| + 2 subnormal ulps
            assert floats_of(got) <= 0 and abs(floats_of(got) - ref) <= (abs(x) + 2) * 2.0**-149
        elif ref == 0:
            assert floats_of(got) == 0 and np.signbit(floats_of(got)) == np.signbit(ref), op.name
        else:
            assert ulp_error(got, ref) <= bound, op.name
