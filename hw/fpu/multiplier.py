"""Floating-point multiplier core shared by the bf16 x bf16 and fp32 x fp32 multipliers.

One algorithm for both: multiply the significands exactly, normalise, and round once to nearest
even into fp32, gradually underflowing into the subnormals. The operand format only sets the
significand width; see ``docs/hw/fpu.md`` for the theory of operation and ``docs/numerics.md``
for the contract.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .formats import CANONICAL_NAN, Fp32, leading_zeros

__all__ = ["FloatMultiplier"]


class FloatMultiplier(wiring.Component):
    """Multiply two numbers of one operand format (8-bit exponent, bias 127) into fp32.

    Combinational. The result is the IEEE-754 binary32 product rounded to nearest, ties to
    even, with full subnormal support on inputs and outputs; every NaN result is exactly
    :data:`CANONICAL_NAN`; infinity times zero is NaN; a product too large for fp32 is an
    infinity; a zero or infinite result's sign is the exclusive-or of the operand signs.

    Parameters
    ----------
    operand : ``data.Struct`` subclass
        The operand layout, :class:`~.formats.Bf16` or :class:`~.formats.Fp32`.

    Members
    -------
    a : ``In(operand)``
        First operand bit pattern.
    b : ``In(operand)``
        Second operand bit pattern.
    p : ``Out(32)``
        The product, an fp32 bit pattern, valid in the same cycle as ``a`` and ``b``.
    """

    def __init__(self, operand):
        self._operand = operand
        self._mantissa_bits = operand.as_shape()["mantissa"].width
        width = operand.as_shape().size
        super().__init__({"a": In(width), "b": In(width), "p": Out(32)})

    def elaborate(self, platform):
        m = Module()

        a = self._operand(self.a)
        b = self._operand(self.b)
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
        # 0) is 0.mantissa * 2**(1 - 127): no hidden bit, and its exponent reads as 1.
        sig_width = self._mantissa_bits + 1
        a_sig = Signal(sig_width)
        b_sig = Signal(sig_width)
        a_exp = Signal(signed(10))
        b_exp = Signal(signed(10))
        m.d.comb += [
            a_sig.eq(Cat(a.mantissa, a.exponent != 0)),
            b_sig.eq(Cat(b.mantissa, b.exponent != 0)),
            a_exp.eq(Mux(a.exponent == 0, 1, a.exponent)),
            b_exp.eq(Mux(b.exponent == 0, 1, b.exponent)),
        ]

        # product = a_sig * b_sig (exact), so
        # |a * b| = product * 2**(a_exp + b_exp - 254 - 2 * mantissa_bits).
        product_width = 2 * sig_width
        product = Signal(product_width)
        m.d.comb += product.eq(a_sig * b_sig)

        # -- Normalise: move the leading one of the product to its top bit ----------------------
        # (Subnormal operands leave leading zeros; a zero product is selected away.)
        product_lz = leading_zeros(m, product, name="product_lz")
        product_norm = Signal(product_width)
        m.d.comb += product_norm.eq(product << product_lz)

        # Biased fp32 exponent of the normalised product 1.xxx * 2**(exp - 127):
        # exp = a_exp + b_exp - 254 - 2 * mantissa_bits + (product_width - 1) - product_lz + 127
        #     = a_exp + b_exp - 126 - product_lz, between -171 and 382.
        exp = Signal(signed(10))
        m.d.comb += exp.eq(a_exp + b_exp - 126 - product_lz)

        # -- Round into fp32 --------------------------------------------------------------------
        # The product, widened to at least fp32's 24 significand bits: its top 24 bits are the
        # significand, the bits below decide the rounding (none for bf16 operands, whose product
        # has only 16 bits and is exact unless it underflows). Below the normal range (exp <= 0) the result is subnormal: shift right by 1 - exp
        # first. A shift of 26 already moves every bit below the rounding point (the leading
        # one lands under the round bit), so larger shifts are clamped to it.
        denorm_shift = Signal(range(27))
        with m.If(exp >= 1):
            m.d.comb += denorm_shift.eq(0)
        with m.Elif(exp <= -25):
            m.d.comb += denorm_shift.eq(26)
        with m.Else():
            m.d.comb += denorm_shift.eq(1 - exp)

        ext_width = max(product_width, 24)
        extended = Cat(Const(0, ext_width - product_width), product_norm)
        below = ext_width - 24  # bits of `extended` under the significand's LSB
        # The shifted product with 26 more bits below its LSB: nothing is lost in the shift.
        sig_shifted = Signal(ext_width + 26)
        m.d.comb += sig_shifted.eq(Cat(Const(0, 26), extended) >> denorm_shift)
        sig_kept = sig_shifted[26 + below:]
        round_bit = Signal()
        sticky_bit = Signal()
        round_up = Signal()
        m.d.comb += [
            round_bit.eq(sig_shifted[26 + below - 1]),
            sticky_bit.eq(sig_shifted[:26 + below - 1].any()),
            round_up.eq(round_bit & (sticky_bit | sig_kept[0])),
        ]

        # Exponent field minus one, plus the significand with its hidden bit: the hidden bit
        # adds the missing one, a subnormal (hidden bit 0, field 0) that rounds up to 2**-126
        # becomes the smallest normal on its own, and a carry into the field up to 255 or more
        # is overflow.
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
