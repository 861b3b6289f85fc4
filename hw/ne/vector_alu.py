"""One lane of the vector unit: every primitive vector op on fp32 / int32 bit patterns.

The arithmetic goes through the shared FPU operators (:class:`~npusim.hw.fpu.fp32_add.Fp32Adder`
for ADD and SUB, :class:`~npusim.hw.fpu.fp32_mul.Fp32Multiplier` for MUL); comparisons,
minimum and maximum, integer and bit operations and the conversions are written here.
See ``docs/hw/vector_unit.md`` and, for the contract, ``docs/numerics.md`` section 5.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...sw.isa.enums import VectorOp
from ...sw.numerics import PRIMITIVE_OPS
from ..fpu.formats import CANONICAL_NAN, Fp32, leading_zeros
from ..fpu.fp32_add import Fp32Adder
from ..fpu.fp32_mul import Fp32Multiplier
from ..isa import amaranth_enum

__all__ = ["VectorAlu", "VectorOpShape", "FP32_TRUE", "FP32_FALSE"]

#: The Amaranth enum of :class:`~npusim.sw.isa.enums.VectorOp` (6 bits), as the ISA defines it.
VectorOpShape = amaranth_enum(VectorOp)
Op = VectorOpShape

#: Result of a true / false comparison.
FP32_TRUE = 0xFFFF_FFFF
FP32_FALSE = 0

_INT32_MIN = 0x8000_0000
_INT32_MAX = 0x7FFF_FFFF


class VectorAlu(wiring.Component):
    """Compute one primitive vector op on one lane (combinational).

    Every op in :data:`npusim.sw.numerics.PRIMITIVE_OPS` (``ADD`` .. ``MOV``), bit-exact with
    its golden function: IEEE binary32 ``ADD``/``SUB``/``MUL`` (RNE, subnormals, canonical
    NaN); ``MAX``/``MIN`` NaN-propagating with ``+0 > -0``; ``CMP_LT``/``CMP_LE``/``CMP_EQ``
    giving ``0xFFFFFFFF`` or 0, false on NaN, ``-0 == +0``; ``SELECT`` = ``c != 0 ? a : b``;
    wrapping ``IADD``/``ISUB``; ``AND``/``OR``/``XOR``; shifts by ``b & 31``; ``F2I`` (RNE,
    saturating, NaN to 0), ``I2F`` (RNE), ``RND_BF16`` (RNE to bf16 precision, kept as fp32,
    NaN canonical); ``MOV``.

    Operands an op does not name are ignored (``b`` and ``c`` of the one-operand ops, ``c`` of
    every op but ``SELECT``). For any other ``op`` value (the microcoded ops, unused encodings)
    the result is 0: the microcode sequencer of :class:`~npusim.hw.ne.vector_unit.VectorUnit`
    never presents one.

    Members
    -------
    op : ``In(VectorOpShape)``
        The operation, a :class:`~npusim.sw.isa.enums.VectorOp` encoding.
    a : ``In(32)``
        First operand, an fp32 or int32 bit pattern.
    b : ``In(32)``
        Second operand.
    c : ``In(32)``
        Third operand: ``SELECT``'s mask.
    y : ``Out(32)``
        The result. Combinational: valid in the same cycle as the inputs.
    """

    op: In(VectorOpShape)
    a: In(32)
    b: In(32)
    c: In(32)
    y: Out(32)

    #: The ops this ALU computes: exactly the golden model's primitives.
    OPS = tuple(PRIMITIVE_OPS)

    def elaborate(self, platform):
        m = Module()
        a, b, c = self.a, self.b, self.c
        fa, fb = Fp32(a), Fp32(b)

        # -- fp32 arithmetic: the shared FPU operators ------------------------------------------
        m.submodules.adder = adder = Fp32Adder()
        m.submodules.multiplier = multiplier = Fp32Multiplier()
        m.d.comb += [
            adder.a.eq(a),
            # SUB is ADD with b's sign flipped: exact for every input, since NaNs are canonical.
            adder.b.eq(Cat(b[:31], b[31] ^ (self.op == Op.SUB))),
            multiplier.a.eq(a),
            multiplier.b.eq(b),
        ]

        # -- Classification, shared by comparisons, MAX/MIN and conversions ---------------------
        a_is_nan = Signal()
        b_is_nan = Signal()
        unordered = Signal()      # a comparison with a NaN: always false
        both_zero = Signal()      # +-0 and +-0: equal, whatever the signs
        m.d.comb += [
            a_is_nan.eq((fa.exponent == 0xFF) & (fa.mantissa != 0)),
            b_is_nan.eq((fb.exponent == 0xFF) & (fb.mantissa != 0)),
            unordered.eq(a_is_nan | b_is_nan),
            both_zero.eq((a[:31] | b[:31]) == 0),
        ]

        # -- Order: fp32 bit patterns mapped to unsigned keys that sort like their values -------
        # Positive values get the top bit set, negative ones are inverted, so -inf < ... < -0 <
        # +0 < ... < +inf (NaNs are handled apart). The key order puts -0 below +0, which is
        # exactly MAX/MIN's rule; the comparisons treat the two zeros as equal (both_zero).
        a_key = Signal(32)
        b_key = Signal(32)
        key_lt = Signal()         # a's key below b's key
        m.d.comb += [
            a_key.eq(Mux(a[31], ~a, a | 0x8000_0000)),
            b_key.eq(Mux(b[31], ~b, b | 0x8000_0000)),
            key_lt.eq(a_key < b_key),
        ]
        is_lt = Signal()
        is_eq = Signal()
        m.d.comb += [
            is_lt.eq(~unordered & ~both_zero & key_lt),
            is_eq.eq(~unordered & ((a == b) | both_zero)),
        ]
        maximum = Signal(32)
        minimum = Signal(32)
        m.d.comb += [
            maximum.eq(Mux(unordered, CANONICAL_NAN, Mux(key_lt, b, a))),
            minimum.eq(Mux(unordered, CANONICAL_NAN, Mux(key_lt, a, b))),
        ]

        # -- Shifts by b & 31 -------------------------------------------------------------------
        shift_amount = Signal(5)
        m.d.comb += shift_amount.eq(b[:5])

        f2i = self._fp32_to_int(m, a, a_is_nan)
        i2f = self._int_to_fp32(m, a)
        rnd_bf16 = self._round_bf16(m, a, a_is_nan)

        # -- Select the result ------------------------------------------------------------------
        with m.Switch(self.op):
            with m.Case(Op.ADD, Op.SUB):
                m.d.comb += self.y.eq(adder.s)
            with m.Case(Op.MUL):
                m.d.comb += self.y.eq(multiplier.p)
            with m.Case(Op.MAX):
                m.d.comb += self.y.eq(maximum)
            with m.Case(Op.MIN):
                m.d.comb += self.y.eq(minimum)
            with m.Case(Op.CMP_LT):
                m.d.comb += self.y.eq(Mux(is_lt, FP32_TRUE, FP32_FALSE))
            with m.Case(Op.CMP_LE):
                m.d.comb += self.y.eq(Mux(is_lt | is_eq, FP32_TRUE, FP32_FALSE))
            with m.Case(Op.CMP_EQ):
                m.d.comb += self.y.eq(Mux(is_eq, FP32_TRUE, FP32_FALSE))
            with m.Case(Op.SELECT):
                m.d.comb += self.y.eq(Mux(c.any(), a, b))
            with m.Case(Op.IADD):
                m.d.comb += self.y.eq(a + b)
            with m.Case(Op.ISUB):
                m.d.comb += self.y.eq(a - b)
            with m.Case(Op.AND):
                m.d.comb += self.y.eq(a & b)
            with m.Case(Op.OR):
                m.d.comb += self.y.eq(a | b)
            with m.Case(Op.XOR):
                m.d.comb += self.y.eq(a ^ b)
            with m.Case(Op.SHL):
                m.d.comb += self.y.eq(a << shift_amount)
            with m.Case(Op.SHR):
                m.d.comb += self.y.eq(a >> shift_amount)
            with m.Case(Op.SRA):
                m.d.comb += self.y.eq(a.as_signed() >> shift_amount)
            with m.Case(Op.F2I):
                m.d.comb += self.y.eq(f2i)
            with m.Case(Op.I2F):
                m.d.comb += self.y.eq(i2f)
            with m.Case(Op.RND_BF16):
                m.d.comb += self.y.eq(rnd_bf16)
            with m.Case(Op.MOV):
                m.d.comb += self.y.eq(a)
            with m.Default():
                m.d.comb += self.y.eq(0)

        return m

    @staticmethod
    def _fp32_to_int(m, a, a_is_nan):
        """F2I: fp32 -> int32 bits, round to nearest even, saturating; NaN -> 0."""
        fa = Fp32(a)
        # |a| = sig * 2**(exponent - 150) for a normal a. For exponents 126..157 (|a| in
        # [0.5, 2**31)) shift sig left by exponent - 126 (0..31): the integer part is then
        # bits 24 and up, bit 23 the round bit, the bits below the sticky bit. Below 0.5 the
        # result is 0 (0.5 itself is a tie to even, 0); from 2**31 up it saturates.
        sig = Signal(24, name="f2i_sig")
        shifted = Signal(24 + 31, name="f2i_shifted")
        integer = Signal(31, name="f2i_integer")
        round_up = Signal(name="f2i_round_up")
        magnitude = Signal(32, name="f2i_magnitude")
        result = Signal(32, name="f2i")
        m.d.comb += [
            sig.eq(Cat(fa.mantissa, 1)),
            shifted.eq(sig << (fa.exponent - 126)[:5]),
            integer.eq(shifted[24:]),
            round_up.eq(shifted[23] & (shifted[:23].any() | integer[0])),
            # At most 2**31 - 128 (exponent 157 has no fraction bits): no overflow here.
            magnitude.eq(integer + round_up),
        ]
        with m.If(a_is_nan | (fa.exponent < 126)):
            m.d.comb += result.eq(0)
        with m.Elif(fa.exponent >= 127 + 31):
            m.d.comb += result.eq(Mux(fa.sign, _INT32_MIN, _INT32_MAX))
        with m.Else():
            m.d.comb += result.eq(Mux(fa.sign, -magnitude, magnitude))
        return result

    @staticmethod
    def _int_to_fp32(m, a):
        """I2F: int32 bits -> fp32, round to nearest even."""
        sign = Signal(name="i2f_sign")
        magnitude = Signal(32, name="i2f_magnitude")   # |a|; INT32_MIN gives 2**31
        m.d.comb += [
            sign.eq(a[31]),
            magnitude.eq(Mux(sign, -a, a)),
        ]
        # Leading one to bit 31; its weight is 2**(31 - lz), so the biased exponent is 158 - lz.
        lz = leading_zeros(m, magnitude, name="i2f_lz")
        norm = Signal(32, name="i2f_norm")
        m.d.comb += norm.eq(magnitude << lz)
        round_up = Signal(name="i2f_round_up")
        m.d.comb += round_up.eq(norm[7] & (norm[:7].any() | norm[8]))
        # Exponent field minus one plus the significand with its hidden bit; a rounding carry
        # moves into the exponent (2**31 - 1 becomes 2**31).
        biased = Signal(32, name="i2f_biased")
        m.d.comb += biased.eq(((157 - lz) << 23) + norm[8:] + round_up)
        result = Signal(32, name="i2f")
        m.d.comb += result.eq(Mux(magnitude == 0, 0, Cat(biased[:31], sign)))
        return result

    @staticmethod
    def _round_bf16(m, a, a_is_nan):
        """RND_BF16: fp32 rounded to bf16 precision (RNE), kept as fp32; NaN -> canonical."""
        # Adding 0x7FFF plus the bf16 LSB rounds to nearest even at bit 16; a carry ripples
        # into the exponent (the largest values become infinity). Only NaNs could carry out of
        # bit 31, and those are replaced.
        rounded = Signal(33, name="rnd_bf16_rounded")
        m.d.comb += rounded.eq(a + 0x7FFF + a[16])
        result = Signal(32, name="rnd_bf16")
        m.d.comb += result.eq(Mux(a_is_nan, CANONICAL_NAN, Cat(Const(0, 16), rounded[16:32])))
        return result
