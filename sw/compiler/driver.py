"""The compiler from configuration to files: capture, split, generate both phases, estimate
their cycles on the functional model, and write the streams, weight images and manifest.

``npusim compile --config CONFIG --tp N -o DIR`` writes::

    DIR/manifest.json                  what the runtime needs (format below)
    DIR/prefill<T>.dev<d>.bin          the prefill stream of bucket T (prompt tokens) of
                                       device d (header + commands)
    DIR/decode<B>.dev<d>.bin           the decode stream of a batch of B sequences
    DIR/extend<T>.dev<d>.bin           the stream adding T tokens to one sequence
    DIR/weights.dev<d>.bin             device d's weight image (regions at the manifest's
                                       offsets in it, to be written at their DRAM addresses)

The manifest (``format: "npusim-manifest"``, ``version: 1``): the model's dimensions
(``model``), ``tp``, the hardware parameters, the KV geometry (``kv``: block size, blocks,
KV heads per device, head size, bf16, the pool addresses per layer), the KV groups, the run-time
registers (``registers``: where each sequence's first position goes, the stream's scratch
registers; per device the ring neighbours' BARs for the host's bus map), and per phase
(``prefill:<T>``, ``decode:<B>``, ``extend:<T>`` for each bucket) and device: the stream
file, its size and command count, the estimated cycles, and the DRAM regions (weights, pools,
the host's inputs ``ids``, ``slots.<group>``, ``table.<group>`` and the output ``logits``;
weights and pools are at the same addresses in every phase).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npusim.sw.isa import encode_stream

from .capture import capture
from .codegen import MAX_BATCH, SCRATCH_REGS, SEQ_REG0, generate
from .execute import PAD_BLOCK, Sequence, load_weights, run
from .models import build_model, load_config
from .tp import split

__all__ = ["Compiled", "compile_model", "write", "summary"]

FORMAT, VERSION = "npusim-manifest", 1


@dataclass
class Compiled:
    """A compiled model: its graph, split, both phases' programs and their estimates."""
    config: dict
    graph: object
    tpg: object
    params: object
    phases: dict       # {"prefill:<T>" | "decode:<B>" | "extend:<T>": [program per device]}
    cycles: dict       # {phase: estimated cycles}
    seconds: float     # compile time (capture to streams)

    def programs(self, kind):
        """``{bucket: programs}`` of the phases of one kind (prefill, decode, extend)."""
        return {int(name.split(":")[1]): p for name, p in self.phases.items()
                if name.startswith(kind + ":")}


def _buckets(value):
    return sorted({value} if isinstance(value, int) else set(value or ()))


def compile_model(config, tp, params, *, tokens=16, batch=(1,), extend=(), block_size=16,
                  kv_blocks=64, max_context=None, seed=0, estimate=True):
    """Compile ``config`` (preset name, JSON path or dict) for ``tp`` devices: a prefill
    phase for each bucket of ``tokens`` (prompt lengths), a decode phase for each bucket of
    ``batch`` (sequences per step) and an extend phase for each bucket of ``extend`` (tokens
    added to a sequence with a cached prefix); each an int or a list. With ``estimate``,
    each phase runs once on the functional model for its cycles (a prompt of token 0s; a
    decode step and an extend after the longest prompt)."""
    import time
    started = time.monotonic()
    config = load_config(config)
    graph = capture(build_model(config, seed=seed))
    tpg = split(graph, tp)
    kw = dict(block_size=block_size, kv_blocks=kv_blocks, max_context=max_context)
    phases = {}
    for t in _buckets(tokens):
        phases[f"prefill:{t}"] = generate(tpg, params, tokens=t, **kw)
    for b in _buckets(batch):
        phases[f"decode:{b}"] = generate(tpg, params, phase="decode", batch=b, **kw)
    for t in _buckets(extend):
        phases[f"extend:{t}"] = generate(tpg, params, phase="extend", tokens=t, **kw)
    seconds = time.monotonic() - started
    compiled = Compiled(config, graph, tpg, params, phases, {}, seconds)
    if estimate:
        compiled.cycles = _estimate(compiled)
    return compiled


