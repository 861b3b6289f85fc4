"""The command ISA: encode/decode round trips, the Amaranth layouts agree with the codec, every
malformation is a named error, and docs/isa.md is what the table generates."""

import struct
import zlib
from pathlib import Path

import pytest
from amaranth.hdl import Const
from hypothesis import given, settings, strategies as st

from npusim.sw import isa
from npusim.sw.isa import Command, Engine, ErrorCode, Space
from npusim.sw.isa import docgen

ROOT = Path(__file__).resolve().parents[2]


def field_values(spec):
    """Strategy of a valid value for every field of ``spec``."""
    def one(f):
        if f.kind == "enum":
            allowed = spec.engines if f.name == "engine" and spec.engines else list(f.enum)
            return st.sampled_from(list(allowed))
        if f.kind == "sint":
            return st.integers(-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1)
        return st.integers(0, (1 << f.width) - 1)
    return st.fixed_dictionaries({f.name: one(f) for f in spec.fields})


commands = st.sampled_from(isa.COMMANDS).flatmap(
    lambda spec: field_values(spec).map(lambda v: Command(spec, **v)))


@settings(max_examples=400, deadline=None)
@given(commands)
def test_command_round_trip(cmd):
    raw = cmd.encode()
    assert len(raw) == isa.COMMAND_BYTES
    assert isa.decode_command(raw) == cmd


@settings(max_examples=150, deadline=None)
@given(commands)
def test_amaranth_layout_matches_codec(cmd):
    from npusim.hw.isa import Command as CommandLayout
    view = Const(cmd.to_int(), CommandLayout.size)
    layout = CommandLayout.members[cmd.name.lower()]
    for f in cmd.spec.fields:
        offset = layout[f.name].offset
        width = layout[f.name].width
        raw = (cmd.to_int() >> offset) & ((1 << width) - 1)
        expect = int(cmd.fields[f.name]) & ((1 << width) - 1)
        assert raw == expect, f.name
    assert layout["opcode"].offset == 0
    assert view.value == cmd.to_int()


def test_every_command_fits_and_opcodes_unique():
    assert len({c.opcode for c in isa.COMMANDS}) == len(isa.COMMANDS)
    for c in isa.COMMANDS:
        assert c.used_bits <= isa.COMMAND_BITS


def test_stream_round_trip_and_disassembly():
    cmds = [
        Command("REG_SET", rd=2, imm=0x1000),
        Command("DMA_COPY", engine=Engine.DMA_IN, src_reg=2, src_off=0x100,
                dst_space=Space.SRAM, len=256, n1=4, n2=1, src_stride1=512, dst_stride1=256),
        Command("DMA_GATHER", engine=Engine.DMA_IN, table_reg=3, pool_reg=4, dst_space=Space.SRAM,
                row_bytes=128, row_stride=256, dst_stride=128, block_log2=4, pool_blocks=64,
                n_reg=5, t0=0),
        Command("SEM_SIGNAL", engine=Engine.LINK, sem=3, amount=1, remote=True, peer_reg=7),
        Command("HALT", code=7),
    ]
    stream = isa.encode_stream(cmds)
    assert isa.decode_stream(stream) == cmds
    text = isa.disassemble(stream)
    assert "5 commands" in text
    assert "src=dram[r2+0x100] dst=sram[0x0] len=256 n1=4" in text
    assert "table=dram[r3] pool=dram[r4]" in text and "n=r5" in text
    assert "SEM_SIGNAL  engine=LINK sem=3 amount=1 remote peer=link[r7]" in text


def stream_of(*cmds):
    return isa.encode_stream(list(cmds) or [Command("NOP")])


def expect(error, data, code):
    with pytest.raises(error) as info:
        isa.decode_stream(data)
    assert info.value.code == code
    assert code.name in str(info.value)
    return info.value


def test_bad_magic():
    data = bytearray(stream_of())
    data[0:4] = b"XPUS"
    expect(isa.BadMagic, bytes(data), ErrorCode.BAD_MAGIC)


