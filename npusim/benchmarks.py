"""Benchmarks behind ``npusim bench NAME`` and ``make bench``.

Each benchmark measures, prints a readable table and returns its figures; the runner prints
them as one JSON object on the last line and, with ``--record DIR``, writes
``DIR/<name>.json`` together with the parameters used. Figures are ratios measured in one run,
never compared with a wall-clock limit.
"""

import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .sw.isa.enums import DType
from .sw.params import HwParams

__all__ = ["BENCHMARKS", "GEMM_ARRAYS", "bench_allreduce", "bench_dma", "bench_fm_speed",
           "bench_gemm", "bench_gemm_dram", "bench_latency", "bench_link", "bench_paged",
           "bench_simspeed", "gemm_shapes", "run_benchmarks"]


def bench_fm_speed():
    """Functional-model speed: simulated device cycles and commands per wall-clock second."""
    from .sw.examples import gemm, tp_linear
    from .sw.fm import System
    rows = []
    for example, n in ((gemm(m=64, n=64, k=256), 1), (tp_linear(devices=4, m=32, n=64, k=512), 4)):
        system = System(n)
        example.load(system)
        t0 = time.perf_counter()
        cycles = system.run()
        wall = time.perf_counter() - t0
        system.check()
        commands = sum(st.commands for d in system.devices for st in d.stats.values())
        rows.append({"example": example.name, "devices": n, "cycles": cycles,
                     "wall_s": round(wall, 4), "cycles_per_s": round(cycles / wall),
                     "commands_per_s": round(commands / wall)})
    print(f"{'example':<10} {'dev':>3} {'cycles':>9} {'wall s':>8} {'cycles/s':>12} {'cmds/s':>9}")
    for r in rows:
        print(f"{r['example']:<10} {r['devices']:>3} {r['cycles']:>9} {r['wall_s']:>8.3f} "
              f"{r['cycles_per_s']:>12,} {r['commands_per_s']:>9,}")
    return {"fm_cycles_per_second": min(r["cycles_per_s"] for r in rows), "runs": rows}


#: The arrays ``bench gemm`` measures. The scratchpad word grows with the array (64 bytes at
#: 16x16) so that one word still feeds a row of the array; SRAM and panel depth are defaults.
GEMM_ARRAYS = {
    "4x4": HwParams(array_rows=4, array_cols=4, vector_lanes=4),
    "8x8": HwParams(),
    "16x16": HwParams(array_rows=16, array_cols=16, vector_lanes=16, sram_bytes_per_cycle=64),
}


