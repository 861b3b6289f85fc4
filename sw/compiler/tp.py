"""Tensor parallelism: a :class:`~.graph.Graph` split over ``tp`` devices (Megatron-style).

The user gives the graph and ``tp``; the rules decide the rest:

- ``attention``: query heads split evenly (``heads % tp == 0``); column-parallel Q, K, V
  (each device's rows are its heads'), row-parallel O (its columns), then an all-reduce.
  KV heads split evenly when ``kv_heads >= tp`` (``kv_heads % tp == 0``); when there are
  fewer KV heads than devices (``tp % kv_heads == 0``) each device holds the one KV head its
  query heads read -- replicated, as GQA requires.
- ``mlp``: column-parallel gate and up (``intermediate % tp == 0``), row-parallel down, then
  an all-reduce.
- ``embed``: vocabulary-parallel: each device holds ``vocab / tp`` rows, looks up the tokens
  in its range (zeros elsewhere), then an all-reduce.
- ``linear`` (LM head): column-parallel over the vocabulary; each device's logits slice goes
  to the host (gather), which concatenates them.
- ``rmsnorm``, ``add``: replicated (every device holds the whole activation).

A bias of a row-parallel layer is held by every device and added after the all-reduce (the
residual stream stays replicated).
:func:`run` executes the split in numpy and combines it with the collectives: the check that
the split computes what the graph does.
"""

from dataclasses import dataclass, field

import numpy as np

from .graph import GraphError
from .reference import apply

__all__ = ["TpError", "Shard", "TpGraph", "split", "run"]


class TpError(GraphError):
    """The model cannot be split over that many devices: the message says why."""


@dataclass
class Shard:
    """How one node runs on the devices: ``kind`` (``replicated``, ``column``, ``row``,
    ``vocab``), the collective after it (``allreduce``, ``gather`` or None), the per-device
    weights ``{role: [array per device]}`` and attributes (local head counts)."""
    kind: str
    collective: str | None
    weights: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


@dataclass
class TpGraph:
    """The graph and, per node name, its :class:`Shard` over ``tp`` devices."""
    graph: object
    tp: int
    shards: dict

    def device_params(self, device):
        """``{f"{node}.{role}": array}`` of one device: what it holds in DRAM."""
        return {f"{name}.{role}": arrays[device]
                for name, s in self.shards.items() for role, arrays in s.weights.items()}

    def bytes_per_device(self, dtype_bytes=2):
        """Weight bytes each device holds (bf16 by default)."""
        return [sum(a.size for a in self.device_params(d).values()) * dtype_bytes
                for d in range(self.tp)]


def _even(what, total, tp):
    if total % tp:
        raise TpError(f"{what} {total} do not split evenly over TP = {tp}")
    return total // tp


def split(graph, tp):
    """Split ``graph`` over ``tp`` devices (1, 2, 4, 8, ...): a :class:`TpGraph`, or
    :class:`TpError` naming the dimension that does not divide."""
    if not isinstance(tp, int) or tp < 1:
        raise TpError(f"TP = {tp!r}: a positive number of devices is needed")
    s = graph.spec
    shards = {}
    for n in graph.nodes:
        def w(role):
            return graph.weight(n, role)
        if n.op in ("rmsnorm", "add"):
            shards[n.name] = Shard("replicated", None,
                                   {r: [graph.params[p]] * tp for r, p in n.weights.items()})
        elif n.op == "embed":
            rows = _even("vocabulary rows", s.vocab, tp)
            shards[n.name] = Shard("vocab", "allreduce" if tp > 1 else None,
                                   {"weight": [w("weight")[d * rows:(d + 1) * rows]
                                               for d in range(tp)]}, {"rows": rows})
        elif n.op == "linear":
            rows = _even("vocabulary rows of the LM head", w("weight").shape[0], tp)
            weights = {"weight": [w("weight")[d * rows:(d + 1) * rows] for d in range(tp)]}
            if w("bias") is not None:
                weights["bias"] = [w("bias")[d * rows:(d + 1) * rows] for d in range(tp)]
            shards[n.name] = Shard("column", "gather" if tp > 1 else None, weights,
                                   {"rows": rows})
        elif n.op == "mlp":
            cols = _even("MLP intermediate features", w("gate").shape[0], tp)
            part = [slice(d * cols, (d + 1) * cols) for d in range(tp)]
            weights = {"gate": [w("gate")[p] for p in part], "up": [w("up")[p] for p in part],
                       "down": [w("down")[:, p] for p in part]}
            for r in ("gate_bias", "up_bias"):
                if w(r) is not None:
                    weights[r] = [w(r)[p] for p in part]
            if w("down_bias") is not None:
                weights["down_bias"] = [w("down_bias")] * tp
            shards[n.name] = Shard("row", "allreduce" if tp > 1 else None, weights,
                                   {"intermediate": cols})
        elif n.op == "attention":
            shards[n.name] = _split_attention(graph, n, tp)
        else:   # Graph.check() admits no other op
            raise AssertionError(n.op)
    return TpGraph(graph, tp, shards)


