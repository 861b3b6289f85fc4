"""bf16 x bf16 -> fp32 multiplier: the product stage of a systolic-array processing element.

The product of two bf16 values has at most 16 significant bits, so it is exact in fp32 unless
the result overflows or falls below fp32's normal range; only those two cases round.
See ``docs/hw/fpu.md`` for the theory of operation and ``docs/numerics.md`` for the contract.
"""

from .formats import Bf16
from .multiplier import FloatMultiplier

__all__ = ["Bf16Multiplier"]


class Bf16Multiplier(FloatMultiplier):
    """Multiply two bf16 numbers, giving an fp32 result (combinational).

    The result is the IEEE-754 binary32 product of the two operands, rounded to nearest,
    ties to even, with full subnormal support (no flush to zero) on inputs and outputs. A
    product of two bf16 values is exact in fp32 except when it overflows (result: infinity
    of the product's sign) or when it falls into fp32's subnormal range, where it rounds
    (possibly to a signed zero). Every NaN result is exactly :data:`CANONICAL_NAN`
    (``0x7FC00000``), whatever the input NaNs were; infinity times zero is NaN. The sign of a
    zero or infinite result is the exclusive-or of the operand signs.

    Bit-exact with :func:`npusim.sw.numerics.bf16_mul`.

    Members
    -------
    a : ``In(16)``
        First operand, a bf16 bit pattern.
    b : ``In(16)``
        Second operand, a bf16 bit pattern.
    p : ``Out(32)``
        The product ``a * b``, an fp32 bit pattern. Combinational: valid in the same cycle
        as ``a`` and ``b``.
    """

    def __init__(self):
        super().__init__(Bf16)
