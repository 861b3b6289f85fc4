"""Golden bf16/fp32 numerics: the single definition every model of the NPU must match bit for bit.

Values are raw bit patterns: bf16 as ``uint16``, fp32 as ``uint32``. Every function is
vectorised: it takes numpy arrays or Python ints, broadcasts like numpy and returns a numpy
array of the stated dtype (0-d for scalar inputs). The rules (see ``docs/numerics.md``):

- IEEE-754 round to nearest, ties to even; full gradual underflow (no flush to zero) on inputs
  and outputs of every op;
- every arithmetic result that is NaN is exactly the canonical NaN (sign and payload dropped);
- the matrix unit multiplies bf16 x bf16 into fp32 and accumulates in fp32 in the order
  :func:`matmul_bf16` defines;
- the vector unit's transcendentals are microcode (:mod:`npusim.firmware.microcode`) run on the
  primitive ops here by :func:`run_microcode`, so they are bit-exact by construction.

Arithmetic goes through numpy ``float32``, which is IEEE-754 with subnormals as long as the
FPU does not flush them: :func:`check_fpu` proves that, and runs at import.
"""

import numpy as np

from npusim.firmware.microcode import INPUT_REG, NUM_REGS, PROGRAMS, RESULT_REG, Imm
from npusim.sw.isa.enums import RedOp, VectorOp

__all__ = [
    "CANONICAL_NAN", "BF16_CANONICAL_NAN", "NEG_INF", "REDUCE_IDENTITY", "OPERANDS", "check_fpu",
    "bf16_to_fp32", "fp32_to_bf16", "bf16_mul", "matmul_bf16",
    "fp32_add", "fp32_sub", "fp32_mul", "fp32_max", "fp32_min",
    "fp32_lt", "fp32_le", "fp32_eq", "select",
    "int_add", "int_sub", "bit_and", "bit_or", "bit_xor", "shl", "shr", "sra",
    "fp32_to_int", "int_to_fp32", "round_bf16", "mov",
    "PRIMITIVE_OPS", "vector_op", "run_microcode",
]

CANONICAL_NAN = 0x7FC00000
BF16_CANONICAL_NAN = 0x7FC0
NEG_INF = 0xFF800000
#: Starting value of a row reduction (the REDUCE command), by ``RedOp``.
REDUCE_IDENTITY = {RedOp.SUM: 0x00000000, RedOp.MAX: NEG_INF}

_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_TRUE = np.uint32(0xFFFFFFFF)
_FALSE = np.uint32(0)


def _u32(x):
    return np.asarray(x, dtype=np.uint32)


def _f32(x):
    return _u32(x).view(np.float32)


def _bits(f):
    """fp32 values -> bit patterns, every NaN replaced by the canonical NaN."""
    f = np.asarray(f, dtype=np.float32)
    return _u32(np.where(np.isnan(f), np.uint32(CANONICAL_NAN), f.view(np.uint32)))


def check_fpu():
    """Raise ``RuntimeError`` unless numpy float32 arithmetic keeps subnormals.

    A library built with fast-math can switch the FPU to flush-to-zero for the whole process;
    the golden model would then silently stop matching the RTL.
    """
    tiny = np.array([1, 0x00800000], dtype=np.uint32).view(np.float32)  # 2^-149, 2^-126
    with np.errstate(all="ignore"):
        half = tiny[1] * np.float32(0.5)
        total = tiny[0] + tiny[0]
    if half.view(np.uint32) != 0x00400000 or total.view(np.uint32) != 2:
        raise RuntimeError("the FPU flushes subnormals (FTZ/DAZ is on): golden numerics invalid")


# --- formats -----------------------------------------------------------------------------------

def bf16_to_fp32(b):
    """Exact widening bf16 -> fp32 (``b << 16``); a NaN keeps its bits (this is not arithmetic)."""
    return _u32(np.left_shift(np.asarray(b, dtype=np.uint16).astype(np.uint32), 16))


