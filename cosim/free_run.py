"""The speed of a Verilated model on its own: ``free_run.cpp`` (a plain C++ clock loop, no
cocotb) linked against a build's compiled model, run for some cycles with nothing happening.
What ``npusim bench simspeed`` measures cocotb-driven runs against: it separates the model's
cost from the testbench's, on the same machine in the same minute."""

import subprocess
from pathlib import Path

from .verilator_flow import _verilator_root

__all__ = ["free_run_speed"]

SOURCE = Path(__file__).with_name("free_run.cpp")


def free_run_speed(directory, cycles=20000):
    """Cycles per second of the model built in ``directory`` (a :class:`Build`'s), clocked
    from C++ for ``cycles`` cycles after reset."""
    directory = Path(directory)
    include = _verilator_root() / "include"
    objects = [directory / "Vtop__ALL.a"] + sorted(directory.glob("verilated*.o"))
    exe = directory / "free_run"
    subprocess.run(["c++", "-O2", "-std=c++20", f"-I{directory}", f"-I{include}",
                    f"-I{include / 'vltstd'}", str(SOURCE), *map(str, objects), "-o", str(exe),
                    "-lpthread"], check=True, capture_output=True, timeout=600)
    out = subprocess.run([str(exe), str(cycles)], check=True, capture_output=True, text=True,
                         timeout=600).stdout.split()
    return int(out[0]) / float(out[1])