def _estimate(compiled):
    """Cycles of each phase on the functional model; the same for every device of a phase
    (they finish together: the all-reduces hold them in step). Decode and extend continue a
    sequence of the longest prompt, in blocks 1 ..; every sequence of a decode batch is that
    one (the cost of a phase does not depend on what it reads)."""
    from npusim.sw.fm.system import System
    tpg = compiled.tpg
    system = System(tpg.tp, compiled.params)
    first = next(iter(compiled.phases.values()))
    load_weights(system, first)
    layout = first[0].layout
    bs, blocks = layout.block_size, layout.table_entries
    start = max(compiled.programs("prefill"), default=0)
    cycles = {}
    for name, programs in compiled.phases.items():
        kind, n = name.split(":")
        n = int(n)
        new = 1 if kind == "decode" else n
        if kind == "prefill":
            seqs = [Sequence([0] * n, 0, [], [bs + i for i in range(n)])]
        elif start + new > programs[0].layout.max_context or blocks >= layout.kv_blocks:
            continue      # no context left after the longest prompt, or not enough blocks
        else:
            table = [PAD_BLOCK + 1 + j for j in range(blocks)]
            slots = [table[p // bs] * bs + p % bs for p in range(start, start + new)]
            seqs = [Sequence([0] * new, start, table, slots)] * (n if kind == "decode" else 1)
        _, cycles[name] = run(system, tpg, programs, seqs)
    return cycles


def _weights_blob(program):
    """The weight regions packed back to back: ``(bytes, {region: [file offset, DRAM addr,
    bytes]})``."""
    blob, index, at = bytearray(), {}, 0
    for name, data in program.weights.items():
        index[name] = [at, program.layout.addr(name), len(data)]
        blob += data
        at += len(data)
    return bytes(blob), index


def write(compiled, out):
    """Write the streams, weight images and ``manifest.json`` under ``out``; the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = compiled
    spec = c.graph.spec
    attn = [n for n in c.graph.nodes if n.op == "attention"]
    local = c.tpg.shards[attn[0].name].attrs
    phases = {}
    for phase, programs in c.phases.items():
        devices = []
        for p in programs:
            stream = encode_stream(p.commands)
            name = f"{phase.replace(':', '')}.dev{p.device}.bin"
            (out / name).write_bytes(stream)
            devices.append({
                "stream": name, "bytes": len(stream), "commands": len(p.commands),
                "estimated_cycles": c.cycles.get(phase),
                "regions": {k: list(v) for k, v in p.layout.regions.items()},
                "ring_registers": {str(k): v for k, v in p.registers.items()}})
        layout = programs[0].layout
        phases[phase] = {"phase": layout.phase, "tokens": layout.tokens,
                         "sequences": list(layout.segments) or [layout.tokens],
                         "max_context": layout.max_context, "stream_bytes": layout.stream_bytes,
                         "devices": devices}
    weights = []
    first = next(iter(c.phases.values()))
    for p in first:
        blob, index = _weights_blob(p)
        name = f"weights.dev{p.device}.bin"
        (out / name).write_bytes(blob)
        weights.append({"file": name, "bytes": len(blob), "regions": index})
    layout = first[0].layout
    manifest = {
        "format": FORMAT, "version": VERSION, "model": spec.as_dict(), "tp": c.tpg.tp,
        "config": c.config, "params": c.params.as_dict(),
        "kv": {"block_size": layout.block_size, "blocks": layout.kv_blocks,
               "kv_heads_per_device": local["kv_heads"], "kv_heads_replicated":
               local["kv_replicated"], "head_dim": local["head_dim"], "dtype": "bf16",
               "pools": {n.name: [layout.regions[f"{n.name}.k_pool"][0],
                                  layout.regions[f"{n.name}.v_pool"][0]] for n in attn},
               "groups": {g: {"layers": names, "window": c.graph.node(names[0]).attrs["window"]}
                          for g, names in layout.groups.items()},
               "pad_block": PAD_BLOCK},
        "registers": {"first_position": SEQ_REG0, "max_batch": MAX_BATCH,
                      "scratch": SCRATCH_REGS},
        "phases": phases, "weights": weights,
        "compile_seconds": round(c.seconds, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def summary(compiled):
    """A readable table: per phase and device, commands, stream bytes, estimated cycles."""
    c = compiled
    spec = c.graph.spec
    lines = [f"{spec.name}: {spec.layers} layers, hidden {spec.hidden}, {spec.heads} heads "
             f"({spec.kv_heads} KV), vocab {spec.vocab}; TP = {c.tpg.tp}; compiled in "
             f"{c.seconds:.2f} s",
             f"weights per device: {np.mean(c.tpg.bytes_per_device()) / 1024:.1f} KiB (bf16)",
             f"{'phase':<11} {'device':>6} {'commands':>9} {'bytes':>9} {'est. cycles':>12}"]
    for phase, programs in c.phases.items():
        for p in programs:
            stream = encode_stream(p.commands)
            cycles = c.cycles.get(phase)
            lines.append(f"{phase:<11} {p.device:>6} {len(p.commands):>9} {len(stream):>9} "
                         f"{cycles if cycles is not None else '-':>12}")
    return "\n".join(lines)
