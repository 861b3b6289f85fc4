"""The golden numerics (``npusim.sw.numerics``) against two independent oracles.

An exact oracle (Python ``Fraction`` arithmetic, rounded to binary32 by hand) checks single
values drawn by hypothesis; torch checks large arrays of edge-heavy bit patterns.
"""

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.firmware.microcode import PROGRAMS
from npusim.sw import numerics as nx
from npusim.sw.isa.enums import VectorOp

CANON = nx.CANONICAL_NAN
SETTINGS = settings(max_examples=150, deadline=None, database=None)

# Named fp32 bit patterns every op is checked on.
EDGES = {
    "+0": 0x00000000, "-0": 0x80000000,
    "+inf": 0x7F800000, "-inf": 0xFF800000,
    "qnan": 0x7FC00000, "-qnan": 0xFFC00000, "snan": 0x7F800001, "nan_payload": 0x7FABCDEF,
    "min_sub": 0x00000001, "-min_sub": 0x80000001, "max_sub": 0x007FFFFF,
    "min_norm": 0x00800000, "-min_norm": 0x80800000,
    "max_norm": 0x7F7FFFFF, "-max_norm": 0xFF7FFFFF,
    "one": 0x3F800000, "-one": 0xBF800000, "one_plus_ulp": 0x3F800001, "two": 0x40000000,
    "half": 0x3F000000, "pi": 0x40490FDB,
}
EDGE_BITS = np.array(list(EDGES.values()), dtype=np.uint32)


def edge_heavy_bits(rng, n):
    """fp32 patterns biased to the awkward places: tiny, huge, zero, inf, NaN, ulp neighbours."""
    sign = rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31)
    exponent = rng.choice(np.array([0, 0, 1, 2, 23, 24, 25, 100, 126, 127, 128, 150, 230, 253,
                                    254, 254, 255], dtype=np.uint32), n)
    exponent = np.where(rng.random(n) < 0.3, rng.integers(0, 256, n, dtype=np.uint32), exponent)
    fraction = rng.choice(np.array([0, 1, 2, 0x400000, 0x7FFFFE, 0x7FFFFF], dtype=np.uint32), n)
    fraction = np.where(rng.random(n) < 0.6, rng.integers(0, 1 << 23, n, dtype=np.uint32), fraction)
    return sign | (exponent << np.uint32(23)) | fraction


fp32_bits = st.one_of(
    st.sampled_from(list(EDGES.values())),
    st.integers(0, 2**32 - 1),
    st.floats(width=32, allow_nan=True).map(lambda f: struct.unpack("<I", struct.pack("<f", f))[0]),
)


# --- the exact oracle ----------------------------------------------------------------------------

def value(bits):
    """fp32 bits -> Fraction, or a Python float for inf/NaN."""
    f = struct.unpack("<f", struct.pack("<I", bits))[0]
    return Fraction(f) if math.isfinite(f) else f


def is_nan(bits):
    return (bits & 0x7FFFFFFF) > 0x7F800000


def round_to_bits(q, precision=24, min_exponent=-126, max_exponent=127):
    """Round the exact non-zero ``q`` to nearest-even in a binary format; return fp32 bits.

    The defaults are binary32; ``precision=8`` gives bf16 values (still as fp32 bits).
    """
    sign = 0x80000000 if q < 0 else 0
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, min_exponent)
    quantum = Fraction(2) ** (e - precision + 1)
    n, rest = divmod(a, quantum)
    if rest > quantum / 2 or (rest == quantum / 2 and n % 2):
        n += 1
    rounded = n * quantum
    if rounded >= Fraction(2) ** (max_exponent + 1):
        return sign | 0x7F800000
    f = float(rounded)  # exact: at most 24 significant bits
    return sign | struct.unpack("<I", struct.pack("<f", f))[0]


def exact_add(a, b):
    va, vb = value(a), value(b)
    if isinstance(va, float) or isinstance(vb, float):
        r = float(va) + float(vb)
        return CANON if math.isnan(r) else struct.unpack("<I", struct.pack("<f", r))[0]
    s = va + vb
    if s == 0:
        return 0x80000000 if (a == 0x80000000 and b == 0x80000000) else 0
    return round_to_bits(s)