def _gemm_fields(m, n, k, sram_bytes, *, b_trans=0, acc=0, bf16_c=False):
    """A dense MATMUL: A (M x K) at 0, B (K x N, or N x K with ``b_trans``) and C (M x N)
    after it, each at the next multiple of 64 bytes; ``None`` if it does not fit in SRAM."""
    def align(x):
        return -(-x // 64) * 64
    b = align(2 * m * k)
    c = align(b + 2 * k * n)
    if c + (2 if bf16_c else 4) * m * n > sram_bytes:
        return None
    return {"a": 0, "lda": k, "b": b, "ldb": k if b_trans else n, "c": c, "ldc": n,
            "a_trans": 0, "b_trans": b_trans, "acc": acc,
            "c_dtype": int(DType.BF16 if bf16_c else DType.FP32), "m": m, "n": n, "k": k}


def gemm_shapes(rows, cols, sram_bytes):
    """The SRAM-resident GEMMs ``bench gemm`` runs on an ``rows x cols`` array: ``(shapes,
    skipped)``, each shape ``{"name", "shape", "layout", "fields", "in_min"}``. ``in_min``
    marks the shapes the target applies to (M, N, K at least 4x the array); A.B^T is the
    layout of PyTorch's Linear weights (stored N x K)."""
    R, C = rows, cols
    plan = [
        ("4x array", "A.B", 4 * R, 4 * C, 4 * R, {}),
        ("4x array", "A.B^T", 4 * R, 4 * C, 4 * R, {"b_trans": 1}),
        ("4x array", "A.B acc", 4 * R, 4 * C, 4 * R, {"acc": 1}),
        ("4x array", "A.B bf16 C", 4 * R, 4 * C, 4 * R, {"bf16_c": True}),
        ("8x array", "A.B bf16 C", 8 * R, 8 * C, 8 * R, {"bf16_c": True}),
        ("4R x 8C x 16R", "A.B^T", 4 * R, 8 * C, 16 * R, {"b_trans": 1}),
        ("R x C x 4R", "A.B", R, C, 4 * R, {}),
    ]
    shapes, skipped = [], []
    for shape, layout, m, n, k, options in plan:
        fields = _gemm_fields(m, n, k, sram_bytes, **options)
        name = f"{shape}, {layout}"
        if fields is None:
            skipped.append(f"{name} ({m} x {n} x {k}) does not fit in {sram_bytes} bytes")
            continue
        shapes.append({"name": name, "shape": shape, "layout": layout, "fields": fields,
                       "in_min": m >= 4 * R and n >= 4 * C and k >= 4 * R})
    return shapes, skipped


def bench_gemm(arrays=None, shapes=gemm_shapes, seed=1):
    """NE-tile matrix-unit utilisation on SRAM-resident GEMMs, measured on the RTL (Verilator
    through cocotb): the tile's own cycle count per MATMUL against the ideal ``M N K / (R C)``,
    every result checked bit for bit against the functional model.

    ``arrays`` maps a label to the :class:`HwParams` to build (default :data:`GEMM_ARRAYS`);
    ``shapes(rows, cols, sram_bytes)`` gives the MATMULs, as :func:`gemm_shapes` does.
    ``utilization`` is the minimum over the shapes the target applies to, over all arrays.
    """
    from . import cosim
    from .cosim.ne_tile import NeTileHarness
    from .cosim.verilator_flow import build, run
    testbench = Path(cosim.__file__).with_name("gemm_bench_tb.py")
    rows, notes, builds = [], [], {}
    total_cycles = total_wall = 0.0
    for label, params in (arrays or GEMM_ARRAYS).items():
        R, C = params.array_rows, params.array_cols
        plan, skipped = shapes(R, C, params.sram_bytes)
        notes += [f"{label}: skipped {note}" for note in skipped]
        if not plan:
            continue
        design = build(NeTileHarness(params), f"ne_tile_bench_{label}", timeout=3600)
        with tempfile.TemporaryDirectory(prefix="npusim-gemm-") as tmp:
            spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec.write_text(json.dumps({"params": params.as_dict(), "seed": seed,
                                        "shapes": plan}))
            ran = run(design, testbench, timeout=3600, env={
                "NPUSIM_GEMM_BENCH": str(spec), "NPUSIM_GEMM_RESULT": str(result)})
            measured = json.loads(result.read_text())
        builds[label] = {"seconds": round(design.seconds, 1), "cached": design.cached,
                         "simulation_seconds": round(ran.seconds, 1),
                         "params": params.as_dict()}
        total_cycles += measured["cycles"]
        total_wall += measured["command_wall_s"]
        for shape, got in zip(plan, measured["shapes"], strict=True):
            f = shape["fields"]
            ideal = f["m"] * f["n"] * f["k"] / (R * C)
            rows.append({"array": label, "shape": shape["shape"], "layout": shape["layout"],
                         "m": f["m"], "n": f["n"], "k": f["k"], "cycles": got["cycles"],
                         "ideal": ideal, "utilization": round(ideal / got["cycles"], 4),
                         "in_min": shape["in_min"], "checked": got["checked"],
                         "wall_s": round(got["wall_s"], 4)})

    print(f"{'array':<6} {'shape':<15} {'layout':<11} {'M':>4} {'N':>4} {'K':>4} "
          f"{'cycles':>7} {'ideal':>7} {'util':>6}")
    for r in rows:
        print(f"{r['array']:<6} {r['shape']:<15} {r['layout']:<11} {r['m']:>4} {r['n']:>4} "
              f"{r['k']:>4} {r['cycles']:>7} {r['ideal']:>7.0f} {100 * r['utilization']:>5.1f}%"
              f"{'' if r['in_min'] else '  (not in the min: below 4x the array)'}")
    for label, b in builds.items():
        print(f"{label}: build {b['seconds']:.1f} s ({'cached' if b['cached'] else 'built'}), "
              f"simulation {b['simulation_seconds']:.1f} s")
    for note in notes:
        print(note)

    def worst(selected):
        return min((r["utilization"] for r in selected if r["in_min"]), default=None)

    return {
        "utilization": worst(rows),
        "utilization_by_array": {label: worst(r for r in rows if r["array"] == label)
                                 for label in builds},
        "rtl_cycles_per_second": round(total_cycles / total_wall) if total_wall else None,
        "build_seconds": round(sum(b["seconds"] for b in builds.values()), 1),
        "builds": builds, "skipped": notes, "rows": rows,
    }


def _device_cases(cases):
    """Run timed cases on the 4x4 device (the cached build of the device tests) with the
    empty stream as the baseline: ``(rows, run, baseline, cycles_per_second)``; each row's
    ``cycles`` is what its commands add to a stream (record difference minus the baseline's,
    the completion record's own write response)."""
    from .cosim.device_timing import control_case, measure
    rows, run = measure([control_case("empty stream", 0), *cases])
    base = rows[0]
    for r in rows[1:]:
        r["cycles"] = r["rtl"] - base["rtl"]
        r["fm_cycles"] = r["fm"] - base["fm"]
    wall = sum(r["wall_s"] for r in rows)
    speed = round(sum(r["total_cycles"] for r in rows) / wall) if wall else None
    return rows[1:], run, base["rtl"], speed


def _run_summary(run):
    """The device benchmarks' common figures: the build and simulation times, and the device
    parameters the run used (recorded instead of the defaults)."""
    from .cosim.device_timing import DEVICE_PARAMS
    return {"build_seconds": round(run["build_seconds"], 1), "cached": run["cached"],
            "simulation_seconds": round(run["simulation_seconds"], 1),
            "params": DEVICE_PARAMS.as_dict()}


def _print_run(run, speed):
    print(f"rtl cycles/s {speed:,}; build {run['build_seconds']:.1f} s "
          f"({'cached' if run['cached'] else 'built'}), simulation "
          f"{run['simulation_seconds']:.1f} s")


def bench_dma():
    """DMA throughput of large linear transfers on the device RTL (Verilator): bytes per cycle
    against the 32-byte-per-cycle port, each transfer one DMA_COPY checked against the
    functional model's result. ``efficiency`` is the minimum over the transfers."""
    from .cosim.device_timing import DEVICE_PARAMS, copy_case
    from .sw.isa.enums import Engine, Space
    S, D = Space.SRAM, Space.DRAM
    cases = [copy_case("DRAM->SRAM 64 KiB", D, S, 65536),
             copy_case("SRAM->DRAM 64 KiB", S, D, 65536, engine=Engine.DMA_OUT),
             copy_case("DRAM->DRAM 64 KiB", D, D, 65536),
             copy_case("DRAM->DRAM 256 KiB", D, D, 262144)]
    rows, run, base, speed = _device_cases(cases)
    peak = DEVICE_PARAMS.dram_bytes_per_cycle
    print(f"{'transfer':<20} {'bytes':>7} {'cycles':>7} {'B/cycle':>8} {'of peak':>8} "
          f"{'FM cycles':>9}")
    out = []
    for r in rows:
        n = r["info"]["bytes"]
        eff = n / r["cycles"] / peak
        out.append({"transfer": r["name"], "bytes": n, "cycles": r["cycles"],
                    "bytes_per_cycle": round(n / r["cycles"], 3), "efficiency": round(eff, 4),
                    "fm_cycles": r["fm_cycles"]})
        print(f"{r['name']:<20} {n:>7} {r['cycles']:>7} {n / r['cycles']:>8.2f} "
              f"{100 * eff:>7.1f}% {r['fm_cycles']:>9}")
    print(f"cycles are those a transfer adds to a stream (between two completion records, "
          f"minus the {base} of an empty stream); port peak {peak} B/cycle")
    _print_run(run, speed)
    return {"efficiency": min(r["efficiency"] for r in out), "peak_bytes_per_cycle": peak,
            "rtl_cycles_per_second": speed, "empty_stream_cycles": base, "rows": out,
            **_run_summary(run)}


def bench_paged():
    """Paged-KV read against contiguous KV on the device RTL (Verilator): one sequence's K rows
    gathered through a random block table (DMA_GATHER, block size 16) against the same bytes
    read by one DMA_COPY, both from DRAM into the scratchpad, results checked against the
    functional model. ``overhead`` = gathered cycles / contiguous cycles - 1, the largest over
    the head sizes."""
    from .cosim.device_timing import copy_case, gather_case
    from .sw.isa.enums import Space
    plan = [(512, 128), (256, 256)]          # tokens x row bytes (head_dim 64, 128 in bf16)
    cases = []
    for tokens, row in plan:
        cases.append(gather_case(f"gather {tokens} x {row} B", tokens, row, seed=3))
        cases.append(copy_case(f"copy {tokens * row} B", Space.DRAM, Space.SRAM, tokens * row))
    rows, run, base, speed = _device_cases(cases)
    print(f"{'K rows':<16} {'bytes':>6} {'gather':>7} {'contig':>7} {'overhead':>9} "
          f"{'FM gather':>9} {'FM contig':>9}")
    out = []
    for (tokens, row), g, c in zip(plan, rows[0::2], rows[1::2]):
        overhead = g["cycles"] / c["cycles"] - 1
        out.append({"tokens": tokens, "row_bytes": row, "bytes": tokens * row,
                    "gather_cycles": g["cycles"], "contiguous_cycles": c["cycles"],
                    "overhead": round(overhead, 4), "fm_gather_cycles": g["fm_cycles"],
                    "fm_contiguous_cycles": c["fm_cycles"]})
        print(f"{tokens:>4} x {row:>3} B    {tokens * row:>6} {g['cycles']:>7} {c['cycles']:>7} "
              f"{100 * overhead:>8.1f}% {g['fm_cycles']:>9} {c['fm_cycles']:>9}")
    print(f"block size 16, random block table; cycles added to a stream (minus the {base} of "
          f"an empty stream)")
    _print_run(run, speed)
    return {"overhead": max(r["overhead"] for r in out), "rtl_cycles_per_second": speed,
            "empty_stream_cycles": base, "rows": out, **_run_summary(run)}


def bench_gemm_dram():
    """GEMM with operands streamed from DRAM through the double-buffered scratchpad
    (``firmware/gemm.py``) on the device RTL (Verilator): MAC utilisation = ideal cycles
    ``M N K / (R C)`` / cycles, the result checked against the functional model's.
    ``utilization`` is the minimum over the shapes with M, N, K >= 32 x the array."""
    import numpy as np
    from .cosim.device_timing import DEVICE_PARAMS, TimedCase
    from .firmware.gemm import gemm_commands, plan_gemm
    from .sw import numerics as nx
    p = DEVICE_PARAMS
    macs = p.macs_per_cycle
    a_addr, b_addr, c_addr = 0x100000, 0x180000, 0x200000
    shapes = [(64, 64, 64), (128, 128, 128), (128, 128, 256)]
    cases = []
    for m, n, k in shapes:
        rng = np.random.default_rng(m * n + k)
        a, b = (nx.fp32_to_bf16(rng.standard_normal(shape).astype(np.float32).view(np.uint32))
                for shape in ((m, k), (k, n)))
        plan = plan_gemm(p, m, n, k)
        cases.append(TimedCase(
            f"{m} x {n} x {k}", gemm_commands(plan, a_addr, b_addr, c_addr),
            inputs=[(a_addr, a.tobytes()), (b_addr, b.tobytes()), (c_addr, bytes(4 * m * n))],
            checks=[(c_addr, 4 * m * n)],
            info={"m": m, "n": n, "k": k, "tiles": [plan.tm, plan.tn, plan.tk]}))
    rows, run, base, speed = _device_cases(cases)
    print(f"{'M x N x K':<16} {'tiles':<12} {'cycles':>8} {'ideal':>8} {'util':>7} "
          f"{'FM cycles':>9}")
    out = []
    for (m, n, k), r in zip(shapes, rows):
        ideal = m * n * k / macs
        util = ideal / r["cycles"]
        large = min(m, n, k) >= 32 * max(p.array_rows, p.array_cols)
        out.append({"m": m, "n": n, "k": k, "tiles": r["info"]["tiles"], "cycles": r["cycles"],
                    "ideal": ideal, "utilization": round(util, 4), "in_min": large,
                    "fm_cycles": r["fm_cycles"]})
        print(f"{r['name']:<16} {'x'.join(map(str, r['info']['tiles'])):<12} {r['cycles']:>8} "
              f"{ideal:>8.0f} {100 * util:>6.1f}% {r['fm_cycles']:>9}")
    print(f"{p.array_rows}x{p.array_cols} array, {p.sram_bytes // 1024} KiB scratchpad, DRAM "
          f"latency {p.dram_latency}; cycles added to a stream (minus the {base} of an empty "
          f"stream)")
    _print_run(run, speed)
    return {"utilization": min(r["utilization"] for r in out if r["in_min"]),
            "rtl_cycles_per_second": speed, "empty_stream_cycles": base, "rows": out,
            **_run_summary(run)}


def _system_cases(cases, n, params=None):
    """Run system cases on the ``n``-device RTL system (``cosim/system_timing.py``; built for
    ``params``, default the test system's): ``(rows, run, cycles_per_second)``, the speed
    over the timed parts of every case."""
    from .cosim.system_timing import measure
    from .cosim.system_top import SYSTEM_PARAMS
    rows, run = measure(cases, n, params or SYSTEM_PARAMS)
    wall = sum(r["wall_s"] for r in rows)
    return rows, run, (round(sum(r["cycles"] for r in rows) / wall) if wall else None)


def _system_summary(run, speed, params=None):
    from .cosim.system_top import SYSTEM_PARAMS
    _print_run(run, speed)
    return {"rtl_cycles_per_second": speed, "build_seconds": round(run["build_seconds"], 1),
            "cached": run["cached"], "simulation_seconds": round(run["simulation_seconds"], 1),
            "params": (params or SYSTEM_PARAMS).as_dict()}


def bench_link():
    """Link payload throughput on the 2-device RTL system: device 0 writes 64 KiB and 256 KiB
    into device 1's DRAM (MWr through the switch) and signals it; each span runs from device
    0's start to device 1 seeing the signal (so every byte has arrived). ``efficiency`` is the
    steady-state rate -- the extra bytes over the extra cycles between the two sizes -- as a
    fraction of the raw lane bandwidth (``link_bytes_per_cycle``); the end-to-end fractions,
    fixed costs included, are reported beside it."""
    from .cosim.system_timing import peer_write_case
    from .cosim.system_top import SYSTEM_PARAMS as p
    from .sw.fm.timing import link_efficiency
    sizes = (65536, 262144)
    rows, run, speed = _system_cases([peer_write_case(n) for n in sizes], 2)
    raw = p.link_bytes_per_cycle
    print(f"{'transfer':<22} {'bytes':>7} {'cycles':>7} {'B/cycle':>8} {'of raw':>7} "
          f"{'FM cycles':>9}")
    out = []
    for n, r in zip(sizes, rows):
        out.append({"transfer": r["name"], "bytes": n, "cycles": r["rtl"],
                    "efficiency_end_to_end": round(n / r["rtl"] / raw, 4), "fm_cycles": r["fm"]})
        print(f"{r['name']:<22} {n:>7} {r['rtl']:>7} {n / r['rtl']:>8.2f} "
              f"{100 * n / r['rtl'] / raw:>6.1f}% {r['fm']:>9}")
    steady = (sizes[1] - sizes[0]) / (rows[1]["rtl"] - rows[0]["rtl"]) / raw
    ceiling = link_efficiency(p)
    print(f"steady state {100 * steady:.1f}% of {raw} B/cycle raw (protocol ceiling "
          f"{100 * ceiling:.1f}% at {p.link_max_payload} B payloads)")
    return {"efficiency": round(steady, 4), "protocol_ceiling": round(ceiling, 4),
            "raw_bytes_per_cycle": raw, "rows": out, **_system_summary(run, speed)}


def bench_allreduce():
    """Ring all-reduce bus bandwidth on the RTL system, n = 2 and 4 devices, fp32 vectors of
    32, 128 and 256 KiB in place in the scratchpad (the system is built with a 512 KiB
    scratchpad for it: the vector and its staging slots); busbw = S / t * 2 (n - 1) / n
    (nccl-tests), t the span from the first device starting to the last finishing, as a
    fraction of the link's raw bandwidth per direction. The figures are the largest
    vector's; the functional model's estimate for every plan is printed beside it."""
    from .cosim.system_timing import allreduce_case
    from .cosim.system_top import SYSTEM_PARAMS
    p = SYSTEM_PARAMS.replace(sram_bytes=512 << 10)
    raw = p.link_bytes_per_cycle
    sizes = (32 << 10, 128 << 10, 256 << 10)
    figures, rows_out, runs = {}, [], []
    for n in (2, 4):
        rows, run, speed = _system_cases([allreduce_case(n, s // 4, params=p) for s in sizes],
                                         n, params=p)
        runs.append(run)
        for nbytes, r in zip(sizes, rows):
            def fraction(cycles):
                return nbytes / cycles * 2 * (n - 1) / n / raw
            rows_out.append({"devices": n, "bytes": nbytes, "cycles": r["rtl"],
                             "busbw_fraction": round(fraction(r["rtl"]), 4),
                             "fm_cycles": r["fm"], "fm_busbw_fraction": round(fraction(r["fm"]), 4),
                             "slot_bytes": r["info"]["slot_bytes"],
                             "rtl_cycles_per_second": speed})
        figures[f"busbw_fraction_n{n}"] = rows_out[-1]["busbw_fraction"]
    print(f"{'devices':>7} {'bytes':>7} {'pieces':>6} {'cycles':>7} {'busbw':>7} "
          f"{'FM cycles':>9} {'FM busbw':>8}")
    for row in rows_out:
        print(f"{row['devices']:>7} {row['bytes']:>7} {row['slot_bytes']:>6} {row['cycles']:>7} "
              f"{100 * row['busbw_fraction']:>6.1f}% {row['fm_cycles']:>9} "
              f"{100 * row['fm_busbw_fraction']:>7.1f}%")
    speed = rows_out[0]["rtl_cycles_per_second"]
    return {**figures, "rows": rows_out, **_system_summary(runs[0], speed, p)}


def bench_latency():
    """Small-message latency on the 2-device RTL system, in cycles: a host register write
    (from the host handing it to its root complex to the device's next command after the
    semaphore wait it releases: link, switch, register block, wake-up), and a remote
    semaphore signal (one way: from one device's SEM_SIGNAL to the other's command after the
    wait it releases; half a ping-pong round)."""
    from .cosim.system_timing import ping_pong_case
    rounds = 16
    rows, run, speed = _system_cases([ping_pong_case(rounds)], 2)
    r = rows[0]
    mmio = [r["rtl_records"][d][0] - r["rtl_go"][d] for d in (0, 1)]
    signal = r["rtl"] / (2 * rounds)
    fm_signal = r["fm"] / (2 * rounds)
    print(f"host register write -> device reacts: {mmio} cycles (devices 0, 1)")
    print(f"remote semaphore, one way: {signal:.1f} cycles (model {fm_signal:.1f}); "
          f"{rounds} ping-pong rounds in {r['rtl']} cycles")
    return {"latency_cycles_mmio_write": round(sum(mmio) / len(mmio), 1),
            "latency_cycles_remote_semaphore": round(signal, 1),
            "fm_latency_cycles_remote_semaphore": round(fm_signal, 1),
            **_system_summary(run, speed)}


def bench_simspeed():
    """RTL simulation speed of the 2-device system (Verilator, cocotb sleeping between host
    events) running a ring all-reduce stream: simulated cycles per wall-clock second from the
    release to the last interrupt; and, in the same minute, the same compiled model clocked
    from a plain C++ loop (``cosim/free_run.cpp``, no cocotb, nothing happening): the model's
    own speed, and the fraction of it the cocotb-driven run reaches."""
    from .cosim.free_run import free_run_speed
    from .cosim.system_timing import allreduce_case
    rows, run, speed = _system_cases([allreduce_case(2, 8192)] * 3, 2)
    per_run = [round(r["cycles"] / r["wall_s"]) for r in rows]
    plain = round(free_run_speed(run["directory"]))
    print(f"{'run':>3} {'cycles':>7} {'wall s':>7} {'cycles/s':>9}")
    for i, r in enumerate(rows):
        print(f"{i:>3} {r['cycles']:>7} {r['wall_s']:>7.2f} {per_run[i]:>9,}")
    print(f"the same model clocked from C++ (no cocotb, idle): {plain:,} cycles/s; the "
          f"cocotb runs reach {speed / plain:.2f} of it")
    return {"cycles_per_second": speed, "runs": per_run, "free_run_cycles_per_second": plain,
            "fraction_of_free_run": round(speed / plain, 3), **_system_summary(run, speed)}


def bench_tp_scaling():
    """Tensor-parallel scaling of one decoder layer on the functional model (hardware
    defaults, ``llama-layer``: hidden 1024, 16 heads over 8 KV heads, intermediate 2816): the
    model's estimated cycles of a 64-token prefill and of one decode step at TP = 1, 2, 4, 8,
    per decoder layer (a 2-layer model's cycles minus a 1-layer model's, so the embedding and
    LM head drop out), and the speed-up over TP = 1. ``compile_seconds``: compiling the
    2-layer ``tiny-llama`` (capture to streams, both phases, TP = 2)."""
    from .sw.compiler.driver import compile_model
    from .sw.compiler.models import PRESETS
    from .sw.params import DEFAULT
    compile_seconds = compile_model("tiny-llama", 2, DEFAULT, estimate=False).seconds
    params = DEFAULT.replace(dram_bytes=256 << 20)   # two layers' weights on one device
    one = PRESETS["llama-layer"]
    two = dict(one, num_hidden_layers=2)
    rows = []
    for tp in (1, 2, 4, 8):
        c1 = compile_model(one, tp, params, tokens=64, max_context=256).cycles
        c2 = compile_model(two, tp, params, tokens=64, max_context=256).cycles
        rows.append({"tp": tp, "prefill_layer_cycles": c2["prefill:64"] - c1["prefill:64"],
                     "decode_layer_cycles": c2["decode:1"] - c1["decode:1"]})
    base = rows[0]
    print(f"{'TP':>3} {'prefill/layer':>14} {'speed-up':>9} {'decode/layer':>13} {'speed-up':>9}")
    for r in rows:
        r["prefill_speedup"] = round(base["prefill_layer_cycles"] / r["prefill_layer_cycles"], 3)
        r["decode_speedup"] = round(base["decode_layer_cycles"] / r["decode_layer_cycles"], 3)
        print(f"{r['tp']:>3} {r['prefill_layer_cycles']:>14,} {r['prefill_speedup']:>8.2f}x "
              f"{r['decode_layer_cycles']:>13,} {r['decode_speedup']:>8.2f}x")
    print(f"compile time of the 2-layer tiny-llama at TP = 2: {compile_seconds:.2f} s")
    speed = {f"speedup_tp{r['tp']}": r["prefill_speedup"] for r in rows[1:]}
    return {**speed, "compile_seconds": round(compile_seconds, 3), "rows": rows,
            "model": "llama-layer", "prefill_tokens": 64, "params": params.as_dict()}


def bench_serve():
    """Serving on the functional model (default hardware, 1 GHz): the trained test model
    (`tiny-trained`) serving a request mix -- 8 prompts of 150 to 200 bytes from the test
    corpus, arriving 100k cycles apart, 48 greedy tokens each, up to 4 sequences decoding
    together, KV blocks of 16 -- at TP = 1, 2, 4. Simulated tokens per second and mean time to
    first token from device cycles; ``kv_waste``: the fraction of allocated KV rows not
    holding a token, over every decode step (TP = 1)."""
    import numpy as np
    from .sw.compiler.train import CORPUS
    from .sw.runtime.engine import LLM, SamplingParams
    text = CORPUS.read_text()
    rng = np.random.default_rng(0)
    starts = rng.choice(len(text) - 400, 8, replace=False)
    prompts = [text[s:s + int(n)] for s, n in zip(starts, rng.integers(150, 201, 8))]
    arrivals = [100_000 * i for i in range(8)]
    rows, figures = [], {}
    for tp in (1, 2, 4):
        with LLM("tiny-trained", tp=tp, max_num_seqs=4, max_context=256) as llm:
            started = time.monotonic()
            outs = llm.generate(prompts, SamplingParams(max_tokens=48), arrivals=arrivals)
            wall = time.monotonic() - started
            hz = llm.cluster.params.clock_hz
            cycles = llm.now
            tokens = sum(len(o.token_ids) for o in outs)
            ttft = [o.ttft_cycles / hz * 1e3 for o in outs]
            row = {"tp": tp, "tokens": tokens, "cycles": cycles,
                   "tokens_per_second": round(tokens / (cycles / hz), 1),
                   "ttft_ms": round(float(np.mean(ttft)), 4),
                   "ttft_ms_max": round(max(ttft), 4), "kv_waste": round(llm.kv_waste, 4),
                   "steps": dict(llm.steps), "wall_s": round(wall, 1)}
        rows.append(row)
        figures[f"tokens_per_second_tp{tp}"] = row["tokens_per_second"]
        figures[f"ttft_ms_tp{tp}"] = row["ttft_ms"]
    print(f"{'TP':>3} {'tokens':>7} {'cycles':>11} {'tokens/s':>10} {'TTFT ms':>8} "
          f"{'KV waste':>9} {'wall s':>7}")
    for r in rows:
        print(f"{r['tp']:>3} {r['tokens']:>7} {r['cycles']:>11,} {r['tokens_per_second']:>10,.0f} "
              f"{r['ttft_ms']:>8.3f} {r['kv_waste']:>9.2%} {r['wall_s']:>7.1f}")
    return {"kv_waste": rows[0]["kv_waste"], **figures, "rows": rows,
            "model": "tiny-trained", "requests": len(prompts), "max_tokens": 48}


BENCHMARKS = {"fm-speed": bench_fm_speed, "gemm": bench_gemm, "dma": bench_dma,
              "paged": bench_paged, "gemm-dram": bench_gemm_dram, "link": bench_link,
              "allreduce": bench_allreduce, "latency": bench_latency,
              "simspeed": bench_simspeed, "tp-scaling": bench_tp_scaling,
              "serve": bench_serve}


def run_benchmarks(name, record=None):
    names = list(BENCHMARKS) if name == "all" else [name]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"npusim bench: unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
        return 2
    from .sw.params import DEFAULT
    for n in names:
        print(f"== bench {n}")
        figures = BENCHMARKS[n]()
        # the parameters a benchmark ran with when it says, else the defaults
        params = figures.pop("params", DEFAULT.as_dict())
        if record:
            out = Path(record) / f"{n}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({
                "benchmark": n, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": platform.machine(), "python": platform.python_version(),
                "params": params, "figures": figures}, indent=2) + "\n")
        print(json.dumps(figures))
    return 0
