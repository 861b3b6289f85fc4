"""cocotb testbench for the systolic matrix unit (``hw/ne/systolic.py``), run by
``test_systolic.py`` through :func:`npusim.cosim.verilator_flow.run`.

The :class:`TB` owns the clock, the reset, the three stream ports (``feed`` and ``init``
sources, a ``result`` sink, each with an optional pause generator) and the checks: every
result row is compared bit for bit with :func:`npusim.sw.numerics.matmul_bf16`, and the
stream rules of ``result`` (payload stable and valid held until accepted) are checked every
cycle. The tile generators (:func:`random_tiles`, ...) and :func:`expected_results` are plain
numpy and are also used by the Amaranth-simulator tests in ``test_systolic.py``.

Python runs once per clock cycle (on the falling edge, where every port of the array is
stable: its ``ready`` and ``valid`` outputs come from registers), so vector counts are modest.

Environment (set by the pytest side):

``SYSTOLIC_TILES``
    Number of tiles in each random test (default 40).
``SYSTOLIC_SEED``
    Seed of the tile generators and pause generators (default 1).
"""

import os
import random
from collections import deque
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from npusim.cosim.ne_tile import never, random_pauses  # shared with the NE tile's driver
from npusim.hw.ne.systolic import SystolicArray
from npusim.sw.numerics import matmul_bf16


# -- Tiles and the golden model ----------------------------------------------------------------

@dataclass
class Tile:
    """One tile: ``K`` feed beats. ``init`` (uint32 [R, C]) makes it a loaded tile;
    ``first=False`` makes it continue the previous tile's accumulators."""
    a: np.ndarray                   # bf16 bits, uint16 [R, K]
    b: np.ndarray                   # bf16 bits, uint16 [K, C]
    init: np.ndarray | None = None  # fp32 bits, uint32 [R, C], or None: start from +0
    first: bool = True

    @property
    def k(self):
        return self.a.shape[1]


def expected_results(tiles):
    """The result of every tile, from the golden model (uint32 [R, C] each)."""
    results = []
    for tile in tiles:
        if tile.init is not None:
            start = tile.init
        elif not tile.first:
            start = results[-1]
        else:
            start = None
        results.append(matmul_bf16(tile.a, tile.b, start))
    return results


#: bf16 values that a tile gets a sprinkling of: zeros of both signs, infinities, NaNs
#: (quiet, signalling, negative), subnormals, the largest finite value.
BF16_SPECIALS = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFFF,
                          0x0001, 0x8001, 0x0040, 0x007F, 0x807F, 0x7F7F, 0xFF7F], np.uint16)
#: fp32 initial-accumulator values used likewise.
FP32_SPECIALS = np.array([0x0000_0000, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000,
                          0x7F80_0001, 0xFFFF_FFFF, 0x0000_0001, 0x807F_FFFF, 0x0040_0000,
                          0x7F7F_FFFF, 0xFF7F_FFFF], np.uint32)


def random_bf16(rng, shape, specials=0.02):
    """bf16 bit patterns: mostly normal numbers of moderate size (sums that round and
    cancel), a few tiny ones (products that underflow into fp32's subnormals or to zero) and
    subnormals, and a ``specials`` share of :data:`BF16_SPECIALS`."""
    sign = rng.integers(0, 2, shape)
    exponent = np.clip(np.rint(rng.normal(127, 10, shape)), 1, 254)
    exponent = np.where(rng.random(shape) < 0.05, rng.integers(0, 40, shape), exponent)
    mantissa = rng.integers(0, 1 << 7, shape)
    bits = (sign << 15) | (exponent.astype(np.int64) << 7) | mantissa
    bits = np.where(rng.random(shape) < specials, rng.choice(BF16_SPECIALS, shape), bits)
    return bits.astype(np.uint16)


def random_fp32(rng, shape, specials=0.05):
    """fp32 bit patterns for initial accumulators, with a ``specials`` share of
    :data:`FP32_SPECIALS`."""
    sign = rng.integers(0, 2, shape)
    exponent = np.clip(np.rint(rng.normal(127, 12, shape)), 1, 254)
    exponent = np.where(rng.random(shape) < 0.05, rng.integers(0, 50, shape), exponent)
    mantissa = rng.integers(0, 1 << 23, shape)
    bits = (sign << 31) | (exponent.astype(np.int64) << 23) | mantissa
    bits = np.where(rng.random(shape) < specials, rng.choice(FP32_SPECIALS, shape), bits)
    return bits.astype(np.uint32)


