"""The compiler from configuration to files: capture, split, generate both phases, estimate
their cycles on the functional model, and write the streams, weight images and manifest.

``npusim compile --config CONFIG --tp N -o DIR`` writes::

    DIR/manifest.json                  what the runtime needs (format below)
    DIR/prefill<T>.dev<d>.bin          the prefill stream of bucket T (prompt tokens) of
                                       device d (header + commands)
    DIR/decode.dev<d>.bin              the decode stream of device d
    DIR/weights.dev<d>.bin             device d's weight image (regions at the manifest's
                                       offsets in it, to be written at their DRAM addresses)

The manifest (``format: "npusim-manifest"``, ``version: 1``): the model's dimensions
(``model``), ``tp``, the hardware parameters, the KV geometry (``kv``: block size, blocks,
KV heads per device, head size, bf16, the pool addresses per layer), the run-time registers
(``registers``: the decode position, and per device the ring neighbours' BARs for the host's
bus map), and per phase (``prefill:<T>`` for each bucket, ``decode``) and device: the stream
file, its size and command count, the estimated cycles, and the DRAM regions (weights, pools,
the host's inputs ``ids``, ``slots``, ``table`` and the output ``logits``; weights and
pools are at the same addresses in every phase).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npusim.sw.isa import encode_stream

from .capture import capture
from .codegen import KLEN_REG, POS_REG, ROPE_REG, generate
from .execute import decode, load_weights, prefill
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
    prefill: dict      # {bucket tokens: [program per device]}
    decode: list
    cycles: dict       # {"prefill:<T>": cycles, "decode": cycles}
    seconds: float     # compile time (capture to streams)


def compile_model(config, tp, params, *, tokens=16, block_size=16, kv_blocks=64,
                  max_context=None, seed=0, estimate=True):
    """Compile ``config`` (preset name, JSON path or dict) for ``tp`` devices: prefill
    programs for each bucket of ``tokens`` (an int or a list) and decode programs; with
    ``estimate``, each runs once on the functional model (a prompt of token 0s, then one
    decode step) for its cycles."""
    import time
    started = time.monotonic()
    config = load_config(config)
    graph = capture(build_model(config, seed=seed))
    tpg = split(graph, tp)
    kw = dict(block_size=block_size, kv_blocks=kv_blocks, max_context=max_context)
    buckets = sorted({tokens} if isinstance(tokens, int) else set(tokens))
    pre = {t: generate(tpg, params, tokens=t, **kw) for t in buckets}
    dec = generate(tpg, params, phase="decode", **kw)
    seconds = time.monotonic() - started
    cycles = _estimate(tpg, params, pre, dec) if estimate else {}
    return Compiled(config, graph, tpg, params, pre, dec, cycles, seconds)


def _phases(compiled):
    """``(name, programs)`` of every phase: the prefill buckets, then decode."""
    return [(f"prefill:{t}", p) for t, p in compiled.prefill.items()] + \
        [("decode", compiled.decode)]


def _estimate(tpg, params, pre, dec):
    """Cycles of each phase on the functional model; the same for every device of a phase
    (they finish together: the all-reduces hold them in step)."""
    from npusim.sw.fm.system import System
    system = System(tpg.tp, params)
    load_weights(system, next(iter(pre.values())))
    cycles = {}
    for t, programs in pre.items():
        _, cycles[f"prefill:{t}"] = prefill(system, tpg, programs, [0] * t, list(range(t)))
    t, bs = max(pre), dec[0].layout.block_size
    table = list(range(-(-(t + 1) // bs)))
    if t + 1 <= dec[0].layout.max_context:
        _, cycles["decode"] = decode(system, tpg, dec, 0, t, table, t)
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
    for phase, programs in _phases(c):
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
                         "max_context": layout.max_context, "stream_bytes": layout.stream_bytes,
                         "devices": devices}
    weights = []
    first = next(iter(c.prefill.values()))
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
                                  layout.regions[f"{n.name}.v_pool"][0]] for n in attn}},
        "registers": {"position": POS_REG, "key_length": KLEN_REG, "rope_offset": ROPE_REG},
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
    for phase, programs in _phases(c):
        for p in programs:
            stream = encode_stream(p.commands)
            cycles = c.cycles.get(phase)
            lines.append(f"{phase:<11} {p.device:>6} {len(p.commands):>9} {len(stream):>9} "
                         f"{cycles if cycles is not None else '-':>12}")
    return "\n".join(lines)