def fp32_to_bf16(f):
    """fp32 -> bf16, round to nearest even; overflow rounds to inf; NaN -> the canonical NaN."""
    f = _u32(f)
    lsb = (f >> np.uint32(16)) & np.uint32(1)
    with np.errstate(over="ignore"):  # only NaNs wrap, and they are replaced below
        rounded = ((f + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    is_nan = (f & _ABS_MASK) > _INF
    return np.asarray(np.where(is_nan, np.uint16(BF16_CANONICAL_NAN), rounded), dtype=np.uint16)


def round_bf16(a):
    """fp32 rounded to bf16 precision (RNE), kept as fp32: ``bf16_to_fp32(fp32_to_bf16(a))``."""
    return bf16_to_fp32(fp32_to_bf16(a))


# --- fp32 arithmetic ---------------------------------------------------------------------------

def fp32_add(a, b):
    """IEEE binary32 ``a + b``, RNE; an exact-zero sum is +0 unless both are -0."""
    with np.errstate(all="ignore"):
        return _bits(_f32(a) + _f32(b))


def fp32_sub(a, b):
    """IEEE binary32 ``a - b``, RNE."""
    with np.errstate(all="ignore"):
        return _bits(_f32(a) - _f32(b))


def fp32_mul(a, b):
    """IEEE binary32 ``a * b``, RNE; ``inf * 0`` is NaN."""
    with np.errstate(all="ignore"):
        return _bits(_f32(a) * _f32(b))


def bf16_mul(a, b):
    """fp32 product of two bf16 values: exact unless it overflows or underflows (then RNE)."""
    return fp32_mul(bf16_to_fp32(a), bf16_to_fp32(b))


def _both_zero(a, b):
    return ((a | b) & _ABS_MASK) == 0


def fp32_max(a, b):
    """Maximum; NaN if either operand is NaN; +0 is greater than -0."""
    a, b = _u32(a), _u32(b)
    with np.errstate(all="ignore"):
        larger = _bits(np.maximum(a.view(np.float32), b.view(np.float32)))
    return _u32(np.where(_both_zero(a, b), a & b, larger))


def fp32_min(a, b):
    """Minimum; NaN if either operand is NaN; -0 is less than +0."""
    a, b = _u32(a), _u32(b)
    with np.errstate(all="ignore"):
        smaller = _bits(np.minimum(a.view(np.float32), b.view(np.float32)))
    return _u32(np.where(_both_zero(a, b), a | b, smaller))


def _compare(relation, a, b):
    with np.errstate(all="ignore"):
        return _u32(np.where(relation(_f32(a), _f32(b)), _TRUE, _FALSE))


def fp32_lt(a, b):
    """All-ones if ``a < b`` else 0; false when either is NaN."""
    return _compare(np.less, a, b)


def fp32_le(a, b):
    """All-ones if ``a <= b`` else 0; false when either is NaN."""
    return _compare(np.less_equal, a, b)


def fp32_eq(a, b):
    """All-ones if ``a == b`` else 0; false when either is NaN; -0 equals +0."""
    return _compare(np.equal, a, b)


def select(a, b, c):
    """``a`` where the mask ``c`` is non-zero, else ``b`` (bits pass unchanged)."""
    return _u32(np.where(_u32(c) != 0, _u32(a), _u32(b)))


# --- integer and bit operations on the raw 32-bit patterns --------------------------------------

def int_add(a, b):
    """Two's-complement ``a + b``, wrapping."""
    with np.errstate(all="ignore"):
        return _u32(_u32(a) + _u32(b))


def int_sub(a, b):
    """Two's-complement ``a - b``, wrapping."""
    with np.errstate(all="ignore"):
        return _u32(_u32(a) - _u32(b))


def bit_and(a, b):
    """``a & b``."""
    return _u32(_u32(a) & _u32(b))


def bit_or(a, b):
    """``a | b``."""
    return _u32(_u32(a) | _u32(b))


def bit_xor(a, b):
    """``a ^ b``."""
    return _u32(_u32(a) ^ _u32(b))


def _shift(b):
    return _u32(b) & np.uint32(31)


def shl(a, b):
    """``a << (b & 31)``."""
    return _u32(_u32(a) << _shift(b))


def shr(a, b):
    """``a >> (b & 31)``, logical."""
    return _u32(_u32(a) >> _shift(b))


def sra(a, b):
    """``a >> (b & 31)``, arithmetic (the sign bit is replicated)."""
    shifted = _u32(a).view(np.int32) >> _shift(b).view(np.int32)
    return _u32(np.asarray(shifted).view(np.uint32))


# --- conversions -------------------------------------------------------------------------------

def fp32_to_int(a):
    """fp32 -> int32 (as bits), round to nearest even, saturating; NaN -> 0."""
    with np.errstate(all="ignore"):
        x = _f32(a).astype(np.float64)
    rounded = np.clip(np.rint(x), -2.0**31, 2.0**31 - 1)
    return _u32(np.where(np.isnan(x), 0.0, rounded).astype(np.int32).view(np.uint32))


def int_to_fp32(a):
    """int32 (as bits) -> fp32, round to nearest even."""
    # int32 -> float64 is exact, so float64 -> float32 is the only rounding.
    return _u32(_u32(a).view(np.int32).astype(np.float64).astype(np.float32).view(np.uint32))


def mov(a):
    """``a``, bits unchanged."""
    return _u32(a).copy()


PRIMITIVE_OPS = {
    VectorOp.ADD: fp32_add,
    VectorOp.SUB: fp32_sub,
    VectorOp.MUL: fp32_mul,
    VectorOp.MAX: fp32_max,
    VectorOp.MIN: fp32_min,
    VectorOp.CMP_LT: fp32_lt,
    VectorOp.CMP_LE: fp32_le,
    VectorOp.CMP_EQ: fp32_eq,
    VectorOp.SELECT: select,
    VectorOp.IADD: int_add,
    VectorOp.ISUB: int_sub,
    VectorOp.AND: bit_and,
    VectorOp.OR: bit_or,
    VectorOp.XOR: bit_xor,
    VectorOp.SHL: shl,
    VectorOp.SHR: shr,
    VectorOp.SRA: sra,
    VectorOp.F2I: fp32_to_int,
    VectorOp.I2F: int_to_fp32,
    VectorOp.RND_BF16: round_bf16,
    VectorOp.MOV: mov,
}
"""Golden function of every primitive vector op, called with its operands ``(a[, b[, c]])``."""

#: How many operands (a, b, c) each vector op reads: microcoded ops and conversions take ``a``
#: only, SELECT takes all three.
OPERANDS = {op: 1 if op in PROGRAMS else PRIMITIVE_OPS[op].__code__.co_argcount
            for op in VectorOp}


# --- vector unit -------------------------------------------------------------------------------

def run_microcode(program, x):
    """Run a micro-op program (:mod:`npusim.firmware.microcode`) lane-wise on fp32 bits ``x``.

    Every lane holds ``NUM_REGS`` temporaries; ``x`` enters in ``INPUT_REG``, the result is
    read from ``RESULT_REG``. Each micro-op is one call of its golden primitive.
    """
    regs = [None] * NUM_REGS
    regs[INPUT_REG] = _u32(x)

    def value(operand):
        return np.uint32(operand.bits) if isinstance(operand, Imm) else regs[operand.index]

    for uop in program:
        operands = [value(o) for o in (uop.a, uop.b, uop.c) if o is not None]
        regs[uop.dst] = PRIMITIVE_OPS[uop.op](*operands)
    return regs[RESULT_REG]


def vector_op(op, a, b=None, c=None):
    """Golden result of the vector-unit operation ``op`` on fp32 bit patterns.

    Primitive ops take the operands their meaning names; microcoded ops (EXP, RECIP, RSQRT,
    SILU) take ``a`` only and run their program from ``PROGRAMS``.
    """
    op = VectorOp(op)
    if op in PROGRAMS:
        if b is not None or c is not None:
            raise TypeError(f"{op.name} takes one operand")
        return run_microcode(PROGRAMS[op], a)
    return PRIMITIVE_OPS[op](*[v for v in (a, b, c) if v is not None])


# --- matrix unit -------------------------------------------------------------------------------

def matmul_bf16(a, b, acc=None):
    """``acc + a @ b`` for bf16 ``a`` [M, K] and ``b`` [K, N], accumulated in fp32.

    The defined order (what an output-stationary systolic array does): ``acc`` starts at the
    given uint32 [M, N] accumulator or +0, then for k = 0, 1, ..., K-1 in turn
    ``acc = fp32_add(acc, bf16_mul(a[:, k], b[k, :]))`` element-wise. Returns uint32 [M, N].
    """
    a = np.asarray(a, dtype=np.uint16)
    b = np.asarray(b, dtype=np.uint16)
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape}")
    a_cols = np.ascontiguousarray(bf16_to_fp32(a).view(np.float32).T)  # [K, M]
    b_rows = bf16_to_fp32(b).view(np.float32)                          # [K, N]
    total = np.zeros((m, n), dtype=np.float32)
    if acc is not None:
        total[...] = _u32(acc).view(np.float32)
    product = np.empty_like(total)
    # A NaN stays NaN through every later add, so canonicalising once at the end is exact.
    with np.errstate(all="ignore"):
        for i in range(k):
            np.multiply(a_cols[i][:, None], b_rows[i][None, :], out=product)
            np.add(total, product, out=total)
    return _bits(total)


check_fpu()
