"""cocotb testbench for the NE tile top (``hw/ne/tile.py``), run by ``test_ne_tile.py`` through
:func:`npusim.cosim.verilator_flow.run`.

The design under test is :class:`~npusim.cosim.ne_tile.NeTileHarness`: the
:class:`~npusim.hw.ne.tile.NeTile` with its ``dma`` port re-exposed as plain top-level streams.

The :class:`TB` is a :class:`~npusim.cosim.ne_tile.NeTileDriver` (clock, reset, the ``dma``
port: load and read back the whole SRAM, with optional random pauses, and random background
reads during a command; the ``cmd`` and ``done`` ports) plus what this test decides: the
command generators and the oracle. Every command also runs on the functional model
(:func:`~npusim.cosim.ne_tile.fm_run`: :func:`npusim.sw.fm.compute.matmul` or
:func:`~npusim.sw.fm.compute.reduce` on a :class:`~npusim.sw.fm.memory.DenseMemory` holding
the same image), and after it the tile's error code must equal the model's and the whole SRAM,
read back through ``dma``, must equal the model's memory bit for bit.

Python sleeps on the ``done`` port while a command runs (one wake-up per command), except in
the background-read test, where it drives ``dma`` every cycle.

Environment (set by the pytest side):

``NE_TILE_PARAMS``
    JSON of the :class:`~npusim.sw.params.HwParams` fields the DUT was built with.
``NE_TILE_SEED``
    Seed of the command generators and pause generators (default 1).
``NE_TILE_COMMANDS``
    Random commands per random test (default 40).
``NE_TILE_REPORT``
    If set, a path: the timing test writes its table there as JSON.
"""

import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np

from npusim.cosim.ne_tile import NeTileDriver, fm_run, random_pauses
from npusim.hw.isa import Opcode
from npusim.sw.fm import timing
from npusim.sw.isa.enums import DType, ErrorCode, RedOp
from npusim.sw.params import HwParams
from systolic_tb import random_bf16


# -- Commands ----------------------------------------------------------------------------------

def describe_reduce(f):
    return (f"REDUCE {RedOp(f['op']).name} rows={f['rows']} cols={f['cols']} "
            f"a={f['a']:#x}/{f['lda']} {'bf16' if f['a_dtype'] == DType.BF16 else 'fp32'} "
            f"dst={f['dst']:#x}")


def describe(f):
    """A short description of MATMUL ``f`` for messages."""
    return (f"MATMUL m={f['m']} n={f['n']} k={f['k']} a={f['a']:#x}/{f['lda']}"
            f"{'T' if f['a_trans'] else ''} b={f['b']:#x}/{f['ldb']}{'T' if f['b_trans'] else ''}"
            f" c={f['c']:#x}/{f['ldc']} {'bf16' if f['c_dtype'] == DType.BF16 else 'fp32'}"
            f"{' acc' if f['acc'] else ''}")


def _extent(addr, rows, cols, ld, es):
    if rows == 0 or cols == 0:
        return addr, addr
    return addr, addr + ((rows - 1) * ld + cols) * es


def _pick_dim(rng, size):
    """M or N: 1, around the array's size, or several tiles (lines of several panel groups)."""
    choices = [1, 2, max(size - 1, 1), size, size + 1, 2 * size + 3,
               int(rng.integers(1, 3 * size + 1)), int(rng.integers(3 * size, 6 * size + 1))]
    return int(choices[rng.integers(len(choices))])


