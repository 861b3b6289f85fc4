"""Amaranth views of the command ISA, generated from :mod:`npusim.sw.isa.table`.

``command_layout(name)`` is the :class:`~amaranth.lib.data.StructLayout` of one 256-bit command
(opcode, fields, reserved tail); :data:`Command` is the union of all of them, so a decoder can
look at a fetched word as ``cmd.dma_copy.src_off`` and so on. ISA enums become Amaranth enums of
the same width.
"""

import functools
import types

from amaranth.hdl import signed
from amaranth.lib import data, enum

from ..sw.isa.enums import CommandClass, ErrorCode
from ..sw.isa.table import BY_NAME, COMMAND_BITS, COMMANDS, OPCODE_BITS

__all__ = ["amaranth_enum", "command_layout", "resolved_layout", "Command", "Opcode",
           "ComputeCommand", "COMPUTE_COMMANDS", "DmaCommand", "DMA_COMMANDS", "ErrorShape"]


@functools.cache
def amaranth_enum(isa_enum):
    """The Amaranth ``enum.Enum`` (with ``shape = WIDTH``) mirroring an ISA enum."""
    members = {m.name: int(m) for m in isa_enum}
    return types.new_class(isa_enum.__name__, (enum.Enum,), {"shape": isa_enum.WIDTH},
                           lambda ns: ns.update(members))


Opcode = types.new_class("Opcode", (enum.Enum,), {"shape": OPCODE_BITS},
                         lambda ns: ns.update({c.name: c.opcode for c in COMMANDS}))


def _shape(f):
    if f.kind == "enum":
        return amaranth_enum(f.enum)
    if f.kind == "sint":
        return signed(f.width)
    return f.width


@functools.cache
def command_layout(name):
    """The 256-bit struct layout of command ``name``."""
    spec = BY_NAME[name]
    members = {"opcode": Opcode}
    members.update({f.name: _shape(f) for f in spec.fields})
    if spec.used_bits < COMMAND_BITS:
        members["reserved"] = COMMAND_BITS - spec.used_bits
    return data.StructLayout(members)


#: A fetched command seen as every opcode's layout at once.
Command = data.UnionLayout({c.name.lower(): command_layout(c.name) for c in COMMANDS})


@functools.cache
def resolved_layout(name):
    """Command ``name`` as an engine receives it from the command processor: every run-time
    operand ``R[x_reg] + x`` already resolved into ``x`` (so no ``*_reg`` fields); a resolved
    count keeps its immediate's width (the command processor faults BAD_SHAPE when it does not
    fit), a resolved address is 64 bits."""
    spec = BY_NAME[name]
    members = {}
    for f in spec.fields:
        if f.kind == "reg" and f.group is not None:
            continue
        if f.group is not None and f.name == f"{f.group}_off":  # address operand: R + off
            members[f.group] = 64
            continue
        members[f.name] = _shape(f)
    return data.StructLayout(members)


#: The compute commands the NE tile executes, in opcode order.
COMPUTE_COMMANDS = tuple(c.name for c in COMMANDS if c.cls == CommandClass.COMPUTE)

#: A resolved compute command: its opcode and its fields, one union member per command.
ComputeCommand = data.StructLayout({
    "opcode": Opcode,
    "args": data.UnionLayout({n.lower(): resolved_layout(n) for n in COMPUTE_COMMANDS}),
})


#: The DMA commands a DMA engine executes, in opcode order.
DMA_COMMANDS = tuple(c.name for c in COMMANDS if c.cls == CommandClass.DMA)

#: A resolved DMA command: its opcode and its fields, one union member per command.
DmaCommand = data.StructLayout({
    "opcode": Opcode,
    "args": data.UnionLayout({n.lower(): resolved_layout(n) for n in DMA_COMMANDS}),
})


#: An error code as the RTL carries it (the ISA's ErrorCode, 8 bits; OK = 0).
ErrorShape = amaranth_enum(ErrorCode)
