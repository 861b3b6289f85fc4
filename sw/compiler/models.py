"""Models the compiler takes: Hugging Face Llama, Mistral and Qwen2 built from a
configuration with seeded random weights (never downloaded), and our own Llama-style
PyTorch module, :class:`TinyLlama`; plus the named presets of small configurations.

A configuration is a dict in the form of a Hugging Face ``config.json`` (``model_type`` and
the usual fields); ``model_type: "npusim"`` selects :class:`TinyLlama`, and a
``checkpoint`` names a weights file in ``sw/compiler/data`` (the ``tiny-trained`` preset).
"""

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .train import CONFIG as TRAINED_CONFIG

__all__ = ["PRESETS", "HF_TYPES", "load_config", "build_model", "TinyLlama", "TinyLlamaConfig"]

#: Small configurations by name (``npusim compile --config NAME``).
PRESETS = {
    # GQA (4 query heads over 2 KV heads), the default Llama layout
    "tiny-llama": {"model_type": "llama", "vocab_size": 256, "hidden_size": 64,
                   "intermediate_size": 176, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 256, "rms_norm_eps": 1e-5},
    # every layer with a sliding window of 16 keys
    "tiny-mistral": {"model_type": "mistral", "vocab_size": 256, "hidden_size": 64,
                     "intermediate_size": 176, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "sliding_window": 16,
                     "rms_norm_eps": 1e-5},
    # biases in QKV, tied embeddings, 8 heads over 8 KV heads
    "tiny-qwen2": {"model_type": "qwen2", "vocab_size": 256, "hidden_size": 64,
                   "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 8, "num_key_value_heads": 8,
                   "max_position_embeddings": 256, "tie_word_embeddings": True,
                   "rms_norm_eps": 1e-6},
    # our own module
    "tiny-npusim": {"model_type": "npusim", "vocab_size": 256, "hidden_size": 64,
                    "intermediate_size": 176, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2,
                    "max_position_embeddings": 256},
    # the trained test checkpoint (train.py): readable text, decisive logits
    "tiny-trained": {**TRAINED_CONFIG, "checkpoint": "tiny_llama.pt"},
    # one layer large enough for tensor parallelism to pay (bench tp-scaling)
    "llama-layer": {"model_type": "llama", "vocab_size": 1024, "hidden_size": 1024,
                    "intermediate_size": 2816, "num_hidden_layers": 1,
                    "num_attention_heads": 16, "num_key_value_heads": 8,
                    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5},
}

#: model_type -> (transformers config class, model class) names.
HF_TYPES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
            "mistral": ("MistralConfig", "MistralForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}


def load_config(config):
    """A configuration dict from a preset name, a ``config.json`` path or a dict."""
    if isinstance(config, dict):
        return dict(config)
    if config in PRESETS:
        return dict(PRESETS[config])
    path = Path(config)
    if not path.exists():
        raise FileNotFoundError(f"{config!r} is neither a preset ({', '.join(PRESETS)}) nor "
                                "a file")
    return json.loads(path.read_text())


def build_model(config, seed=0):
    """The PyTorch model of ``config`` (see :func:`load_config`) with weights drawn from
    ``seed``, in eval mode."""
    config = load_config(config)
    kind = config.get("model_type")
    torch.manual_seed(seed)
    if kind == "npusim":
        known = {f.name for f in fields(TinyLlamaConfig)}
        return TinyLlama(TinyLlamaConfig(**{k: v for k, v in config.items()
                                            if k in known})).eval()
    if kind not in HF_TYPES:
        raise ValueError(f"model_type {kind!r} is not supported; supported: "
                         f"{', '.join([*HF_TYPES, 'npusim'])}")
    import transformers
    cfg_cls, model_cls = (getattr(transformers, n) for n in HF_TYPES[kind])
    cfg = cfg_cls(**{k: v for k, v in config.items() if k not in ("model_type", "checkpoint")})
    cfg._attn_implementation = "sdpa"
    model = model_cls(cfg)
    if "checkpoint" in config:   # weights from a file in the package's data, not the seed
        path = Path(__file__).with_name("data") / config["checkpoint"]
        state, wanted = torch.load(path, weights_only=True), model.state_dict()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"the checkpoint {config['checkpoint']} has no {missing[0]} "
                             f"(fewer layers than the configuration's?)")
        # a configuration with fewer layers takes the checkpoint's first ones
        model.load_state_dict({k: v for k, v in state.items() if k in wanted})
    return model.eval()


# -- our own Llama-style module ------------------------------------------------------------

@dataclass
class TinyLlamaConfig:
    """The fields :class:`TinyLlama` reads, named as in Hugging Face configurations."""
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    model_type: str = "npusim"

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim, theta):
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions):
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (c.num_attention_heads,
                                                    c.num_key_value_heads, c.head_dim)
        self.window = c.sliding_window
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.window is None:
            o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                               enable_gqa=True)
        else:
            i = torch.arange(t)
            visible = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)
            o = F.scaled_dot_product_attention(q[None], k[None], v[None],
                                               attn_mask=visible, enable_gqa=True)
        return self.o_proj(o[0].transpose(0, 1).reshape(t, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class TinyLlama(nn.Module):
    """A Llama-style decoder written for npusim: ``forward(input_ids (1, T))`` ->
    logits ``(1, T, vocab)``. Same maths as Hugging Face's Llama, its own code."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta)
        self.blocks = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=1 / math.sqrt(p.shape[1]))
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids):
        ids = input_ids[0]
        cos, sin = self.rope(torch.arange(ids.shape[0]))
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))[None]
