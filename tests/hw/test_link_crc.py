# amaranth: UnusedElaboratable=no
"""The data-link layer's CRCs (``hw/link/crc.py``) against independent implementations: the
LCRC against ``zlib.crc32``, the DLLP CRC-16 against cocotbext-pcie's ``Dllp.pack_crc``,
and the Amaranth table lookups (a whole beat per cycle, partial last beats) against the
Python reference, in Amaranth's simulator at W = 8 and 16.
"""

import random
import zlib

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.sim import Simulator
from cocotbext.pcie.core.dllp import Dllp, DllpType, FcScale

from npusim.hw.link.crc import DLLP_CRC, LCRC, dllp_crc, lcrc


def test_lcrc_is_zlib_crc32():
    rng = random.Random(1)
    for length in list(range(40)) + [rng.randrange(40, 5000) for _ in range(100)]:
        data = rng.randbytes(length)
        assert lcrc(data) == zlib.crc32(data)
        assert LCRC.append(data)[-4:] == zlib.crc32(data).to_bytes(4, "little")


def random_dllp(rng):
    kind = rng.choice(["ack", "nak", "fc"])
    if kind == "ack":
        return Dllp.create_ack(rng.randrange(4096))
    if kind == "nak":
        return Dllp.create_nak(rng.randrange(4096))
    d = Dllp()
    d.type = rng.choice([DllpType.INIT_FC1_P, DllpType.INIT_FC1_NP, DllpType.INIT_FC1_CPL,
                         DllpType.INIT_FC2_P, DllpType.INIT_FC2_NP, DllpType.INIT_FC2_CPL,
                         DllpType.UPDATE_FC_P, DllpType.UPDATE_FC_NP, DllpType.UPDATE_FC_CPL])
    d.hdr_fc, d.data_fc = rng.randrange(256), rng.randrange(4096)
    d.hdr_scale, d.data_scale = FcScale(rng.randrange(4)), FcScale(rng.randrange(4))
    d.vc = rng.randrange(8)
    return d


def test_dllp_crc_is_cocotbext_pcie():
    rng = random.Random(2)
    for _ in range(500):
        packed = random_dllp(rng).pack_crc()
        assert dllp_crc(packed[:4]).to_bytes(2, "little") == packed[4:]
        assert DLLP_CRC.append(packed[:4]) == packed
        Dllp.unpack_crc(DLLP_CRC.append(packed[:4]))   # its own check accepts ours


def test_residues():
    """Running the register over data and its CRC ends at a constant (0x556F is the one
    cocotbext-pcie checks DLLPs against); a flipped bit anywhere misses it."""
    rng = random.Random(3)
    assert DLLP_CRC.residue == 0x556F
    for crc in (LCRC, DLLP_CRC):
        for length in range(0, 64, 3):
            sent = crc.append(rng.randbytes(length))
            assert crc.update(crc.init, sent) == crc.residue
            bit = rng.randrange(8 * len(sent))
            bad = (int.from_bytes(sent, "little") ^ 1 << bit).to_bytes(len(sent), "little")
            assert crc.update(crc.init, bad) != crc.residue


class Absorber(Elaboratable):
    """A CRC register absorbing one beat of up to ``width`` bytes per cycle (``count`` of
    them); ``first`` starts from the seed. ``comb`` is the combinational next state of
    ``state_in`` (a free input), for direct checks."""

    def __init__(self, crc, width):
        self.crc, self.width = crc, width
        self.data = Signal(8 * width)
        self.count = Signal(range(width + 1))
        self.valid = Signal()
        self.first = Signal()
        self.state = Signal(crc.width)
        self.state_in = Signal(crc.width)
        self.comb = Signal(crc.width)
        self.seeded = Signal(crc.width)

    def elaborate(self, platform):
        m = Module()
        counts = range(self.width + 1)
        start = Signal(self.crc.width)
        m.d.comb += start.eq(self.crc.init)
        with m.If(~self.first):
            m.d.comb += start.eq(self.state)
        nxt = self.crc.absorb_count(m, start, self.data, self.count, counts)
        with m.If(self.valid):
            m.d.sync += self.state.eq(nxt)
        m.d.comb += [
            self.comb.eq(self.crc.absorb_count(m, self.state_in, self.data, self.count,
                                               counts)),
            self.seeded.eq(self.crc.absorb(m, self.crc.init, self.data, self.width)),
        ]
        return m


@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("crc", [LCRC, DLLP_CRC], ids=["lcrc", "crc16"])
def test_parallel_network_per_byte_count(crc, width):
    """Any state, any data, every byte count of a beat (0 absorbs nothing), and the seeded
    network: the RTL's next state is the reference's."""
    dut = Absorber(crc, width)
    rng = random.Random(width + crc.width)

    async def bench(ctx):
        for _ in range(150):
            state, count = rng.randrange(1 << crc.width), rng.randrange(width + 1)
            data = rng.randbytes(width)
            ctx.set(dut.state_in, state)
            ctx.set(dut.count, count)
            ctx.set(dut.data, int.from_bytes(data, "little"))
            assert ctx.get(dut.comb) == crc.update(state, data[:count])
            assert ctx.get(dut.seeded) == crc.update(crc.init, data)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("width", [8, 16])
def test_lcrc_of_whole_packets_beat_by_beat(width):
    """Messages of many lengths fed one beat per cycle, full beats then a partial last one:
    the register ends at the complement of ``zlib.crc32``."""
    dut = Absorber(LCRC, width)
    rng = random.Random(width)
    lengths = list(range(1, 3 * width)) + [rng.randrange(3 * width, 600) for _ in range(20)]

    async def bench(ctx):
        for length in lengths:
            data = rng.randbytes(length)
            ctx.set(dut.valid, 1)
            for offset in range(0, length, width):
                chunk = data[offset:offset + width]
                ctx.set(dut.first, offset == 0)
                ctx.set(dut.count, len(chunk))
                ctx.set(dut.data, int.from_bytes(chunk.ljust(width, b"\xA5"), "little"))
                await ctx.tick()
            ctx.set(dut.valid, 0)
            assert ctx.get(dut.state) ^ LCRC.xorout == zlib.crc32(data), length

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
