"""Driving the NE tile (``hw/ne/tile.py``) in co-simulation, shared by its tests and benchmarks.

The tile's RTL tests (``tests/hw/ne_tile_tb.py``) and the GEMM benchmark
(``cosim/gemm_bench_tb.py``, ``npusim bench gemm``) drive the same ports the same way, so the
parts that do not decide what to test live here:

* :class:`NeTileHarness`, the design they simulate: the tile with its ``dma`` port re-exposed
  as plain top-level streams;
* :func:`command_payload`, a resolved compute command as the ``cmd`` payload, and
  :func:`fm_run`, the same command on the functional model (the oracle);
* :class:`NeTileDriver`, the cocotb coroutines: clock and reset, loading and reading back the
  whole SRAM through ``dma`` (with optional pauses), one command with its ``done`` beat, and
  one command checked against the oracle (:meth:`NeTileDriver.checked`);
* the pause generators :func:`never` and :func:`random_pauses`.

The driver takes the :class:`~npusim.sw.params.HwParams` the design was built with
explicitly; how a testbench learns them (environment variables, a JSON file) is its own
business. Every wait is bounded: a hung tile fails the test instead of stalling it.
"""

import itertools
import random
import time
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, with_timeout

from ..hw.isa import COMPUTE_COMMANDS, ComputeCommand, Opcode, resolved_layout
from ..hw.ne.tile import NeTile, done_layout
from ..firmware.microcode import PROGRAMS
from ..sw.fm import compute
from ..sw.fm.fault import DeviceFault
from ..sw.fm.memory import DenseMemory
from ..sw.isa.enums import ErrorCode

__all__ = ["NeTileDriver", "NeTileHarness", "Outcome", "command_payload", "fm_run", "never",
           "random_pauses"]


# -- The design under test ---------------------------------------------------------------------