def exact_mul(a, b):
    va, vb = value(a), value(b)
    if isinstance(va, float) or isinstance(vb, float):
        r = float(va) * float(vb)
        return CANON if math.isnan(r) else struct.unpack("<I", struct.pack("<f", r))[0]
    p = va * vb
    if p == 0:
        return (a ^ b) & 0x80000000
    return round_to_bits(p)


def as_int(x):
    x = int(x) & 0xFFFFFFFF
    return x - (1 << 32) if x >> 31 else x


# --- torch as the bulk oracle --------------------------------------------------------------------

def torch_f32(bits):
    return torch.from_numpy(np.asarray(bits, np.uint32).view(np.float32).copy())


def canonical(t):
    """torch float32 result -> fp32 bits with NaNs canonical."""
    bits = t.numpy().view(np.uint32)
    return np.where(np.isnan(t.numpy()), np.uint32(CANON), bits)


def pairs(n=400_000, seed=0):
    rng = np.random.default_rng(seed)
    a = edge_heavy_bits(rng, n)
    b = edge_heavy_bits(rng, n)
    # cancellation and near-ties: b = -a, b = -a +- 1 ulp, b = a
    k = n // 8
    b[:k] = a[:k] ^ np.uint32(0x80000000)
    b[k:2 * k] = (a[k:2 * k] ^ np.uint32(0x80000000)) + np.uint32(1)
    b[2 * k:3 * k] = a[2 * k:3 * k]
    ea, eb = np.meshgrid(EDGE_BITS, EDGE_BITS)
    return np.concatenate([a, ea.ravel()]), np.concatenate([b, eb.ravel()])


# --- formats -----------------------------------------------------------------------------------

def test_bf16_to_fp32_is_exact_widening_for_all_patterns():
    b = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = nx.bf16_to_fp32(b)
    assert got.dtype == np.uint32
    assert np.array_equal(got, b.astype(np.uint32) << 16)  # NaNs pass through unchanged
    ref = torch.from_numpy(b.view(np.int16).copy()).view(torch.bfloat16).float()
    finite = ~torch.isnan(ref).numpy()
    assert np.array_equal(got[finite], ref.numpy().view(np.uint32)[finite])


def test_fp32_to_bf16_matches_torch_rne():
    rng = np.random.default_rng(1)
    upper = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    ties = np.concatenate([upper | np.uint32(low) for low in (0x7FFF, 0x8000, 0x8001, 0xFFFF)])
    f = np.concatenate([ties, edge_heavy_bits(rng, 200_000), EDGE_BITS])
    got = nx.fp32_to_bf16(f)
    assert got.dtype == np.uint16
    ref = torch_f32(f).to(torch.bfloat16)
    nan = torch.isnan(ref).numpy()
    assert np.array_equal(got[~nan], ref.view(torch.int16).numpy().view(np.uint16)[~nan])
    assert np.all(got[nan] == nx.BF16_CANONICAL_NAN)


@SETTINGS
@given(fp32_bits)
def test_fp32_to_bf16_exact(f):
    got = int(nx.fp32_to_bf16(f))
    if is_nan(f):
        assert got == nx.BF16_CANONICAL_NAN
    elif (f & 0x7FFFFFFF) in (0, 0x7F800000):
        assert got == f >> 16
    else:
        assert got == round_to_bits(value(f), precision=8) >> 16


def test_fp32_to_bf16_overflow_and_ties():
    assert int(nx.fp32_to_bf16(0x7F7FFFFF)) == 0x7F80        # max normal rounds up to inf
    assert int(nx.fp32_to_bf16(0xFF7F8000)) == 0xFF80        # tie at the top, odd -> -inf
    assert int(nx.fp32_to_bf16(0x7F7F7FFF)) == 0x7F7F        # just below the tie
    assert int(nx.fp32_to_bf16(0x3F808000)) == 0x3F80        # tie, even stays
    assert int(nx.fp32_to_bf16(0x3F818000)) == 0x3F82        # tie, odd rounds up
    assert int(nx.fp32_to_bf16(0x00008000)) == 0x0000        # subnormal tie to even (zero)
    assert int(nx.fp32_to_bf16(0x00018000)) == 0x0002
    assert int(nx.fp32_to_bf16(0xFFFFFFFF)) == nx.BF16_CANONICAL_NAN
    assert int(nx.fp32_to_bf16(0xFFFF8000)) == nx.BF16_CANONICAL_NAN  # rounding would wrap


