"""The command processor's decoder against the functional model's decode and resolve: the
same error code for every command word, and the same resolved operands (Amaranth simulator)."""

import random
import types

import pytest
from amaranth.sim import Simulator

from npusim.hw.device.decode import CommandDecoder, operands
from npusim.sw.fm.device import Device
from npusim.sw.fm.fault import DeviceFault
from npusim.sw.isa import IsaError, decode_command
from npusim.sw.isa.codec import Command
from npusim.sw.isa.enums import ErrorCode
from npusim.sw.isa.table import COMMAND_BITS, COMMANDS, NUM_REGS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def model(raw, regs):
    """(error code, resolved fields) as the functional model decodes and resolves ``raw``."""
    try:
        cmd = decode_command(raw.to_bytes(32, "little"))
        return ErrorCode.OK, cmd, Device._resolve(types.SimpleNamespace(regs=regs), cmd)
    except IsaError as e:
        return e.code, None, None
    except DeviceFault as f:
        return f.code, None, None


def random_command(rnd):
    """A command word: mostly well-formed with random fields, some with flipped bits."""
    spec = rnd.choice(COMMANDS)
    fields = {}
    for f in spec.fields:
        if f.kind == "enum":
            allowed = list(spec.engines) if f.name == "engine" and spec.engines else list(f.enum)
            fields[f.name] = rnd.choice(allowed)
        elif f.kind == "sint":
            fields[f.name] = rnd.randrange(-(1 << (f.width - 1)), 1 << (f.width - 1))
        elif f.kind == "reg":
            fields[f.name] = rnd.choice([0, rnd.randrange(NUM_REGS)])
        else:
            fields[f.name] = rnd.choice([0, 1, rnd.randrange(1 << f.width), (1 << f.width) - 1])
    raw = Command(spec, **fields).to_int()
    roll = rnd.random()
    if roll < 0.1:
        raw ^= 1 << rnd.randrange(COMMAND_BITS)       # anywhere: reserved bits, enums, opcode
    elif roll < 0.15:
        raw = rnd.getrandbits(COMMAND_BITS)           # noise
    elif roll < 0.25:                                 # any raw value in an enum field
        enums = [f for f in spec.fields if f.kind == "enum"]
        if enums:
            lsb, width = spec.offsets[rnd.choice(enums).name]
            raw = raw & ~(((1 << width) - 1) << lsb) | rnd.getrandbits(width) << lsb
    return raw


def random_regs(rnd):
    regs = [0] + [rnd.choice([0, rnd.randrange(1 << 8), rnd.randrange(1 << 20),
                              rnd.getrandbits(64), (1 << 64) - rnd.randrange(1, 1 << 12)])
                  for _ in range(NUM_REGS - 1)]
    return regs


def test_decoder_matches_model():
    rnd = random.Random(1234)
    dut = CommandDecoder()
    cases = [(random_command(rnd), random_regs(rnd)) for _ in range(400)]
    seen = set()

    async def bench(ctx):
        for raw, regs in cases:
            ctx.set(dut.raw, raw)
            ctx.set(dut.regs, regs)
            code, cmd, resolved = model(raw, regs)
            got = ErrorCode(ctx.get(dut.error).value)
            assert got == code, f"{raw:#066x}: RTL {got.name}, model {code.name}"
            seen.add(code)
            if code != ErrorCode.OK:
                continue
            assert ctx.get(dut.resolved.opcode).value == cmd.opcode
            out = ctx.get(dut.resolved.args)[cmd.name.lower()]
            for op in operands(cmd.name):
                want = resolved[op.group]
                assert getattr(out, op.group) == want, (cmd.name, op.group)
            for name, value in cmd.fields.items():
                if name.endswith("_reg") or name.endswith("_off") or name in \
                        {op.group for op in operands(cmd.name)}:
                    continue
                got_value = getattr(out, name)
                got_value = getattr(got_value, "value", got_value)  # an enum member
                assert int(got_value) == int(value), (cmd.name, name)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    # the random mix reaches every check
    assert {ErrorCode.OK, ErrorCode.BAD_OPCODE, ErrorCode.RESERVED_BITS, ErrorCode.BAD_FIELD,
            ErrorCode.BAD_SHAPE} <= seen, seen
