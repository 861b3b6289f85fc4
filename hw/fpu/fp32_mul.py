"""fp32 x fp32 multiplier: the multiplier of the vector unit.

The exact 48-bit product of the two 24-bit significands is normalised and rounded once, to
nearest even, into fp32, gradually underflowing into the subnormals. Same outline and signal
names as :class:`~npusim.hw.fpu.bf16_mul.Bf16Multiplier`, with full-width significands.
See ``docs/hw/fpu.md`` for the theory of operation and ``docs/numerics.md`` for the contract.
"""

from .formats import Fp32
from .multiplier import FloatMultiplier

__all__ = ["Fp32Multiplier"]


class Fp32Multiplier(FloatMultiplier):
    """Multiply two fp32 numbers (combinational).

    The result is the IEEE-754 binary32 product of the two operands, rounded to nearest,
    ties to even, with full subnormal support (no flush to zero) on inputs and outputs. Every
    NaN result is exactly :data:`CANONICAL_NAN` (``0x7FC00000``), whatever the input NaNs
    were; infinity times zero is NaN; a product too large for fp32 is an infinity. The sign of
    a zero or infinite result is the exclusive-or of the operand signs.

    Bit-exact with :func:`npusim.sw.numerics.fp32_mul`.

    Members
    -------
    a : ``In(32)``
        First operand, an fp32 bit pattern.
    b : ``In(32)``
        Second operand, an fp32 bit pattern.
    p : ``Out(32)``
        The product ``a * b``, an fp32 bit pattern. Combinational: valid in the same cycle
        as ``a`` and ``b``.
    """

    def __init__(self):
        super().__init__(Fp32)
