"""A compiled model resident on a cluster: weights and streams loaded once, phases run on
request.

The compiler lays out every device's DRAM (``codegen.Layout``): the streams' area from 0,
then the weights, the KV pools and the host's input and output regions at the same
addresses in every phase. :class:`Model` reserves that layout in the cluster's allocator,
writes the weight images, loads every phase's stream into the streams' area, and then runs a
phase for a list of :class:`~npusim.sw.compiler.execute.Sequence` s by writing their inputs
(``execute.host_inputs``), launching every device's stream and reading the logits back.
"""

from npusim.firmware.dma import copy
from npusim.sw.compiler.execute import (PAD_BLOCK, Sequence, host_inputs, split_logits,
                                        stream_bytes)
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import Engine, Space

__all__ = ["Model", "Sequence", "PAD_BLOCK"]


class Model:
    """``compiled`` (a :class:`~npusim.sw.compiler.driver.Compiled`) on ``cluster``, which
    must have its TP devices and hardware parameters."""

    def __init__(self, cluster, compiled):
        if cluster.n_devices != compiled.tpg.tp:
            raise ValueError(f"the model is compiled for TP = {compiled.tpg.tp}, the cluster "
                             f"has {cluster.n_devices} devices")
        if cluster.params != compiled.params:
            diff = sorted(k for k, v in compiled.params.as_dict().items()
                          if cluster.params.as_dict()[k] != v)
            raise ValueError(f"the model is compiled for other hardware parameters "
                             f"({', '.join(diff)})")
        self.cluster, self.compiled = cluster, compiled
        self.tpg, self.spec = compiled.tpg, compiled.graph.spec
        first = next(iter(compiled.phases.values()))
        self.layout = first[0].layout
        self.block_size, self.kv_blocks = self.layout.block_size, self.layout.kv_blocks
        self.groups = {g: compiled.graph.node(names[0]).attrs["window"]
                       for g, names in self.layout.groups.items()}
        self.pools = [r for r in self.layout.regions if r.endswith("_pool")]
        self.streams = {}
        self.cycles = {}           # phase -> cycles of its launches, summed
        self.spans = []            # (phase, start cycle, end cycle) of every launch
        self.device_cycles = {}    # phase -> [cycles per device], summed over launches
        for p in first:
            lo = min(a for a, _ in p.layout.regions.values())
            hi = max(a + n for a, n in p.layout.regions.values())
            cluster.alloc(p.device, hi - lo, at=lo)
            for name, data in p.weights.items():
                cluster.write(p.device, p.layout.addr(name), data)
        for name, programs in compiled.phases.items():
            self.streams[name] = {}
            for p in programs:
                raw = stream_bytes(p)
                buf = cluster.alloc(p.device, len(raw))
                if buf.addr + len(raw) > p.layout.stream_bytes:
                    raise ValueError(f"the streams of every phase do not fit device "
                                     f"{p.device}'s stream area ({p.layout.stream_bytes} "
                                     f"bytes): compile fewer buckets")
                cluster.write(p.device, buf.addr, raw)
                self.streams[name][p.device] = buf

    def phases(self, kind):
        """``{bucket: phase name}`` of one kind (``prefill``, ``decode``, ``extend``)."""
        return {int(n.split(":")[1]): n for n in self.compiled.phases if n.startswith(kind + ":")}

    def run(self, phase, sequences):
        """Run ``phase`` (e.g. ``"decode:4"``) for ``sequences``: ``([logits per sequence],
        cycles)``."""
        programs = self.compiled.phases[phase]
        sequences, writes, regs = host_inputs(self.tpg, programs, sequences)
        for d, items in writes.items():
            for addr, data in items:
                self.cluster.write(d, addr, data)
        start = self.cluster.cycles
        per_device = self.cluster.wait(self.cluster.launch(self.streams[phase], regs))
        cycles = max(per_device.values())
        self.cycles[phase] = self.cycles.get(phase, 0) + cycles
        total = self.device_cycles.setdefault(phase, [0] * self.cluster.n_devices)
        for d, c in per_device.items():
            total[d] += c
        self.spans.append((phase, start, self.cluster.cycles))
        raw = {p.device: self.cluster.read(p.device, *p.layout.regions["logits"])
               for p in programs}
        return split_logits(programs, raw, sequences), cycles

    def copy_blocks(self, copies):
        """Copy KV blocks ``[(src, dst)]`` in every layer's K and V pool on every device (the
        KV manager's copy-on-write), with one stream per device; returns the cycles."""
        if not copies:
            return 0
        block = {}
        streams = {}
        for d in range(self.cluster.n_devices):
            cmds = []
            for pool in self.pools:
                addr, size = self.layout.regions[pool]
                block[pool] = size // self.kv_blocks
                for src, dst in copies:
                    for b in (src, dst):
                        if not 0 <= b < self.kv_blocks or b == PAD_BLOCK:
                            raise ValueError(f"block {b} is not a KV block (1 .. "
                                             f"{self.kv_blocks - 1})")
                    cmds += copy(Engine.DMA_IN, Space.DRAM, addr + src * block[pool],
                                 Space.DRAM, addr + dst * block[pool], block[pool])
            cmds.append(Command("FENCE", engines=0))
            streams[d] = self.cluster.load_stream(d, encode_stream(cmds))
        start = self.cluster.cycles
        try:
            cycles = self.cluster.run(streams)
            self.spans.append(("kv-copy", start, self.cluster.cycles))
            return cycles
        finally:
            for buf in streams.values():
                self.cluster.free(buf)
