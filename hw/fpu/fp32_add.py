"""fp32 + fp32 adder: the accumulator of a systolic-array processing element and the adder of
the vector unit.

A classic single-path design: order the operands by magnitude, align the smaller one with a
guard, a round and a sticky bit, add or subtract, normalise, round to nearest even.
See ``docs/hw/fpu.md`` for the theory of operation and ``docs/numerics.md`` for the contract.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .formats import CANONICAL_NAN, Fp32, leading_zeros

__all__ = ["Fp32Adder"]


class Fp32Adder(wiring.Component):
    """Add two fp32 numbers (combinational).

    The result is the IEEE-754 binary32 sum of the two operands, rounded to nearest, ties to
    even, with full subnormal support (no flush to zero) on inputs and outputs. Every NaN
    result is exactly :data:`CANONICAL_NAN` (``0x7FC00000``), whatever the input NaNs were;
    ``inf + -inf`` is NaN; a sum too large for fp32 is an infinity. An exact zero sum is
    ``+0``, except ``-0 + -0``, which is ``-0``.

    There is no subtract input: to compute ``a - b``, flip bit 31 of ``b`` (this is exact for
    every input, NaNs included, since every NaN result is canonical).

    Bit-exact with :func:`npusim.sw.numerics.fp32_add`.

    Members
    -------
    a : ``In(32)``
        First operand, an fp32 bit pattern.
    b : ``In(32)``
        Second operand, an fp32 bit pattern.
    s : ``Out(32)``
        The sum ``a + b``, an fp32 bit pattern. Combinational: valid in the same cycle as
        ``a`` and ``b``.
    """

    a: In(32)
    b: In(32)
    s: Out(32)

    def elaborate(self, platform):
        m = Module()

        a = Fp32(self.a)
        b = Fp32(self.b)
        s = Fp32(self.s)

        # -- Order the operands by magnitude: |big| >= |small| ----------------------------------
        # For IEEE-754 bit patterns, comparing exponent:mantissa as an integer compares
        # magnitudes (infinities above every finite number).
        swap = Signal()
        big = Signal(Fp32)
        small = Signal(Fp32)
        m.d.comb += [
            swap.eq(self.b[:31] > self.a[:31]),
            big.eq(Mux(swap, self.b, self.a)),
            small.eq(Mux(swap, self.a, self.b)),
        ]

        big_is_inf = Signal()
        big_is_nan = Signal()
        small_is_inf = Signal()
        small_is_nan = Signal()
        m.d.comb += [
            big_is_inf.eq((big.exponent == 0xFF) & (big.mantissa == 0)),
            big_is_nan.eq((big.exponent == 0xFF) & (big.mantissa != 0)),
            small_is_inf.eq((small.exponent == 0xFF) & (small.mantissa == 0)),
            small_is_nan.eq((small.exponent == 0xFF) & (small.mantissa != 0)),
        ]

        subtract = Signal()  # effective operation: |big| - |small| rather than |big| + |small|
        m.d.comb += subtract.eq(a.sign ^ b.sign)

        # -- Significands and exponents ---------------------------------------------------------
        # A normal number is 1.mantissa * 2**(exponent - 127); a subnormal one (exponent field
        # 0) is 0.mantissa * 2**(1 - 127): its exponent reads as 1 and it has no hidden bit.
        big_sig = Signal(24)
        small_sig = Signal(24)
        big_exp = Signal(8)
        small_exp = Signal(8)
        m.d.comb += [
            big_sig.eq(Cat(big.mantissa, big.exponent != 0)),
            small_sig.eq(Cat(small.mantissa, small.exponent != 0)),
            big_exp.eq(Mux(big.exponent == 0, 1, big.exponent)),
            small_exp.eq(Mux(small.exponent == 0, 1, small.exponent)),
        ]

        # -- Align the smaller operand ----------------------------------------------------------
        # Extended significands: 24 bits, then guard, round and sticky (27 bits in all).
        # Shifting by 27 or more moves every bit into the sticky bit, so the shift is clamped.
        exp_diff = Signal(8)
        align_shift = Signal(range(28))
        m.d.comb += [
            exp_diff.eq(big_exp - small_exp),
            align_shift.eq(Mux(exp_diff > 27, 27, exp_diff)),
        ]

        big_ext = Signal(27)
        m.d.comb += big_ext.eq(Cat(Const(0, 3), big_sig))

        # The small operand with 27 bits below its LSB, so no bit is lost in the shift; the
        # bits below the sticky position collapse into the sticky bit.
        small_shifted = Signal(27 + 27)
        small_ext = Signal(27)
        m.d.comb += [
            small_shifted.eq(Cat(Const(0, 27 + 3), small_sig) >> align_shift),
            small_ext.eq(small_shifted[27:] | small_shifted[:27].any()),
        ]

        # -- Add or subtract: the result is never negative, since |big| >= |small| ----------------
        total = Signal(28)
        with m.If(subtract):
            m.d.comb += total.eq(big_ext - small_ext)
        with m.Else():
            m.d.comb += total.eq(big_ext + small_ext)

        # -- Normalise: leading one to bit 26, or as far as the exponent allows -----------------
        total_lz = leading_zeros(m, total[:27], name="total_lz")
        norm_shift = Signal(range(27 + 1))
        norm = Signal(27)
        norm_exp = Signal(9)  # exponent of norm, whose bit 26 is worth 2**(norm_exp - 127)
        with m.If(total[27]):
            # Carry out: shift right by one; the lost bit joins the sticky bit.
            m.d.comb += [
                norm_shift.eq(0),
                norm.eq(Cat(total[0] | total[1], total[2:28])),
                norm_exp.eq(big_exp + 1),
            ]
        with m.Else():
            # Cancellation: shift left, but not below the exponent 1 of subnormals (the result
            # is then subnormal and bit 26 stays clear).
            m.d.comb += [
                norm_shift.eq(Mux(total_lz > big_exp - 1, big_exp - 1, total_lz)),
                norm.eq((total[:27] << norm_shift)[:27]),
                norm_exp.eq(big_exp - norm_shift),
            ]

        # -- Round to nearest, ties to even -----------------------------------------------------
        sig = Signal(24)
        guard_bit = Signal()
        sticky_bit = Signal()
        round_up = Signal()
        m.d.comb += [
            sig.eq(norm[3:]),
            guard_bit.eq(norm[2]),
            sticky_bit.eq(norm[:2].any()),
            round_up.eq(guard_bit & (sticky_bit | sig[0])),
        ]

        # Exponent field minus one, plus the significand with its hidden bit: the hidden bit
        # adds the missing one, a subnormal (hidden bit 0, norm_exp 1) gets field 0, and a
        # rounding carry moves into the exponent (up to infinity) on its own.
        magnitude = Signal(33)
        m.d.comb += magnitude.eq(((norm_exp - 1) << 23) + sig + round_up)

        # -- Select the result ------------------------------------------------------------------
        with m.If(big_is_nan | small_is_nan | (big_is_inf & small_is_inf & subtract)):
            m.d.comb += self.s.eq(CANONICAL_NAN)
        with m.Elif(big_is_inf | (magnitude >= 0x7F80_0000)):
            m.d.comb += [s.sign.eq(big.sign), s.exponent.eq(0xFF), s.mantissa.eq(0)]
        with m.Elif(total == 0):
            # Exact zero: +0 when the operands cancel, otherwise both were zeros of big's sign.
            m.d.comb += [s.sign.eq(big.sign & ~subtract), s.exponent.eq(0), s.mantissa.eq(0)]
        with m.Else():
            m.d.comb += self.s.eq(Cat(magnitude[:31], big.sign))

        return m
