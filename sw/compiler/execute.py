"""Compiled programs on the functional model: load the weights, write the new tokens' ids,
slot mappings and block tables, launch every device's stream at once with the sequences'
positions in run-time registers, read the logits back.

The host's side of the programs' contract (what the runtime does on either backend): the
embedding is vocabulary-parallel, so each device gets the token ids of its own range and the
index of its all-zero row for the others; the logits come back as one slice per device.
"""

from dataclasses import dataclass

import numpy as np

from npusim.sw.isa import encode_stream

from .codegen import SEQ_REG0

__all__ = ["local_ids", "load_weights", "Sequence", "PAD_BLOCK", "prefill", "decode", "run",
           "host_inputs", "split_logits", "stream_bytes"]


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


@dataclass
class Sequence:
    """One sequence's part of a launch: its new ``tokens`` from position ``start``, its block
    tables and the slots of the new tokens, per KV group (``codegen.kv_group``; a list
    stands for the same in every group)."""
    tokens: list
    start: int
    tables: object
    slots: object

    def of(self, what, group):
        value = getattr(self, what)
        return value[group] if isinstance(value, dict) else value


#: The block padding writes its K and V to -- the padding sequences of a decode batch, and
#: the padding tokens after a prompt shorter than its bucket (a slot in this block is always
#: allowed): block 0, which the runtime's KV cache manager keeps back (the null block) and
#: never gives a sequence.
PAD_BLOCK = 0


def prefill(system, tpg, programs, tokens, slots):
    """Run the prefill ``programs`` for ``tokens`` (their KV rows go to ``slots``):
    ``(logits (tokens x vocab) fp32, cycles)``."""
    if programs[0].layout.phase != "prefill":
        raise ValueError(f"these are {programs[0].layout.phase} programs, not prefill")
    logits, cycles = run(system, tpg, programs, [Sequence(tokens, 0, [], slots)])
    return logits[0], cycles


def decode(system, tpg, programs, token, position, block_table, slot):
    """Run the decode ``programs`` for one ``token`` at ``position`` of a sequence whose
    blocks are ``block_table`` (the new token's K and V go to ``slot``): ``(logits (vocab,)
    fp32, cycles)``."""
    if programs[0].layout.phase != "decode":
        raise ValueError(f"these are {programs[0].layout.phase} programs, not decode")
    logits, cycles = run(system, tpg, programs,
                         [Sequence([token], position, block_table, [slot])])
    return logits[0][0], cycles


def run(system, tpg, programs, sequences):
    """Run one phase's ``programs`` for ``sequences`` (:class:`Sequence`; a decode batch
    shorter than the programs' is padded with sequences writing to ``PAD_BLOCK``) on the
    functional model ``system``: ``([logits (new tokens x vocab) fp32 per sequence],
    cycles)``."""
    sequences, writes, regs = host_inputs(tpg, programs, sequences)
    for p in programs:
        dram = system.devices[p.device].dram
        for addr, data in writes[p.device]:
            dram.write(addr, np.frombuffer(data, np.uint8))
        system.launch(p.device, stream_bytes(p), 0, regs=regs[p.device])
    start = system.kernel.now
    system.run()
    system.check()
    cycles = system.kernel.now - start
    raw = {p.device: system.devices[p.device].dram.read(*p.layout.regions["logits"]).tobytes()
           for p in programs}
    return split_logits(programs, raw, sequences), cycles


def stream_bytes(program):
    """The program's encoded stream, checked against the stream area its layout leaves."""
    stream = encode_stream(program.commands)
    if len(stream) > program.layout.stream_bytes:
        raise ValueError(f"device {program.device}'s stream is {len(stream)} bytes, more than "
                         f"the {program.layout.stream_bytes} of the stream area")
    return stream