def test_round_bf16_is_the_round_trip():
    f = edge_heavy_bits(np.random.default_rng(2), 10_000)
    assert np.array_equal(nx.round_bf16(f), nx.bf16_to_fp32(nx.fp32_to_bf16(f)))
    assert int(nx.round_bf16(0x7FABCDEF)) == CANON


# --- fp32 arithmetic ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed, ours, theirs", [
    (1, nx.fp32_add, torch.add),
    (2, nx.fp32_sub, torch.sub),
    (3, nx.fp32_mul, torch.mul),
])
def test_arithmetic_matches_torch(seed, ours, theirs):
    a, b = pairs(seed=seed)
    got = ours(a, b)
    assert got.dtype == np.uint32
    assert np.array_equal(got, canonical(theirs(torch_f32(a), torch_f32(b))))


@SETTINGS
@given(fp32_bits, fp32_bits)
def test_add_sub_exact(a, b):
    assert int(nx.fp32_add(a, b)) == exact_add(a, b)
    assert int(nx.fp32_sub(a, b)) == exact_add(a, b ^ 0x80000000)


@SETTINGS
@given(fp32_bits, fp32_bits)
def test_mul_exact(a, b):
    assert int(nx.fp32_mul(a, b)) == exact_mul(a, b)


@SETTINGS
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_bf16_mul_exact(a, b):
    assert int(nx.bf16_mul(a, b)) == exact_mul(a << 16, b << 16)


def test_bf16_mul_all_fraction_pairs_exact_and_underflow_rounds():
    # Every pair of bf16 fractions (exponents 1.0): the product must be exact.
    fractions = np.arange(128, dtype=np.uint16) | np.uint16(0x3F80)
    a, b = np.meshgrid(fractions, fractions)
    got = nx.bf16_mul(a, b).view(np.float32).astype(np.float64)
    ref = nx.bf16_to_fp32(a).view(np.float32).astype(np.float64) * \
        nx.bf16_to_fp32(b).view(np.float32).astype(np.float64)
    assert np.array_equal(got, ref)
    # Products below 2^-126 round once into the subnormals (no flush), above 2^128 to inf.
    assert int(nx.bf16_mul(0x0080, 0x3F00)) == 0x00400000       # 2^-126 * 0.5
    assert int(nx.bf16_mul(0x0001, 0x3F00)) == 0x00008000
    assert int(nx.bf16_mul(0x0080, 0x0080)) == 0                # 2^-252 -> +0
    assert int(nx.bf16_mul(0x8080, 0x0080)) == 0x80000000       # -> -0
    assert int(nx.bf16_mul(0x7F7F, 0x4000)) == 0x7F800000
    assert int(nx.bf16_mul(0x7F80, 0x0000)) == CANON            # inf * 0
    assert int(nx.bf16_mul(0x7FC1, 0x3F80)) == CANON


def test_every_pair_of_edges_exact():
    for a in EDGES.values():
        assert int(nx.fp32_to_int(a)) == f2i_reference(a)
        assert int(nx.round_bf16(a)) == (CANON if is_nan(a) else
                                         int(nx.bf16_to_fp32(nx.fp32_to_bf16(a))))
        for b in EDGES.values():
            assert int(nx.fp32_add(a, b)) == exact_add(a, b), (hex(a), hex(b))
            assert int(nx.fp32_sub(a, b)) == exact_add(a, b ^ 0x80000000), (hex(a), hex(b))
            assert int(nx.fp32_mul(a, b)) == exact_mul(a, b), (hex(a), hex(b))
            va, vb = float(value(a)), float(value(b))
            assert int(nx.fp32_lt(a, b)) == (0xFFFFFFFF if va < vb else 0)
            assert int(nx.fp32_eq(a, b)) == (0xFFFFFFFF if va == vb else 0)


def test_signed_zero_sums():
    pz, nz = 0x00000000, 0x80000000
    assert int(nx.fp32_add(nz, nz)) == nz
    assert int(nx.fp32_add(pz, nz)) == pz
    assert int(nx.fp32_add(0x3F800000, 0xBF800000)) == pz      # 1 + -1 = +0
    assert int(nx.fp32_sub(nz, pz)) == nz
    assert int(nx.fp32_sub(pz, pz)) == pz
    assert int(nx.fp32_add(0x7F800000, 0xFF800000)) == CANON   # inf + -inf


