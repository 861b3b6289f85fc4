"""cocotb testbench for the vector unit (``hw/ne/vector_unit.py``), run by ``test_vector_unit.py``
through :func:`npusim.cosim.verilator_flow.run`.

A :class:`TB` owns the clock, the reset, one driver loop for the three streams (``cmd``, ``i``
and ``o``, with optional random stalls on all of them) and the checks. Tests build lists of
:class:`Command` objects (the configuration, the input beats and the expected output beats,
which come from :mod:`npusim.sw.numerics`) and run them back to back.

Environment (set by the pytest side):

``VU_RANDOM``
    Random operand vectors per primitive op, besides its edge cases (default 3,000).
``VU_MICRO_RANDOM``
    Random inputs per microcoded op, besides its edge cases (default 2,000).
``VU_TILES``
    Random tiles per reduction op (default 12).
``VU_SEED``
    Seed of the vector generators and of the stall patterns (default 1).
"""

import os
import random
import time
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from fpu_vectors import (FP32_MUL_SPECIALS, FP32_SPECIALS, fp32_add_edge_cases,
                         fp32_add_random, fp32_mul_edge_cases, fp32_mul_random)
from npusim.firmware.microcode import PROGRAMS, microcode_length
from npusim.sw import numerics as nx
from npusim.sw.isa.enums import RedOp, VectorOp as V


ELEMENTWISE, REDUCE = 0, 1

#: Ops whose golden function takes only ``a`` (b and c are then random garbage, to show that
#: the unit ignores them), and the one that takes ``c`` too.
UNARY = {V.F2I, V.I2F, V.RND_BF16, V.MOV}
TERNARY = {V.SELECT}


def _u32(values):
    return np.asarray(values, dtype=np.uint64).astype(np.uint32)


def _describe(bits):
    value = np.array([bits], dtype=np.uint32).view(np.float32)[0]
    return f"0x{int(bits):08X} ({value:.9g})"


# -- Operand vectors ------------------------------------------------------------------------------

FLOAT_SPECIALS = _u32(FP32_SPECIALS + [v | 0x8000_0000 for v in FP32_SPECIALS])

INT_SPECIALS = _u32([
    0, 1, 2, 0xFFFF_FFFF, 0xFFFF_FFFE, 0x8000_0000, 0x7FFF_FFFF, 0x8000_0001, 0x7FFF_FFFE,
    0x5555_5555, 0xAAAA_AAAA, 0x0000_FFFF, 0xFFFF_0000, 0x0001_0000, 0x00FF_FFFF, 0x0100_0001,
    0x3F80_0000, 0xBF80_0000, 0x7FC0_0000, 0x1234_5678,
])

SHIFT_AMOUNTS = _u32(list(range(0, 34)) + [63, 64, 0xFFFF_FFFF, 0x8000_0000, 0x8000_001F,
                                           0x0000_0120, 0xFFFF_FFE1])


def _grid(values):
    a, b = np.meshgrid(values, values, indexing="ij")
    return a.ravel(), b.ravel()


def _uniform(rng, n):
    return _u32(rng.integers(0, 1 << 32, n, dtype=np.uint64))


def _fp32_values(rng, n, low, high):
    """``n`` fp32 values uniform in [low, high] (as bit patterns)."""
    return rng.uniform(low, high, n).astype(np.float32).view(np.uint32)


def _log_uniform(rng, n, low_exp, high_exp):
    """``n`` fp32 values of random sign with exponent uniform in [low_exp, high_exp]."""
    e = rng.integers(low_exp, high_exp + 1, n) + 127
    sign = rng.integers(0, 2, n).astype(np.uint64) << np.uint64(31)
    exponent = np.clip(e, 0, 255).astype(np.uint64) << np.uint64(23)
    bits = sign | exponent | rng.integers(0, 1 << 23, n, dtype=np.uint64)
    return _u32(bits)


def _compare_vectors(rng, n):
    """Edge-case pairs for MAX/MIN/comparisons, then random: close, equal, sign-flipped."""
    a_edge, b_edge = _grid(FLOAT_SPECIALS)
    a, b = fp32_add_random(rng, n)
    kind = rng.random(n)
    b = np.where(kind < 0.15, a, b)                          # equal
    b = np.where((kind >= 0.15) & (kind < 0.3), a ^ np.uint32(0x8000_0000), b)  # -a
    b = np.where((kind >= 0.3) & (kind < 0.45), a + rng.integers(-2, 3, n).astype(np.uint32), b)
    return np.concatenate([a_edge, a]), np.concatenate([b_edge, _u32(b)])