def host_inputs(tpg, programs, sequences):
    """What the host writes before launching ``programs`` for ``sequences``: ``(the sequences
    padded, {device: [(DRAM address, bytes)]}, {device: {register: value}})`` -- the new
    tokens' ids (each device's own vocabulary range), the slot mappings and block tables per
    KV group, the position registers and the ring registers. ValueError when the sequences do
    not fit the programs."""
    layout = programs[0].layout
    sequences = _check(layout, sequences)
    tokens = [t for s in sequences for t in s.tokens]
    positions = {SEQ_REG0 + i: s.start for i, s in enumerate(sequences)} \
        if layout.segments else {}
    writes, regs = {}, {}
    for p in programs:
        out = writes[p.device] = [(p.layout.addr("ids"),
                                   local_ids(tpg, p.device, tokens).tobytes())]
        for group in layout.groups:
            slots = [x for s in sequences for x in s.of("slots", group)]
            out.append((p.layout.addr(f"slots.{group}"), np.asarray(slots, np.uint32).tobytes()))
            if layout.segments:
                tables = np.zeros((len(sequences), layout.table_entries), np.uint32)
                for i, s in enumerate(sequences):
                    table = s.of("tables", group)[:layout.table_entries]
                    tables[i, :len(table)] = table
                out.append((p.layout.addr(f"table.{group}"), tables.tobytes()))
        regs[p.device] = {**p.registers, **positions}
    return sequences, writes, regs


def split_logits(programs, raw, sequences):
    """Each sequence's logits (new tokens x vocab, fp32) from each device's ``logits`` region
    bytes (``raw``: {device: bytes}): the devices' vocabulary slices side by side."""
    rows = sum(len(s.tokens) for s in sequences)
    logits = np.concatenate([np.frombuffer(raw[p.device], np.float32).reshape(rows, -1)
                             for p in programs], axis=1)
    bounds = np.cumsum([0] + [len(s.tokens) for s in sequences])
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check(layout, sequences):
    """The sequences as the programs take them (a decode batch padded), or a ValueError
    saying what does not fit."""
    bs, phase = layout.block_size, layout.phase
    if phase == "prefill":
        wanted = (layout.tokens,)
    elif phase == "extend":
        wanted = layout.segments
    else:
        if not 1 <= len(sequences) <= len(layout.segments):
            raise ValueError(f"the decode programs take 1 to {len(layout.segments)} "
                             f"sequences, got {len(sequences)}")
        pad = Sequence([0], 0, [PAD_BLOCK], [PAD_BLOCK * bs])
        sequences = list(sequences) + [pad] * (len(layout.segments) - len(sequences))
        wanted = layout.segments
    if len(sequences) != len(wanted):
        raise ValueError(f"the {phase} programs take {len(wanted)} sequence(s), got "
                         f"{len(sequences)}")
    for s, n in zip(sequences, wanted):
        if len(s.tokens) != n:
            raise ValueError(f"the {phase} programs were compiled for {n} new tokens per "
                             f"sequence, got {len(s.tokens)}")
        if phase == "prefill" and s.start:
            raise ValueError("a prefill starts at position 0 (an extend phase continues a "
                             "sequence)")
        if layout.segments and s.start + n > layout.max_context:
            raise ValueError(f"positions {s.start} .. {s.start + n - 1}: the {phase} programs "
                             f"hold {layout.max_context} keys")
        for group in layout.groups:
            slots = s.of("slots", group)
            if len(slots) != n:
                raise ValueError(f"{n} new tokens need {n} slots, got {len(slots)} "
                                 f"({group} layers)")
            if not layout.segments:
                continue
            table = s.of("tables", group)
            blocks = -(-(s.start + n) // bs)
            if len(table) < blocks:
                raise ValueError(f"positions up to {s.start + n - 1} need {blocks} blocks, "
                                 f"the table has {len(table)} ({group} layers)")
            for j, slot in enumerate(slots):
                pos = s.start + j
                if slot // bs != table[pos // bs] and slot // bs != PAD_BLOCK:
                    raise ValueError(f"slot {slot} is not in the block the table gives "
                                     f"position {pos} ({group} layers)")
    return sequences
