"""Operand vectors for the FPU tests, as numpy arrays of raw bit patterns.

Shared by the pytest side (Amaranth simulator tests in ``test_fpu.py``) and the cocotb
testbench ``fpu_tb.py``, which imports it from the same folder. The expected results come
from the golden model, :mod:`npusim.sw.numerics`, never from here.

Every generator returns ``(a, b)``: two equal-length arrays (``uint16`` for bf16 operands,
``uint32`` for fp32 ones).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np


__all__ = ["Op", "OPS", "mismatch_report"]


# -- bf16 x bf16 -> fp32 ----------------------------------------------------------------------

#: Positive bf16 values worth multiplying by each other; the negatives are added below.
BF16_SPECIALS = [
    0x0000,          # +0
    0x0001, 0x0002,  # smallest subnormals
    0x0040,          # a subnormal with a single high bit
    0x007F,          # largest subnormal
    0x0080, 0x0081,  # smallest normals
    0x00FF, 0x0100,
    0x1F80, 0x2000,  # 2**-64, 2**-63: squares land at the bottom of fp32's normal range
    0x1F00, 0x1EC0,  # squares land in fp32's subnormal range
    0x3400, 0x3700, 0x37C0,  # times the smallest subnormals: ties at the bottom of the range
    0x3F80, 0x3F81,  # 1.0 and its successor
    0x3FC0, 0x3FFF,  # 1.5 and the largest significand
    0x4000,          # 2.0
    0x5F80, 0x5FFF,  # 2**64: squares overflow
    0x7F00, 0x7F7F,  # 2**127, the largest finite value
    0x7F80,          # +inf
    0x7F81,          # signalling NaN
    0x7FC0, 0x7FFF,  # quiet NaNs
]


def bf16_mul_edge_cases():
    """Every pair of :data:`BF16_SPECIALS` and their negatives (about 3,400 pairs)."""
    values = np.array(BF16_SPECIALS + [v | 0x8000 for v in BF16_SPECIALS], dtype=np.uint16)
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.ravel(), b.ravel()


def _bf16(sign, exponent, mantissa):
    return ((sign.astype(np.uint32) << 15) | (exponent.astype(np.uint32) << 7)
            | mantissa.astype(np.uint32)).astype(np.uint16)


def _split_exponent_sum(rng, total, maximum):
    """Two exponent fields in [0, maximum] adding up to ``total`` (clipped to what is possible)."""
    total = np.clip(total, 0, 2 * maximum)
    low = np.maximum(total - maximum, 0)
    high = np.minimum(total, maximum)
    first = rng.integers(low, high + 1)
    return first, total - first


def _mantissas(rng, n, bits):
    """Uniform mantissas, with a quarter of them from patterns that stress rounding."""
    uniform = rng.integers(0, 1 << bits, n, dtype=np.uint64)
    patterns = np.array([0, (1 << bits) - 1, 1, 1 << (bits - 1), (1 << (bits - 1)) - 1,
                         (1 << (bits - 1)) + 1], dtype=np.uint64)
    single_bit = np.uint64(1) << rng.integers(0, bits, n, dtype=np.uint64)
    choice = rng.random(n)
    return np.where(choice < 0.75, uniform,
                    np.where(choice < 0.9, rng.choice(patterns, n), single_bit))


def bf16_mul_random(rng, n):
    """Random bf16 pairs, biased toward the exponent ranges where the product rounds.

    A quarter are uniform bit patterns (every class, NaNs and infinities included); the rest
    pick the exponent *sum* first: near the bottom of fp32's range (products that are
    subnormal, round to the smallest subnormal or to zero), near the top (overflow), or in the
    normal middle; a few operands are then replaced by zeros, infinities and NaNs.
    """
    kind = rng.choice(4, n, p=[0.25, 0.4, 0.15, 0.2])
    exponent_sum = np.select(
        [kind == 1, kind == 2, kind == 3],
        [rng.integers(85, 135, n), rng.integers(372, 386, n), rng.integers(200, 310, n)],
        default=0,
    )
    ea, eb = _split_exponent_sum(rng, exponent_sum, 254)
    # Subnormal operands (exponent field 0) a little more often than their share.
    ea = np.where(rng.random(n) < 0.08, 0, ea)
    a = _bf16(rng.integers(0, 2, n), ea, _mantissas(rng, n, 7))
    b = _bf16(rng.integers(0, 2, n), eb, _mantissas(rng, n, 7))

    uniform = kind == 0
    a = np.where(uniform, rng.integers(0, 1 << 16, n, dtype=np.uint32), a).astype(np.uint16)
    b = np.where(uniform, rng.integers(0, 1 << 16, n, dtype=np.uint32), b).astype(np.uint16)

    specials = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFFF], np.uint16)
    a = np.where(rng.random(n) < 0.02, rng.choice(specials, n), a).astype(np.uint16)
    b = np.where(rng.random(n) < 0.02, rng.choice(specials, n), b).astype(np.uint16)
    return a, b


def bf16_mul_underflow_sweep(rng, per_exponent):
    """``per_exponent`` random normal pairs for each exponent sum from 100 to 130.

    The products run from about 2**-154 (below half the smallest subnormal, 2**-150), through
    the subnormal range, to the smallest normals (2**-126 and a little above): every right
    shift of the rounding path, with many exact ties.
    """
    exponent_sum = np.repeat(np.arange(127 - 27, 127 + 4), per_exponent)
    n = len(exponent_sum)
    ea, eb = _split_exponent_sum(rng, exponent_sum, 254)
    ea, eb = np.maximum(ea, 1), np.maximum(eb, 1)
    mantissa = rng.integers(0, 1 << 7, (2, n))
    sign = rng.integers(0, 2, (2, n))
    return _bf16(sign[0], ea, mantissa[0]), _bf16(sign[1], eb, mantissa[1])


# -- fp32 + fp32 -> fp32 ----------------------------------------------------------------------

#: Positive fp32 values worth adding to each other; the negatives are added below.
FP32_SPECIALS = [
    0x0000_0000,                            # +0
    0x0000_0001, 0x0000_0002, 0x0000_0003,  # smallest subnormals
    0x0040_0000, 0x007F_FFFE, 0x007F_FFFF,  # largest subnormals
    0x0080_0000, 0x0080_0001, 0x0100_0000,  # smallest normals
    0x3300_0000, 0x3380_0000, 0x3400_0000,  # 2**-25, 2**-24, 2**-23: half an ulp of 1.0 and around
    0x3300_0001, 0x337F_FFFF,               # just above and below 2**-25
    0x3F00_0000,                            # 0.5
    0x3F7F_FFFF, 0x3F80_0000, 0x3F80_0001,  # around 1.0
    0x3F80_0002, 0x3FC0_0000, 0x3FFF_FFFF,
    0x4000_0000,                            # 2.0
    0x4B7F_FFFF, 0x4B80_0000,               # around 2**24
    0x7300_0000, 0x7380_0000,               # half an ulp and an ulp of the largest finite
    0x7F00_0000, 0x7F7F_FFFE, 0x7F7F_FFFF,  # the largest finite values
    0x7F80_0000,                            # +inf
    0x7F80_0001,                            # signalling NaN
    0x7FC0_0000, 0x7FFF_FFFF,               # quiet NaNs
]


def fp32_add_edge_cases():
    """Every pair of :data:`FP32_SPECIALS` and their negatives (about 4,900 pairs).

    Covers signed zeros, x + -x, ties to even (1.0 + 2**-24), exponent differences above 24,
    subnormal + subnormal carrying into the normal range, overflow (also by rounding:
    the largest finite + half its ulp), infinities of both signs and NaNs.
    """
    values = np.array(FP32_SPECIALS + [v | 0x8000_0000 for v in FP32_SPECIALS], dtype=np.uint32)
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.ravel(), b.ravel()


def _fp32(sign, exponent, mantissa):
    return ((sign.astype(np.uint32) << 31) | (exponent.astype(np.uint32) << 23)
            | mantissa.astype(np.uint32)).astype(np.uint32)


def fp32_add_random(rng, n):
    """Random fp32 pairs, biased toward what is hard for an adder.

    A tenth are uniform bit patterns. For the rest, the first exponent is often near 0
    (subnormals), near 255 (overflow, infinities, NaNs) or near 127, and the second differs
    from it by a small amount (cancellation, carries), by up to 30 (alignment and sticky
    bits around 24), or by anything; a quarter of the second mantissas are close to the
    first (massive cancellation); signs are random, so half the sums are differences.
    """
    ea_kind = rng.random(n)
    ea = np.select(
        [ea_kind < 0.4, ea_kind < 0.6, ea_kind < 0.7],
        [np.clip(rng.normal(127, 30, n).astype(np.int64), 0, 254),  # around 1.0
         rng.integers(0, 4, n),                                     # subnormals, tiny normals
         rng.integers(250, 256, n)],                                # huge, inf, NaN
        default=rng.integers(0, 256, n),
    )
    distance_kind = rng.random(n)
    distance = np.select(
        [distance_kind < 0.4, distance_kind < 0.8],
        [rng.integers(-2, 3, n), rng.integers(-30, 31, n)],
        default=rng.integers(-255, 256, n),
    )
    eb = np.clip(ea + distance, 0, 255)

    ma = _mantissas(rng, n, 23)
    close = ma ^ rng.integers(0, 16, n, dtype=np.uint64)
    mb = np.where(rng.random(n) < 0.25, close, _mantissas(rng, n, 23))
    a = _fp32(rng.integers(0, 2, n), ea, ma)
    b = _fp32(rng.integers(0, 2, n), eb, mb)

    uniform = rng.random(n) < 0.1
    a = np.where(uniform, rng.integers(0, 1 << 32, n, dtype=np.uint64), a).astype(np.uint32)
    b = np.where(uniform, rng.integers(0, 1 << 32, n, dtype=np.uint64), b).astype(np.uint32)
    swap = rng.random(n) < 0.5
    return np.where(swap, b, a), np.where(swap, a, b)


def fp32_add_alignment_sweep(rng, per_distance):
    """``per_distance`` random pairs for each exponent difference from 0 to 40.

    Exercises every alignment shift, the guard, round and sticky bits and the clamp of the
    shifter, in both effective additions and subtractions.
    """
    distance = np.repeat(np.arange(0, 41), per_distance)
    n = len(distance)
    ea = rng.integers(41, 254, n)
    ma = rng.integers(0, 1 << 23, n)
    mb = np.where(rng.random(n) < 0.3, ma ^ rng.integers(0, 4, n), rng.integers(0, 1 << 23, n))
    a = _fp32(rng.integers(0, 2, n), ea, ma)
    b = _fp32(rng.integers(0, 2, n), ea - distance, mb)
    return a, b


# -- fp32 x fp32 -> fp32 ----------------------------------------------------------------------

#: Positive fp32 values worth multiplying, besides :data:`FP32_SPECIALS`; negatives added below.
FP32_MUL_SPECIALS = [
    0x1A00_0000, 0x1A40_0000,               # 2**-75, 1.5 * 2**-75: squares tie at 2**-150 and above
    0x1A80_0000, 0x19FF_FFFF,               # around them
    0x1F80_0000, 0x2000_0000,               # 2**-64, 2**-63: squares at the bottom of the normals
    0x2C00_0000,                            # 2**-39: times the smallest normals, deep underflow
    0x3FB5_04F3, 0x3FB5_04F4,               # around sqrt(2): squares near 2, rounding both ways
    0x4B00_0000,                            # 2**23: turns the smallest subnormal into 1.0
    0x5F80_0000, 0x5F7F_FFFF,               # 2**64 and below: squares at the top of the range
    0x3F7F_FFFF,                            # 1 - 2**-24: times the largest finite, no overflow
]


def fp32_mul_edge_cases():
    """Every pair of :data:`FP32_SPECIALS` + :data:`FP32_MUL_SPECIALS` and their negatives
    (about 9,200 pairs).

    Covers signed zeros and infinities, inf * 0, NaNs, subnormal x subnormal (underflow to
    zero), subnormal x large (exact normal results), squares that tie in the subnormal range,
    overflow, also by rounding, and products that round to the smallest normal.
    """
    positives = FP32_SPECIALS + FP32_MUL_SPECIALS
    values = np.array(positives + [v | 0x8000_0000 for v in positives], dtype=np.uint32)
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.ravel(), b.ravel()


def fp32_mul_random(rng, n):
    """Random fp32 pairs, biased toward the exponent ranges where a product rounds specially.

    A tenth are uniform bit patterns; the rest pick the exponent *sum* first: around 127 (the
    product crosses the subnormal range: underflow, ties at 2**-150, rounding up to the
    smallest normal), around 381 (overflow, also by rounding) or in the normal middle; some
    operands are subnormal with the other large; a few are then replaced by zeros,
    infinities and NaNs.
    """
    kind = rng.choice(4, n, p=[0.1, 0.4, 0.15, 0.35])
    exponent_sum = np.select(
        [kind == 1, kind == 2, kind == 3],
        [rng.integers(95, 132, n), rng.integers(374, 386, n), rng.integers(140, 370, n)],
        default=0,
    )
    ea, eb = _split_exponent_sum(rng, exponent_sum, 254)
    # A subnormal operand (exponent field 0) now and then: its partner scales it back up.
    subnormal = rng.random(n) < 0.1
    ea = np.where(subnormal, 0, ea)
    eb = np.where(subnormal, rng.integers(100, 255, n), eb)
    a = _fp32(rng.integers(0, 2, n), ea, _mantissas(rng, n, 23))
    b = _fp32(rng.integers(0, 2, n), eb, _mantissas(rng, n, 23))

    uniform = kind == 0
    a = np.where(uniform, rng.integers(0, 1 << 32, n, dtype=np.uint64), a).astype(np.uint32)
    b = np.where(uniform, rng.integers(0, 1 << 32, n, dtype=np.uint64), b).astype(np.uint32)

    specials = np.array([0x0000_0000, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000,
                         0x7F80_0001, 0xFFFF_FFFF, 0x0000_0001], np.uint32)
    a = np.where(rng.random(n) < 0.02, rng.choice(specials, n), a).astype(np.uint32)
    b = np.where(rng.random(n) < 0.02, rng.choice(specials, n), b).astype(np.uint32)
    swap = rng.random(n) < 0.5
    return np.where(swap, b, a), np.where(swap, a, b)


def fp32_mul_underflow_sweep(rng, per_exponent):
    """``per_exponent`` random pairs for each product exponent from 2**-155 to 2**-124.

    Half the pairs are two normal operands, half a subnormal operand (its leading one at a
    random position) times a normal one. Their products run from below half the smallest
    subnormal, through every right shift of the subnormal rounding path, to the smallest
    normals.
    """
    target = np.repeat(np.arange(-155, -123), per_exponent)  # unbiased exponent of a * b
    n = len(target)
    # Two normal operands: biased exponents summing to target + 254.
    ea, eb = _split_exponent_sum(rng, target + 254, 254)
    ea, eb = np.maximum(ea, 1), np.maximum(eb, 1)
    ma = _mantissas(rng, n, 23)
    mb = _mantissas(rng, n, 23)
    # A subnormal operand with its leading one at bit k is about 2**(k - 149).
    k = rng.integers(0, 23, n)
    low = rng.integers(0, 1 << 23, n, dtype=np.uint64) & ((np.uint64(1) << k.astype(np.uint64)) - 1)
    sub_mantissa = (np.uint64(1) << k.astype(np.uint64)) | low
    sub_eb = np.clip(target - (k - 149) + 127, 1, 254)
    with_subnormal = rng.random(n) < 0.5
    ea = np.where(with_subnormal, 0, ea)
    ma = np.where(with_subnormal, sub_mantissa, ma)
    eb = np.where(with_subnormal, sub_eb, eb)
    sign = rng.integers(0, 2, (2, n))
    return _fp32(sign[0], ea, ma), _fp32(sign[1], eb, mb)


# -- The operations under test ----------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One FPU operation: its operand format, golden function and vector generators."""
    name: str
    operand_bits: int
    golden_name: str
    edge_cases: Callable
    random: Callable
    sweep: Callable

    @property
    def operand_dtype(self):
        return np.uint16 if self.operand_bits == 16 else np.uint32

    def golden(self, a, b):
        """The expected fp32 results, from :mod:`npusim.sw.numerics`."""
        from npusim.sw import numerics
        return np.asarray(getattr(numerics, self.golden_name)(a, b), dtype=np.uint32)


