# amaranth: UnusedElaboratable=no
"""Tests of the vector unit (``hw/ne/vector_unit.py``, ``hw/ne/vector_alu.py``).

* Python only: the microcode ROM is exactly ``firmware.microcode.PROGRAMS``; parameters are
  validated.
* Amaranth's simulator: a few :class:`VectorAlu` examples per op family (no compile).
* Verilator through cocotb (``vector_unit_tb.py``), one build per lane count and one ``run()``
  for all its cocotb tests: every primitive and microcoded op bit for bit against
  :func:`npusim.sw.numerics.vector_op` on edge cases and random vectors, SUM and MAX
  reductions against the golden sequential order, command sequences, random stalls on
  ``cmd``, ``i`` and ``o``, and the cycle figures (one beat per cycle, one per
  ``microcode_length`` cycles for the microcoded ops).
"""

from pathlib import Path

import pytest
from amaranth.sim import Simulator

from npusim.cosim.verilator_flow import build, run
from npusim.firmware.microcode import PROGRAMS, Imm, Reg, microcode_length
from npusim.hw.ne.vector_alu import VectorAlu
from npusim.hw.ne.vector_unit import VectorUnit, microcode_rom
from npusim.sw import numerics as nx
from npusim.sw.isa.enums import VectorOp as V


TESTBENCH = Path(__file__).with_name("vector_unit_tb.py")


# -- Python: ROM generation and parameters ---------------------------------------------------

def test_microcode_rom_is_the_programs():
    """Decoding the ROM words gives back every program, micro-op for micro-op."""
    rom = microcode_rom()
    assert sum(rom.length.values()) == len(rom.words)
    for op, program in PROGRAMS.items():
        assert rom.length[op] == len(program) == microcode_length(op)
        words = rom.words[rom.entry[op]:rom.entry[op] + rom.length[op]]
        assert [w["last"] for w in words] == [0] * (len(program) - 1) + [1]
        for word, uop in zip(words, program):
            assert int(word["op"].value) == int(uop.op) and word["dst"] == uop.dst
            for name in ("a", "b", "c"):
                operand, field = getattr(uop, name), word[name]
                if isinstance(operand, Imm):
                    assert field["imm"] == 1 and word["imm"] == operand.bits
                elif isinstance(operand, Reg):
                    assert field == {"index": operand.index, "imm": 0}
                else:
                    assert field == {"index": 0, "imm": 0}


@pytest.mark.parametrize(("lanes", "error"), [(0, ValueError), (-1, ValueError),
                                              (2.0, TypeError), (True, TypeError)])
def test_bad_lanes(lanes, error):
    with pytest.raises(error):
        VectorUnit(lanes=lanes)


# -- Amaranth simulator: VectorAlu examples ---------------------------------------------------

ALU_EXAMPLES = [
    # (op, a, b, c)
    (V.ADD, 0x3F80_0000, 0x3380_0000, 0),            # 1 + 2**-24: tie to even
    (V.SUB, 0x3F80_0000, 0x3F80_0000, 0),            # x - x = +0
    (V.MUL, 0x0000_0003, 0x3F00_0000, 0),            # subnormal tie to even
    (V.MAX, 0x8000_0000, 0x0000_0000, 0),            # max(-0, +0) = +0
    (V.MIN, 0x0000_0000, 0x8000_0000, 0),            # min(+0, -0) = -0
    (V.MAX, 0x7FC0_0001, 0x3F80_0000, 0),            # NaN propagates, canonical
    (V.CMP_LT, 0x8000_0000, 0x0000_0000, 0),         # -0 < +0 is false
    (V.CMP_LE, 0x8000_0000, 0x0000_0000, 0),         # -0 <= +0
    (V.CMP_EQ, 0x7FC0_0000, 0x7FC0_0000, 0),         # NaN == NaN is false
    (V.CMP_LT, 0xBF80_0000, 0x3F80_0000, 0),         # -1 < 1
    (V.SELECT, 0x1111_1111, 0x2222_2222, 0x8000_0000),  # -0 as a mask is non-zero
    (V.SELECT, 0x1111_1111, 0x2222_2222, 0),
    (V.IADD, 0x7FFF_FFFF, 1, 0),                     # wraps
    (V.ISUB, 0, 1, 0),
    (V.SHL, 0x8000_0001, 33, 0),                     # shifts by b & 31
    (V.SRA, 0x8000_0000, 31, 0),
    (V.SHR, 0x8000_0000, 31, 0),
    (V.F2I, 0x4020_0000, 0, 0),                      # 2.5 -> 2 (ties to even)
    (V.F2I, 0xCF00_0001, 0, 0),                      # below INT32_MIN: saturates
    (V.F2I, 0x7FC0_0000, 0, 0),                      # NaN -> 0
    (V.I2F, 0x0100_0001, 0, 0),                      # 2**24 + 1 -> 2**24
    (V.I2F, 0x7FFF_FFFF, 0, 0),                      # INT32_MAX -> 2**31
    (V.I2F, 0x8000_0000, 0, 0),                      # INT32_MIN
    (V.RND_BF16, 0x3F80_8000, 0, 0),                 # tie to even (down)
    (V.RND_BF16, 0x3F81_8000, 0, 0),                 # tie to even (up)
    (V.RND_BF16, 0x7F7F_FFFF, 0, 0),                 # rounds to inf
    (V.MOV, 0xFFC0_0001, 0, 0),                      # NaN bits unchanged
]


def test_amaranth_sim_alu_examples():
    dut = VectorAlu()
    results = []

    async def bench(ctx):
        for op, a, b, c in ALU_EXAMPLES:
            ctx.set(dut.op, int(op))
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.c, c)
            results.append(ctx.get(dut.y))

    simulator = Simulator(dut)
    simulator.add_testbench(bench)
    simulator.run()
    for (op, a, b, c), got in zip(ALU_EXAMPLES, results):
        operands = [a] if op in (V.F2I, V.I2F, V.RND_BF16, V.MOV) else \
            [a, b, c] if op == V.SELECT else [a, b]
        expected = int(nx.vector_op(op, *operands))
        assert got == expected, f"{op.name}({operands}): got {got:#010x}, want {expected:#010x}"


# -- Verilator ----------------------------------------------------------------------------------

def _run_rtl(lanes, *, random_vectors, micro_random, tiles, seed):
    design = build(VectorUnit(lanes=lanes), f"vector_unit_l{lanes}")
    run(design, TESTBENCH, timeout=1800, env={
        "VU_RANDOM": str(random_vectors),
        "VU_MICRO_RANDOM": str(micro_random),
        "VU_TILES": str(tiles),
        "VU_SEED": str(seed),
    })


@pytest.mark.rtl
def test_rtl():
    """All cocotb tests on 8 lanes (the NE tile's default): a few thousand vectors per op."""
    _run_rtl(8, random_vectors=2000, micro_random=2000, tiles=12, seed=1)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_many_vectors():
    """The same on 8 lanes with many more random vectors (another seed)."""
    _run_rtl(8, random_vectors=100_000, micro_random=50_000, tiles=200, seed=2)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_rtl_other_lane_counts(lanes):
    """Other lane counts (each is its own build, ~10 s with a warm ccache, hence slow)."""
    _run_rtl(lanes, random_vectors=1000, micro_random=500, tiles=8, seed=3)