def _int_vectors(rng, n):
    a_edge, b_edge = _grid(INT_SPECIALS)
    small = _u32(rng.integers(-1000, 1000, n))
    a = np.where(rng.random(n) < 0.3, small, _uniform(rng, n))
    b = np.where(rng.random(n) < 0.3, _u32(rng.integers(-1000, 1000, n)), _uniform(rng, n))
    return np.concatenate([a_edge, a]), np.concatenate([b_edge, _u32(b)])


def _shift_vectors(rng, n):
    a_edge = np.repeat(INT_SPECIALS, len(SHIFT_AMOUNTS))
    b_edge = np.tile(SHIFT_AMOUNTS, len(INT_SPECIALS))
    b = np.where(rng.random(n) < 0.5, _u32(rng.integers(0, 40, n)), _uniform(rng, n))
    return np.concatenate([a_edge, _uniform(rng, n)]), np.concatenate([b_edge, _u32(b)])


def _f2i_vectors(rng, n):
    """Ties (k + 0.5), values around +-2**31, tiny values, specials; then random values of
    every magnitude that matters (with fractions) and uniform bit patterns."""
    ties = np.concatenate([np.arange(-20, 21) + 0.5, [2.0**22 + 0.5, -(2.0**22 + 0.5),
                                                      2.0**23 - 0.5, 0.5, -0.5, 1.5, -1.5]])
    near = [2.0**31, -2.0**31, 2.0**31 - 128, -(2.0**31 - 128), 2.0**31 - 64, 2.0**30,
            2.0**32, -2.0**32, 0.49999997, -0.49999997, 0.50000006, 0.75, 1e-30, -1e-30]
    values = np.concatenate([ties, near]).astype(np.float32).view(np.uint32)
    specials = _u32([0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0001, 0x7F80_0001, 0,
                     0x8000_0000, 1, 0x8000_0001, 0x4EFF_FFFF, 0xCEFF_FFFF, 0x4F00_0000,
                     0xCF00_0000, 0xCF00_0001, 0x4F00_0001, 0x3F00_0000, 0x3EFF_FFFF])
    edge = np.concatenate([values, specials, FLOAT_SPECIALS])
    kind = rng.random(n)
    random_values = np.select(
        [kind < 0.4, kind < 0.6, kind < 0.8],
        [_log_uniform(rng, n, -3, 33),
         (rng.integers(-2**24, 2**24, n) + 0.5).astype(np.float32).view(np.uint32),  # ties
         (rng.integers(-4000, 4000, n) / 4).astype(np.float32).view(np.uint32)],
        default=_uniform(rng, n))
    return np.concatenate([edge, _u32(random_values)])


def _i2f_vectors(rng, n):
    """Ints around 2**24 (the first that round), ties at every magnitude, the extremes."""
    edge = [0, 1, -1, 2**24, 2**24 + 1, 2**24 + 2, 2**24 + 3, 2**25 + 2, 2**25 + 6, 2**31 - 1,
            -2**31, -2**31 + 1, 2**31 - 64, 2**31 - 65, 2**31 - 128, 2**31 - 129, -(2**24 + 1),
            (2**24 + 1) * 2**7, 0x7FFF_FFBF, 0x7FFF_FFC0, 0x7FFF_FFC1, 12345678, -12345678]
    ties = [((1 << 24) + 2 * k + 1) << s for s in range(0, 7) for k in range(0, 4)]
    edge = _u32(np.array(edge + ties + [-t for t in ties], dtype=np.int64))
    width = rng.integers(1, 33, n).astype(np.uint64)
    mask = (np.uint64(1) << width) - np.uint64(1)
    values = rng.integers(0, 1 << 32, n, dtype=np.uint64) & mask
    negated = (np.uint64(1 << 32) - values) & np.uint64(0xFFFF_FFFF)
    values = np.where(rng.random(n) < 0.5, values, negated)
    return np.concatenate([edge, _u32(values)])


