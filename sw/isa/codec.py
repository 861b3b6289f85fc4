"""Encoder, decoder and disassembler of commands and streams, derived from :mod:`.table`.

A stream is a 32-byte header (:data:`~.table.HEADER_FIELDS`) followed by ``n_commands``
32-byte commands. Every way a stream can be malformed raises a subclass of :class:`IsaError`
that carries the device's :class:`~.enums.ErrorCode` and the byte offset of the fault.
"""

import struct
import zlib
from typing import NamedTuple

from .enums import ErrorCode
from .table import (
    BY_NAME, BY_OPCODE, COMMAND_BITS, COMMAND_BYTES, HEADER_BYTES, ISA_VERSION, OPCODE_BITS,
    STREAM_MAGIC, CommandSpec,
)

__all__ = [
    "IsaError", "BadMagic", "UnsupportedVersion", "TruncatedStream", "TrailingBytes",
    "ChecksumMismatch", "UnknownOpcode", "ReservedBitsSet", "BadFieldValue",
    "Command", "StreamHeader", "encode_stream", "decode_stream", "parse_header",
    "decode_command", "disassemble", "format_command",
]


class IsaError(ValueError):
    """A malformed command or stream. ``code`` is the device error code, ``offset`` the byte
    offset of the faulting header or command within the stream (``None`` when not in one)."""

    code = ErrorCode.OK

    def __init__(self, message, offset=None):
        self.offset = offset
        where = f" at byte offset {offset:#x}" if offset is not None else ""
        super().__init__(f"{self.code.name}: {message}{where}")


class BadMagic(IsaError):
    code = ErrorCode.BAD_MAGIC


class UnsupportedVersion(IsaError):
    code = ErrorCode.BAD_VERSION


class TruncatedStream(IsaError):
    code = ErrorCode.TRUNCATED_STREAM


class TrailingBytes(IsaError):
    code = ErrorCode.TRAILING_BYTES


class ChecksumMismatch(IsaError):
    code = ErrorCode.BAD_CHECKSUM


class UnknownOpcode(IsaError):
    code = ErrorCode.BAD_OPCODE


class ReservedBitsSet(IsaError):
    code = ErrorCode.RESERVED_BITS


class BadFieldValue(IsaError):
    code = ErrorCode.BAD_FIELD


def _check_value(spec, f, value, offset=None):
    """Return ``value`` as stored in field ``f`` (enum member for enums), or raise."""
    if f.kind == "enum":
        try:
            value = f.enum(value)
        except ValueError:
            raise BadFieldValue(f"{spec.name}.{f.name} = {value} is not a {f.enum.__name__}",
                                offset) from None
        if f.name == "engine" and spec.engines and value not in spec.engines:
            raise BadFieldValue(f"{spec.name} cannot run on engine {value.name}", offset)
        return value
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int) or not f.fits(value):
        raise BadFieldValue(f"{spec.name}.{f.name} = {value!r} does not fit {f.kind}{f.width}",
                            offset)
    return value


