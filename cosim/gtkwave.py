"""A GTKWave save file (``.gtkw``) for the system's waves that opens on the signals worth
reading first: per device the command processor's dispatches to each engine queue, the
engine heads' idle bits, the DMA engines' commands and completions and their DRAM and link
traffic, the NE tile's jobs; then the interrupts.

Signal names come from the FST itself (:mod:`.fst`), as the run recorded them: a renamed
port drops out of the layout instead of leaving a dangling name. Verilator's FST puts the
design under its top module's name (no ``TOP`` scope).
"""

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


def layout(waves, top, n_devices, dumpfile):
    """The ``.gtkw`` text for ``dumpfile`` of the system ``top`` with ``n_devices``;
    ``waves`` is its ``{name: width}`` (:func:`.fst.signals`)."""
    lines = ["[*] npusim: make sim WAVES=1", f'[dumpfile] "{dumpfile}"', "[timestart] 0",
             "[size] 1600 1000", "[signals_width] 420", "[sst_width] 260"]

    def signal(path):
        width = waves.get(path)
        if width is None:
            return []
        return ["@28", path] if width == 1 else ["@22", f"{path}[{width - 1}:0]"]

    for d in range(n_devices):
        for title, sub, names in _DEVICE:
            body = [x for p in names for x in signal(f"{top}.device{d}.{sub}.{p}")]
            if body:
                lines += ["@200", f"-device {d} {title}"] + body
    body = [x for p in ("irq_count", "stopped") for x in signal(f"{top}.{p}")]
    if body:
        lines += ["@200", "-system: interrupts, stopped devices"] + body
    return "\n".join(lines) + "\n"
