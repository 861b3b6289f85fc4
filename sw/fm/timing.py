"""Cycle-approximate cost of each engine command, from :class:`~npusim.sw.params.HwParams`.

The NE-tile commands follow the RTL's structure (beats, scratchpad reads, fill and drain), with
constants fitted to its cycle counts: within 5 % for MATMULs of 4x the array and up and for
elementwise commands (checked by tests/hw/test_ne_tile.py). DMA costs and the command
processor's are fitted to the device RTL with its DRAM model (``tests/hw/test_device_timing.py``:
within 5 % for transfers of 1 KiB and more); link costs are first estimates until the link RTL
exists.
"""

from math import ceil

from ...firmware.microcode import microcode_length
from ..isa.enums import DType, Space, VBMode, VectorOp
from ..numerics import OPERANDS

__all__ = ["dma_cycles", "dram_bursts", "compute_cycles", "link_efficiency"]


def link_efficiency(p):
    """Payload fraction of the raw lane bandwidth for max-payload TLPs."""
    return p.link_max_payload / (p.link_max_payload + p.link_tlp_overhead)


def _bandwidth(p, space):
    if space == Space.SRAM:
        return p.sram_bytes_per_cycle
    if space == Space.DRAM:
        return p.dram_bytes_per_cycle
    return p.link_bytes_per_cycle * link_efficiency(p)


def _latency(p, src, dst):
    """Read latency of the source (to the first beat) plus the write-response latency of the
    destination (after the last beat): the DMA engine is done when every write is answered."""
    lat = {Space.SRAM: 1, Space.DRAM: p.dram_latency, Space.LINK: 2 * p.link_latency}[src]
    lat += {Space.SRAM: 0, Space.DRAM: p.dram_latency, Space.LINK: p.link_latency}[dst]
    return lat


