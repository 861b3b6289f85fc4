"""What a DMA command moves and what it must check first: the one statement of DMA semantics.

A DMA command is checked completely before it moves a byte, in this order (the first failing
check names the error, and the RTL's DMA engine checks in the same order):

1. ``ALIGNMENT``: every address, length and stride operand is a multiple of ``dma_align``;
2. ``BAD_SHAPE``: more than :data:`MAX_DMA_ROWS` rows, or ``ring_rows = 0``;
3. the *extents* of its operands, each the contiguous byte range from its lowest to its
   highest byte (:func:`extents`), in the order table (or slot mapping), pool, source,
   destination: an SRAM extent must end within SRAM (``SRAM_BOUNDS``); a DRAM or link extent
   must lie inside one granted window of its space with the needed permission
   (``DMA_WINDOW``), and a DRAM extent inside DRAM;
4. ``BLOCK_TABLE``: the block-table entries (slot mappings) it uses, in token order, each
   naming a block below ``pool_blocks``.

Extents make the checks a handful of comparisons per command instead of one per row: a
strided copy's extent is ``[base, base + (n2-1) stride2 + (n1-1) stride1 + len)``, a paged
pool's is the whole pool, a ring's the whole ring. A command that moves no bytes (a zero row
length or count) has no extents (a gather or scatter still checks its table entries).
"""

from dataclasses import dataclass

from ..isa.enums import ErrorCode, Space
from .fault import DeviceFault

__all__ = ["MAX_DMA_ROWS", "Extent", "Copy", "extents", "rows", "check_aligned",
           "check_shape", "table_span", "copies"]

#: Rows one DMA command may move; a larger count is BAD_SHAPE (keeps a bad register value from
#: turning into an endless copy).
MAX_DMA_ROWS = 1 << 22


@dataclass(frozen=True)
class Extent:
    """The bytes ``[lo, lo + n)`` of ``space`` an operand touches; ``write`` if it is written."""
    what: str
    space: Space
    lo: int
    n: int
    write: bool


@dataclass(frozen=True)
class Copy:
    """One contiguous row: ``n`` bytes from ``src_space[src]`` to ``dst_space[dst]``."""
    src_space: Space
    src: int
    dst_space: Space
    dst: int
    n: int


def rows(name, c):
    """Rows (contiguous copies) the command moves, and the bytes of each."""
    if name == "DMA_COPY":
        return c["n1"] * c["n2"], c["len"]
    return c["n"], c["row_bytes"]


def moved(name, c):
    """Bytes the command moves (what the engine trace and statistics count)."""
    n, row_bytes = rows(name, c)
    return n * row_bytes


def _span(count, stride, row_bytes):
    return (count - 1) * stride + row_bytes


def check_aligned(name, c, align):
    """``ALIGNMENT`` unless every address, length and stride is a multiple of ``align``."""
    if name == "DMA_COPY":
        values = (c["src"], c["dst"], c["len"], c["src_stride1"], c["dst_stride1"],
                  c["src_stride2"], c["dst_stride2"])
    elif name == "DMA_GATHER":
        values = (c["pool"], c["dst"], c["row_bytes"], c["row_stride"], c["dst_stride"])
    elif name == "DMA_SCATTER":
        values = (c["pool"], c["src"], c["row_bytes"], c["row_stride"], c["src_stride"])
    else:
        values = (c["ring"], c["lin"], c["row_bytes"], c["ring_stride"], c["lin_stride"])
    for v in values:
        if v % align:
            raise DeviceFault(ErrorCode.ALIGNMENT, f"{name}: {v:#x} is not a multiple of {align}")


def check_shape(name, c):
    """``BAD_SHAPE`` for too many rows or an empty ring."""
    n, _ = rows(name, c)
    if n > MAX_DMA_ROWS:
        raise DeviceFault(ErrorCode.BAD_SHAPE, f"{name}: {n} rows in one DMA")
    if name == "DMA_RING" and c["ring_rows"] == 0:
        raise DeviceFault(ErrorCode.BAD_SHAPE, "DMA_RING: ring_rows = 0")


