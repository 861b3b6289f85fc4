"""Vector-unit microcode: the transcendental ops as programs of primitive fp32 micro-ops.

This module is data. The RTL builds its microcode ROM from ``PROGRAMS`` and the golden model
(:func:`npusim.sw.numerics.run_microcode`) interprets the same programs, so both are bit-exact
by construction. Algorithms, special values and measured error bounds: ``docs/numerics.md``.

Machine model, per lane: ``NUM_REGS`` fp32 temporaries t0..t7. On entry the input x is in
``INPUT_REG``; micro-ops run in order, one per cycle, each ``dst = op(a[, b[, c]])`` with the
meaning of its :class:`~npusim.sw.isa.enums.VectorOp`; on exit the result is in ``RESULT_REG``.
"""

from dataclasses import dataclass

from npusim.sw.isa.enums import VectorOp as V

__all__ = [
    "NUM_REGS", "INPUT_REG", "RESULT_REG", "Reg", "Imm", "UOp",
    "EXP", "RECIP", "RSQRT", "SILU", "PROGRAMS", "microcode_length",
]

NUM_REGS = 8
INPUT_REG = 0
RESULT_REG = 0

# Microcoded ops have encodings from 32 up; only the primitives below that may be micro-ops.
_FIRST_MICROCODED = 32


@dataclass(frozen=True)
class Reg:
    """Operand: temporary register ``t<index>``."""

    index: int

    def __post_init__(self):
        if not 0 <= self.index < NUM_REGS:
            raise ValueError(f"register t{self.index} does not exist (t0..t{NUM_REGS - 1})")


@dataclass(frozen=True)
class Imm:
    """Operand: a 32-bit constant (raw bit pattern, usually an fp32 value)."""

    bits: int

    def __post_init__(self):
        if not 0 <= self.bits < 1 << 32:
            raise ValueError(f"immediate {self.bits:#x} is not a 32-bit pattern")


@dataclass(frozen=True)
class UOp:
    """One micro-op: ``t<dst> = op(a[, b[, c]])``; ``op`` is a primitive, at most one operand
    is an immediate (so a ROM word holds one 32-bit constant)."""

    op: V
    dst: int
    a: Reg | Imm
    b: Reg | Imm | None = None
    c: Reg | Imm | None = None

    def __post_init__(self):
        if V(self.op) >= _FIRST_MICROCODED:
            raise ValueError(f"{V(self.op).name} is microcoded, not a primitive micro-op")
        Reg(self.dst)
        if sum(isinstance(o, Imm) for o in (self.a, self.b, self.c)) > 1:
            raise ValueError("a micro-op has at most one immediate operand")

    def __str__(self):
        def show(o):
            return f"t{o.index}" if isinstance(o, Reg) else f"#{o.bits:#010x}"
        operands = ", ".join(show(o) for o in (self.a, self.b, self.c) if o is not None)
        return f"t{self.dst} = {self.op.name} {operands}"


t0, t1, t2, t3, t4, t5, t6, t7 = (Reg(i) for i in range(NUM_REGS))

# fp32 constants (bit patterns; the value in the comment).
_ZERO = Imm(0x00000000)
_HALF = Imm(0x3F000000)           # 0.5
_ONE = Imm(0x3F800000)            # 1.0
_THREE_HALVES = Imm(0x3FC00000)   # 1.5
_FIVE_SIXTEENTHS = Imm(0x3EA00000)  # 0.3125
_THREE_EIGHTHS = Imm(0x3EC00000)  # 0.375
_TWO = Imm(0x40000000)            # 2.0
_SIGN = Imm(0x80000000)           # sign bit
_INF_BITS = Imm(0x7F800000)       # +inf
_NAN = Imm(0x7FC00000)            # canonical NaN
_NEG_MAX = Imm(0xFF7FFFFF)        # -3.4028235e38, the most negative finite value
_BIG = Imm(0x71800000)            # 2^100
_NEG_BIG = Imm(0xF1800000)        # -2^100
_TWO_POW_NEG_64 = Imm(0x1F800000)  # 2^-64

