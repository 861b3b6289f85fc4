"""The FlashAttention-style kernel (``firmware/attention.py``) on the functional model against
the compiler's reference attention (``sw/compiler/reference.py``) on the same bf16 Q, K, V,
within 4e-3 of the largest output (measured: about 1e-3, the rounding of P to bf16):
causal, sliding window, GQA, ragged blocks, queries after a prefix of keys, and the key
length from a run-time register."""

import numpy as np
import pytest

from test_rowops import run as run_sram

from npusim.firmware.attention import attention, attention_work
from npusim.firmware.rowops import Tile
from npusim.sw import numerics as nx
from npusim.sw.compiler import reference as ref
from npusim.sw.isa.enums import DType

Q, K, V, OUT, WORK = 0x0000, 0x2000, 0x4000, 0x6000, 0xA000


def bf16(rng, shape):
    bits = nx.fp32_to_bf16(rng.standard_normal(shape).astype(np.float32).view(np.uint32))
    return bits, nx.bf16_to_fp32(bits).view(np.float32)


def run(q_bits, k_bits, v_bits, heads, kv_heads, d, *, tq, tk, regs=None, **kw):
    t, n = q_bits.shape[0], k_bits.shape[0]
    work = attention_work(WORK, tq, tk, d)
    cmds = attention(Tile(Q, t, heads * d, dtype=DType.BF16),
                     Tile(K, n, kv_heads * d, dtype=DType.BF16),
                     Tile(V, n, kv_heads * d, dtype=DType.BF16), Tile(OUT, t, heads * d),
                     heads=heads, kv_heads=kv_heads, head_dim=d, scale=d ** -0.5, work=work,
                     **kw)
    dev = run_sram(cmds, {Q: q_bits, K: k_bits, V: v_bits}, regs)
    return dev.sram.read(OUT, 4 * t * heads * d).view(np.float32).reshape(t, heads * d)


def expect(q, k, v, heads, kv_heads, d, q_pos, k_len, window):
    t = q.shape[0]
    out = ref.attention(q.reshape(t, heads, d), k[:k_len].reshape(k_len, kv_heads, d),
                        v[:k_len].reshape(k_len, kv_heads, d), q_pos, np.arange(k_len),
                        d ** -0.5, window)
    return out.reshape(t, heads * d)


@pytest.mark.parametrize("t, heads, kv_heads, d, tq, tk, window", [
    (16, 2, 1, 16, 16, 16, None),    # one block, GQA 2:1
    (20, 4, 2, 8, 8, 8, None),       # ragged blocks, causal skipping
    (24, 2, 2, 16, 8, 8, 5),         # sliding window: whole blocks skipped, rows all masked
])
def test_prefill_matches_reference(t, heads, kv_heads, d, tq, tk, window):
    rng = np.random.default_rng(t + d)
    (qb, q), (kb, k), (vb, v) = (bf16(rng, (t, w * d)) for w in (heads, kv_heads, kv_heads))
    got = run(qb, kb, vb, heads, kv_heads, d, tq=tq, tk=tk, window=window)
    want = expect(q, k, v, heads, kv_heads, d, np.arange(t), t, window)
    assert np.abs(got - want).max() <= 4e-3 * np.abs(want).max()


def test_queries_after_a_prefix_with_key_length_register():
    """4 new queries at positions 12..15 over a 16-key buffer of which a register says 14
    are valid (positions 14, 15 see only keys 0..13)."""
    rng = np.random.default_rng(9)
    heads, d = 2, 16
    (qb, q), (kb, k), (vb, v) = (bf16(rng, (n, heads * d)) for n in (4, 16, 16))
    got = run(qb, kb, vb, heads, heads, d, tq=4, tk=8, q_pos=12, klen=0, klen_reg=3,
              regs={3: 14})
    want = expect(q, k, v, heads, heads, d, np.arange(12, 16), 14, None)
    assert np.abs(got - want).max() <= 4e-3 * np.abs(want).max()