OPS = {
    "bf16_mul": Op("bf16_mul", 16, "bf16_mul", bf16_mul_edge_cases, bf16_mul_random,
                   lambda rng: bf16_mul_underflow_sweep(rng, 2048)),
    "fp32_add": Op("fp32_add", 32, "fp32_add", fp32_add_edge_cases, fp32_add_random,
                   lambda rng: fp32_add_alignment_sweep(rng, 1024)),
    "fp32_mul": Op("fp32_mul", 32, "fp32_mul", fp32_mul_edge_cases, fp32_mul_random,
                   lambda rng: fp32_mul_underflow_sweep(rng, 512)),
}


# -- Reporting --------------------------------------------------------------------------------

def _describe(bits, width):
    if width == 16:
        value = np.array([bits << 16], dtype=np.uint32).view(np.float32)[0]
        return f"0x{bits:04X} ({value:.6g})"
    value = np.array([bits], dtype=np.uint32).view(np.float32)[0]
    return f"0x{bits:08X} ({value:.9g})"


def mismatch_report(op, what, a, b, got, expected, *, limit=10):
    """``""`` if ``got`` equals ``expected`` everywhere, else a readable table of the first
    ``limit`` differing vectors."""
    bad = np.flatnonzero(np.asarray(got) != np.asarray(expected))
    if len(bad) == 0:
        return ""
    shown = min(limit, len(bad))
    lines = [f"{op.name} {what}: {len(bad)} of {len(a)} vectors differ; first {shown}:"]
    for i in bad[:limit]:
        lines.append(f"  #{i}: a={_describe(int(a[i]), op.operand_bits)} "
                     f"b={_describe(int(b[i]), op.operand_bits)} "
                     f"got={_describe(int(got[i]), 32)} expected={_describe(int(expected[i]), 32)}")
    return "\n".join(lines)
