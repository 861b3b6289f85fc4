"""Cycle-approximate cost of each engine command, from :class:`~npusim.sw.params.HwParams`.

The constants here are first estimates from the micro-architecture; the RTL issues fit them to
measured RTL cycle counts (target: within 5 %).
"""

from math import ceil

from ...firmware.microcode import microcode_length
from ..isa.enums import Space, VectorOp

__all__ = ["dma_cycles", "compute_cycles", "link_efficiency"]


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
    lat = {Space.SRAM: 1, Space.DRAM: p.dram_latency, Space.LINK: 2 * p.link_latency}[src]
    if dst == Space.LINK:
        lat += p.link_latency
    return lat


def dma_cycles(p, src_space, dst_space, rows, row_bytes):
    """A DMA moving ``rows`` contiguous rows of ``row_bytes`` each."""
    if rows == 0 or row_bytes == 0:
        return p.dma_setup
    bw = min(_bandwidth(p, src_space), _bandwidth(p, dst_space))
    per_row = ceil(row_bytes / bw) + p.dma_row_overhead
    return p.dma_setup + _latency(p, src_space, dst_space) + rows * per_row


def compute_cycles(p, name, c):
    """An NE-tile command with resolved fields ``c``."""
    if name == "MATMUL":
        tiles = ceil(c["m"] / p.array_rows) * ceil(c["n"] / p.array_cols)
        return tiles * (c["k"] + p.matmul_tile_overhead) if tiles else p.vector_overhead
    if name == "VECTOR":
        uops = microcode_length(VectorOp(c["op"]))
        return c["rows"] * ceil(c["cols"] / p.vector_lanes) * uops + p.vector_overhead
    if name == "REDUCE":
        return ceil(c["rows"] / p.vector_lanes) * c["cols"] + p.vector_overhead
    if name == "MASK":
        return c["rows"] * ceil(c["cols"] / p.vector_lanes) + p.vector_overhead
    raise KeyError(name)