class NeTileHarness(wiring.Component):
    """:class:`NeTile` with its ``dma`` port as three plain streams: ``dma_rd_addr`` (in),
    ``dma_rd_data`` (out: ``payload`` and ``valid``, always taken) and ``dma_wr`` (in).

    Needed because the scratchpad port's always-ready read data carries a constant ``ready``,
    which cannot be a top-level port."""

    def __init__(self, params, **options):
        self.tile = NeTile(params, **options)
        port = self.tile.dma.signature.flip()  # the requester's view
        rd_addr = port.members["rd_addr"].signature
        wr = port.members["wr"].signature
        super().__init__({
            "cmd": In(stream.Signature(ComputeCommand)),
            "done": Out(stream.Signature(done_layout)),
            "dma_rd_addr": In(rd_addr),
            "dma_rd_data": Out(8 * params.sram_bytes_per_cycle),
            "dma_rd_valid": Out(1),
            "dma_wr": In(wr),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tile = tile = self.tile
        wiring.connect(m, wiring.flipped(self.cmd), tile.cmd)
        wiring.connect(m, tile.done, wiring.flipped(self.done))
        wiring.connect(m, wiring.flipped(self.dma_rd_addr), tile.dma.rd_addr)
        wiring.connect(m, wiring.flipped(self.dma_wr), tile.dma.wr)
        m.d.comb += [self.dma_rd_data.eq(tile.dma.rd_data.payload),
                     self.dma_rd_valid.eq(tile.dma.rd_data.valid)]
        return m


# -- Commands and the oracle -------------------------------------------------------------------

def _resolved_fields(name, fields):
    """Every field of resolved command ``name`` as an int (missing ones 0), so the tile and
    the model see the same command; an unknown field name is a mistake, not a 0."""
    if name not in COMPUTE_COMMANDS:
        raise ValueError(f"{name!r} is not a compute command ({', '.join(COMPUTE_COMMANDS)})")
    names = [member for member, _ in resolved_layout(name)]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"{name} has no field {', '.join(map(repr, unknown))}; "
                         f"its fields are {', '.join(names)}")
    return {member: int(fields.get(member, 0)) for member in names}


def command_payload(name, fields):
    """The ``cmd`` payload (an int) of resolved compute command ``name`` ("MATMUL", "VECTOR",
    "REDUCE" or "MASK") with ``fields`` (missing fields are 0)."""
    args = _resolved_fields(name, fields)
    return ComputeCommand.const({"opcode": Opcode[name],
                                 "args": {name.lower(): args}}).as_value().value


def fm_run(image, name, fields):
    """Run compute command ``name`` on the functional model over a copy of SRAM ``image``:
    ``(error code, memory after)``, the code ``OK`` when the model raises no fault."""
    sram = DenseMemory(len(image))
    sram.data[:] = image
    try:
        getattr(compute, name.lower())(sram, _resolved_fields(name, fields))
    except DeviceFault as fault:
        return fault.code, sram.data
    return ErrorCode.OK, sram.data


# -- Pause generators (alexforencich style) ----------------------------------------------------

def never():
    """A pause generator that never pauses."""
    return itertools.repeat(False)


def random_pauses(rng, busy):
    """Pauses with a probability that changes every few dozen cycles (between 0 and ``busy``),
    so both long stalls and sparse bubbles occur. ``rng`` is a :class:`random.Random`."""
    while True:
        probability = rng.choice([0.0, 0.1, 0.3, busy])
        for _ in range(rng.randint(8, 64)):
            yield rng.random() < probability


# -- The driver --------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one command did on the tile: its ``done`` beat and the wall-clock seconds the
    simulation took for it."""
    error: ErrorCode
    cycles: int
    wall: float = 0.0
    extra: dict = field(default_factory=dict)


class NeTileDriver:
    """The cocotb side of :class:`NeTileHarness` built with ``params``: clock, reset, the
    ``dma`` port (whole-SRAM load and read-back) and the ``cmd``/``done`` ports.

    ``image`` is what SRAM holds as far as the driver knows: what :meth:`load` wrote (keeping
    it current after commands is the caller's job, from :func:`fm_run`). ``seed`` seeds the
    addresses of background reads."""

    def __init__(self, dut, params, *, seed=1):
        self.dut = dut
        self.params = params
        self.rows, self.cols = params.array_rows, params.array_cols
        self.size, self.word_bytes = params.sram_bytes, params.sram_bytes_per_cycle
        self.words = self.size // self.word_bytes
        self.addr_bits = (self.words - 1).bit_length()
        self.seed = seed
        self.image = np.zeros(self.size, np.uint8)
        self.log = dut._log
        self._error_bits = done_layout["error"].width
        self._cycles_at = done_layout["cycles"].offset

    async def reset(self):
        """Start the clock (10 ns) and hold reset for 3 cycles, every input idle."""
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        dut.cmd__valid.value = 0
        dut.done__ready.value = 1
        dut.dma_rd_addr__valid.value = 0
        dut.dma_wr__valid.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await FallingEdge(dut.clk)

    # -- dma port ------------------------------------------------------------------------------

    async def load(self, image, pauses=None):
        """Write ``image`` (the whole SRAM) through ``dma`` with full byte masks, pausing
        ``valid`` when ``pauses`` (a pause generator) says so."""
        dut, wb = self.dut, self.word_bytes
        pauses = pauses or never()
        image = np.asarray(image, np.uint8)
        mask = (1 << wb) - 1
        payloads = [w | (int.from_bytes(image[w * wb:(w + 1) * wb].tobytes(), "little")
                         << self.addr_bits) | (mask << (self.addr_bits + 8 * wb))
                    for w in range(self.words)]
        sent, shown = 0, False
        for _ in range(20 * self.words + 100):
            await FallingEdge(dut.clk)
            if not shown and sent < self.words and not next(pauses):
                dut.dma_wr__payload.value = payloads[sent]
                shown = True
            dut.dma_wr__valid.value = int(shown)
            await ReadOnly()
            if shown and dut.dma_wr__ready.value:
                sent += 1
                shown = False
            if sent == self.words:
                break
        else:
            raise AssertionError(f"load: {sent} of {self.words} words written")
        await FallingEdge(dut.clk)
        dut.dma_wr__valid.value = 0
        self.image = image.copy()

    async def dump(self, pauses=None):
        """Read the whole SRAM through ``dma`` (a uint8 array), pausing requests when
        ``pauses`` says so."""
        dut, wb = self.dut, self.word_bytes
        pauses = pauses or never()
        words = []
        asked, shown = 0, False
        for _ in range(20 * self.words + 100):
            await FallingEdge(dut.clk)
            if not shown and asked < self.words and not next(pauses):
                dut.dma_rd_addr__payload.value = asked
                shown = True
            dut.dma_rd_addr__valid.value = int(shown)
            await ReadOnly()
            if dut.dma_rd_valid.value:
                words.append(dut.dma_rd_data.value.to_unsigned())
            if shown and dut.dma_rd_addr__ready.value:
                asked += 1
                shown = False
            if len(words) == self.words:
                break
        else:
            raise AssertionError(f"dump: {len(words)} of {self.words} words read")
        await FallingEdge(dut.clk)
        dut.dma_rd_addr__valid.value = 0
        return np.frombuffer(b"".join(w.to_bytes(wb, "little") for w in words), np.uint8)

    # -- cmd and done ----------------------------------------------------------------------------

    async def command(self, payload, budget, *, background_reads=None):
        """Send one command (a :func:`command_payload`) and wait at most ``budget`` cycles for
        its ``done`` beat. Without ``background_reads`` Python sleeps until ``done`` (one
        wake-up per command, so ``wall`` is simulation time); with it (a pause generator),
        random ``dma`` reads run meanwhile, one Python step per cycle."""
        dut = self.dut
        started = time.perf_counter()
        await FallingEdge(dut.clk)
        dut.cmd__payload.value = payload
        dut.cmd__valid.value = 1
        await ReadOnly()
        if not dut.cmd__ready.value:
            raise AssertionError("the tile is not idle")
        await FallingEdge(dut.clk)
        dut.cmd__valid.value = 0
        if background_reads is None:
            await ReadOnly()
            if not dut.done__valid.value:
                await with_timeout(RisingEdge(dut.done__valid), 10 * budget + 1000, "ns")
                await ReadOnly()
        else:
            rng = random.Random(self.seed)
            for _ in range(budget):
                reading = not next(background_reads)
                dut.dma_rd_addr__payload.value = rng.randrange(self.words)
                dut.dma_rd_addr__valid.value = int(reading)
                await ReadOnly()
                if dut.done__valid.value:
                    break
                await FallingEdge(dut.clk)
            else:
                raise AssertionError(f"no done within {budget} cycles")
        if not dut.done__valid.value:
            raise AssertionError("done__valid is low")
        value = dut.done__payload.value.to_unsigned()
        await FallingEdge(dut.clk)
        dut.dma_rd_addr__valid.value = 0
        return Outcome(error=ErrorCode(value & ((1 << self._error_bits) - 1)),
                       cycles=value >> self._cycles_at, wall=time.perf_counter() - started)

    # -- against the oracle ----------------------------------------------------------------------

    def budget(self, name, f):
        """A generous cycle budget for compute command ``name`` with fields ``f``: a hang
        fails the test instead of stalling it, a slow but finishing command passes."""
        R, C = self.rows, self.cols
        if name == "MATMUL":
            tiles = -(-f["m"] // R) * -(-f["n"] // C)
            return 8 * tiles * (f["k"] + 4 * (R + C) + 20) + 1000
        if name == "REDUCE":
            return 8 * -(-f["rows"] // C) * (max(f["cols"], 1) + 40) + 1000
        longest = max(len(program) for program in PROGRAMS.values())  # VECTOR, MASK
        return 8 * (f.get("rows", 0) + 1) * (f.get("cols", 0) // C + 1) * longest + 2000

    async def checked(self, name, f, label, *, background_reads=None, dump_pauses=None,
                      check_memory=True, locate=None):
        """Run compute command ``name`` (fields ``f``) on the tile and on the functional model
        over :attr:`image`: the error codes must be equal and (with ``check_memory``) the
        whole SRAM, read back through ``dma``, equal to the model's memory bit for bit.
        :attr:`image` becomes the model's memory. ``locate(bad_bytes)`` may say in words
        where differing bytes are. Returns the :class:`Outcome`."""
        expected_error, expected_image = fm_run(self.image, name, f)
        outcome = await self.command(command_payload(name, f), self.budget(name, f),
                                     background_reads=background_reads)
        if outcome.error != expected_error:
            raise AssertionError(f"{label}: error {outcome.error.name}, the model says "
                                 f"{expected_error.name}")
        self.image = expected_image.copy()
        if check_memory:
            await self.check_memory(label, pauses=dump_pauses, locate=locate)
        return outcome

    async def check_memory(self, label, pauses=None, locate=None):
        """Read SRAM back and compare it with :attr:`image` (``locate``: as in
        :meth:`checked`)."""
        got = await self.dump(pauses)
        bad = np.flatnonzero(got != self.image)
        if len(bad):
            lines = [f"  byte {int(i):#06x}: got {int(got[i]):#04x}, expected "
                     f"{int(self.image[i]):#04x}" for i in bad[:12]]
            if locate is not None:
                lines.append("  " + locate(bad))
            raise AssertionError(f"{label}: {len(bad)} SRAM bytes differ (seed "
                                 f"{self.seed}):\n" + "\n".join(lines))