def random_k(rng, rows, cols):
    """A tile depth: 1, around ``rows``, or up to three times the array's size."""
    size = max(rows, cols)
    choices = [1, 2, max(rows - 1, 1), rows, rows + 1, 2 * size + 3,
               int(rng.integers(1, 3 * size + 1))]
    return int(choices[rng.integers(0, len(choices))])


def random_tiles(rng, rows, cols, count, *, specials=0.02):
    """``count`` random tiles: random K (:func:`random_k`), about a third loaded from
    ``init``, a few continuing the previous tile (no ``first``)."""
    tiles = []
    for n in range(count):
        k = random_k(rng, rows, cols)
        kind = rng.random()
        tiles.append(Tile(
            a=random_bf16(rng, (rows, k), specials),
            b=random_bf16(rng, (k, cols), specials),
            init=random_fp32(rng, (rows, cols)) if kind < 0.35 else None,
            first=not (0.35 <= kind < 0.45 and n > 0),
        ))
    return tiles


def uniform_tiles(rng, rows, cols, count, k, *, load=False):
    """``count`` tiles of depth ``k`` (all loaded from ``init`` if ``load``)."""
    return [Tile(a=random_bf16(rng, (rows, k)), b=random_bf16(rng, (k, cols)),
                 init=random_fp32(rng, (rows, cols)) if load else None)
            for _ in range(count)]


def special_tiles(rng, rows, cols, count):
    """Tiles made mostly of special values: signed zeros (``-0 + -0 = -0``, ``x - x = +0``),
    infinities (``inf - inf``, ``inf * 0``), NaNs, subnormal products."""
    tiles = []
    for _ in range(count):
        k = int(rng.integers(1, 6))
        tiles.append(Tile(
            a=random_bf16(rng, (rows, k), specials=0.6),
            b=random_bf16(rng, (k, cols), specials=0.6),
            init=random_fp32(rng, (rows, cols), specials=0.7) if rng.random() < 0.5 else None,
        ))
    return tiles


# -- Packing payloads ------------------------------------------------------------------------

