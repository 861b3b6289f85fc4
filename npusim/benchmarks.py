"""Benchmarks behind ``npusim bench NAME`` and ``make bench``.

Each benchmark measures, prints a readable table and returns its figures; the runner prints
them as one JSON object on the last line and, with ``--record DIR``, writes
``DIR/<name>.json`` together with the parameters used. Figures are ratios measured in one run,
never compared with a wall-clock limit.
"""

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["BENCHMARKS", "run_benchmarks"]


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


BENCHMARKS = {"fm-speed": bench_fm_speed}


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
        if record:
            out = Path(record) / f"{n}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({
                "benchmark": n, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": platform.machine(), "python": platform.python_version(),
                "params": DEFAULT.as_dict(), "figures": figures}, indent=2) + "\n")
        print(json.dumps(figures))
    return 0