def test_gradual_underflow():
    assert int(nx.fp32_add(0x00000001, 0x00000001)) == 0x00000002
    assert int(nx.fp32_sub(0x00800000, 0x00000001)) == 0x007FFFFF
    assert int(nx.fp32_mul(0x00800000, 0x3F000000)) == 0x00400000
    assert int(nx.fp32_mul(0x00000003, 0x3F000000)) == 0x00000002  # 1.5 ulp -> tie to even
    assert int(nx.fp32_mul(0x00000001, 0x3F000000)) == 0x00000000  # 0.5 ulp -> tie to even 0


def test_every_nan_result_is_canonical():
    nans = np.array([0x7F800001, 0x7FFFFFFF, 0xFFC00000, 0xFFFFFFFF, 0x7FC00000], np.uint32)
    for op in (nx.fp32_add, nx.fp32_sub, nx.fp32_mul, nx.fp32_max, nx.fp32_min):
        assert np.all(op(nans, 0x3F800000) == CANON)
        assert np.all(op(0x3F800000, nans) == CANON)
    bf16_nans = np.array([0x7F81, 0x7FFF, 0xFFC0, 0xFFFF, 0x7FC0], np.uint16)
    assert np.all(nx.bf16_mul(bf16_nans, 0x3F80) == CANON)


# --- max / min / compare / select --------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [(nx.fp32_max, torch.maximum),
                                          (nx.fp32_min, torch.minimum)])
def test_max_min_match_torch_except_signed_zeros(ours, theirs):
    a, b = pairs(seed=7)
    both_zero = ((a | b) & np.uint32(0x7FFFFFFF)) == 0
    got = ours(a, b)
    ref = canonical(theirs(torch_f32(a), torch_f32(b)))
    assert np.array_equal(got[~both_zero], ref[~both_zero])


def test_max_min_signed_zeros_are_ordered():
    # +0 > -0, whatever the operand order (torch on CPU returns the first operand instead).
    pz, nz = 0x00000000, 0x80000000
    for a, b in ((pz, nz), (nz, pz)):
        assert int(nx.fp32_max(a, b)) == pz
        assert int(nx.fp32_min(a, b)) == nz
    assert int(nx.fp32_max(nz, nz)) == nz
    assert int(nx.fp32_min(pz, pz)) == pz


@SETTINGS
@given(fp32_bits, fp32_bits)
def test_comparisons_exact(a, b):
    va, vb = float(value(a)), float(value(b))
    for ours, truth in ((nx.fp32_lt, va < vb), (nx.fp32_le, va <= vb), (nx.fp32_eq, va == vb)):
        assert int(ours(a, b)) == (0xFFFFFFFF if truth else 0)


def test_comparisons_special_cases():
    assert int(nx.fp32_eq(0x00000000, 0x80000000)) == 0xFFFFFFFF
    assert int(nx.fp32_lt(0x80000000, 0x00000000)) == 0
    assert int(nx.fp32_le(0x7FC00000, 0x7FC00000)) == 0
    assert int(nx.fp32_eq(0x7FC00000, 0x7FC00000)) == 0
    assert int(nx.fp32_lt(0xFF800000, 0x7F800000)) == 0xFFFFFFFF
    assert int(nx.fp32_lt(0x00000000, 0x00000001)) == 0xFFFFFFFF


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.one_of(st.just(0), st.integers(0, 2**32 - 1)))
def test_select(a, b, c):
    assert int(nx.select(a, b, c)) == (a if c else b)


# --- integer and bit operations ----------------------------------------------------------------