def table_span(name, c):
    """First index and count of the u32 table entries a gather or scatter reads."""
    n, log2b = c["n"], c["block_log2"]
    if n == 0:
        return 0, 0
    if name == "DMA_GATHER":
        lo = c["t0"] >> log2b
        return lo, ((c["t0"] + n - 1) >> log2b) - lo + 1
    return c["i0"], n


def extents(name, c):
    """The operands' extents in check order (table, pool, source, destination)."""
    n, row_bytes = rows(name, c)
    out = []
    if name in ("DMA_GATHER", "DMA_SCATTER"):
        first, count = table_span(name, c)
        table = c["table"] if name == "DMA_GATHER" else c["slots"]
        if count:
            out.append(Extent("table", Space.DRAM, table + 4 * first, 4 * count, False))
    if n == 0 or row_bytes == 0:
        return out
    if name == "DMA_COPY":
        for side, write in (("src", False), ("dst", True)):
            span = (c["n2"] - 1) * c[f"{side}_stride2"] + (c["n1"] - 1) * c[f"{side}_stride1"] \
                + row_bytes
            out.append(Extent(side, Space(c[f"{side}_space"]), c[side], span, write))
    elif name in ("DMA_GATHER", "DMA_SCATTER"):
        gather = name == "DMA_GATHER"
        if c["pool_blocks"]:
            pool_rows = c["pool_blocks"] << c["block_log2"]
            out.append(Extent("pool", Space.DRAM, c["pool"],
                              _span(pool_rows, c["row_stride"], row_bytes), not gather))
        side = "dst" if gather else "src"
        out.append(Extent(side, Space(c[f"{side}_space"]), c[side],
                          _span(n, c[f"{side}_stride"], row_bytes), gather))
    else:
        ring = Extent("ring", Space(c["ring_space"]), c["ring"],
                      _span(c["ring_rows"], c["ring_stride"], row_bytes), bool(c["to_ring"]))
        lin = Extent("lin", Space(c["lin_space"]), c["lin"],
                     _span(n, c["lin_stride"], row_bytes), not c["to_ring"])
        out += [ring, lin] if not c["to_ring"] else [lin, ring]
    return out


def copies(name, c, entries=()):
    """The rows in the order they are moved. ``entries`` are the table entries of
    :func:`table_span` (gather, scatter); ``BLOCK_TABLE`` if one names a block outside the
    pool."""
    n, row_bytes = rows(name, c)
    if name == "DMA_COPY":
        src, dst = Space(c["src_space"]), Space(c["dst_space"])
        return [Copy(src, c["src"] + i2 * c["src_stride2"] + i1 * c["src_stride1"],
                     dst, c["dst"] + i2 * c["dst_stride2"] + i1 * c["dst_stride1"], row_bytes)
                for i2 in range(c["n2"]) for i1 in range(c["n1"])]
    if name == "DMA_RING":
        ring_space, lin_space = Space(c["ring_space"]), Space(c["lin_space"])
        out = []
        for i in range(n):
            ring = c["ring"] + ((c["r0"] + i) % c["ring_rows"]) * c["ring_stride"]
            lin = c["lin"] + i * c["lin_stride"]
            out.append(Copy(lin_space, lin, ring_space, ring, row_bytes) if c["to_ring"]
                       else Copy(ring_space, ring, lin_space, lin, row_bytes))
        return out
    gather = name == "DMA_GATHER"
    log2b, blocks, stride = c["block_log2"], c["pool_blocks"], c["row_stride"]
    first, _ = table_span(name, c)
    out = []
    for t in range(n):
        if gather:
            tok = c["t0"] + t
            blk, off = entries[(tok >> log2b) - first], tok & ((1 << log2b) - 1)
        else:
            slot = entries[t]
            blk, off = slot >> log2b, slot & ((1 << log2b) - 1)
        if blk >= blocks:
            raise DeviceFault(ErrorCode.BLOCK_TABLE,
                              f"entry {blk} for token {t} is outside the pool of {blocks} blocks")
        pool = c["pool"] + ((blk << log2b) + off) * stride
        if gather:
            out.append(Copy(Space.DRAM, pool, Space(c["dst_space"]), c["dst"] + t * c["dst_stride"],
                            row_bytes))
        else:
            out.append(Copy(Space(c["src_space"]), c["src"] + t * c["src_stride"], Space.DRAM, pool,
                            row_bytes))
    return out