def _rnd_bf16_vectors(rng, n):
    """Low halves at and around the tie, both parities of the bf16 LSB, at every exponent."""
    lows = _u32([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF])
    highs = _u32([0x0000, 0x0001, 0x007F, 0x0080, 0x3F80, 0x3F81, 0x7F7F, 0x7F7E, 0x7F80,
                  0x7F81, 0x7FC0, 0x7FFF, 0x8000, 0x8001, 0xFF7F, 0xFF80, 0xFFC0, 0xFFFF])
    edge = (np.repeat(highs, len(lows)) << np.uint32(16)) | np.tile(lows, len(highs))
    high = _u32(rng.integers(0, 1 << 16, n)) << np.uint32(16)
    low = np.where(rng.random(n) < 0.5, rng.choice(lows, n), _u32(rng.integers(0, 1 << 16, n)))
    return np.concatenate([edge, FLOAT_SPECIALS, _u32(high | low)])


def primitive_operands(op, rng, n):
    """Operands ``(a, b, c)`` for primitive ``op``: its edge cases then ``n`` random vectors.

    The operands an op does not use are random bit patterns.
    """
    if op in (V.ADD, V.SUB):
        a_edge, b_edge = fp32_add_edge_cases()
        a_rand, b_rand = fp32_add_random(rng, n)
        a, b = np.concatenate([a_edge, a_rand]), np.concatenate([b_edge, b_rand])
    elif op == V.MUL:
        a_edge, b_edge = fp32_mul_edge_cases()
        a_rand, b_rand = fp32_mul_random(rng, n)
        a, b = np.concatenate([a_edge, a_rand]), np.concatenate([b_edge, b_rand])
    elif op in (V.MAX, V.MIN, V.CMP_LT, V.CMP_LE, V.CMP_EQ):
        a, b = _compare_vectors(rng, n)
    elif op in (V.IADD, V.ISUB, V.AND, V.OR, V.XOR):
        a, b = _int_vectors(rng, n)
    elif op in (V.SHL, V.SHR, V.SRA):
        a, b = _shift_vectors(rng, n)
    elif op == V.SELECT:
        a, b = _uniform(rng, n + 64), _uniform(rng, n + 64)
    elif op == V.F2I:
        a = _f2i_vectors(rng, n)
    elif op == V.I2F:
        a = _i2f_vectors(rng, n)
    elif op == V.RND_BF16:
        a = _rnd_bf16_vectors(rng, n)
    elif op == V.MOV:
        a = np.concatenate([FLOAT_SPECIALS, _uniform(rng, n)])
    else:
        raise ValueError(f"{op!r} is not a primitive op")
    size = len(a)
    if op not in UNARY and op != V.SELECT:
        assert len(b) == size
    else:
        b = _uniform(rng, size)
    if op == V.SELECT:
        masks = _u32([0, 1, 0x8000_0000, 0xFFFF_FFFF, 0x7FC0_0000, 0x0000_0100])
        c = np.where(rng.random(size) < 0.7, rng.choice(masks, size), _uniform(rng, size))
    else:
        c = _uniform(rng, size)
    return _u32(a), _u32(b), _u32(c)


#: Inputs every microcoded op is tried on: signed zeros and infinities, NaNs, subnormals,
#: extremes, and the thresholds of the programs (EXP's clamps and split point, SILU's
#: x >= 17 identity and subnormal-e region, RECIP's/RSQRT's scaling switch at |x| = 2).
MICRO_SPECIALS = np.concatenate([
    FLOAT_SPECIALS,
    _u32(FP32_MUL_SPECIALS + [v | 0x8000_0000 for v in FP32_MUL_SPECIALS]),
    np.array([89.0, 88.72283, 88.7229, -110.0, -110.5, -104.0, -87.33655, -87.3365, -64.0, -64.5,
              -63.5, 17.0, 16.999998, -17.0, 80.0, -80.0, 2.0, -2.0, 1.9999999, 0.693359375,
              0.5, -0.5, 1e-7, -1e-7, 1e-38, 1e-45, 3.4e38, -3.4e38, 1.5, 100.0, -100.0, 1e30,
              -1e30], dtype=np.float32).view(np.uint32),
])


def micro_operands(op, rng, n):
    """Inputs ``a`` for microcoded ``op``: :data:`MICRO_SPECIALS`, then ``n`` random ones."""
    kind = rng.random(n)
    if op == V.EXP:
        useful = _fp32_values(rng, n, -110.0, 90.0)
    elif op == V.SILU:
        useful = _fp32_values(rng, n, -100.0, 100.0)
    else:  # RECIP, RSQRT: every binade, subnormals included
        useful = _log_uniform(rng, n, -149, 127)
    narrow = _fp32_values(rng, n, -4.0, 4.0)
    values = np.select([kind < 0.6, kind < 0.8], [useful, narrow], default=_uniform(rng, n))
    return np.concatenate([MICRO_SPECIALS, _u32(values)])