words = st.one_of(st.sampled_from([0, 1, 31, 32, 33, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
                  st.integers(0, 2**32 - 1))


@SETTINGS
@given(words, words)
def test_integer_and_bit_ops(a, b):
    m = 0xFFFFFFFF
    s = b & 31
    expected = {
        nx.int_add: (a + b) & m, nx.int_sub: (a - b) & m,
        nx.bit_and: a & b, nx.bit_or: a | b, nx.bit_xor: a ^ b,
        nx.shl: (a << s) & m, nx.shr: a >> s, nx.sra: (as_int(a) >> s) & m,
    }
    for op, want in expected.items():
        got = op(a, b)
        assert got.dtype == np.uint32 and int(got) == want, op.__name__


def test_integer_ops_wrap_silently_on_arrays_and_scalars():
    big = np.array([0xFFFFFFFF, 0x7FFFFFFF], np.uint32)
    assert np.array_equal(nx.int_add(big, 1), [0, 0x80000000])
    assert int(nx.int_sub(0, 1)) == 0xFFFFFFFF
    assert int(nx.sra(0x80000000, 31)) == 0xFFFFFFFF
    assert int(nx.shl(1, 32)) == 1                              # shift amount is b & 31


# --- conversions -------------------------------------------------------------------------------

def f2i_reference(bits):
    v = value(bits)
    if isinstance(v, float) and math.isnan(v):
        return 0
    if v == math.inf or (not isinstance(v, float) and v >= 2**31):
        return 0x7FFFFFFF
    if v == -math.inf or v < -(2**31):
        return 0x80000000
    return round(v) & 0xFFFFFFFF  # Python rounds Fractions half to even


@SETTINGS
@given(fp32_bits)
def test_f2i_exact(a):
    assert int(nx.fp32_to_int(a)) == f2i_reference(a)


def test_f2i_special_cases():
    cases = {
        0x3F000000: 0, 0x3FC00000: 2, 0x40200000: 2, 0xBF000000: 0, 0xBFC00000: 0xFFFFFFFE,
        0x4EFFFFFF: 2147483520, 0x4F000000: 0x7FFFFFFF, 0xCF000000: 0x80000000,
        0xCF000001: 0x80000000, 0x7F800000: 0x7FFFFFFF, 0xFF800000: 0x80000000,
        0x7FC00000: 0, 0xFFFFFFFF: 0, 0x00000001: 0, 0x80000000: 0,
    }
    for a, want in cases.items():
        assert int(nx.fp32_to_int(a)) == want, hex(a)


@SETTINGS
@given(words)
def test_i2f_exact(a):
    i = as_int(a)
    want = 0 if i == 0 else round_to_bits(Fraction(i))
    assert int(nx.int_to_fp32(a)) == want


def test_i2f_special_cases():
    assert int(nx.int_to_fp32(0x80000000)) == 0xCF000000         # -2^31
    assert int(nx.int_to_fp32(0x7FFFFFFF)) == 0x4F000000         # rounds up to 2^31
    assert int(nx.int_to_fp32(16777217)) == 0x4B800000           # tie to even: 2^24
    assert int(nx.int_to_fp32(16777219)) == 0x4B800002
    assert int(nx.int_to_fp32(0xFFFFFFFF)) == 0xBF800000         # -1


# --- vector_op dispatch ------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(VectorOp))
def test_vector_op_covers_every_op(op):
    rng = np.random.default_rng(int(op))
    a, b, c = (edge_heavy_bits(rng, 64) for _ in range(3))
    if op in nx.PRIMITIVE_OPS:
        fn = nx.PRIMITIVE_OPS[op]
        operands = {1: (a,), 2: (a, b), 3: (a, b, c)}[fn.__code__.co_argcount]
        got = nx.vector_op(op, *operands)
        assert np.array_equal(got, fn(*operands))
    else:
        got = nx.vector_op(op, a)
        assert np.array_equal(got, nx.run_microcode(PROGRAMS[op], a))
    assert got.dtype == np.uint32 and got.shape == a.shape


@SETTINGS
@given(fp32_bits, fp32_bits, fp32_bits)
def test_scalars_agree_with_arrays(a, b, c):
    """Python-int inputs take the numpy-scalar paths, which warn on overflow unless handled."""
    for op, fn in nx.PRIMITIVE_OPS.items():
        operands = (a, b, c)[:fn.__code__.co_argcount]
        arrays = [np.array([v], np.uint32) for v in operands]
        assert int(fn(*operands)) == fn(*arrays)[0], op.name
    assert int(nx.fp32_to_bf16(a)) == nx.fp32_to_bf16(np.array([a], np.uint32))[0]


def test_vector_op_primitive_semantics():
    V = VectorOp
    assert int(nx.vector_op(V.MOV, 0x7F800001)) == 0x7F800001       # bits, not arithmetic
    assert int(nx.vector_op(V.SELECT, 1, 2, 0)) == 2
    assert int(nx.vector_op(V.RND_BF16, 0x3F808001)) == 0x3F810000
    assert int(nx.vector_op(V.F2I, 0x40200000)) == 2
    with pytest.raises(TypeError):
        nx.vector_op(V.EXP, 0, 0)
    with pytest.raises(TypeError):
        nx.vector_op(V.ADD, 0)


def test_broadcasting_and_scalars():
    got = nx.fp32_add(np.full((3, 1), 0x3F800000, np.uint32), np.array([0x3F800000] * 4, np.uint32))
    assert got.shape == (3, 4) and np.all(got == 0x40000000)
    s = nx.fp32_mul(0x40000000, 0x40000000)
    assert isinstance(s, np.ndarray) and s.dtype == np.uint32 and int(s) == 0x40800000


def test_check_fpu_detects_flush_to_zero():
    nx.check_fpu()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        with pytest.raises(RuntimeError, match="flushes subnormals"):
            nx.check_fpu()
    finally:
        torch.set_flush_denormal(False)
    nx.check_fpu()


# --- matrix unit -------------------------------------------------------------------------------

def matmul_reference(a, b, acc):
    """The defined accumulation order, one element at a time, with the exact oracle."""
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), np.uint32) if acc is None else acc.copy()
    for i in range(m):
        for j in range(n):
            s = int(out[i, j])
            for kk in range(k):
                s = exact_add(s, exact_mul(int(a[i, kk]) << 16, int(b[kk, j]) << 16))
            out[i, j] = s
    return out