def dram_bursts(p, addr, n):
    """DRAM bursts of a DMA row of ``n`` bytes at ``addr``: its beats split at multiples of
    ``dma_burst_beats``."""
    word, burst = p.dram_bytes_per_cycle, p.dma_burst_beats
    first, end = addr // word, -(-(addr + n) // word)
    return -(-end // burst) - first // burst


def dma_cycles(p, src_space, dst_space, rows, row_bytes, *, src_offset=0, dst_offset=0,
               bursts=None, table_entries=None):
    """A DMA moving ``rows`` rows of ``row_bytes`` each, from dispatch to its last write
    answered (fitted to the RTL's DMA engine with its DRAM model, ``docs/hw/dma.md``,
    "Timing")::

        dma_setup + source read latency + destination write latency
            + max(rows * (beats + dma_row_overhead),
                  (bursts * dram_latency + rows * beats) / dram_outstanding)

    A row's ``beats`` are the larger of its source and destination beats (from the offsets of
    ``src_offset`` and ``dst_offset`` in the word). The second term is the DRAM port's bound
    when rows are short: at most ``dram_outstanding`` bursts in flight, each pending for the
    latency and its beats. ``bursts``: the DRAM bursts of the side with more (by default each
    row's beats split at multiples of ``dma_burst_beats`` from a random start).
    ``table_entries``: a gather or scatter, whose block table (or slot mapping) is read twice,
    once for the checks and once for the rows: two DRAM latencies, ``dma_table_overhead`` and
    a cycle per entry.
    """
    cycles = p.dma_setup
    if table_entries is not None:
        cycles += 2 * p.dram_latency + p.dma_table_overhead + table_entries
    if rows == 0 or row_bytes == 0:
        return cycles
    bw = min(_bandwidth(p, src_space), _bandwidth(p, dst_space))
    word = p.dram_bytes_per_cycle
    beats = max(ceil((src_offset % word + row_bytes) / bw),
                ceil((dst_offset % word + row_bytes) / bw))
    stream = rows * (beats + p.dma_row_overhead)
    if Space.DRAM in (src_space, dst_space):
        if bursts is None:
            bursts = rows * (1 + (beats - 1) / p.dma_burst_beats)
        stream = max(stream, (bursts * p.dram_latency + rows * beats) / p.dram_outstanding)
    return round(cycles + _latency(p, src_space, dst_space) + stream)


def _matmul_cycles(p, c):
    """MATMUL on the NE tile, as the RTL runs it (``hw/ne/tile.py``): one beat per cycle per
    k-step of every output tile (at least R per tile: one result row per cycle), unless the
    scratchpad's one read per cycle is the bound (over the command, or in the first tile,
    whose operands all stream in while it computes), plus fill and drain."""
    R, C, WB = p.array_rows, p.array_cols, p.sram_bytes_per_cycle
    tm, tn = ceil(c["m"] / R), ceil(c["n"] / C)
    tiles = tm * tn
    if tiles == 0:
        return 2
    k = max(c["k"], 1)
    group_size = p.group_tiles
    panel = c["k"] <= p.panel_depth
    group = panel and not c["b_trans"] and group_size > 1

    def run_words(length, addr, stride):
        """Words a run of ``length`` bytes touches: exact when runs start on word boundaries,
        else on average half a word more."""
        if addr % WB == 0 and stride % WB == 0:
            return ceil(length / WB)
        return ceil((length + WB // 2) / WB)

    def segment_words(lanes, contiguous_along_lanes, addr, ld):
        if contiguous_along_lanes:            # a run of `lanes` elements per k-step
            return k * run_words(2 * lanes, addr, 2 * ld)
        return lanes * run_words(2 * k, addr, 2 * ld)   # a run of k elements per lane

    a_words = segment_words(R, c["a_trans"], c["a"], c["lda"])
    b_words = segment_words(group_size * C if group else C, not c["b_trans"], c["b"], c["ldb"])
    if not panel:                        # both operands streamed per tile
        a_segments = b_segments = tiles
    elif not c["a_trans"]:               # B's panel per column line (of groups)
        lines = ceil(tn / group_size) if group else tn
        a_segments, b_segments = tm * lines, lines
    else:                                # A's panel per row line
        a_segments = tm
        b_segments = tm * ceil(tn / group_size) if group else tiles
    c_words = R * run_words(4 * C, c["c"], 4 * c["ldc"]) if c["acc"] else 0   # acc: C's rows
    reads = a_segments * a_words + b_segments * b_words + tiles * c_words
    beats = tiles * max(k, R)
    first_tile = a_words + b_words + c_words
    return round(p.matmul_overhead + p.matmul_fill_per_edge * (R + C)
                 + max(beats + max(0, first_tile - k), reads))


def _elementwise_cycles(p, c, uops, streams, row_b=False):
    """VECTOR or MASK: one beat per row of each C-column block, each beat as long as its
    micro-ops or its operand reads (a C-wide row of a, and of each other streamed operand),
    plus b's column once per block in ROW mode."""
    rows, cols, C, WB = c["rows"], c["cols"], p.vector_lanes, p.sram_bytes_per_cycle
    blocks = ceil(cols / C)
    es_a = 2 if c.get("a_dtype") == DType.BF16 else 4
    reads_per_beat = ceil(C * es_a / WB) + streams * ceil(4 * C / WB)
    column = blocks * ceil(4 * rows / WB) if row_b else 0
    return p.vector_overhead + rows * blocks * max(uops, reads_per_beat) + column


def compute_cycles(p, name, c):
    """An NE-tile command with resolved fields ``c``."""
    if name == "MATMUL":
        return _matmul_cycles(p, c)
    if name == "VECTOR":
        op = VectorOp(c["op"])
        reads_b = OPERANDS[op] > 1
        streams = int(reads_b and c["b_mode"] == VBMode.TILE) + int(op == VectorOp.SELECT)
        return _elementwise_cycles(p, c, microcode_length(op), streams,
                                   row_b=reads_b and c["b_mode"] == VBMode.ROW)
    if name == "REDUCE":
        # per block of `lanes` rows: a beat per column, and the lanes' first words (fitted:
        # lanes x element bytes / 8 cycles)
        es = 2 if c["a_dtype"] == DType.BF16 else 4
        block = c["cols"] + ceil(p.vector_lanes * es / 8)
        return ceil(c["rows"] / p.vector_lanes) * block + p.vector_overhead
    if name == "MASK":
        return _elementwise_cycles(p, c, 1, 0)
    raise KeyError(name)
