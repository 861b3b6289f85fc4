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
from .dma import extents

__all__ = ["dma_cycles", "dma_segments", "dram_bursts", "compute_cycles", "link_efficiency",
           "link_read_latency", "link_write_arrival",
           "DMA_MERGE_MAX_BYTES", "DMA_TABLE_BUFFER"]

#: The DMA engine merges a gather's or scatter's rows (:func:`dma_segments`) only when a whole
#: block's rows, ``row_bytes << block_log2``, are at most this many bytes (its segment length
#: field).
DMA_MERGE_MAX_BYTES = 1 << 20
#: Table entries (block-table or slot-mapping u32s) the DMA engine buffers: a gather or scatter
#: using at most this many reads its table once, and its reads start as the entries are
#: checked; a longer one reads the table twice (checks, then rows).
DMA_TABLE_BUFFER = 64


def link_efficiency(p):
    """Payload fraction of the raw lane bandwidth for max-payload TLPs."""
    return p.link_max_payload / (p.link_max_payload + p.link_tlp_overhead)


def _bandwidth(p, space):
    if space == Space.SRAM:
        return p.sram_bytes_per_cycle
    if space == Space.DRAM:
        return p.dram_bytes_per_cycle
    return p.link_bytes_per_cycle * link_efficiency(p)


def link_read_latency(p):
    """A link read's first data: the request's trip, the far end's DRAM read, and the
    completion's trip (a max-payload TLP)."""
    return 2 * p.link_latency + p.link_tlp_forward + p.dram_latency


def link_write_arrival(p):
    """From a DMA's last link write being answered (handed on, ``link_post_latency``) to its
    data being in the far end's DRAM: the max-payload TLP's trip and the DRAM write. A posted
    write the same device sends later (a remote signal) arrives no earlier: posted writes stay
    in order."""
    return p.link_latency + p.link_tlp_forward + p.dram_latency


def _latency(p, src, dst, first_burst):
    """Read latency of the source (to the first beat) plus the write-response latency of the
    destination (after the last beat): the DMA engine is done when every write is answered.
    A DRAM write burst leaves only once its ``first_burst`` beats are all buffered (the
    device's write buffer, ``docs/hw/axi.md``), which delays the whole stream by them; a
    posted link write is answered once handed on."""
    lat = {Space.SRAM: 1, Space.DRAM: p.dram_latency, Space.LINK: link_read_latency(p)}[src]
    lat += {Space.SRAM: 0, Space.DRAM: p.dram_latency + first_burst,
            Space.LINK: p.link_post_latency}[dst]
    return lat