def bf16_of(x):
    return nx.fp32_to_bf16(np.asarray(x, np.float32).view(np.uint32))


@pytest.mark.parametrize("m, k, n, with_acc",
                         [(1, 1, 1, False), (3, 7, 5, True), (4, 16, 2, False)])
def test_matmul_follows_the_defined_order(m, k, n, with_acc):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    # wide dynamic range so the order of the sum matters
    a = bf16_of(rng.standard_normal((m, k)) * 2.0 ** rng.integers(-20, 20, (m, k)))
    b = bf16_of(rng.standard_normal((k, n)) * 2.0 ** rng.integers(-20, 20, (k, n)))
    acc = rng.standard_normal((m, n)).astype(np.float32).view(np.uint32) if with_acc else None
    got = nx.matmul_bf16(a, b, acc)
    assert got.dtype == np.uint32 and got.shape == (m, n)
    assert np.array_equal(got, matmul_reference(a, b, acc))


def test_matmul_special_values():
    a = np.array([[0x7F80, 0x3F80], [0x0001, 0x0001], [0x7F7F, 0x7F7F], [0x8000, 0x8000]],
                 np.uint16)
    b = np.array([[0x0000, 0x3F80], [0x3F80, 0x3F00]], np.uint16)
    got = nx.matmul_bf16(a, b)
    assert np.array_equal(got, matmul_reference(a, b, None))
    assert got[0, 0] == CANON                                  # inf * 0
    assert got[1, 1] == 0x00018000                             # subnormals kept
    assert got[2, 1] == 0x7F800000                             # overflow
    assert got[3, 0] == 0x00000000                             # +0 start: +0 + -0 = +0
    neg_zero_acc = np.full((4, 2), 0x80000000, np.uint32)
    assert nx.matmul_bf16(a, b, neg_zero_acc)[3, 0] == 0x80000000


def test_matmul_close_to_torch_fp32():
    rng = np.random.default_rng(5)
    m, k, n = 32, 512, 24
    a, b = bf16_of(rng.standard_normal((m, k))), bf16_of(rng.standard_normal((k, n)))
    fa, fb = (torch.from_numpy(nx.bf16_to_fp32(x).view(np.float32)) for x in (a, b))
    got = nx.matmul_bf16(a, b).view(np.float32).astype(np.float64)
    ref = (fa.double() @ fb.double()).numpy()
    # Recursive summation in fp32: |error| <= (K u / (1 - K u)) sum |a||b|, u = 2^-24.
    bound = (fa.abs().double() @ fb.abs().double()).numpy() * k * 2.0**-24 / (1 - k * 2.0**-24)
    assert np.all(np.abs(got - ref) <= bound)
    torch_ref = (fa @ fb).numpy().astype(np.float64)
    assert np.all(np.abs(got - torch_ref) <= 2 * bound)


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match="inner dimensions"):
        nx.matmul_bf16(np.zeros((2, 3), np.uint16), np.zeros((4, 2), np.uint16))
