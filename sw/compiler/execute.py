"""Compiled programs on the functional model: load the weights, write a prompt's token ids
and slot mapping, launch every device's stream at once, read the logits back.

The host's side of the programs' contract (what the runtime does on either backend): the
embedding is vocabulary-parallel, so each device gets the token ids of its own range and the
index of its all-zero row for the others; the logits come back as one slice per device.
"""

import numpy as np

from npusim.sw.isa import encode_stream

from .codegen import STREAM_AREA

__all__ = ["local_ids", "load_weights", "prefill"]


def local_ids(tpg, device, tokens):
    """Token ids as device ``device``'s embedding shard indexes them (u32): its own range
    shifted to 0, every other id pointing at its zero row."""
    rows = tpg.shards[next(n.name for n in tpg.graph.nodes if n.op == "embed")].attrs["rows"]
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.min() < 0 or tokens.max() >= tpg.graph.spec.vocab:
        raise ValueError(f"token ids must be in 0 .. {tpg.graph.spec.vocab - 1}")
    lo = device * rows
    mine = (tokens >= lo) & (tokens < lo + rows)
    return np.where(mine, tokens - lo, rows).astype(np.uint32)


def load_weights(system, programs):
    """Write every device's weight image into its DRAM."""
    for p in programs:
        dram = system.devices[p.device].dram
        for name, data in p.weights.items():
            dram.write(p.layout.addr(name), np.frombuffer(data, np.uint8))


def prefill(system, tpg, programs, tokens, slots):
    """Run the prefill ``programs`` for ``tokens`` (their KV rows go to ``slots``):
    ``(logits (tokens x vocab) fp32, cycles)``."""
    T = programs[0].layout.tokens
    if len(tokens) != T or len(slots) != T:
        raise ValueError(f"the programs were compiled for {T} tokens, got {len(tokens)} "
                         f"tokens and {len(slots)} slots")
    for p in programs:
        dram = system.devices[p.device].dram
        dram.write(p.layout.addr("ids"), local_ids(tpg, p.device, tokens).view(np.uint8))
        dram.write(p.layout.addr("slots"), np.asarray(slots, np.uint32).view(np.uint8))
        stream = encode_stream(p.commands)
        if len(stream) > STREAM_AREA:
            raise ValueError(f"device {p.device}'s stream is {len(stream)} bytes, more than "
                             f"the {STREAM_AREA} of the stream area")
        system.launch(p.device, stream, 0, regs=p.registers)
    start = system.kernel.now
    system.run()
    system.check()
    cycles = system.kernel.now - start
    parts = []
    for p in programs:
        addr, nbytes = p.layout.regions["logits"]
        parts.append(system.devices[p.device].dram.read(addr, nbytes).view(np.float32)
                     .reshape(T, -1))
    return np.concatenate(parts, axis=1), cycles