class Packer:
    """Turns tiles into the integer payloads of the array's ports (bit offsets from the
    array's own layouts)."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        layout = SystolicArray.feed_layout(rows, cols)
        assert layout["a"].offset == 0 and layout["b"].offset == 16 * rows
        self.first = 1 << layout["first"].offset
        self.last = 1 << layout["last"].offset
        self.load = 1 << layout["load"].offset
        assert SystolicArray.row_layout(cols).size == 32 * cols

    def feed_beats(self, tile):
        """The ``K`` feed payloads of ``tile``."""
        words = np.concatenate([tile.a.T, tile.b], axis=1)  # [K, R + C]: a[:, k] then b[k, :]
        width = 2 * (self.rows + self.cols)
        raw = np.ascontiguousarray(words, dtype="<u2").tobytes()
        beats = [int.from_bytes(raw[k * width:(k + 1) * width], "little")
                 for k in range(tile.k)]
        if tile.first:
            beats[0] |= self.first | (self.load if tile.init is not None else 0)
        beats[-1] |= self.last
        return beats

    def rows_of(self, matrix):
        """The ``init``/``result`` payloads of a uint32 [R, C] matrix, row 0 first."""
        raw = np.ascontiguousarray(matrix, dtype="<u4").tobytes()
        width = 4 * self.cols
        return [int.from_bytes(raw[i * width:(i + 1) * width], "little")
                for i in range(matrix.shape[0])]

    def matrix_of(self, payloads):
        """The inverse of :meth:`rows_of` for any number of rows."""
        raw = b"".join(p.to_bytes(4 * self.cols, "little") for p in payloads)
        return np.frombuffer(raw, dtype="<u4").reshape(-1, self.cols).astype(np.uint32)


# -- The testbench -----------------------------------------------------------------------------

@dataclass
class RunStats:
    """What :meth:`TB.run` measured, in clock cycles (cycle 0: the first feed transfer)."""
    last_result: int     # cycle of the last result transfer
    beats: int           # feed beats transferred
    feed_stalls: int     # cycles with feed.valid high and feed.ready low
    first_result: int    # cycle of the first result transfer
    last_feed: int       # cycle of the last feed transfer
    result_gaps: int     # cycles between the first and last result beat with result.valid low


class TB:
    """Drives a :class:`~npusim.hw.ne.systolic.SystolicArray` and checks it against the
    golden model."""

    def __init__(self, dut):
        self.dut = dut
        self.cols = len(dut.init__payload) // 32
        feed_width = len(dut.feed__payload)
        self.rows = (feed_width - 3 - 16 * self.cols) // 16
        assert SystolicArray.feed_layout(self.rows, self.cols).size == feed_width
        self.latency = self.cols + 3  # documented: SystolicArray.latency, docs/hw/systolic.md
        self.seed = int(os.environ.get("SYSTOLIC_SEED", "1"))
        self.tile_count = int(os.environ.get("SYSTOLIC_TILES", "40"))
        self.packer = Packer(self.rows, self.cols)
        self.log = dut._log

    def rng(self, stream):
        """A numpy generator per test, so one test's vector count does not change another's."""
        return np.random.default_rng([self.seed, stream])

    def pause_rng(self, stream):
        return random.Random(self.seed * 1000 + stream)

    async def reset(self, *, start_clock=True):
        if start_clock:
            Clock(self.dut.clk, 10, unit="ns").start()
        self.dut.rst.value = 1
        self.dut.feed__valid.value = 0
        self.dut.init__valid.value = 0
        self.dut.result__ready.value = 0
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await FallingEdge(self.dut.clk)

    async def drive_unchecked(self, tiles, cycles):
        """Offer ``tiles`` on feed and init for ``cycles`` cycles with result not ready, and
        check nothing (the state a reset must clear)."""
        beats = deque(beat for tile in tiles for beat in self.packer.feed_beats(tile))
        init_rows = deque(row for tile in tiles if tile.init is not None
                          for row in self.packer.rows_of(tile.init))
        self.dut.result__ready.value = 0
        for _ in range(cycles):
            if beats:
                self.dut.feed__payload.value = beats[0]
                self.dut.feed__valid.value = 1
                if self.dut.feed__ready.value:
                    beats.popleft()
            else:
                self.dut.feed__valid.value = 0
            if init_rows:
                self.dut.init__payload.value = init_rows[0]
                self.dut.init__valid.value = 1
                if self.dut.init__ready.value:
                    init_rows.popleft()
            else:
                self.dut.init__valid.value = 0
            await FallingEdge(self.dut.clk)

    async def run(self, tiles, *, feed_pauses=None, init_pauses=None, result_pauses=None,
                  chain=False, init_first=False, what="tiles"):
        """Send ``tiles`` through the array and check every result row.

        ``*_pauses`` are pause generators: a feed or init source only starts a new beat when
        its generator says no pause (``valid`` never drops before the transfer); the result
        sink holds ``ready`` low while its generator pauses. With ``chain``, every tile is
        loaded and only the first tile's ``init`` is sent up front: each later tile's initial
        rows are the previous tile's results, sent as they arrive (so the init stream depends
        on the result stream). With ``init_first``, the feed source starts only once the
        first loaded tile's initial rows are all accepted (so that tile does not wait for
        them). Returns the :class:`RunStats`.
        """
        dut, packer, rows = self.dut, self.packer, self.rows
        feed_pauses = feed_pauses or never()
        init_pauses = init_pauses or never()
        result_pauses = result_pauses or never()
        if chain:
            assert all(tile.init is not None for tile in tiles)
            expected = []
            for tile in tiles:
                start = tile.init if not expected else expected[-1]
                expected.append(matmul_bf16(tile.a, tile.b, start))
            init_rows = deque(packer.rows_of(tiles[0].init))
        else:
            expected = expected_results(tiles)
            init_rows = deque(row for tile in tiles if tile.init is not None
                              for row in packer.rows_of(tile.init))
        # Initial rows to be accepted before the feed source starts.
        init_lead = rows if init_first and any(t.init is not None for t in tiles) else 0
        beats = deque(beat for tile in tiles for beat in packer.feed_beats(tile))
        total_beats = len(beats)
        wanted = rows * len(tiles)
        received = []
        budget = 20 * (total_beats + wanted) + 20 * self.latency + 2000

        feed_valid = init_valid = False
        result_ready = None
        held = None  # result payload offered but not accepted in the previous cycle
        cycle = -1   # becomes 0 at the first feed transfer
        started = False
        stats = {"feed_stalls": 0, "first_result": None, "last_feed": None}
        last_result = None
        for _ in range(budget):
            # Falling edge: the array's outputs are stable until the next rising edge, and what
            # is written here is what that edge samples.
            if started:
                cycle += 1

            # -- result sink
            ready = not next(result_pauses)
            if ready != result_ready:
                dut.result__ready.value = int(ready)
                result_ready = ready
            if dut.result__valid.value:
                payload = dut.result__payload.value.to_unsigned()
                if held is not None and payload != held:
                    raise AssertionError(f"result payload changed while waiting for ready "
                                         f"(cycle {cycle})")
                if ready:
                    received.append(payload)
                    if stats["first_result"] is None:
                        stats["first_result"] = cycle
                    last_result = cycle
                    held = None
                    if chain and len(received) <= wanted - rows:
                        init_rows.append(payload)  # tile n's results are tile n+1's init
                else:
                    held = payload
            elif held is not None:
                raise AssertionError(f"result valid dropped before the transfer (cycle {cycle})")

            # -- feed source
            if not feed_valid and beats and not init_lead and not next(feed_pauses):
                dut.feed__payload.value = beats.popleft()
                dut.feed__valid.value = 1
                feed_valid = True
            elif not feed_valid:
                dut.feed__valid.value = 0
            if feed_valid:
                if dut.feed__ready.value:
                    if not started:
                        started, cycle = True, 0
                    stats["last_feed"] = cycle
                    feed_valid = False
                elif started:
                    stats["feed_stalls"] += 1

            # -- init source
            if not init_valid and init_rows and not next(init_pauses):
                dut.init__payload.value = init_rows.popleft()
                dut.init__valid.value = 1
                init_valid = True
            elif not init_valid:
                dut.init__valid.value = 0
            if init_valid and dut.init__ready.value:
                init_valid = False
                init_lead = max(init_lead - 1, 0)

            if len(received) == wanted:
                break
            await FallingEdge(dut.clk)
        else:
            raise AssertionError(
                f"{what}: timed out after {budget} cycles with {len(received)} of {wanted} "
                f"result rows, {total_beats - len(beats)} of {total_beats} feed beats sent "
                f"(SYSTOLIC_SEED={self.seed})")

        # Nothing more may come out.
        dut.result__ready.value = 1
        for _ in range(self.latency + rows + 8):
            await FallingEdge(dut.clk)
            if dut.result__valid.value:
                raise AssertionError(f"{what}: a result row beyond the {wanted} expected")
        dut.feed__valid.value = 0
        dut.init__valid.value = 0
        self.check(what, tiles, expected, packer.matrix_of(received))
        return RunStats(last_result=last_result, beats=total_beats, last_feed=stats["last_feed"],
                        feed_stalls=stats["feed_stalls"], first_result=stats["first_result"],
                        result_gaps=(last_result - stats["first_result"] + 1) - wanted)

    def check(self, what, tiles, expected, got):
        """Compare the received rows with the golden results; report the first mismatches."""
        rows = self.rows
        bad = []
        for n, tile in enumerate(tiles):
            block = got[n * rows:(n + 1) * rows]
            for i, j in np.argwhere(block != expected[n]):
                bad.append(f"  tile {n} (K={tile.k}, load={tile.init is not None}, "
                           f"first={tile.first}) C[{i}][{j}]: got 0x{int(block[i, j]):08X}, "
                           f"expected 0x{int(expected[n][i, j]):08X}")
        if bad:
            raise AssertionError(f"{what}: {len(bad)} result values differ "
                                 f"(SYSTOLIC_SEED={self.seed}); first ten:\n"
                                 + "\n".join(bad[:10]))
        self.log.info("%s: %d tiles, %d result rows bit-exact", what, len(tiles), len(got))


def stalls(tb, stream):
    """Pause generators for all three ports (distinct streams of one seed)."""
    return {"feed_pauses": random_pauses(tb.pause_rng(stream), 0.6),
            "init_pauses": random_pauses(tb.pause_rng(stream + 1), 0.6),
            "result_pauses": random_pauses(tb.pause_rng(stream + 2), 0.8)}


# -- Tests -------------------------------------------------------------------------------------

TIMEOUT = {"timeout_time": 50, "timeout_unit": "ms"}  # simulated time: 5M cycles


@cocotb.test(**TIMEOUT)
async def random_tiles_free(dut):
    """Random tiles (K from 1 to 3x the array, loaded, +0 and continued), no stalls."""
    tb = TB(dut)
    await tb.reset()
    tiles = random_tiles(tb.rng(1), tb.rows, tb.cols, tb.tile_count)
    await tb.run(tiles, what="random tiles")


@cocotb.test(**TIMEOUT)
async def random_tiles_stalled(dut):
    """The same kind of tiles with random gaps on feed and init and back-pressure on result."""
    tb = TB(dut)
    await tb.reset()
    tiles = random_tiles(tb.rng(2), tb.rows, tb.cols, tb.tile_count)
    await tb.run(tiles, what="random tiles, stalls", **stalls(tb, 10))


@cocotb.test(**TIMEOUT)
async def special_values(dut):
    """Tiles made mostly of signed zeros, infinities, NaNs and subnormals, with and
    without stalls."""
    tb = TB(dut)
    await tb.reset()
    count = max(tb.tile_count // 2, 4)
    await tb.run(special_tiles(tb.rng(3), tb.rows, tb.cols, count), what="special values")
    await tb.run(special_tiles(tb.rng(4), tb.rows, tb.cols, count),
                 what="special values, stalls", **stalls(tb, 20))


@cocotb.test(**TIMEOUT)
async def chained_init(dut):
    """Each tile loads the previous tile's results, sent on init only as they come out of
    result: a loaded tile waits for its rows without stalling the tiles ahead of it."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(5)
    tiles = [Tile(a=random_bf16(rng, (tb.rows, k)), b=random_bf16(rng, (k, tb.cols)),
                  init=random_fp32(rng, (tb.rows, tb.cols)))
             for k in (1, tb.rows, 3, 2 * tb.rows + 1, 1, 1, tb.rows + 2)]
    await tb.run(tiles, chain=True, what="chained init")
    await tb.run(tiles, chain=True, what="chained init, stalls", **stalls(tb, 30))