# exp: Cody-Waite reduction x = n*ln2 + r, |r| <= ln2/2, then e^r by a degree-6 polynomial.
_EXP_LO = Imm(0xC2DC0000)         # -110.0: below it exp(x) rounds to +0
_EXP_HI = Imm(0x42B20000)         # 89.0: above it exp(x) overflows
_EXP_SPLIT = Imm(0xC2800000)      # -64.0: below it the result is scaled in two steps
_LOG2E = Imm(0x3FB8AA3B)          # 1.4426950 (log2(e))
_LN2_HI = Imm(0x3F318000)         # 0.693359375: 9 significant bits, so n*_LN2_HI is exact
_LN2_LO = Imm(0xB95E8083)         # -2.1219444e-4 = ln2 - _LN2_HI
# e^r ~= c6 r^6 + ... + c2 r^2 + r + 1, highest degree first (minimax relative error 3e-9 on
# |r| <= ln2/2, with c1 = c0 = 1 exactly).
_EXP_POLY = (0x3AB511E8, 0x3C091D10, 0x3D2AAC79, 0x3E2AAA49, 0x3EFFFFFE, 0x3F800000, 0x3F800000)
_ROUND_SHIFT = 0x4B400000         # 1.5 * 2^23: x + it rounds x to an integer in its low bits
_EXP_FIELD = 23                   # shift that moves an integer into the exponent field
_TWO_POW_64_IN_EXP = Imm(64 << _EXP_FIELD)

# reciprocal and rsqrt: integer magic-constant seeds refined by Newton-Raphson.
_RECIP_MAGIC = Imm(0x7EF311C7)
_RSQRT_MAGIC = Imm(0x5F3759DF)
_BIT30 = Imm(0x40000000)          # set in the bits of x exactly when |x| >= 2
_SCALE_64 = Imm(0x5F800000)       # 2^64; XOR with bit 30 gives 2^-64
_SQRT_SCALE = Imm(0x4F800000)     # 2^32; minus bit 29 gives 2^-32
_HIGH_12_BITS = Imm(0xFFFFF000)   # keeps sign, exponent and the top 11 fraction bits


def _scaled_poly(coefficients, scale_exponent):
    """``coefficients`` (highest degree first) times 2^scale_exponent, as immediates."""
    return [Imm(c + (scale_exponent << _EXP_FIELD)) for c in coefficients]


def _horner(p, r, coefficients):
    """Evaluate the polynomial ``coefficients`` (highest degree first) at ``r`` into ``p``."""
    c = coefficients
    uops = [UOp(V.MUL, p.index, r, c[0]), UOp(V.ADD, p.index, p, c[1])]
    for coefficient in c[2:]:
        uops += [UOp(V.MUL, p.index, p, r), UOp(V.ADD, p.index, p, coefficient)]
    return uops


def _exp_reduce(x, s, n, r, bias):
    """From ``x`` (clamped): ``s`` = rounding-shifted n*log2(e) whose bits hold n + bias in the
    exponent-field position after SHL 23, ``n`` the integer as fp32, ``r`` = x - n*ln2."""
    magic = Imm(_ROUND_SHIFT + bias)
    return [
        UOp(V.MUL, s.index, x, _LOG2E),
        UOp(V.ADD, s.index, s, magic),
        UOp(V.SUB, n.index, s, magic),
        UOp(V.MUL, r.index, n, _LN2_HI),
        UOp(V.SUB, r.index, x, r),
        UOp(V.MUL, n.index, n, _LN2_LO),
        UOp(V.SUB, r.index, r, n),
    ]


