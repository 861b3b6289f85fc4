"""Timed streams on one device: the same commands on the RTL (Verilator) and on the functional
model, with the cycles between two completion records as the measure.

A :class:`TimedCase` is a list of commands bracketed by two COMPLETE commands whose records go
to DRAM; each record carries the cycle it was written, so their difference is what the
commands took, from the first record to the moment every engine was idle again, dispatch
included. :func:`measure` runs every case on the functional model (``System``), then on the
cached device build (``DeviceTestTop``, testbench ``device_timing_tb.py``) from the same image
and registers, checks the DRAM regions the case names against the model's, and returns both
cycle counts per case. The DMA calibration test (``tests/hw/test_device_timing.py``) and the
``dma``, ``paged`` and ``gemm-dram`` benchmarks are built on it.
"""

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..sw.fm.system import System
from ..sw.isa import Command, encode_stream
from ..sw.isa.enums import Engine, Space
from .device import model_launch
from .device_top import DEVICE_BUS, DEVICE_PARAMS

__all__ = ["TimedCase", "DEVICE_PARAMS", "DEVICE_BUS", "STREAM_ADDR", "RECORD_ADDR", "record",
           "model_records",
           "fm_run", "measure", "copy_case", "gather_case", "scatter_case", "ring_case", "control_case",
           "calibration_cases"]

#: Where a case's stream is loaded, and where its records go (DRAM).
STREAM_ADDR = 0x8000
RECORD_ADDR = 0x7000


@dataclass
class TimedCase:
    """``cmds`` timed between two records, after the untimed ``setup``; ``inputs`` ``[(dram addr, bytes)]`` loaded first;
    ``checks`` ``[(dram addr, n)]`` compared with the model after the run (``teardown``
    commands, after the second record, copy a scratchpad result out to DRAM for that);
    ``info`` free-form (the shape, for tables and fits)."""
    name: str
    cmds: list
    inputs: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    setup: list = field(default_factory=list)
    teardown: list = field(default_factory=list)

    def stream(self):
        return [*self.setup, record(0), *self.cmds, record(1), *self.teardown]


def model_records(device, count=2, base=RECORD_ADDR):
    """The ``cycles`` fields of a model device's first ``count`` timing records."""
    return [int(device.dram.read(base + 16 * i + 8, 8).view(np.uint64)[0])
            for i in range(count)]


def record(i, base=RECORD_ADDR):
    """The COMPLETE writing timing record ``i`` (16 bytes at ``base + 16 i`` in DRAM; it waits
    for every engine, then stamps the cycle)."""
    return Command("COMPLETE", dst_space=Space.DRAM, dst_off=base + 16 * i, seq=i)


def fm_run(case, params=DEVICE_PARAMS, bus=DEVICE_BUS):
    """The case on the functional model: ``(launch, [record cycles], {addr: bytes})``."""
    system = System(1, params, bus=bus)
    d = system.devices[0]
    for addr, data in case.inputs:
        d.dram.write(addr, np.frombuffer(bytes(data), np.uint8))
    launch = model_launch(system, 0, encode_stream(case.stream()), STREAM_ADDR,
                          extra_regions=case.inputs)
    system.run(50_000_000)
    if d.error_code:
        raise AssertionError(f"{case.name}: the model stops with {d.error_code.name}: "
                             f"{d.error_message}")
    records = model_records(d)
    checks = {addr: d.dram.read(addr, n).tobytes() for addr, n in case.checks}
    return launch, records, checks


def measure(cases, params=DEVICE_PARAMS, bus=DEVICE_BUS, *, build_name="device_4x4",
            timeout=900, timeout_cycles=2_000_000):
    """Run ``cases`` on the model and on the RTL. Returns ``(rows, run)``: per case ``{"name",
    "fm", "rtl", "info", "total_cycles", "wall_s"}`` (``fm``/``rtl``: cycles between the two
    records), and ``{"build_seconds", "cached", "simulation_seconds"}``."""
    from .device_top import build_device
    from .verilator_flow import run
    specs, fm = [], []
    for case in cases:
        launch, records, checks = fm_run(case, params, bus)
        fm.append(records[1] - records[0])
        specs.append({"name": case.name,
                      "regions": [[a, bytes(d).hex()] for a, d in launch.regions],
                      "writes": [list(w) for w in launch.writes],
                      "records": [RECORD_ADDR, RECORD_ADDR + 16],
                      "checks": [[a, d.hex()] for a, d in checks.items()]})
    design = build_device(params, bus, build_name, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="npusim-timing-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"params": params.as_dict(), "host_bytes": bus.host_bytes,
                                    "timeout_cycles": timeout_cycles, "cases": specs}))
        started = time.monotonic()
        ran = run(design, Path(__file__).with_name("device_timing_tb.py"), timeout=timeout,
                  env={"DEVICE_TIMING_SPEC": str(spec), "DEVICE_TIMING_RESULT": str(result)})
        measured = json.loads(result.read_text())["cases"]
    rows = []
    for case, f, got in zip(cases, fm, measured, strict=True):
        r = got["records"]
        rows.append({"name": case.name, "fm": f, "rtl": r[1] - r[0], "info": case.info,
                     "total_cycles": got["total_cycles"], "wall_s": got["wall_s"]})
    return rows, {"build_seconds": design.seconds, "cached": design.cached,
                  "simulation_seconds": ran.seconds or time.monotonic() - started}


