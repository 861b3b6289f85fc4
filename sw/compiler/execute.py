"""Compiled programs on the functional model: load the weights, write a prompt's token ids
and slot mapping, launch every device's stream at once, read the logits back.

The host's side of the programs' contract (what the runtime does on either backend): the
embedding is vocabulary-parallel, so each device gets the token ids of its own range and the
index of its all-zero row for the others; the logits come back as one slice per device.
"""

import numpy as np

from npusim.sw.isa import encode_stream

from .codegen import POS_REG

__all__ = ["local_ids", "load_weights", "prefill", "decode"]


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
    if programs[0].layout.phase != "prefill":
        raise ValueError("these are decode programs")
    if len(tokens) != T or len(slots) != T:
        raise ValueError(f"the programs were compiled for {T} tokens, got {len(tokens)} "
                         f"tokens and {len(slots)} slots")
    return _run(system, tpg, programs, tokens, slots, None, {})


def decode(system, tpg, programs, token, position, block_table, slot):
    """Run the decode ``programs`` for one ``token`` at ``position`` of a sequence whose
    blocks are ``block_table`` (the new token's K and V go to ``slot``): ``(logits (vocab,)
    fp32, cycles)``."""
    layout = programs[0].layout
    if layout.phase != "decode":
        raise ValueError("these are prefill programs")
    blocks = -(-(position + 1) // layout.block_size)
    if position + 1 > layout.max_context:
        raise ValueError(f"position {position}: the decode programs hold "
                         f"{layout.max_context} keys")
    if len(block_table) < blocks:
        raise ValueError(f"position {position} needs {blocks} blocks, the table has "
                         f"{len(block_table)}")
    if slot >> (layout.block_size.bit_length() - 1) != block_table[position // layout.block_size]:
        raise ValueError(f"slot {slot} is not in the block the table gives position {position}")
    logits, cycles = _run(system, tpg, programs, [token], [slot], block_table[:blocks],
                          {POS_REG: position})
    return logits[0], cycles


def _run(system, tpg, programs, tokens, slots, table, regs):
    for p in programs:
        dram = system.devices[p.device].dram
        dram.write(p.layout.addr("ids"), local_ids(tpg, p.device, tokens).view(np.uint8))
        dram.write(p.layout.addr("slots"), np.asarray(slots, np.uint32).view(np.uint8))
        if table is not None:
            dram.write(p.layout.addr("table"), np.asarray(table, np.uint32).view(np.uint8))
        stream = encode_stream(p.commands)
        if len(stream) > p.layout.stream_bytes:
            raise ValueError(f"device {p.device}'s stream is {len(stream)} bytes, more than "
                             f"the {p.layout.stream_bytes} of the stream area")
        system.launch(p.device, stream, 0, regs={**p.registers, **regs})
    start = system.kernel.now
    system.run()
    system.check()
    cycles = system.kernel.now - start
    parts = []
    for p in programs:
        addr, nbytes = p.layout.regions["logits"]
        parts.append(system.devices[p.device].dram.read(addr, nbytes).view(np.float32)
                     .reshape(len(tokens), -1))
    return np.concatenate(parts, axis=1), cycles