def reduction_tile(rng, lanes, cols, specials=True):
    """A ``lanes`` x ``cols`` fp32 tile: mostly moderate values of mixed sign, with some
    zeros, subnormals, infinities and NaNs sprinkled in when ``specials``."""
    kind = rng.random((lanes, cols))
    values = np.select(
        [kind < 0.6, kind < 0.8],
        [_fp32_values(rng, lanes * cols, -100.0, 100.0).reshape(lanes, cols),
         _log_uniform(rng, lanes * cols, -30, 30).reshape(lanes, cols)],
        default=_fp32_values(rng, lanes * cols, -1.0, 1.0).reshape(lanes, cols))
    if specials:
        sprinkle = _u32([0, 0x8000_0000, 1, 0x8000_0001, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000,
                         0xFFC0_0001, 0x7F7F_FFFF, 0xFF7F_FFFF])
        where = rng.random((lanes, cols)) < 0.01
        values = np.where(where, rng.choice(sprinkle, (lanes, cols)), values)
    return _u32(values)


def golden_reduce(red_op, tile):
    """The REDUCE contract (``docs/isa.md``): per row, sequential in the column index from the
    identity, with the golden primitives (as ``npusim.sw.fm.compute.reduce`` computes it)."""
    if red_op == RedOp.SUM:
        acc, step = np.zeros(tile.shape[0], np.uint32), nx.fp32_add
    else:
        acc, step = np.full(tile.shape[0], 0xFF80_0000, np.uint32), nx.fp32_max
    for j in range(tile.shape[1]):
        acc = step(acc, tile[:, j])
    return _u32(acc)


# -- Commands ----------------------------------------------------------------------------------

@dataclass
class Command:
    """One vector-unit command with its input beats and the output beats it must produce.

    ``a``, ``b``, ``c`` are ``[beats, lanes]``; ``expected`` is ``[output beats, lanes]``.
    """
    name: str
    op: int
    mode: int
    red_op: int
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    expected: np.ndarray

    @property
    def cmd_payload(self):
        """The ``VectorUnitCommand`` bits: op (6), mode (1), red_op (1), LSB first."""
        return int(self.op) | (self.mode << 6) | (int(self.red_op) << 7)


