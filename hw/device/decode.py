"""Command decoder of the command processor: checks a fetched command and resolves its
run-time operands, all in one combinational step generated from the ISA table.

The checks and their codes are the functional model's (``decode_command`` then
``Device._resolve``): an unknown opcode is BAD_OPCODE; a set bit above the command's last
field RESERVED_BITS; an enum field holding no member of its enum, or an ``engine`` the command
may not run on, BAD_FIELD; a resolved count ``R[reg] + imm`` outside its immediate's range
BAD_SHAPE. Addresses resolve to ``R[reg] + off`` mod 2**64.

Operands are resolved through *slots*: slot ``i`` of a command is its ``i``-th run-time
operand in field order, so the hardware reads at most :data:`SLOTS` registers and adds as many
values, whatever the opcode; each command's resolved fields are then taken from its slots.
"""

import functools

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ...sw.isa.enums import ErrorCode
from ...sw.isa.table import COMMAND_BITS, COMMANDS, NUM_REGS, OPCODE_BITS
from ..isa import Command, ErrorShape, Opcode, resolved_layout

__all__ = ["Operand", "operands", "SLOTS", "ResolvedCommand", "CommandDecoder"]


class Operand:
    """A run-time operand of a command: ``group`` (its name in the resolved layout), the
    register field, the immediate field, and whether it is an address (64-bit, wraps) or a
    count (must fit the immediate's ``width``)."""

    def __init__(self, spec, reg_field):
        self.group = reg_field.group
        self.reg = reg_field.name
        self.is_address = f"{self.group}_off" in spec.offsets
        self.imm = f"{self.group}_off" if self.is_address else self.group
        imm_field = spec.field(self.imm)
        self.width, self.signed = imm_field.width, imm_field.signed


@functools.cache
def operands(name):
    """The run-time operands of command ``name``, in field order (its slots)."""
    spec = next(c for c in COMMANDS if c.name == name)
    return tuple(Operand(spec, f) for f in spec.fields if f.kind == "reg" and f.group)


#: Run-time operands of the command that has the most.
SLOTS = max(len(operands(c.name)) for c in COMMANDS)
#: Widest count operand: its limit ``2**width`` sizes the range check.
_COUNT_BITS = max(op.width for c in COMMANDS for op in operands(c.name) if not op.is_address)

#: A checked command with its operands resolved: the opcode and one union member per command.
ResolvedCommand = data.StructLayout({
    "opcode": Opcode,
    "args": data.UnionLayout({c.name.lower(): resolved_layout(c.name) for c in COMMANDS}),
})


class CommandDecoder(wiring.Component):
    """Checks ``raw`` and resolves it against the register file ``regs`` (combinational).

    Members
    -------
    raw : ``In(256)``
        The fetched command.
    regs : ``In(ArrayLayout(64, NUM_REGS))``
        The run-time registers (``regs[0]`` must be 0).
    error : ``Out(ErrorCode)``
        OK, or the first failing check's code.
    resolved : ``Out(ResolvedCommand)``
        The command with every operand resolved (meaningful when ``error`` is OK).
    """

    def __init__(self):
        super().__init__({
            "raw": In(COMMAND_BITS),
            "regs": In(data.ArrayLayout(64, NUM_REGS)),
            "error": Out(ErrorShape),
            "resolved": Out(ResolvedCommand),
        })

    def elaborate(self, platform):
        m = Module()
        view = Command(self.raw)
        opcode = Signal(OPCODE_BITS)
        m.d.comb += opcode.eq(self.raw[:OPCODE_BITS])

        # -- the slots: register index and immediate chosen by opcode, then one add each -------
        slot_reg = [Signal(range(NUM_REGS), name=f"slot{i}_reg") for i in range(SLOTS)]
        slot_imm = [Signal(signed(64), name=f"slot{i}_imm") for i in range(SLOTS)]
        slot_sum = [Signal(signed(67), name=f"slot{i}_sum") for i in range(SLOTS)]
        slot_limit = [Signal(_COUNT_BITS + 1, name=f"slot{i}_limit") for i in range(SLOTS)]
        with m.Switch(opcode):
            for spec in COMMANDS:
                with m.Case(spec.opcode):
                    fields = view[spec.name.lower()]
                    for i, op in enumerate(operands(spec.name)):
                        m.d.comb += [slot_reg[i].eq(fields[op.reg]),
                                     slot_imm[i].eq(fields[op.imm]),
                                     slot_limit[i].eq(0 if op.is_address else 1 << op.width)]
        reg_values = data.ArrayLayout(64, NUM_REGS)(self.regs)
        bad_shape = Signal()
        for i in range(SLOTS):
            m.d.comb += slot_sum[i].eq(reg_values[slot_reg[i]].as_unsigned() + slot_imm[i])
            # a count must land in [0, 2**width); an address (limit 0) wraps
            with m.If((slot_limit[i] != 0)
                      & ((slot_sum[i] < 0) | (slot_sum[i] >= slot_limit[i]))):
                m.d.comb += bad_shape.eq(1)

        # -- the checks, in the model's order ---------------------------------------------------
        known = Signal()
        reserved_set = Signal()
        bad_field = Signal()
        with m.Switch(opcode):
            for spec in COMMANDS:
                with m.Case(spec.opcode):
                    fields = view[spec.name.lower()]
                    m.d.comb += known.eq(1)
                    if spec.used_bits < COMMAND_BITS:
                        m.d.comb += reserved_set.eq(self.raw[spec.used_bits:] != 0)
                    m.d.comb += bad_field.eq(_bad_enum(spec, fields))
        error = Mux(~known, ErrorCode.BAD_OPCODE,
                    Mux(reserved_set, ErrorCode.RESERVED_BITS,
                        Mux(bad_field, ErrorCode.BAD_FIELD,
                            Mux(bad_shape, ErrorCode.BAD_SHAPE, ErrorCode.OK))))
        m.d.comb += self.error.eq(error)

        # -- the resolved command: every field copied, each operand from its slot -----------------
        m.d.comb += self.resolved.opcode.eq(opcode)
        with m.Switch(opcode):
            for spec in COMMANDS:
                with m.Case(spec.opcode):
                    fields = view[spec.name.lower()]
                    out = self.resolved.args[spec.name.lower()]
                    slot_of = {op.group: i for i, op in enumerate(operands(spec.name))}
                    for name in resolved_layout(spec.name).members:
                        if name in slot_of:
                            m.d.comb += out[name].eq(slot_sum[slot_of[name]][:64])
                        else:
                            m.d.comb += out[name].eq(fields[name])
        return m


def _bad_enum(spec, fields):
    """True when an enum field holds no member of its enum, or the engine is not allowed."""
    bad = Const(0)
    for f in spec.fields:
        if f.kind != "enum":
            continue
        raw = fields[f.name].as_value()
        allowed = list(spec.engines) if f.name == "engine" and spec.engines else list(f.enum)
        if len(allowed) == 1 << f.width:
            continue
        bad = bad | ~functools.reduce(lambda a, b: a | b, [raw == int(v) for v in allowed])
    return bad
