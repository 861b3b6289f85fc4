"""The graph executed in numpy fp32: what a compiled model must compute.

This is the meaning of each op of :mod:`.graph`, written once, plainly: the front end is
held to it (the captured graph's logits against the PyTorch model's), and the tensor-parallel
split and the kernels are held to it in turn. RoPE follows the rotate-half convention of
Llama (the two halves of each head are the pairs), attention is causal and, for a layer with
a window ``w``, a query at position ``i`` sees the keys at ``i - w < j <= i``.
"""

import numpy as np

__all__ = ["forward", "apply", "linear", "rope_tables", "apply_rope", "attention", "rmsnorm",
           "silu"]


def rmsnorm(x, weight, eps):
    x = x.astype(np.float32)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))) * weight


def silu(x):
    return x / (np.float32(1) + np.exp(-x))


def rope_tables(positions, head_dim, theta):
    """cos, sin of shape ``(tokens, head_dim)`` for the rotate-half RoPE."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def apply_rope(x, cos, sin):
    """``x`` ``(tokens, heads, head_dim)`` rotated by the tables of its positions."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attention(q, k, v, q_pos, k_pos, scale, window=None):
    """Grouped-query attention: ``q`` ``(Tq, H, D)``, ``k``/``v`` ``(Tk, KV, D)`` at positions
    ``q_pos``/``k_pos``; causal, windowed when ``window`` is set. ``(Tq, H, D)``."""
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    qp, kp = np.asarray(q_pos)[:, None], np.asarray(k_pos)[None, :]
    visible = kp <= qp
    if window is not None:
        visible &= kp > qp - window
    out = np.empty_like(q)
    for h in range(heads):
        s = (q[:, h, :] @ k[:, h // group, :].T) * np.float32(scale)
        s = np.where(visible, s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, h // group, :]
    return out


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def apply(op, attrs, xs, w, positions):
    """One op on its input activations ``xs``, its weights by role from ``w(role)`` (None if
    absent) and its attributes; ``positions`` of the tokens (RoPE, masks). The embedding's
    input is the token ids."""
    x = xs[0] if xs else None
    if op == "embed":
        return w("weight")[x]
    if op == "rmsnorm":
        return rmsnorm(x, w("weight"), attrs["eps"])
    if op == "add":
        return xs[0] + xs[1]
    if op == "linear":
        return linear(x, w("weight"), w("bias"))
    if op == "mlp":
        return linear(silu(linear(x, w("gate"), w("gate_bias"))) * linear(x, w("up"), w("up_bias")),
                      w("down"), w("down_bias"))
    if op == "attention":
        t, d = len(x), attrs["head_dim"]
        q = linear(x, w("q"), w("q_bias")).reshape(t, attrs["heads"], d)
        k = linear(x, w("k"), w("k_bias")).reshape(t, attrs["kv_heads"], d)
        v = linear(x, w("v"), w("v_bias")).reshape(t, attrs["kv_heads"], d)
        cos, sin = rope_tables(positions, d, attrs["rope_theta"])
        o = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, positions, positions,
                      attrs["scale"], attrs["window"])
        return linear(o.reshape(t, attrs["heads"] * d), w("o"), w("o_bias"))
    raise AssertionError(op)   # Graph.check() admits no other op


def forward(graph, tokens, positions=None):
    """Logits ``(tokens, vocab)`` of ``graph`` for the token ids ``tokens`` at ``positions``
    (default ``0, 1, ...``), one sequence, no cache."""
    tokens = np.asarray(tokens)
    positions = np.arange(len(tokens)) if positions is None else np.asarray(positions)
    values = {"tokens": tokens}
    for n in graph.nodes:
        y = apply(n.op, n.attrs, [values[i] for i in n.inputs],
                  lambda role, n=n: graph.weight(n, role), positions)
        values[n.name] = y.astype(np.float32)
    return values[graph.output]