def _recip_refine(x, y, u, v):
    """Refine the seed ``y`` (relative error < 0.09) to 1/``x``, within 0.6 ulp.

    One Newton step (error e -> e^2), then a correction y (1 + e + e^2 + e^3) whose residual
    e = 1 - x y is exact: y is cut to 12 significant bits and x split into two 12-bit halves,
    so both partial products are exact in fp32.
    """
    d = y.index
    return [
        UOp(V.MUL, u.index, x, y),
        UOp(V.SUB, u.index, _TWO, u),
        UOp(V.MUL, d, y, u),                      # y = y (2 - x y)
        UOp(V.AND, d, y, _HIGH_12_BITS),
        UOp(V.AND, u.index, x, _HIGH_12_BITS),
        UOp(V.SUB, v.index, x, u),                # x = u + v, both 12-bit
        UOp(V.MUL, u.index, u, y),
        UOp(V.SUB, u.index, _ONE, u),
        UOp(V.MUL, v.index, v, y),
        UOp(V.SUB, u.index, u, v),                # e = 1 - x y, exactly
        UOp(V.ADD, v.index, u, _ONE),
        UOp(V.MUL, v.index, v, u),
        UOp(V.ADD, v.index, v, _ONE),
        UOp(V.MUL, v.index, v, u),
        UOp(V.MUL, v.index, v, y),
        UOp(V.ADD, d, y, v),                      # y + y (e + e^2 + e^3)
    ]


# EXP: e^x for all x; results below 2^-126 underflow gradually (RNE) instead of flushing.
# p = 2 e^r; for x >= -64 the result is p * 2^(n-1) (one rounding); for x < -64 it is
# (p * 2^-64) * 2^(n+63), both factors normal so the final multiply rounds once into the
# subnormal range.
EXP = (
    UOp(V.MAX, 1, t0, _EXP_LO),
    UOp(V.MIN, 1, t1, _EXP_HI),
    *_exp_reduce(t1, t2, t3, t4, bias=126),
    *_horner(t5, t4, _scaled_poly(_EXP_POLY, 1)),       # 2 e^r
    UOp(V.SHL, 2, t2, Imm(_EXP_FIELD)),           # 2^(n-1)
    UOp(V.MUL, 6, t5, t2),
    UOp(V.IADD, 2, t2, _TWO_POW_64_IN_EXP),       # 2^(n+63)
    UOp(V.MUL, 5, t5, _TWO_POW_NEG_64),
    UOp(V.MUL, 5, t5, t2),
    UOp(V.CMP_LT, 3, t1, _EXP_SPLIT),
    UOp(V.SELECT, 0, t5, t6, t3),
)

# RECIP: 1/x. x is pre-scaled by k = 2^64 (|x| < 2) or 2^-64 (|x| >= 2), taking every finite
# non-zero x into [2^-85, 2^65] where the seed is valid; 1/x = k * (1/(x k)). The clamps turn
# inf into 2^100 (result rounds to 0) and keep the seed of 0 finite (result overflows to inf).
RECIP = (
    UOp(V.AND, 1, t0, _BIT30),
    UOp(V.XOR, 1, t1, _SCALE_64),                 # k
    UOp(V.MUL, 2, t0, t1),
    UOp(V.MIN, 2, t2, _BIG),
    UOp(V.MAX, 2, t2, _NEG_BIG),                  # x k
    UOp(V.ISUB, 3, _RECIP_MAGIC, t2),
    UOp(V.MIN, 3, t3, _BIG),
    UOp(V.MAX, 3, t3, _NEG_BIG),                  # seed y ~ 1/(x k)
    *_recip_refine(t2, t3, t4, t5),
    UOp(V.MUL, 0, t3, t1),
)