def _first_burst(p, dst, n):
    """Beats of the first DRAM burst writing ``n`` bytes at ``dst``: up to the next multiple
    of ``dma_burst_beats``."""
    word, burst = p.dram_bytes_per_cycle, p.dma_burst_beats
    first, end = dst // word, -(-(dst + n) // word)
    return min(end, (first // burst + 1) * burst) - first


def dram_bursts(p, addr, n):
    """DRAM bursts of a DMA row of ``n`` bytes at ``addr``: its beats split at multiples of
    ``dma_burst_beats``."""
    word, burst = p.dram_bytes_per_cycle, p.dma_burst_beats
    first, end = addr // word, -(-(addr + n) // word)
    return -(-end // burst) - first // burst


def _overlap(a, b):
    return a.space == b.space and a.lo < b.lo + b.n and b.lo < a.lo + a.n


def dma_segments(name, c, rows):
    """The segments (``[(src, dst, n)]``) in which the DMA engine moves ``rows`` (the
    :func:`~.dma.copies` of a command, in order): a gather's or scatter's consecutive tokens
    in one block whose rows are contiguous on both sides (``row_stride`` and the linear side's
    stride equal to ``row_bytes``, slots consecutive) go as one segment, unless a block's rows
    exceed :data:`DMA_MERGE_MAX_BYTES` or the read and written extents overlap (the engine then
    moves the rows one at a time); every other row is a segment of its own. Zero-byte rows are
    not moved."""
    segs = [(r.src, r.dst, r.n) for r in rows if r.n]
    if name not in ("DMA_GATHER", "DMA_SCATTER") or not segs:
        return segs
    gather = name == "DMA_GATHER"
    rb, log2b = c["row_bytes"], c["block_log2"]
    lin_stride = c["dst_stride"] if gather else c["src_stride"]
    ext = [e for e in extents(name, c) if e.what != "table"]
    read, written = [e for e in ext if not e.write], [e for e in ext if e.write]
    if (c["row_stride"] != rb or lin_stride != rb or (rb << log2b) > DMA_MERGE_MAX_BYTES
            or any(_overlap(r, w) for r in read for w in written)):
        return segs
    out = []
    for src, dst, n in segs:
        pool = src if gather else dst
        if out:
            s0, d0, n0 = out[-1]
            end = (s0 if gather else d0) + n0
            if pool == end and ((pool - c["pool"]) // rb) & ((1 << log2b) - 1):
                out[-1] = (s0, d0, n0 + n)
                continue
        out.append((src, dst, n))
    return out


def dma_cycles(p, src_space, dst_space, rows, row_bytes, *, src_offset=0, dst_offset=0,
               bursts=None, table_entries=None, segments=None):
    """A DMA moving ``rows`` rows of ``row_bytes`` each (or the ``segments`` ``[(src, dst, n)]``
    of :func:`dma_segments`), from dispatch to its last write answered (fitted to the RTL's DMA
    engine with its DRAM model, ``docs/hw/dma.md``, "Timing")::

        dma_setup + source read latency + destination write latency
            + max(table + max(writes, (bursts * dram_latency + beats) / dram_outstanding),
                  checks + writes)
        writes = beats + segments * dma_row_overhead

    The destination's write latency into DRAM includes the beats of the first burst: the
    device's write buffer holds each burst's address until its data is in.

    A segment's beats are the larger of its source and destination beats (from its offsets in
    the word; with ``rows``, those of ``src_offset`` and ``dst_offset`` for every row), and
    ``beats`` their sum. The second term of the inner ``max`` is the DRAM port's bound when
    segments are short: at most ``dram_outstanding`` bursts in flight, each pending for the
    latency and its beats. ``bursts``: the DRAM bursts of the side with more (by default each
    segment's beats split at multiples of ``dma_burst_beats``; with ``rows`` from a random
    start).

    ``table_entries``: a gather or scatter. Each pass over its table (block table or slot
    mapping) costs ``dram_latency + dma_table_overhead`` and a cycle per entry. With at most
    :data:`DMA_TABLE_BUFFER` entries the table is read once and the reads start with its first
    entry (``table`` = one pass's latency and overhead), while nothing is written before the
    last entry is checked (``checks`` = the entries); a longer table is read twice, checks then
    rows (``table`` = ``checks`` = two passes). A gather or scatter moving nothing costs its
    one checking pass.
    """
    word = p.dram_bytes_per_cycle
    bw = min(_bandwidth(p, src_space), _bandwidth(p, dst_space))
    first_burst = 0
    if segments is not None:
        if segments and dst_space == Space.DRAM:
            first_burst = _first_burst(p, segments[0][1], segments[0][2])
        rows = len(segments)
        beats = sum(max(ceil((s % word + n) / bw), ceil((d % word + n) / bw))
                    for s, d, n in segments)
        if bursts is None:
            bursts = max([sum(dram_bursts(p, seg[side], seg[2]) for seg in segments)
                          for side, space in enumerate((src_space, dst_space))
                          if space == Space.DRAM] or [0])
    elif rows and row_bytes:
        if dst_space == Space.DRAM:
            first_burst = _first_burst(p, dst_offset, row_bytes)
        row_beats = max(ceil((src_offset % word + row_bytes) / bw),
                        ceil((dst_offset % word + row_bytes) / bw))
        beats = rows * row_beats
        if bursts is None:
            bursts = rows * (1 + (row_beats - 1) / p.dma_burst_beats)
    else:
        rows = 0
    table = checks = 0
    if table_entries is not None:
        one_pass = p.dram_latency + p.dma_table_overhead
        if rows == 0:
            return p.dma_setup + (one_pass + table_entries if table_entries else 0)
        if table_entries <= DMA_TABLE_BUFFER:
            table, checks = one_pass, table_entries
        else:
            table = checks = 2 * one_pass + table_entries
    if rows == 0:
        return p.dma_setup
    writes = beats + rows * p.dma_row_overhead
    stream = writes
    if Space.DRAM in (src_space, dst_space):
        stream = max(writes, (bursts * p.dram_latency + beats) / p.dram_outstanding)
    return round(p.dma_setup + _latency(p, src_space, dst_space, first_burst)
                 + max(table + stream, checks + writes))


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
