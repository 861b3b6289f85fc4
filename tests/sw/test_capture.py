"""The compiler's front end (``sw/compiler/capture.py``): Hugging Face Llama, Mistral and
Qwen2 and our own module, captured with torch.export into our graph, compute the model's
logits (numpy fp32 reference against PyTorch fp32); what the compiler cannot compile is
refused with the op named."""

import numpy as np
import pytest
import torch
from torch import nn

from npusim.sw.compiler.capture import UnsupportedOp, capture
from npusim.sw.compiler.graph import Graph, GraphError, Node
from npusim.sw.compiler.models import PRESETS, build_model
from npusim.sw.compiler.reference import forward


def torch_logits(model, ids):
    kwargs = {} if model.config.model_type == "npusim" else {"use_cache": False}
    with torch.no_grad():
        out = model(torch.tensor(ids)[None], **kwargs)
    return (out.logits if hasattr(out, "logits") else out)[0].numpy()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-npusim"])
def test_captured_graph_computes_the_models_logits(preset):
    """40 tokens (more than the 16-key window of tiny-mistral): the graph's logits within
    1e-5 of the largest logit of PyTorch's."""
    model = build_model(preset, seed=3)
    graph = capture(model)
    ids = np.random.default_rng(1).integers(0, graph.spec.vocab, 40)
    ref = torch_logits(model, ids)
    got = forward(graph, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_graph_structure_and_spec():
    graph = capture(build_model("tiny-llama"))
    s = graph.spec
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate) == \
        (256, 64, 2, 4, 2, 16, 176)
    assert s.windows == (None, None) and not s.tied and s.rms_eps == 1e-5
    assert [n.op for n in graph.nodes] == ["embed"] + ["rmsnorm", "attention", "add", "rmsnorm",
                                                       "mlp", "add"] * 2 + ["rmsnorm", "linear"]
    attn = graph.node("layers.0.self_attn")
    assert attn.weights == {r: f"model.layers.0.self_attn.{r}_proj.weight" for r in "qkvo"}
    # residuals as the model wires them
    assert graph.node("layers.0.add0").inputs == ("embed_tokens", "layers.0.self_attn")
    assert graph.node("layers.1.add0").inputs == ("layers.0.add1", "layers.1.self_attn")
    assert graph.output == "lm_head"


def test_biases_and_tied_embeddings():
    graph = capture(build_model("tiny-qwen2"))
    attn = graph.node("layers.0.self_attn")
    assert {"q_bias", "k_bias", "v_bias"} <= set(attn.weights) and "o_bias" not in attn.weights
    assert graph.spec.tied
    head = graph.node("lm_head")
    assert head.weights["weight"] == graph.node("embed_tokens").weights["weight"]
    assert not any(p.startswith("lm_head") for p in graph.params)


def test_per_layer_windows_from_layer_types():
    cfg = dict(PRESETS["tiny-qwen2"], use_sliding_window=True, sliding_window=8,
               max_window_layers=1)
    model = build_model(cfg)
    graph = capture(model)
    assert graph.spec.windows == (None, 8)
    ids = np.random.default_rng(2).integers(0, 256, 24)
    ref = torch_logits(model, ids)
    assert np.abs(forward(graph, ids) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("change, named", [
    ({"hidden_act": "gelu"}, "gelu"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE type 'linear'"),
])
def test_unsupported_configurations_name_the_op(change, named):
    model = build_model({**PRESETS["tiny-llama"], **change})
    with pytest.raises(UnsupportedOp, match=named):
        capture(model)


def test_unsupported_module_names_the_op_and_where():
    model = build_model("tiny-npusim")
    norm = model.blocks[1].mlp_norm
    model.blocks[1].mlp_norm = nn.LayerNorm(norm.weight.shape[0])
    with pytest.raises(UnsupportedOp, match=r"layer_norm.*blocks\.1\.mlp_norm"):
        capture(model)


def test_non_causal_attention_is_refused():
    model = build_model("tiny-npusim")

    class BidirectionalAttention(type(model.blocks[0].attn)):
        def forward(self, x, cos, sin):
            t = x.shape[0]
            q = self.q_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
            k = self.k_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
            v = self.v_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
            q = q * cos + torch.cat([-q[..., 8:], q[..., :8]], -1) * sin
            o = nn.functional.scaled_dot_product_attention(q[None], k[None], v[None],
                                                           enable_gqa=True)
            return self.o_proj(o[0].transpose(0, 1).reshape(t, -1))

    model.blocks[0].attn.__class__ = BidirectionalAttention
    with pytest.raises(UnsupportedOp, match="not causal"):
        capture(model)


def test_graph_checks_its_rules():
    graph = capture(build_model("tiny-llama"))
    with pytest.raises(GraphError, match="unknown op 'softmax'"):
        Graph(graph.spec, [Node("x", "softmax", ("tokens",))], {}, "x")
    with pytest.raises(GraphError, match="needs"):
        Graph(graph.spec, [Node("e", "embed", ("tokens",))], {}, "e")
    with pytest.raises(GraphError, match="before it is computed"):
        Graph(graph.spec, [Node("a", "add", ("b", "tokens"))], {}, "a")


def test_model_name():
    assert capture(build_model("tiny-llama")).spec.name == "llama"
    assert capture(build_model("tiny-npusim")).spec.name == "npusim"