def _split_attention(graph, n, tp):
    a = n.attrs
    heads, kv_heads, d = a["heads"], a["kv_heads"], a["head_dim"]
    local = _even("query heads", heads, tp)
    group = heads // kv_heads
    if kv_heads >= tp:
        local_kv = _even("KV heads", kv_heads, tp)
        kv_of = [list(range(dev * local_kv, (dev + 1) * local_kv)) for dev in range(tp)]
    else:
        if tp % kv_heads:
            raise TpError(f"{kv_heads} KV heads cannot be replicated over TP = {tp} "
                          f"(TP must be a multiple of the KV heads)")
        local_kv = 1
        kv_of = [[dev * local // group] for dev in range(tp)]
    # the query heads of each device read only its KV heads
    for dev in range(tp):
        for h in range(dev * local, (dev + 1) * local):
            if h // group not in kv_of[dev]:
                raise AssertionError("a query head without its KV head")

    def rows(matrix, head_ids):
        if matrix is None:
            return None
        return np.concatenate([matrix[h * d:(h + 1) * d] for h in head_ids])

    q_ids = [list(range(dev * local, (dev + 1) * local)) for dev in range(tp)]
    weights = {"q": [rows(graph.weight(n, "q"), q_ids[dev]) for dev in range(tp)],
               "k": [rows(graph.weight(n, "k"), kv_of[dev]) for dev in range(tp)],
               "v": [rows(graph.weight(n, "v"), kv_of[dev]) for dev in range(tp)],
               "o": [np.concatenate([graph.weight(n, "o")[:, h * d:(h + 1) * d]
                                     for h in q_ids[dev]], axis=1) for dev in range(tp)]}
    for r, ids in (("q_bias", q_ids), ("k_bias", kv_of), ("v_bias", kv_of)):
        if graph.weight(n, r) is not None:
            weights[r] = [rows(graph.weight(n, r), ids[dev]) for dev in range(tp)]
    if graph.weight(n, "o_bias") is not None:
        weights["o_bias"] = [graph.weight(n, "o_bias")] * tp
    return Shard("row", "allreduce" if tp > 1 else None, weights,
                 {"heads": local, "kv_heads": local_kv, "kv_replicated": kv_heads < tp,
                  "head_dim": d})


#: Biases of row-parallel layers: added after the all-reduce.
_AFTER = {"o_bias", "down_bias"}


def run(tpg, tokens, positions=None):
    """Logits of the split graph for ``tokens``: every device's part in numpy (the
    reference's ops on the device's weights and head counts), combined by the collectives
    (all-reduce = sum over devices, gather = concatenation)."""
    g, tp = tpg.graph, tpg.tp
    tokens = np.asarray(tokens)
    positions = np.arange(len(tokens)) if positions is None else np.asarray(positions)
    values = {"tokens": tokens}
    for n in g.nodes:
        s = tpg.shards[n.name]
        xs = [values[i] for i in n.inputs]
        parts = []
        for dev in range(1 if s.kind == "replicated" else tp):
            def w(role, dev=dev):
                return s.weights[role][dev] if role in s.weights else None
            if n.op == "embed":
                lo, rows = dev * s.attrs["rows"], s.attrs["rows"]
                mine = (xs[0] >= lo) & (xs[0] < lo + rows)
                y = np.where(mine[:, None], w("weight")[np.where(mine, xs[0] - lo, 0)], 0)
            else:
                y = apply(n.op, {**n.attrs, **s.attrs}, xs,
                          lambda role, w=w: None if role in _AFTER else w(role), positions)
            parts.append(y.astype(np.float32))
        if s.collective == "allreduce":
            values[n.name] = np.sum(parts, axis=0, dtype=np.float32)
            for role in _AFTER & set(s.weights):
                values[n.name] = values[n.name] + s.weights[role][0]
        elif s.collective == "gather":
            values[n.name] = np.concatenate(parts, axis=-1)
        else:
            values[n.name] = parts[0]
    return values[g.output]
