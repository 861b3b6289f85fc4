"""Bit layouts and helpers shared by the FPU operators.

The canonical NaN comes from the golden numerics (:mod:`npusim.sw.numerics`), the one
definition every model of the NPU follows.
"""

from amaranth.hdl import Signal
from amaranth.lib import data

from ...sw.numerics import CANONICAL_NAN

__all__ = ["Bf16", "Fp32", "CANONICAL_NAN", "leading_zeros"]


class Bf16(data.Struct):
    """bfloat16 bit pattern: 1 sign, 8 exponent (bias 127), 7 mantissa bits."""
    mantissa: 7
    exponent: 8
    sign: 1


class Fp32(data.Struct):
    """IEEE-754 binary32 bit pattern: 1 sign, 8 exponent (bias 127), 23 mantissa bits."""
    mantissa: 23
    exponent: 8
    sign: 1


def leading_zeros(m, value, *, name):
    """A signal holding the number of leading zeros of ``value`` (``len(value)`` if zero)."""
    count = Signal(range(len(value) + 1), name=name)
    m.d.comb += count.eq(len(value))
    for i in range(len(value)):  # the last true condition wins: the highest set bit decides
        with m.If(value[i]):
            m.d.comb += count.eq(len(value) - 1 - i)
    return count
