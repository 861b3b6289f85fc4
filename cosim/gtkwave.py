"""A GTKWave save file (``.gtkw``) for the system's waves that opens on the signals worth
reading first: per device the command processor's dispatches to each engine queue, the
engine heads' idle bits, the DMA engines' commands and completions and their DRAM and link
traffic, the NE tile's jobs; then the interrupts.

Signal names come from the build's generated Verilog (its module port declarations), so a
renamed port drops out of the layout instead of leaving a dangling name; Verilator's FST
puts the top module under ``TOP``.
"""

import re
from pathlib import Path

__all__ = ["layout"]

#: (group title, module path under a device, ports)
_DEVICE = (
    ("command processor: commands dispatched", "cp",
     ("queue_dma_in__valid", "queue_dma_out__valid", "queue_compute__valid",
      "queue_link__valid", "stopped")),
    ("engine heads: idle (bit per engine: DMA_IN, DMA_OUT, COMPUTE, LINK)", "heads", ("idle",)),
    ("DMA_IN engine", "dma_dma_in", ("cmd__valid", "done__valid", "dram__aw__valid",
                                     "dram__r__valid")),
    ("DMA_OUT engine", "dma_dma_out", ("cmd__valid", "done__valid", "dram__aw__valid")),
    ("LINK engine (peer-to-peer)", "dma_link", ("cmd__valid", "done__valid", "link__aw__valid",
                                                "link__r__valid")),
    ("NE tile", "tile", ("done__valid", "dma__rd_addr__valid", "dma__wr__valid")),
)


def _ports(verilog):
    """``{module name: {port: width}}`` from the Verilog's port declarations."""
    out, module = {}, None
    decl = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):(\d+)\]\s+)?(\S+?)\s*;")
    for line in verilog.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
            out[module] = {}
        elif module and (m := decl.match(line)):
            width = int(m[2]) - int(m[3]) + 1 if m[2] else 1
            out[module][m[4].lstrip("\\")] = width
    return out


def layout(verilog_path, top, n_devices, dumpfile):
    """The ``.gtkw`` text for ``dumpfile`` of the system ``top`` with ``n_devices``."""
    ports = _ports(Path(verilog_path).read_text())
    lines = ["[*] npusim: make sim WAVES=1", f'[dumpfile] "{dumpfile}"', "[timestart] 0",
             "[size] 1600 1000", "[signals_width] 420", "[sst_width] 260"]

    def signal(module, port, scope):
        width = ports.get(module, {}).get(port)
        if width is None:
            return []
        name = f"TOP.{top}.{scope}.{port}" if scope else f"TOP.{top}.{port}"
        if width == 1:
            return ["@28", name]
        return ["@22", f"{name}[{width - 1}:0]"]

    for d in range(n_devices):
        for title, sub, names in _DEVICE:
            body = [x for p in names for x in signal(f"{top}.device{d}.{sub}", p,
                                                    f"device{d}.{sub}")]
            if body:
                lines += ["@200", f"-device {d} {title}"] + body
    body = [x for p in ("irq_count", "stopped") for x in signal(top, p, "")]
    if body:
        lines += ["@200", "-system: interrupts, stopped devices"] + body
    return "\n".join(lines) + "\n"