def random_matmul(rng, rows, cols, sram_bytes, word_bytes, panel_depth=256):
    """A random MATMUL that the functional model accepts: shapes around the array's size
    (ragged edges, K from 1 to a few dozen, now and then 0), both transposes, acc, bf16 C,
    row strides with and without padding (A's and B's now and then shorter than a row, even
    0: rows read twice), addresses at every element alignment, A and B sometimes the same
    tensor; C never overlaps them. K is now and then just past ``panel_depth`` (when that
    is small), where the tile streams both operands instead of reusing a panel."""
    for _ in range(1000):
        f = {
            "m": _pick_dim(rng, rows), "n": _pick_dim(rng, cols),
            "k": int(rng.choice([1, 2, 3, rows, 2 * rows + 1, int(rng.integers(1, 41)),
                                 panel_depth + int(rng.integers(0, 3))])),
            "a_trans": int(rng.integers(2)), "b_trans": int(rng.integers(2)),
            "acc": int(rng.random() < 0.35),
        }
        if f["k"] > 64:
            f["k"] = int(rng.integers(1, 41))
        if rng.random() < 0.04:
            f[str(rng.choice(["m", "n", "k"]))] = 0
        f["c_dtype"] = DType.FP32 if f["acc"] or rng.random() < 0.6 else DType.BF16
        a_rows, a_cols = (f["k"], f["m"]) if f["a_trans"] else (f["m"], f["k"])
        b_rows, b_cols = (f["n"], f["k"]) if f["b_trans"] else (f["k"], f["n"])

        def stride(cols_, read_only=True):
            r = rng.random()
            if read_only and r < 0.04:
                return int(rng.integers(0, max(cols_, 1)))  # rows overlap (0: the same row)
            if r < 0.5:
                return cols_
            return cols_ + int(rng.choice([1, 2, 3, 7, 16, int(rng.integers(1, 40))]))

        f["lda"], f["ldb"] = stride(a_cols), stride(b_cols)
        f["ldc"] = stride(f["n"], read_only=False) if f["m"] > 1 or rng.random() < 0.8 \
            else int(rng.integers(0, 100))
        es_c = 4 if f["c_dtype"] == DType.FP32 else 2

        def address(span, es):
            limit = sram_bytes - span
            if limit < 0:
                return None
            r = rng.random()
            unit = word_bytes if r < 0.3 else (16 if r < 0.45 else es)
            return int(rng.integers(0, limit // unit + 1)) * unit

        spans = {"a": _extent(0, a_rows, a_cols, f["lda"], 2)[1],
                 "b": _extent(0, b_rows, b_cols, f["ldb"], 2)[1],
                 "c": _extent(0, f["m"], f["n"], f["ldc"], es_c)[1]}
        f["a"] = address(spans["a"], 2)
        f["b"] = f["a"] if rng.random() < 0.1 and spans["b"] <= spans["a"] \
            else address(spans["b"], 2)
        f["c"] = address(spans["c"], es_c)
        if None in (f["a"], f["b"], f["c"]):
            continue
        ca = _extent(f["c"], f["m"], f["n"], f["ldc"], es_c)
        if any(ca[0] < x1 and x0 < ca[1] for x0, x1 in (
                _extent(f["a"], a_rows, a_cols, f["lda"], 2),
                _extent(f["b"], b_rows, b_cols, f["ldb"], 2))):
            continue
        return f
    raise RuntimeError("could not place a random MATMUL")


def random_reduce(rng, lanes, sram_bytes, word_bytes):
    """A random REDUCE that the functional model accepts: rows around the lane count (one
    to several blocks, ragged), columns from 0 to a few dozen, both reductions, fp32 and
    bf16 inputs, row strides dense, padded, short or 0, addresses at every element alignment;
    dst never overlaps a."""
    for _ in range(1000):
        f = {"op": RedOp(int(rng.integers(2))), "a_dtype": DType(int(rng.integers(2))),
             "rows": _pick_dim(rng, lanes),
             "cols": int(rng.choice([0, 1, 2, lanes, int(rng.integers(1, 50))]))}
        if rng.random() < 0.03:
            f["rows"] = 0
        es = 4 if f["a_dtype"] == DType.FP32 else 2
        r = rng.random()
        f["lda"] = (int(rng.integers(0, max(f["cols"], 1))) if r < 0.08 else
                    f["cols"] if r < 0.5 else f["cols"] + int(rng.integers(1, 20)))
        a_span = _extent(0, f["rows"], f["cols"], f["lda"], es)[1]
        d_span = 4 * f["rows"]
        if a_span > sram_bytes or d_span > sram_bytes:
            continue
        unit = word_bytes if rng.random() < 0.3 else es
        f["a"] = int(rng.integers(0, (sram_bytes - a_span) // unit + 1)) * unit
        unit = word_bytes if rng.random() < 0.3 else 4
        f["dst"] = int(rng.integers(0, (sram_bytes - d_span) // unit + 1)) * unit
        a0, a1 = _extent(f["a"], f["rows"], f["cols"], f["lda"], es)
        d0, d1 = _extent(f["dst"], 1, f["rows"], f["rows"], 4)
        if d0 < a1 and a0 < d1:
            continue
        return f
    raise RuntimeError("could not place a random REDUCE")


# -- The testbench -----------------------------------------------------------------------------

class TB(NeTileDriver):
    """A :class:`~npusim.cosim.ne_tile.NeTileDriver` configured from the environment, with
    the checks against the functional model."""

    def __init__(self, dut):
        super().__init__(dut, HwParams(**json.loads(os.environ["NE_TILE_PARAMS"])),
                         seed=int(os.environ.get("NE_TILE_SEED", "1")))
        self.command_count = int(os.environ.get("NE_TILE_COMMANDS", "40"))
        self.panel_depth = self.params.panel_depth

    def rng(self, stream_):
        return np.random.default_rng([self.seed, stream_])

    def pauses(self, stream_, busy=0.6):
        return random_pauses(random.Random(self.seed * 1000 + stream_), busy)

    async def matmul(self, f, what="", *, check_memory=True, dump_pauses=None,
                     background_reads=None):
        """Run MATMUL ``f`` on the tile and on the model; compare the error code and (with
        ``check_memory``) the whole SRAM. Returns the :class:`~npusim.cosim.ne_tile.Outcome`."""
        return await self.checked("MATMUL", f, f"{what}: {describe(f)}",
                                  background_reads=background_reads, dump_pauses=dump_pauses,
                                  check_memory=check_memory,
                                  locate=lambda bad: self._locate(f, bad))

    async def reduce(self, f, what="", *, check_memory=True):
        """Run REDUCE ``f`` on the tile and on the model, like :meth:`matmul`."""
        return await self.checked("REDUCE", f, f"{what}: {describe_reduce(f)}",
                                  check_memory=check_memory)

    def _locate(self, f, bad):
        """Which C elements the differing bytes belong to (for messages)."""
        es = 4 if f["c_dtype"] == DType.FP32 else 2
        where = []
        for byte in bad[:6]:
            off = int(byte) - f["c"]
            if off < 0 or f["ldc"] == 0:
                where.append(f"{int(byte):#x}: outside C")
                continue
            i, j = divmod(off // es, f["ldc"])
            where.append(f"{int(byte):#x}: C[{i}][{j}]" if i < f["m"] and j < f["n"]
                         else f"{int(byte):#x}: outside C")
        return "; ".join(where)

    def random_image(self, rng):
        """A whole-SRAM image of bf16 patterns (so fp32 words read by acc are realistic too)."""
        return random_bf16(rng, self.size // 2, specials=0.02).view(np.uint8)


# -- Tests -------------------------------------------------------------------------------------

TIMEOUT = dict(timeout_time=200, timeout_unit="ms")  # simulated time: 20M cycles


@cocotb.test(**TIMEOUT)
async def matmul_random(dut):
    """Random MATMULs (every option, ragged shapes, strides, alignments) on a random image:
    each checked against the model (error code and the whole SRAM)."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(1)
    await tb.load(tb.random_image(rng))
    cycles = 0
    for n in range(tb.command_count):
        f = random_matmul(rng, tb.rows, tb.cols, tb.size, tb.word_bytes, tb.panel_depth)
        outcome = await tb.matmul(f, f"random #{n}")
        cycles += outcome.cycles
    tb.log.info("%d random MATMULs bit-exact with the model (%d tile cycles)",
                tb.command_count, cycles)


@cocotb.test(**TIMEOUT)
async def matmul_dma_stalls(dut):
    """Random MATMULs with random pauses on every dma load and read-back, and random dma reads
    (bank conflicts with the tile's own reads) while each command runs."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(2)
    await tb.load(tb.random_image(rng), pauses=tb.pauses(1))
    for n in range(max(tb.command_count // 4, 4)):
        f = random_matmul(rng, tb.rows, tb.cols, tb.size, tb.word_bytes, tb.panel_depth)
        await tb.matmul(f, f"stalls #{n}", dump_pauses=tb.pauses(10 + n),
                        background_reads=tb.pauses(100 + n, busy=0.9))
        if n % 3 == 2:  # a fresh image now and then, loaded with pauses
            await tb.load(tb.random_image(rng), pauses=tb.pauses(200 + n))


def _error_cases(tb):
    """Directed faulting (and edge) MATMULs: ``(name, fields, expected code)``."""
    R, C, size = tb.rows, tb.cols, tb.size
    E = ErrorCode
    ld = 16 if C < 16 else 32              # row strides of A, B and C: room for C + 1 columns
    base = dict(a=0, lda=ld, b=0x400, ldb=ld, c=0x800, ldc=ld, a_trans=0, b_trans=0, acc=0,
                c_dtype=DType.FP32, m=R + 1, n=C + 1, k=8)
    c_end = 0x800 + 4 * (R * ld + C + 1)   # one past base's C

    def case(name, code, **changes):
        return name, {**base, **changes}, code

    big = 0xFFFFFF
    return [
        case("acc into bf16", E.BAD_SHAPE, acc=1, c_dtype=DType.BF16),
        case("acc into bf16 wins over everything", E.BAD_SHAPE, acc=1, c_dtype=DType.BF16,
             a=1, b=big, c=3),
        case("A odd", E.ALIGNMENT, a=1),
        case("A odd, transposed", E.ALIGNMENT, a=3, a_trans=1, lda=R + 1),
        case("A past the end", E.SRAM_BOUNDS, a=size - 16),
        case("A address huge", E.SRAM_BOUNDS, a=big - 1),
        case("A huge shape", E.SRAM_BOUNDS, m=0xFFFF, k=0xFFFF, lda=0xFFFF),
        case("A huge K", E.SRAM_BOUNDS, k=0xFFFF),
        case("A odd beats A past the end", E.ALIGNMENT, a=size - 15),
        case("A empty (k = 0) at a bad address is fine", E.OK, a=big, k=0),
        case("B odd", E.ALIGNMENT, b=0x401),
        case("B past the end", E.SRAM_BOUNDS, b=size - 2, b_trans=1),
        case("B huge K (A empty)", E.SRAM_BOUNDS, m=0, k=0xFFFF),
        case("A past the end beats B odd", E.SRAM_BOUNDS, a=size, b=0x401),
        case("C fp32 at 2 mod 4", E.ALIGNMENT, c=0x802),
        case("C bf16 odd", E.ALIGNMENT, c=0x801, c_dtype=DType.BF16),
        case("C bf16 at 2 mod 4 is fine", E.OK, c=0x802, c_dtype=DType.BF16),
        case("ldc < n", E.BAD_SHAPE, ldc=C),
        case("ldc < n with m = 1 is fine", E.OK, m=1, ldc=0),
        case("C past the end", E.SRAM_BOUNDS, c=size - 64),
        case("C misaligned beats ldc < n", E.ALIGNMENT, c=0x803, ldc=1),
        case("C overlaps A", E.OPERAND_OVERLAP, c=0x20),
        case("C overlaps B", E.OPERAND_OVERLAP, c=0x404),
        case("C ends where A starts is fine", E.OK, a=c_end),
        case("C overlaps A's first byte", E.OPERAND_OVERLAP, a=c_end - 2),
        case("C overlaps B's last byte", E.OPERAND_OVERLAP, c=0x400 + 2 * (7 * ld + C + 1) - 2,
             c_dtype=DType.BF16),
        case("empty C inside A overlaps", E.OPERAND_OVERLAP, c=0x10, n=0),
        case("empty C at A's start does not overlap", E.OK, c=0, n=0),
        case("C bounds beat overlap", E.SRAM_BOUNDS, a=size - 0x400, a_trans=1, lda=64, m=64,
             c=size - 0x400 + 16),
        case("K = 0 with acc leaves C alone", E.OK, k=0, acc=1),
        case("K = 0 writes zeros", E.OK, k=0, c_dtype=DType.BF16),
    ]


@cocotb.test(**TIMEOUT)
async def matmul_errors(dut):
    """Every error path (and the edges next to them): the model's code, and SRAM unchanged by
    a faulting command."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(3)
    await tb.load(tb.random_image(rng))
    for name, f, code in _error_cases(tb):
        expected, _ = fm_run(tb.image, "MATMUL", f)
        assert expected == code, f"{name}: the model says {expected.name}, not {code.name}"
        before = tb.image.copy()
        outcome = await tb.matmul(f, name)
        if code != ErrorCode.OK:
            assert np.array_equal(tb.image, before)
            assert outcome.cycles < 16, f"{name}: a fault took {outcome.cycles} cycles"
    tb.log.info("%d directed error cases match the model", len(_error_cases(tb)))


@cocotb.test(**TIMEOUT)
async def matmul_fuzz(dut):
    """MATMULs with random fields (addresses anywhere in the 24-bit field, small shapes, any
    strides): the tile's code and SRAM against the model, faulting or not."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(4)
    await tb.load(tb.random_image(rng))
    codes = {}
    for n in range(tb.command_count):
        r = rng.random()
        near = lambda: int(rng.integers(0, tb.size + 64))
        f = {
            "a": near() if r < 0.8 else int(rng.integers(0, 1 << 24)),
            "b": near(), "c": near() if rng.random() < 0.9 else int(rng.integers(0, 1 << 24)),
            "lda": int(rng.integers(0, 24)), "ldb": int(rng.integers(0, 24)),
            "ldc": int(rng.integers(0, 24)),
            "a_trans": int(rng.integers(2)), "b_trans": int(rng.integers(2)),
            "acc": int(rng.integers(2)), "c_dtype": DType(int(rng.integers(2))),
            "m": int(rng.integers(0, 2 * tb.rows + 2)), "n": int(rng.integers(0, 2 * tb.cols + 2)),
            "k": int(rng.integers(0, 20)),
        }
        outcome = await tb.matmul(f, f"fuzz #{n}")
        codes[outcome.error.name] = codes.get(outcome.error.name, 0) + 1
    tb.log.info("fuzz: %d commands match the model: %s", tb.command_count, codes)


@cocotb.test(**TIMEOUT)
async def other_opcodes(dut):
    """A command that is not a compute command (the command processor never sends one, but
    a malformed stream must not hang the tile): BAD_OPCODE, SRAM unchanged, and the tile
    takes the next command."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(5)
    await tb.load(tb.random_image(rng))
    for opcode in (Opcode.NOP.value, Opcode.DMA_COPY.value, Opcode.SEM_WAIT.value, 0xFF):
        payload = int(opcode)   # the opcode in the low byte, every field 0
        outcome = await tb.command(payload, 100)
        assert outcome.error == ErrorCode.BAD_OPCODE, outcome
    await tb.check_memory("other opcodes")
    f = random_matmul(rng, tb.rows, tb.cols, tb.size, tb.word_bytes, tb.panel_depth)
    await tb.matmul(f, "after other opcodes")


@cocotb.test(**TIMEOUT)
async def reduce_random(dut):
    """Random REDUCEs (SUM and MAX, fp32 and bf16 inputs, ragged row blocks, no columns,
    strides, alignments), interleaved with MATMULs: each against the model, whole SRAM."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(7)
    await tb.load(tb.random_image(rng))
    for n in range(tb.command_count):
        await tb.reduce(random_reduce(rng, tb.cols, tb.size, tb.word_bytes), f"reduce #{n}")
        if n % 8 == 7:
            f = random_matmul(rng, tb.rows, tb.cols, tb.size, tb.word_bytes, tb.panel_depth)
            await tb.matmul(f, f"matmul after reduce #{n}")


def _reduce_error_cases(tb):
    """Directed REDUCEs: ``(name, fields, expected code)``."""
    C, size, E = tb.cols, tb.size, ErrorCode
    base = dict(op=RedOp.SUM, dst=0x800, a=0, lda=12, a_dtype=DType.FP32, rows=C + 1, cols=10)
    a_end = 4 * (C * 12 + 10)

    def case(name, code, **changes):
        return name, {**base, **changes}, code

    return [
        case("a fp32 at 2 mod 4", E.ALIGNMENT, a=2),
        case("a bf16 odd", E.ALIGNMENT, a=1, a_dtype=DType.BF16),
        case("a bf16 at 2 mod 4 is fine", E.OK, a=2, a_dtype=DType.BF16),
        case("a past the end", E.SRAM_BOUNDS, a=size - 16),
        case("a huge", E.SRAM_BOUNDS, rows=0xFFFF, lda=0xFFFF),
        case("a odd beats dst misaligned", E.ALIGNMENT, a=1, dst=2),
        case("a empty (no columns) at a bad address is fine", E.OK, a=0xFFFFFF, cols=0),
        case("dst at 2 mod 4", E.ALIGNMENT, dst=0x802),
        case("dst past the end", E.SRAM_BOUNDS, dst=size - 4),
        case("dst huge address", E.SRAM_BOUNDS, dst=0xFFFFFC),
        case("dst overlaps a", E.OPERAND_OVERLAP, dst=a_end - 4),
        case("dst ends where a starts is fine", E.OK, a=0x800 + 4 * (C + 1)),
        case("dst bounds beat overlap", E.SRAM_BOUNDS, a=size - 0x200, dst=size - 8),
        case("no rows: nothing", E.OK, rows=0, dst=0xFFFFFF),
        case("no columns: SUM gives +0", E.OK, cols=0),
        case("no columns: MAX gives -inf", E.OK, cols=0, op=RedOp.MAX),
        case("rows read twice (lda 0)", E.OK, lda=0, op=RedOp.MAX),
    ]


@cocotb.test(**TIMEOUT)
async def reduce_errors(dut):
    """Every REDUCE error path and the edges next to them: the model's code, SRAM unchanged
    by a faulting command; then REDUCEs with random fields."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(8)
    await tb.load(tb.random_image(rng))
    for name, f, code in _reduce_error_cases(tb):
        expected, _ = fm_run(tb.image, "REDUCE", f)
        assert expected == code, f"{name}: the model says {expected.name}, not {code.name}"
        outcome = await tb.reduce(f, name)
        if code != ErrorCode.OK:
            assert outcome.cycles < 16, f"{name}: a fault took {outcome.cycles} cycles"
    for n in range(tb.command_count // 2):
        near = lambda: int(rng.integers(0, tb.size + 64))
        f = {"op": RedOp(int(rng.integers(2))), "a_dtype": DType(int(rng.integers(2))),
             "a": near() if rng.random() < 0.9 else int(rng.integers(0, 1 << 24)),
             "dst": near() if rng.random() < 0.9 else int(rng.integers(0, 1 << 24)),
             "lda": int(rng.integers(0, 24)), "rows": int(rng.integers(0, 3 * tb.cols)),
             "cols": int(rng.integers(0, 24))}
        await tb.reduce(f, f"reduce fuzz #{n}")


def timing_shapes(rows, cols, sram_bytes, panel_depth):
    """``(name, fields)`` of SRAM-resident MATMULs for the cycle report: M, N, K from one tile
    up to 8x the array, every layout, acc, bf16 C, and K past the panel buffer (both operands
    streamed) where that fits in SRAM."""
    shapes = []
    R, C = rows, cols

    def add(name, m, n, k, *, a_trans=0, b_trans=0, acc=0, c_dtype=DType.FP32):
        a_rows, a_cols = (k, m) if a_trans else (m, k)
        b_rows, b_cols = (n, k) if b_trans else (k, n)
        a = 0
        b = a + 2 * a_rows * a_cols
        b += -b % 64
        c = b + 2 * b_rows * b_cols
        c += -c % 64
        if c + (2 if c_dtype == DType.BF16 else 4) * m * n > sram_bytes:
            return
        shapes.append((name, dict(a=a, lda=a_cols, b=b, ldb=b_cols, c=c, ldc=n, a_trans=a_trans,
                                  b_trans=b_trans, acc=acc, c_dtype=c_dtype, m=m, n=n, k=k)))

    add("one tile, K = R", R, C, R)
    add("one tile, K = 4R", R, C, 4 * R)
    for at, bt in ((0, 0), (0, 1), (1, 0), (1, 1)):
        add(f"4x array, A{'T' if at else ''} B{'T' if bt else ''}", 4 * R, 4 * C, 4 * R,
            a_trans=at, b_trans=bt)
    add("4x array, acc", 4 * R, 4 * C, 4 * R, acc=1)
    add("4x array, bf16 C", 4 * R, 4 * C, 4 * R, c_dtype=DType.BF16)
    add("4x array, K = 8R", 4 * R, 4 * C, 8 * R)
    add("ragged 4x+1", 4 * R + 1, 4 * C + 1, 4 * R + 1)
    add("8x array, bf16 C", 8 * R, 8 * C, 8 * R, c_dtype=DType.BF16)
    add("8x array, AT B, bf16 C", 8 * R, 8 * C, 8 * R, a_trans=1, c_dtype=DType.BF16)
    add(f"K > panel ({panel_depth}), streamed", 4 * R, 4 * C, panel_depth + 4)
    return shapes


def reduce_timing_shapes(lanes, sram_bytes):
    """``(name, fields)`` of REDUCEs for the cycle report (dense rows, 64-byte aligned)."""
    shapes = []
    for rows, cols, dtype, op in ((lanes, 8, DType.FP32, RedOp.SUM),
                                  (4 * lanes, 64, DType.FP32, RedOp.SUM),
                                  (4 * lanes, 64, DType.BF16, RedOp.MAX),
                                  (4 * lanes, 256, DType.BF16, RedOp.SUM)):
        es = 4 if dtype == DType.FP32 else 2
        dst = rows * cols * es
        dst += -dst % 64
        if dst + 4 * rows <= sram_bytes:
            shapes.append((f"REDUCE {op.name} {'bf16' if es == 2 else 'fp32'}",
                           dict(op=op, dst=dst, a=0, lda=cols, a_dtype=dtype, rows=rows,
                                cols=cols)))
    return shapes


@cocotb.test(**TIMEOUT)
async def matmul_timing(dut):
    """Cycles per command for a set of SRAM-resident shapes, against the functional model's
    estimate (``timing.compute_cycles``), and utilisation: M N K / (R C) / cycles for MATMUL,
    rows cols / lanes / cycles for REDUCE. The results are checked bit for bit like every
    other command."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(6)
    await tb.load(tb.random_image(rng))
    rows = []
    for name, f in timing_shapes(tb.rows, tb.cols, tb.size, tb.panel_depth):
        outcome = await tb.matmul(f, name)
        assert outcome.error == ErrorCode.OK
        ideal = f["m"] * f["n"] * f["k"] / (tb.rows * tb.cols)
        model = timing.compute_cycles(tb.params, "MATMUL", f)
        rows.append(dict(name=name, m=f["m"], n=f["n"], k=f["k"], cycles=outcome.cycles,
                         model=model, utilisation=ideal / outcome.cycles,
                         ratio=outcome.cycles / model))
        tb.log.info("%-26s M=%3d N=%3d K=%3d: %6d cycles (model %6d, x%.2f), utilisation "
                    "%.1f %%", name, f["m"], f["n"], f["k"], outcome.cycles, model,
                    outcome.cycles / model, 100 * ideal / outcome.cycles)
    for name, f in reduce_timing_shapes(tb.cols, tb.size):
        outcome = await tb.reduce(f, name)
        assert outcome.error == ErrorCode.OK
        ideal = f["rows"] * f["cols"] / tb.cols
        model = timing.compute_cycles(tb.params, "REDUCE", f)
        rows.append(dict(name=name, m=f["rows"], n=1, k=f["cols"], cycles=outcome.cycles,
                         model=model, utilisation=ideal / outcome.cycles,
                         ratio=outcome.cycles / model))
        tb.log.info("%-26s rows=%3d cols=%3d: %6d cycles (model %6d, x%.2f), lane "
                    "utilisation %.1f %%", name, f["rows"], f["cols"], outcome.cycles, model,
                    outcome.cycles / model, 100 * ideal / outcome.cycles)
    report = os.environ.get("NE_TILE_REPORT")
    if report:
        Path(report).write_text(json.dumps({"params": tb.params.as_dict(), "shapes": rows},
                                           indent=1))
    # The functional model's timing is fitted to these counts: within 5 % for MATMULs of 4x
    # the array and up (ragged ones included) and for long REDUCEs.
    calibrated = [r for r in rows if (r["m"] >= 4 * tb.rows and r["n"] >= 4 * tb.cols
                                      and r["k"] >= 4 * tb.rows) or r["name"].startswith("ragged")
                  or (r["name"].startswith("REDUCE") and r["k"] >= 64)]
    off = [f"{r['name']}: {r['cycles']} cycles, model {r['model']}" for r in calibrated
           if abs(r["ratio"] - 1) > 0.05]
    assert calibrated and not off, "the timing model is off by more than 5 %:\n" + "\n".join(off)