@cocotb.test(**TIMEOUT)
async def reset_clears(dut):
    """A reset in the middle of tiles (results waiting, initial rows queued, tiles in the
    array) leaves nothing behind: the next tiles come out alone and right."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(9)
    for cycles in (tb.rows + 2, 3 * tb.rows + 10):
        await tb.drive_unchecked(random_tiles(rng, tb.rows, tb.cols, 8), cycles)
        await tb.reset(start_clock=False)
        await tb.run(random_tiles(rng, tb.rows, tb.cols, 6), what=f"after reset ({cycles})")


@cocotb.test(**TIMEOUT)
async def latency(dut):
    """A lone tile's first result beat is valid `latency` (cols + 3) cycles after its last
    feed beat is accepted (a loaded tile's initial rows sent ahead)."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(6)
    for k in (1, 5, 2 * tb.rows):
        for load in (False, True):
            stats = await tb.run(uniform_tiles(rng, tb.rows, tb.cols, 1, k, load=load),
                                 init_first=True, what=f"latency K={k} load={load}")
            measured = stats.first_result - stats.last_feed
            assert measured == tb.latency, \
                f"K={k} load={load}: latency {measured} cycles, documented {tb.latency}"
    tb.log.info("latency: %d cycles from the last feed beat to the first result beat",
                tb.latency)


@cocotb.test(**TIMEOUT)
async def full_rate(dut):
    """With every port free, back-to-back tiles of K >= rows (loaded or not) go in at one
    feed beat per cycle: no feed stall, and the last result leaves exactly
    N*K + latency + rows - 2 cycles after the first feed beat. (The first tile's initial
    rows are sent ahead: otherwise its first beat waits the `rows` cycles they take.)"""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(7)
    count = 8
    for k, load in ((tb.rows, False), (tb.rows, True), (2 * tb.rows + 3, True),
                    (3 * max(tb.rows, tb.cols), False)):
        tiles = uniform_tiles(rng, tb.rows, tb.cols, count, k, load=load)
        stats = await tb.run(tiles, init_first=True, what=f"full rate K={k} load={load}")
        ideal = count * k
        drain = ideal + tb.latency + tb.rows - 2
        tb.log.info("full rate: %d tiles of K=%d (load=%s): %d feed beats in %d cycles "
                    "(ideal %d); last result row in cycle %d (N*K + latency + rows - 2 = %d); "
                    "%.1f %% of peak MAC rate including fill and drain", count, k, load,
                    stats.beats, stats.last_feed + 1, ideal, stats.last_result, drain,
                    100 * ideal / (stats.last_result + 1))
        assert stats.feed_stalls == 0, f"K={k} load={load}: {stats.feed_stalls} feed stalls"
        assert stats.last_feed + 1 == ideal, stats
        assert stats.last_result == drain, stats


@cocotb.test(**TIMEOUT)
async def short_tiles_saturate_result(dut):
    """Tiles with K < rows are limited by the result port (one row per cycle): with every
    port free the result stream is then valid every cycle, with no gap between tiles."""
    tb = TB(dut)
    await tb.reset()
    rng = tb.rng(8)
    for k in sorted({1, max(tb.rows // 2, 1), max(tb.rows - 1, 1)}):
        count = 8
        stats = await tb.run(uniform_tiles(rng, tb.rows, tb.cols, count, k, load=k == 1),
                             what=f"short tiles K={k}")
        tb.log.info("short tiles: %d tiles of K=%d: last result row in cycle %d, result port "
                    "busy %d of %d cycles", count, k, stats.last_result, count * tb.rows,
                    count * tb.rows + stats.result_gaps)
        assert stats.result_gaps == 0, f"K={k}: {stats.result_gaps} idle result cycles"