# RSQRT: 1/sqrt(x). Pre-scaled like RECIP (k = 2^+-64, so 1/sqrt(x) = sqrt(k)/sqrt(x k)), then
# the special values: +-0 -> +-inf, +inf -> +0, x < 0 (and -inf) -> NaN, NaN -> NaN.
RSQRT = (
    UOp(V.AND, 1, t0, _BIT30),
    UOp(V.XOR, 2, t1, _SCALE_64),                 # k
    UOp(V.MUL, 2, t0, t2),                        # x k
    UOp(V.SHR, 1, t1, Imm(1)),
    UOp(V.ISUB, 1, _SQRT_SCALE, t1),              # sqrt(k)
    UOp(V.SHR, 3, t2, Imm(1)),
    UOp(V.ISUB, 3, _RSQRT_MAGIC, t3),             # seed y ~ 1/sqrt(x k)
    UOp(V.MUL, 4, t2, _HALF),
    UOp(V.MUL, 5, t3, t3),
    UOp(V.MUL, 5, t4, t5),
    UOp(V.SUB, 5, _THREE_HALVES, t5),
    UOp(V.MUL, 3, t3, t5),                        # y = y (1.5 - x k y^2 / 2)
    UOp(V.AND, 3, t3, _HIGH_12_BITS),
    UOp(V.MUL, 5, t3, t3),                        # y^2, exact
    UOp(V.MUL, 5, t2, t5),
    UOp(V.SUB, 5, _ONE, t5),                      # e = 1 - x k y^2, one rounding
    UOp(V.MUL, 6, t5, _FIVE_SIXTEENTHS),
    UOp(V.ADD, 6, t6, _THREE_EIGHTHS),
    UOp(V.MUL, 6, t6, t5),
    UOp(V.ADD, 6, t6, _HALF),
    UOp(V.MUL, 6, t6, t5),
    UOp(V.MUL, 6, t6, t3),
    UOp(V.ADD, 3, t3, t6),                        # y (1 + e/2 + 3e^2/8 + 5e^3/16)
    UOp(V.MUL, 3, t3, t1),
    UOp(V.ADD, 4, t0, t0),
    UOp(V.CMP_EQ, 4, t4, t0),                     # x is +-0 or +-inf
    UOp(V.XOR, 5, t0, _INF_BITS),                 # +-0 -> +-inf, +-inf -> +-0
    UOp(V.SELECT, 3, t5, t3, t4),
    UOp(V.CMP_LT, 4, t0, _ZERO),
    UOp(V.SELECT, 0, _NAN, t3, t4),
)

# SILU: x * sigmoid(x) with e = exp(-|x|) in (0, 1], so 1/(1 + e) only ever sees [1, 2]:
# sigmoid(x) = 1/(1 + e) for x >= 0 and e/(1 + e) for x < 0. -inf is clamped to the most
# negative finite value so silu(-inf) = -0, the limit.
SILU = (
    UOp(V.MAX, 1, t0, _NEG_MAX),
    UOp(V.OR, 2, t1, _SIGN),                      # -|x|
    UOp(V.MAX, 2, t2, _EXP_LO),
    *_exp_reduce(t2, t3, t4, t5, bias=127 + 64),
    *_horner(t6, t5, _scaled_poly(_EXP_POLY, -64)),     # 2^-64 e^r
    UOp(V.SHL, 3, t3, Imm(_EXP_FIELD)),           # 2^(n+64)
    UOp(V.MUL, 3, t6, t3),                        # e
    UOp(V.ADD, 4, t3, _ONE),                      # d = 1 + e
    UOp(V.ISUB, 5, _RECIP_MAGIC, t4),
    *_recip_refine(t4, t5, t6, t7),               # 1/d
    UOp(V.MUL, 3, t3, t5),                        # e/d
    UOp(V.CMP_LT, 6, t1, _ZERO),
    UOp(V.SELECT, 3, t3, t5, t6),                 # sigmoid(x)
    UOp(V.MUL, 0, t1, t3),
)

PROGRAMS = {V.EXP: EXP, V.RECIP: RECIP, V.RSQRT: RSQRT, V.SILU: SILU}
"""The program of every microcoded :class:`VectorOp`."""


def microcode_length(op):
    """Cycles per element (per lane) of vector op ``op``: 1 for a primitive."""
    return len(PROGRAMS[op]) if op in PROGRAMS else 1