@pytest.mark.parametrize("major,minor", [(isa.ISA_VERSION[0] + 1, 0), (0, 0),
                                         (isa.ISA_VERSION[0], isa.ISA_VERSION[1] + 1)])
def test_unsupported_version(major, minor):
    data = bytearray(stream_of())
    data[4], data[5] = major, minor
    expect(isa.UnsupportedVersion, bytes(data), ErrorCode.BAD_VERSION)


def test_truncated_header_and_body():
    data = stream_of(Command("NOP"), Command("NOP"))
    expect(isa.TruncatedStream, data[:20], ErrorCode.TRUNCATED_STREAM)
    err = expect(isa.TruncatedStream, data[:-5], ErrorCode.TRUNCATED_STREAM)
    assert err.offset == isa.HEADER_BYTES + isa.COMMAND_BYTES


def test_trailing_bytes_and_checksum():
    data = stream_of(Command("NOP"))
    expect(isa.TrailingBytes, data + bytes(32), ErrorCode.TRAILING_BYTES)
    bad = bytearray(data)
    bad[-1] ^= 0  # body unchanged, corrupt the CRC instead
    bad[12] ^= 0xFF
    expect(isa.ChecksumMismatch, bytes(bad), ErrorCode.BAD_CHECKSUM)


def with_body(body):
    """A stream with a hand-made body and a correct header."""
    header = struct.pack("<IBBHII16s", isa.STREAM_MAGIC, *isa.ISA_VERSION, 0,
                         len(body) // 32, zlib.crc32(body), bytes(16))
    return header + body


def test_unknown_opcode():
    body = bytes([0xEE]) + bytes(31)
    err = expect(isa.UnknownOpcode, with_body(body), ErrorCode.BAD_OPCODE)
    assert err.offset == isa.HEADER_BYTES and "0xee" in str(err)


def test_reserved_bits():
    word = Command("HALT", code=1).to_int() | (1 << 255)
    expect(isa.ReservedBitsSet, with_body(word.to_bytes(32, "little")), ErrorCode.RESERVED_BITS)
    data = bytearray(stream_of())
    data[20] = 1  # reserved header byte
    expect(isa.ReservedBitsSet, bytes(data), ErrorCode.RESERVED_BITS)


def test_bad_enum_value_and_engine():
    spec = isa.BY_NAME["DMA_COPY"]
    lsb, _ = spec.offsets["src_space"]
    word = Command("DMA_COPY").to_int() | (3 << lsb)  # Space 3 is undefined
    expect(isa.BadFieldValue, with_body(word.to_bytes(32, "little")), ErrorCode.BAD_FIELD)
    lsb, _ = spec.offsets["engine"]
    word = Command("DMA_COPY").to_int() | (int(Engine.COMPUTE) << lsb)
    err = expect(isa.BadFieldValue, with_body(word.to_bytes(32, "little")), ErrorCode.BAD_FIELD)
    assert "COMPUTE" in str(err)


def test_encoder_rejects_bad_values():
    with pytest.raises(isa.BadFieldValue, match="does not fit"):
        Command("DMA_COPY", len=1 << 20)
    with pytest.raises(isa.BadFieldValue, match="does not fit"):
        Command("DMA_COPY", src_off=1 << 31)
    with pytest.raises(isa.BadFieldValue, match="no field"):
        Command("HALT", bogus=1)
    with pytest.raises(isa.BadFieldValue, match="cannot run on engine"):
        Command("DMA_COPY", engine=Engine.COMPUTE)
    with pytest.raises(isa.UnknownOpcode):
        Command("FROBNICATE")


def test_isa_doc_is_current():
    committed = (ROOT / docgen.DOC_PATH).read_text()
    assert committed == docgen.render(), "docs/isa.md is stale: run `make docs`"


def test_every_error_code_is_provoked_by_some_test():
    """Each named error must be provoked and checked by a test (the codes are data; a new one
    without a test fails here). A test names the code it expects as ``ErrorCode.<NAME>``."""
    text = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [c.name for c in ErrorCode if c != ErrorCode.OK and f"ErrorCode.{c.name}" not in text]
    assert not missing, f"no test provokes {', '.join(missing)}"
