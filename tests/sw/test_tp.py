"""Tensor parallelism at the graph level (``sw/compiler/tp.py``): the split computes the
graph's logits for TP = 1, 2, 4, 8 (fp32, up to the re-association of the all-reduce
sums), weights are partitioned (replicated only where the rules say), and a model that does
not divide is refused with the dimension named."""

import numpy as np
import pytest

from npusim.sw.compiler.capture import capture
from npusim.sw.compiler.models import PRESETS, build_model
from npusim.sw.compiler.reference import forward
from npusim.sw.compiler.tp import TpError, run, split

GRAPHS = {}


#: Llama with every bias there is (Q, K, V, O, gate, up, down).
BIASED = dict(PRESETS["tiny-llama"], attention_bias=True, mlp_bias=True)


def graph(preset):
    if preset not in GRAPHS:
        GRAPHS[preset] = capture(build_model(BIASED if preset == "biased" else preset, seed=5))
    return GRAPHS[preset]


@pytest.mark.parametrize("preset, tp", [
    ("tiny-llama", 1), ("tiny-llama", 2), ("tiny-llama", 4),
    ("tiny-mistral", 2), ("tiny-mistral", 4),
    ("tiny-qwen2", 2), ("tiny-qwen2", 4), ("tiny-qwen2", 8),
    ("biased", 2), ("biased", 4),
])
def test_split_computes_the_graph(preset, tp):
    g = graph(preset)
    ids = np.random.default_rng(tp).integers(0, g.spec.vocab, 33)
    ref = forward(g, ids)
    got = run(split(g, tp), ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_partitioned_weights_add_up():
    """Column and row-parallel weights are cut, not copied: the devices together hold each
    MLP and attention weight once (GQA KV heads split evenly here, 8 over TP = 4)."""
    g = graph("tiny-qwen2")
    tpg = split(g, 4)
    for n in g.nodes:
        shard = tpg.shards[n.name]
        for role, parts in shard.weights.items():
            if shard.kind == "replicated" or role.endswith("bias") and role.startswith(("o", "down")):
                continue
            assert sum(p.size for p in parts) == g.weight(n, role).size, (n.name, role)
    per_device = tpg.bytes_per_device()
    assert max(per_device) == min(per_device)


def test_kv_heads_replicated_when_fewer_than_devices():
    """tiny-llama: 4 query heads over 2 KV heads at TP = 4: each device holds one query head
    and the KV head it reads, devices 0, 1 KV head 0 and devices 2, 3 KV head 1."""
    g = graph("tiny-llama")
    s = split(g, 4).shards["layers.0.self_attn"]
    assert s.attrs["heads"] == 1 and s.attrs["kv_heads"] == 1 and s.attrs["kv_replicated"]
    k = s.weights["k"]
    assert np.array_equal(k[0], k[1]) and np.array_equal(k[2], k[3])
    assert not np.array_equal(k[0], k[2])
    full = g.weight(g.node("layers.0.self_attn"), "k")
    assert np.array_equal(k[2], full[16:32])


@pytest.mark.parametrize("preset, tp, named", [
    ("tiny-llama", 8, "query heads 4 do not split evenly over TP = 8"),
    ("tiny-llama", 3, "vocabulary rows 256 do not split evenly over TP = 3"),
])
def test_indivisible_splits_are_refused(preset, tp, named):
    with pytest.raises(TpError, match=named):
        split(graph(preset), tp)


def test_kv_heads_that_neither_split_nor_replicate():
    """4 KV heads: replicated over 8 devices, but over 6 they neither split nor replicate."""
    cfg = dict(PRESETS["tiny-llama"], vocab_size=240, intermediate_size=192, hidden_size=96,
               num_attention_heads=24, num_key_value_heads=4)
    g = capture(build_model(cfg))
    assert split(g, 8).shards["layers.0.self_attn"].attrs["kv_replicated"]
    with pytest.raises(TpError, match="4 KV heads cannot be replicated over TP = 6"):
        split(g, 6)


def test_bad_tp():
    with pytest.raises(TpError, match="positive"):
        split(graph("tiny-llama"), 0)