def elementwise(op, a, lanes, b=None, c=None, name=None):
    """An ELEMENTWISE command over flat operand arrays, padded to whole beats with zeros."""
    op = V(op)
    n = len(a)
    beats = max(1, -(-n // lanes))

    def shape(x):
        padded = np.zeros(beats * lanes, np.uint32)
        if x is not None:
            padded[:n] = x
        return padded.reshape(beats, lanes)

    a2, b2, c2 = shape(a), shape(b), shape(c)
    if op in PROGRAMS or op in UNARY:
        expected = nx.vector_op(op, a2)
    elif op in TERNARY:
        expected = nx.vector_op(op, a2, b2, c2)
    else:
        expected = nx.vector_op(op, a2, b2)
    return Command(name or op.name, int(op), ELEMENTWISE, 0, a2, b2, c2, _u32(expected))


def reduction(red_op, tile, rng, name=None, op_field=None):
    """A REDUCE command over a ``lanes`` x ``cols`` tile: beat ``j`` carries column ``j``.

    ``b`` and ``c`` are random garbage and ``op`` a random value (all ignored by REDUCE)."""
    red_op = RedOp(red_op)
    beats = tile.T.copy()
    garbage = _uniform(rng, 2 * beats.size).reshape(2, *beats.shape)
    op = int(rng.choice([int(v) for v in V])) if op_field is None else op_field
    expected = golden_reduce(red_op, tile)[None, :]
    return Command(name or f"REDUCE {red_op.name}", op, REDUCE, int(red_op), beats,
                   garbage[0], garbage[1], expected)


def split(command_factory, values, lanes, max_beats):
    """Several commands of at most ``max_beats`` beats over ``values`` (varies the command
    boundaries)."""
    step = max_beats * lanes
    return [command_factory(values[i:i + step]) for i in range(0, len(values), step)]


# -- The testbench --------------------------------------------------------------------------------

@dataclass
class Stalls:
    """Probabilities, per cycle, of holding back a new ``cmd`` / ``i`` beat and of dropping
    ``o.ready``."""
    cmd: float = 0.0
    i: float = 0.0
    o: float = 0.0


NO_STALLS = Stalls()


@dataclass
class Trace:
    """What happened during :meth:`TB.run`: cycle numbers of the transfers."""
    cycles: int
    cmd_cycles: list
    i_cycles: list
    o_cycles: list


class TB:
    """Drives a ``VectorUnit`` and checks it against the golden model."""

    def __init__(self, dut):
        self.dut = dut
        self.lanes = len(dut.o__payload) // 32
        self.seed = int(os.environ.get("VU_SEED", "1"))
        self.random_vectors = int(os.environ.get("VU_RANDOM", "3000"))
        self.micro_random = int(os.environ.get("VU_MICRO_RANDOM", "2000"))
        self.tiles = int(os.environ.get("VU_TILES", "12"))
        self.cycle_budget_factor = 4

    def rng(self, *stream):
        """A generator per vector set, so one set's size does not change another's vectors."""
        return np.random.default_rng([self.seed, *stream])

    async def reset(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        dut.cmd__valid.value = 0
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        await ClockCycles(dut.clk, 2)
        await FallingEdge(dut.clk)
        dut.rst.value = 0

    def _beat_ints(self, command):
        """The ``i`` payload of every beat of ``command`` as an int (a, b, c, last; LSB first)."""
        beats = len(command.a)
        words = np.zeros((beats, 3 * self.lanes + 1), np.uint32)
        words[:, :self.lanes] = command.a
        words[:, self.lanes:2 * self.lanes] = command.b
        words[:, 2 * self.lanes:3 * self.lanes] = command.c
        words[-1, 3 * self.lanes] = 1
        return [int.from_bytes(row.tobytes(), "little") for row in words]

    async def run(self, commands, stalls=NO_STALLS, *, rng_stream=0):
        """Send ``commands`` back to back, collect every output beat, check them all.

        One loop per clock cycle: on the falling edge it drives the next ``cmd`` and ``i``
        beats (or holds them back) and ``o.ready``; after the signals settle it records which
        transfers happen at the next rising edge. Bounded by a cycle budget.
        """
        dut = self.dut
        stall = random.Random(self.seed * 1000 + rng_stream)
        cmd_payloads = [c.cmd_payload for c in commands]
        beat_payloads = [p for c in commands for p in self._beat_ints(c)]
        expected_beats = sum(len(c.expected) for c in commands)
        work = sum(len(c.a) * (microcode_length(V(c.op)) if c.mode == ELEMENTWISE and c.op in
                               {int(o) for o in PROGRAMS} else 1) for c in commands)
        slowest = 1 / max(1e-3, 1 - max(stalls.cmd, stalls.i, stalls.o))
        budget = int(self.cycle_budget_factor * slowest * (work + len(commands)) + 100)

        next_cmd = next_beat = 0
        cmd_shown = beat_shown = False       # a cmd / i beat is on the port, not yet taken
        cmd_valid = beat_valid = out_ready = None  # what the ports are driven to
        outputs = []
        trace = Trace(0, [], [], [])
        started = time.perf_counter()
        cycle = 0
        while len(outputs) < expected_beats:
            await FallingEdge(dut.clk)
            if not cmd_shown and next_cmd < len(commands) and stall.random() >= stalls.cmd:
                dut.cmd__payload.value = cmd_payloads[next_cmd]
                cmd_shown = True
            if cmd_shown != cmd_valid:
                dut.cmd__valid.value = int(cmd_shown)
                cmd_valid = cmd_shown
            if not beat_shown and next_beat < len(beat_payloads) and stall.random() >= stalls.i:
                dut.i__payload.value = beat_payloads[next_beat]
                beat_shown = True
            if beat_shown != beat_valid:
                dut.i__valid.value = int(beat_shown)
                beat_valid = beat_shown
            ready = stall.random() >= stalls.o
            if ready != out_ready:
                dut.o__ready.value = int(ready)
                out_ready = ready
            await ReadOnly()
            if cmd_shown and dut.cmd__ready.value:
                trace.cmd_cycles.append(cycle)
                next_cmd += 1
                cmd_shown = False
            if beat_shown and dut.i__ready.value:
                trace.i_cycles.append(cycle)
                next_beat += 1
                beat_shown = False
            if ready and dut.o__valid.value:
                trace.o_cycles.append(cycle)
                outputs.append(dut.o__payload.value.to_unsigned())
            cycle += 1
            if cycle > budget:
                raise AssertionError(
                    f"timeout: {cycle} cycles, {next_cmd}/{len(commands)} commands, "
                    f"{next_beat}/{len(beat_payloads)} beats in, "
                    f"{len(outputs)}/{expected_beats} beats out")
        trace.cycles = cycle

        # Drain: nothing more may come out, and the unit reports idle.
        await FallingEdge(dut.clk)
        dut.cmd__valid.value = 0
        dut.i__valid.value = 0
        dut.o__ready.value = 1
        for _ in range(3):
            await FallingEdge(dut.clk)
            await ReadOnly()
            if dut.o__valid.value:
                raise AssertionError("an output beat more than the commands produce")
        if dut.busy.value:
            raise AssertionError("busy after the last output beat")

        seconds = time.perf_counter() - started
        dut._log.info("%d commands, %d beats in, %d beats out in %d cycles, %.2f s "
                      "(%.0f cycles/s)", len(commands), len(beat_payloads), len(outputs),
                      trace.cycles, seconds, trace.cycles / max(seconds, 1e-9))
        self.check(commands, outputs)
        return trace

    def check(self, commands, outputs, limit=10):
        """Compare the collected output beats with the commands' expected beats."""
        row = 4 * self.lanes
        got = np.frombuffer(b"".join(o.to_bytes(row, "little") for o in outputs),
                            dtype=np.uint32).reshape(-1, self.lanes)
        lines = []
        position = 0
        for index, command in enumerate(commands):
            n = len(command.expected)
            mine = got[position:position + n]
            position += n
            bad = np.argwhere(mine != command.expected)
            if len(bad) == 0:
                continue
            lines.append(f"command #{index} {command.name}: {len(bad)} of {command.expected.size}"
                         f" results differ; first {min(limit, len(bad))}:")
            for beat, lane in bad[:limit]:
                if command.mode == REDUCE:
                    inputs = f"row of {command.a.shape[0]} values"
                else:
                    inputs = (f"a={_describe(command.a[beat, lane])} "
                              f"b={_describe(command.b[beat, lane])} "
                              f"c={_describe(command.c[beat, lane])}")
                lines.append(f"  beat {beat} lane {lane}: {inputs} "
                             f"got={_describe(mine[beat, lane])} "
                             f"expected={_describe(command.expected[beat, lane])}")
        if lines:
            raise AssertionError("\n".join(lines) + f"\n(VU_SEED={self.seed})")


# -- Tests ----------------------------------------------------------------------------------------

PRIMITIVES = list(nx.PRIMITIVE_OPS)
MICROCODED = list(PROGRAMS)


@cocotb.test()
async def primitive_ops(dut):
    """Every primitive op on its edge cases and VU_RANDOM random vectors, full speed:
    one beat per cycle, back-to-back commands lose no cycle."""
    tb = TB(dut)
    await tb.reset()
    commands = []
    for op in PRIMITIVES:
        a, b, c = primitive_operands(op, tb.rng(1, int(op)), tb.random_vectors)
        commands.append(elementwise(op, a, tb.lanes, b, c))
    trace = await tb.run(commands)
    beats = sum(len(c.a) for c in commands)
    assert trace.i_cycles == list(range(trace.i_cycles[0], trace.i_cycles[0] + beats)), \
        "primitive ops did not take one beat per cycle"
    assert trace.o_cycles[0] == trace.i_cycles[0] + 1, "latency is not one cycle"


@cocotb.test()
async def primitive_ops_stalls(dut):
    """Every primitive op again, split into short commands, with random stalls on cmd, i
    and o."""
    tb = TB(dut)
    await tb.reset()
    commands = []
    for op in PRIMITIVES:
        rng = tb.rng(2, int(op))
        a, b, c = primitive_operands(op, rng, 300)
        n = len(a)
        sample = rng.choice(n, min(n, 600), replace=False)
        a, b, c = a[sample], b[sample], c[sample]
        step = tb.lanes * int(rng.integers(1, 9))
        for start in range(0, n, step):
            commands.append(elementwise(op, a[start:start + step], tb.lanes,
                                        b[start:start + step], c[start:start + step]))
    await tb.run(commands, Stalls(cmd=0.3, i=0.3, o=0.3), rng_stream=2)


@cocotb.test()
async def microcoded_ops(dut):
    """EXP, RECIP, RSQRT, SILU on their edge cases and VU_MICRO_RANDOM random inputs; one
    beat per microcode_length(op) cycles."""
    tb = TB(dut)
    await tb.reset()
    for op in MICROCODED:
        a = micro_operands(op, tb.rng(3, int(op)), tb.micro_random)
        trace = await tb.run([elementwise(op, a, tb.lanes, name=f"{op.name}")])
        length = microcode_length(op)
        gaps = set(np.diff(trace.i_cycles).tolist())
        assert gaps == {length}, f"{op.name}: beats {gaps} cycles apart, expected {length}"
        assert trace.o_cycles[0] == trace.i_cycles[0] + length, f"{op.name}: latency"


@cocotb.test()
async def microcoded_ops_stalls(dut):
    """The microcoded ops with random stalls, in short commands mixed with primitive ones
    (the register file and the sequencer across command boundaries)."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(4)
    commands = []
    for op in MICROCODED * 2:
        a = micro_operands(op, rng, 40)
        a = a[rng.choice(len(a), 40, replace=False)]
        commands += split(lambda x, op=op: elementwise(op, x, tb.lanes), a, tb.lanes, 3)
        prim = V(int(rng.choice([int(o) for o in PRIMITIVES])))
        x, y, z = primitive_operands(prim, rng, 16)
        commands.append(elementwise(prim, x[-16:], tb.lanes, y[-16:], z[-16:]))
    await tb.run(commands, Stalls(cmd=0.3, i=0.4, o=0.5), rng_stream=4)


@cocotb.test()
async def reductions(dut):
    """SUM and MAX of random tiles (NaNs, infinities, signed zeros, subnormals included) in
    the golden sequential order, back to back at one column per cycle; then with stalls."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(5)
    commands = []
    for index in range(tb.tiles):
        for red_op in RedOp:
            cols = int(rng.choice([1, 2, 3, 8, 33, 64, 200]))
            commands.append(reduction(red_op, reduction_tile(rng, tb.lanes, cols, index % 3 > 0),
                                      rng))
    # Identity-sensitive corners: all -0 (SUM gives +0), all -inf (MAX gives -inf), one NaN.
    for red_op in RedOp:
        for fill in (0x8000_0000, 0xFF80_0000, 0x7F80_0000, 0x0000_0001):
            tile = np.full((tb.lanes, 5), fill, np.uint32)
            tile[0, 2] = 0x7FC0_0001
            commands.append(reduction(red_op, tile, rng))
    trace = await tb.run(commands)
    beats = sum(len(c.a) for c in commands)
    assert trace.i_cycles == list(range(trace.i_cycles[0], trace.i_cycles[0] + beats)), \
        "reductions did not take one column per cycle"
    await tb.run(commands[:12], Stalls(cmd=0.3, i=0.3, o=0.5), rng_stream=5)


@cocotb.test()
async def mixed_commands(dut):
    """A random sequence of short commands of every kind, with random stalls."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(6)
    commands = []
    for _ in range(60):
        kind = rng.random()
        if kind < 0.25:
            commands.append(reduction(RedOp(int(rng.integers(0, 2))),
                                      reduction_tile(rng, tb.lanes, int(rng.integers(1, 6))),
                                      rng))
        elif kind < 0.4:
            op = V(int(rng.choice([int(o) for o in MICROCODED])))
            a = micro_operands(op, rng, 8)[-int(rng.integers(1, 3 * tb.lanes)):]
            commands.append(elementwise(op, a, tb.lanes))
        else:
            op = V(int(rng.choice([int(o) for o in PRIMITIVES])))
            a, b, c = primitive_operands(op, rng, 32)
            n = int(rng.integers(1, 4 * tb.lanes))
            commands.append(elementwise(op, a[-n:], tb.lanes, b[-n:], c[-n:]))
    for stalls in (NO_STALLS, Stalls(cmd=0.5, i=0.2, o=0.2), Stalls(cmd=0.1, i=0.5, o=0.7)):
        await tb.run(commands, stalls, rng_stream=6)
