"""bf16 x bf16 -> fp32 multiplier: the product stage of a systolic-array processing element.

The product of two bf16 values has at most 16 significant bits, so it is exact in fp32 unless
the result overflows or falls below fp32's normal range; only those two cases round.
See ``docs/hw/fpu.md`` for the theory of operation and ``docs/numerics.md`` for the contract.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .formats import CANONICAL_NAN, Bf16, Fp32, leading_zeros

__all__ = ["Bf16Multiplier"]


class Bf16Multiplier(wiring.Component):
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

    a: In(16)
    b: In(16)
    p: Out(32)

    def elaborate(self, platform):
        m = Module()

        a = Bf16(self.a)
        b = Bf16(self.b)
        p = Fp32(self.p)

        # -- Classify the operands --------------------------------------------------------------
        a_is_zero = Signal()
        a_is_inf = Signal()
        a_is_nan = Signal()
        b_is_zero = Signal()
        b_is_inf = Signal()
        b_is_nan = Signal()
        for op, is_zero, is_inf, is_nan in ((a, a_is_zero, a_is_inf, a_is_nan),
                                            (b, b_is_zero, b_is_inf, b_is_nan)):
            m.d.comb += [
                is_zero.eq((op.exponent == 0) & (op.mantissa == 0)),
                is_inf.eq((op.exponent == 0xFF) & (op.mantissa == 0)),
                is_nan.eq((op.exponent == 0xFF) & (op.mantissa != 0)),
            ]

        sign = Signal()
        m.d.comb += sign.eq(a.sign ^ b.sign)

        # -- Multiply the significands ----------------------------------------------------------
        # A normal operand is 1.mantissa * 2**(exponent - 127); a subnormal one (exponent field
        # 0) is 0.mantissa * 2**(1 - 127). So the significand carries the hidden bit only for
        # normal numbers, and a subnormal's exponent reads as 1.
        a_sig = Signal(8)
        b_sig = Signal(8)
        a_exp = Signal(signed(10))
        b_exp = Signal(signed(10))
        m.d.comb += [
            a_sig.eq(Cat(a.mantissa, a.exponent != 0)),
            b_sig.eq(Cat(b.mantissa, b.exponent != 0)),
            a_exp.eq(Mux(a.exponent == 0, 1, a.exponent)),
            b_exp.eq(Mux(b.exponent == 0, 1, b.exponent)),
        ]

        # product = a_sig * b_sig, so |a * b| = product * 2**(a_exp + b_exp - 127 - 127 - 14).
        product = Signal(16)
        m.d.comb += product.eq(a_sig * b_sig)

        # -- Normalise: move the leading one of the product to bit 15 ---------------------------
        product_lz = leading_zeros(m, product, name="product_lz")
        product_norm = Signal(16)
        m.d.comb += product_norm.eq(product << product_lz)

        # Biased fp32 exponent of the normalised product 1.xxx * 2**(exp - 127):
        # exp = a_exp + b_exp - 254 - 14 + 15 - product_lz + 127, between -139 and 382.
        exp = Signal(signed(10))
        m.d.comb += exp.eq(a_exp + b_exp - 126 - product_lz)

        # -- Round into fp32 --------------------------------------------------------------------
        # 24-bit significand with the leading one at bit 23: always exact (16 significant bits).
        sig = Signal(24)
        m.d.comb += sig.eq(Cat(Const(0, 8), product_norm))

        # Below the normal range (exp <= 0) the result is subnormal: the significand shifts right
        # by 1 - exp and rounds. A shift of 26 already moves every bit below the rounding point,
        # so larger shifts are clamped to it.
        denorm_shift = Signal(range(27))
        with m.If(exp >= 1):
            m.d.comb += denorm_shift.eq(0)
        with m.Elif(exp <= -25):
            m.d.comb += denorm_shift.eq(26)
        with m.Else():
            m.d.comb += denorm_shift.eq(1 - exp)

        # The shifted significand with 26 bits below its LSB: nothing is lost in the shift.
        sig_shifted = Signal(24 + 26)
        m.d.comb += sig_shifted.eq(Cat(Const(0, 26), sig) >> denorm_shift)
        sig_kept = sig_shifted[26:]
        round_bit = Signal()
        sticky_bit = Signal()
        round_up = Signal()
        m.d.comb += [
            round_bit.eq(sig_shifted[25]),
            sticky_bit.eq(sig_shifted[:25].any()),
            round_up.eq(round_bit & (sticky_bit | sig_kept[0])),
        ]

        # Exponent field minus one, plus the significand with its hidden bit: the hidden bit
        # adds the missing one, and a subnormal (hidden bit 0, field 0) that rounds up to 2**23
        # becomes the smallest normal on its own. Overflow shows as a field of 255 or more.
        exp_field_base = Signal(9)
        m.d.comb += exp_field_base.eq(Mux(exp >= 1, exp - 1, 0))
        magnitude = Signal(33)
        m.d.comb += magnitude.eq((exp_field_base << 23) + sig_kept + round_up)

        # -- Select the result ------------------------------------------------------------------
        with m.If(a_is_nan | b_is_nan | (a_is_inf & b_is_zero) | (a_is_zero & b_is_inf)):
            m.d.comb += self.p.eq(CANONICAL_NAN)
        with m.Elif(a_is_inf | b_is_inf | (magnitude >= 0x7F80_0000)):
            m.d.comb += [p.sign.eq(sign), p.exponent.eq(0xFF), p.mantissa.eq(0)]
        with m.Elif(a_is_zero | b_is_zero):
            m.d.comb += [p.sign.eq(sign), p.exponent.eq(0), p.mantissa.eq(0)]
        with m.Else():
            m.d.comb += self.p.eq(Cat(magnitude[:31], sign))

        return m