class Command:
    """One command: an opcode (its :class:`~.table.CommandSpec`) and a value per field.

    ``Command("DMA_COPY", engine=Engine.DMA_IN, len=256, ...)``; fields not given are 0.
    Field values read as attributes (``cmd.len``). Immutable; :meth:`replace` makes a copy.
    """

    __slots__ = ("spec", "fields")

    def __init__(self, op, /, **fields):
        spec = op if isinstance(op, CommandSpec) else BY_NAME.get(op)
        if spec is None:
            raise UnknownOpcode(f"no command named {op!r}")
        unknown = set(fields) - {f.name for f in spec.fields}
        if unknown:
            raise BadFieldValue(f"{spec.name} has no field(s) {', '.join(sorted(unknown))}")
        values = {f.name: _check_value(spec, f, fields.get(f.name, f.enum(0) if f.enum else 0))
                  for f in spec.fields}
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "fields", values)

    @property
    def name(self):
        return self.spec.name

    @property
    def opcode(self):
        return self.spec.opcode

    @property
    def engine(self):
        """The engine queue this command runs on, or ``None`` for control commands."""
        return self.spec.engine if self.spec.engine is not None else self.fields.get("engine")

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "fields")[name]
        except KeyError:
            raise AttributeError(f"{self.spec.name} has no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Command is immutable; use replace()")

    def replace(self, **fields):
        return Command(self.spec, **{**self.fields, **fields})

    def __eq__(self, other):
        return isinstance(other, Command) and (self.spec, self.fields) == (other.spec, other.fields)

    def __hash__(self):
        return hash((self.spec.name, tuple(self.fields.items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items() if v)
        return f"Command({self.spec.name!r}{', ' if args else ''}{args})"

    def to_int(self):
        """The command as a 256-bit integer."""
        word = self.spec.opcode
        for f in self.spec.fields:
            lsb, width = self.spec.offsets[f.name]
            word |= (int(self.fields[f.name]) & ((1 << width) - 1)) << lsb
        return word

    def encode(self):
        """The command's 32 bytes."""
        return self.to_int().to_bytes(COMMAND_BYTES, "little")


def decode_command(data, offset=0):
    """Decode the 32-byte command at ``data[offset:]``; raise an :class:`IsaError` if it is
    truncated, has an unknown opcode, a set reserved bit or an illegal field value."""
    raw = bytes(data[offset:offset + COMMAND_BYTES])
    if len(raw) < COMMAND_BYTES:
        raise TruncatedStream(f"command needs {COMMAND_BYTES} bytes, {len(raw)} left", offset)
    word = int.from_bytes(raw, "little")
    spec = BY_OPCODE.get(word & ((1 << OPCODE_BITS) - 1))
    if spec is None:
        raise UnknownOpcode(f"opcode {word & 0xFF:#04x}", offset)
    if word >> spec.used_bits:
        raise ReservedBitsSet(
            f"{spec.name}: reserved bits {spec.used_bits}..{COMMAND_BITS - 1} hold "
            f"{word >> spec.used_bits:#x}", offset)
    values = {}
    for f in spec.fields:
        lsb, width = spec.offsets[f.name]
        v = (word >> lsb) & ((1 << width) - 1)
        if f.kind == "sint" and v >> (width - 1):
            v -= 1 << width
        values[f.name] = _check_value(spec, f, v, offset)
    cmd = object.__new__(Command)
    object.__setattr__(cmd, "spec", spec)
    object.__setattr__(cmd, "fields", values)
    return cmd


class StreamHeader(NamedTuple):
    version: tuple
    n_commands: int
    crc32: int


_HEADER = struct.Struct("<IBBHII16s")


def parse_header(data, offset=0):
    """Parse and check the header at ``data[offset:]`` (magic, version, reserved bytes).
    The CRC is returned, not checked: the device does not check it."""
    raw = bytes(data[offset:offset + HEADER_BYTES])
    if len(raw) < HEADER_BYTES:
        raise TruncatedStream(f"header needs {HEADER_BYTES} bytes, {len(raw)} given", offset)
    magic, major, minor, flags, n, crc, reserved = _HEADER.unpack(raw)
    if magic != STREAM_MAGIC:
        raise BadMagic(f"magic {raw[:4]!r}, expected b'NPUS'", offset)
    if major != ISA_VERSION[0] or minor > ISA_VERSION[1]:
        raise UnsupportedVersion(
            f"stream is ISA {major}.{minor}, this decoder reads {ISA_VERSION[0]}.0.."
            f"{ISA_VERSION[0]}.{ISA_VERSION[1]}", offset)
    if flags or any(reserved):
        raise ReservedBitsSet("reserved header bytes are not zero", offset)
    return StreamHeader((major, minor), n, crc)


def encode_stream(commands):
    """Header + commands, as bytes."""
    body = b"".join(c.encode() for c in commands)
    header = _HEADER.pack(STREAM_MAGIC, *ISA_VERSION, 0, len(body) // COMMAND_BYTES,
                          zlib.crc32(body), bytes(16))
    return header + body


def decode_stream(data, check_crc=True):
    """Decode a whole stream into a list of :class:`Command`; every malformation raises."""
    header = parse_header(data)
    body = bytes(data[HEADER_BYTES:])
    need = header.n_commands * COMMAND_BYTES
    if len(body) < need:
        raise TruncatedStream(
            f"header announces {header.n_commands} commands ({need} bytes), {len(body)} follow",
            HEADER_BYTES + len(body) - len(body) % COMMAND_BYTES)
    if len(body) > need:
        raise TrailingBytes(f"{len(body) - need} bytes after the last command",
                            HEADER_BYTES + need)
    if check_crc and zlib.crc32(body) != header.crc32:
        raise ChecksumMismatch(f"CRC-32 {zlib.crc32(body):#010x}, header says {header.crc32:#010x}",
                               0)
    return [decode_command(data, HEADER_BYTES + i * COMMAND_BYTES)
            for i in range(header.n_commands)]


# -- disassembly --------------------------------------------------------------------------------

def _fmt_int(v):
    """Decimal for counts and small values, hex once a number reads like an address."""
    return f"{v:#x}" if abs(v) >= 10000 else str(v)


def _fmt_sum(reg, imm, fmt=_fmt_int):
    if reg == 0:
        return fmt(imm)
    if imm == 0:
        return f"r{reg}"
    return f"r{reg}{'-' if imm < 0 else '+'}{fmt(abs(imm))}"


def format_command(cmd):
    """One readable line: ``NAME field=value ...`` with composite operands joined, e.g.
    ``src=dram[r2+0x100]`` and ``n=r5+1``; clear flags and zero optional operands are left
    out."""
    parts, done = [], set()
    for f in cmd.spec.fields:
        if f.name in done:
            continue
        g = f.group
        if g is not None:
            members = [m for m in cmd.spec.fields if m.group == g]
            done.update(m.name for m in members)
            vals = {m.name: cmd.fields[m.name] for m in members}
            if any(m.optional for m in members) and not any(vals.values()):
                continue
            if f"{g}_off" in vals:  # address operand
                space = vals.get(f"{g}_space", cmd.spec.field(f"{g}_off").space)
                text = f"{space.name.lower()}[{_fmt_sum(vals[f'{g}_reg'], vals[f'{g}_off'], hex)}]"
            else:  # register + immediate
                text = _fmt_sum(vals[f"{g}_reg"], vals[g])
            parts.append(f"{g}={text}")
            continue
        v = cmd.fields[f.name]
        if f.optional and not v:
            continue
        if f.kind == "flag":
            if v:
                parts.append(f.name)
        elif f.kind == "enum":
            parts.append(f"{f.name}={v.name}")
        elif f.kind == "reg":
            parts.append(f"{f.name}=r{v}")
        else:
            parts.append(f"{f.name}={_fmt_int(v)}")
    return f"{cmd.spec.name:<11} " + " ".join(parts)


def disassemble(data, check_crc=True):
    """A listing of a stream: the header, then ``index  offset  command`` per line."""
    header = parse_header(data)
    cmds = decode_stream(data, check_crc=check_crc)
    lines = [f"; npusim stream, ISA {header.version[0]}.{header.version[1]}, "
             f"{header.n_commands} commands, crc32 {header.crc32:#010x}"]
    for i, cmd in enumerate(cmds):
        lines.append(f"{i:5d}  {HEADER_BYTES + i * COMMAND_BYTES:#07x}  {format_command(cmd)}")
    return "\n".join(lines) + "\n"