# -- the cases ---------------------------------------------------------------------------------

SRC, DST, TABLE = 0x100000, 0x200000, 0xF0000


def _data(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sram_out(n):
    """Untimed: the first ``n`` bytes of the scratchpad copied to DRAM ``DST``, to be checked."""
    return [Command("FENCE"),
            Command("DMA_COPY", engine=Engine.DMA_OUT, src_space=Space.SRAM, src_off=0,
                    dst_space=Space.DRAM, dst_off=DST, len=n, n1=1, n2=1)]


def copy_case(name, src_space, dst_space, length, n1=1, src_stride=0, dst_stride=0,
              engine=Engine.DMA_IN, shift=0):
    """A DMA_COPY of ``n1`` rows of ``length`` bytes between DRAM ``SRC + shift``/``DST`` and
    SRAM 0.
    An SRAM source is filled first (untimed); a DRAM destination is zeroed, and checked."""
    src_span = (n1 - 1) * src_stride + length
    dst_span = (n1 - 1) * dst_stride + length
    cmd = Command("DMA_COPY", engine=engine, src_space=src_space,
                  src_off=SRC + shift if src_space == Space.DRAM else 0, dst_space=dst_space,
                  dst_off=DST if dst_space == Space.DRAM else 0, len=length, n1=n1, n2=1,
                  src_stride1=src_stride, dst_stride1=dst_stride)
    setup = [] if src_space == Space.DRAM else [
        Command("DMA_COPY", engine=Engine.DMA_IN, src_off=SRC, dst_space=Space.SRAM, dst_off=0,
                len=src_span, n1=1, n2=1)]
    inputs = [(SRC, _data(src_span + shift)), (DST, bytes(dst_span))]
    return TimedCase(name, [cmd], inputs, [(DST, dst_span)],
                     {"kind": "copy", "src": src_space.name, "dst": dst_space.name, "rows": n1,
                      "row_bytes": length, "bytes": n1 * length}, setup,
                     [] if dst_space == Space.DRAM else _sram_out(dst_span))


def gather_case(name, tokens, row_bytes, *, block_log2=4, pool_blocks=None, seed=2,
                dst_space=Space.SRAM, row_stride=None):
    """A DMA_GATHER of ``tokens`` K rows through a random block table (blocks of
    ``2**block_log2`` tokens, rows ``row_stride`` apart in the pool, by default ``row_bytes``:
    the engine merges each block's rows), to SRAM 0 or DRAM ``DST``."""
    block = 1 << block_log2
    used = -(-tokens // block)
    pool_blocks = pool_blocks or 2 * used
    row_stride = row_stride or row_bytes
    table = np.random.default_rng(seed).permutation(pool_blocks)[:used].astype(np.uint32)
    cmd = Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=TABLE, pool_off=SRC,
                  dst_space=dst_space, dst_off=DST if dst_space == Space.DRAM else 0,
                  row_bytes=row_bytes, row_stride=row_stride, dst_stride=row_bytes,
                  block_log2=block_log2, pool_blocks=pool_blocks, n=tokens, t0=0)
    inputs = [(TABLE, table.tobytes()), (SRC, _data(pool_blocks * block * row_stride, seed)),
              (DST, bytes(tokens * row_bytes))]
    return TimedCase(name, [cmd], inputs, [(DST, tokens * row_bytes)],
                     {"kind": "gather", "src": "DRAM", "dst": dst_space.name, "rows": tokens,
                      "row_bytes": row_bytes, "bytes": tokens * row_bytes, "block": block},
                     teardown=[] if dst_space == Space.DRAM else _sram_out(tokens * row_bytes))


def scatter_case(name, tokens, row_bytes, *, block_log2=4, seed=4):
    """A DMA_SCATTER of ``tokens`` rows from SRAM 0 (filled first, untimed) into a paged pool
    at DRAM ``DST`` through the slot mapping of a sequence written into random blocks (slots
    consecutive within each block, as a prefill writes its K rows: the engine merges them);
    the pool is checked."""
    block = 1 << block_log2
    used = -(-tokens // block)
    pool_blocks = 2 * used
    table = np.random.default_rng(seed).permutation(pool_blocks)[:used]
    slots = np.array([table[t >> block_log2] * block + (t & (block - 1)) for t in range(tokens)],
                     np.uint32)
    cmd = Command("DMA_SCATTER", engine=Engine.DMA_OUT, slots_off=TABLE, pool_off=DST,
                  src_space=Space.SRAM, src_off=0, row_bytes=row_bytes, row_stride=row_bytes,
                  src_stride=row_bytes, block_log2=block_log2, pool_blocks=pool_blocks,
                  n=tokens, i0=0)
    setup = [Command("DMA_COPY", engine=Engine.DMA_IN, src_off=SRC, dst_space=Space.SRAM,
                     dst_off=0, len=tokens * row_bytes, n1=1, n2=1)]
    pool_span = pool_blocks * block * row_bytes
    inputs = [(TABLE, slots.tobytes()), (SRC, _data(tokens * row_bytes, seed)),
              (DST, bytes(pool_span))]
    return TimedCase(name, [cmd], inputs, [(DST, pool_span)],
                     {"kind": "scatter", "src": "SRAM", "dst": "DRAM", "rows": tokens,
                      "row_bytes": row_bytes, "bytes": tokens * row_bytes, "block": block},
                     setup)


def ring_case(name, rows, row_bytes, ring_rows, r0):
    """A DMA_RING from DRAM ``SRC`` into a ring of ``ring_rows`` rows in SRAM, from row ``r0``
    (at least a whole ring of rows, so the whole ring is written, copied out and checked)."""
    if rows < ring_rows:
        raise ValueError(f"{rows} rows leave part of a {ring_rows}-row ring unwritten")
    cmd = Command("DMA_RING", engine=Engine.DMA_IN, ring_space=Space.SRAM, ring_off=0,
                  lin_space=Space.DRAM, lin_off=SRC, to_ring=1, row_bytes=row_bytes,
                  ring_stride=row_bytes, lin_stride=row_bytes, ring_rows=ring_rows, n=rows, r0=r0)
    ring = ring_rows * row_bytes
    return TimedCase(name, [cmd], [(SRC, _data(rows * row_bytes)), (DST, bytes(ring))],
                     [(DST, ring)],
                     {"kind": "ring", "src": "DRAM", "dst": "SRAM", "rows": rows,
                      "row_bytes": row_bytes, "bytes": rows * row_bytes},
                     teardown=_sram_out(ring))


def control_case(name, count, op="REG_SET"):
    """``count`` control commands (REG_SET to r1-r7, or NOP)."""
    cmds = [Command("REG_SET", rd=1 + i % 7, imm=i) if op == "REG_SET" else Command(op)
            for i in range(count)]
    return TimedCase(name, cmds, info={"kind": "control", "commands": count, "bytes": 0})


def calibration_cases():
    """The shapes the functional model's DMA and command-processor timing is fitted to."""
    S, D = Space.SRAM, Space.DRAM
    cases = []
    for n in (256, 1024, 4096, 16384, 65536):
        cases.append(copy_case(f"DRAM->SRAM {n} B", D, S, n))
    for n in (256, 1024, 4096, 16384, 65536):
        cases.append(copy_case(f"SRAM->DRAM {n} B", S, D, n, engine=Engine.DMA_OUT))
    for n in (1024, 16384):
        cases.append(copy_case(f"DRAM->DRAM {n} B", D, D, n))
    cases += [
        copy_case("DRAM->SRAM 2-D 64 x 64 B", D, S, 64, n1=64, src_stride=128, dst_stride=64),
        copy_case("DRAM->SRAM 2-D 128 x 96 B", D, S, 96, n1=128, src_stride=96, dst_stride=96),
        copy_case("DRAM->SRAM 2-D 16 x 2 KiB", D, S, 2048, n1=16, src_stride=4096,
                  dst_stride=2048),
        copy_case("SRAM->DRAM 2-D 64 x 64 B", S, D, 64, n1=64, src_stride=64, dst_stride=128,
                  engine=Engine.DMA_OUT),
        copy_case("SRAM->DRAM 2-D 8 x 1 KiB", S, D, 1024, n1=8, src_stride=1024,
                  dst_stride=2048, engine=Engine.DMA_OUT),
        copy_case("DRAM->SRAM 4 KiB at +4 B", D, S, 4096, shift=4),
    ]
    for rb in (64, 128, 256):
        cases.append(gather_case(f"gather 128 x {rb} B, block 16", 128, rb))
    cases += [
        gather_case("gather 128 x 128 B, rows 256 B apart", 128, 128, row_stride=256),
        gather_case("gather 64 x 128 B, block 1", 64, 128, block_log2=0),
        gather_case("gather 128 x 64 B, block 1", 128, 64, block_log2=0),
        scatter_case("scatter 128 x 128 B, block 16", 128, 128),
    ]
    cases.append(ring_case("ring DRAM->SRAM 32 x 256 B", 32, 256, 16, 5))
    for k in (0, 1, 8, 16, 32):
        cases.append(control_case(f"{k} REG_SET", k))
    cases.append(control_case("16 NOP", 16, "NOP"))
    return cases
