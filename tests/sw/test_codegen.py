"""The back end (``sw/compiler/codegen.py``): a captured model compiled for TP = 1, 2, 4
into one prefill stream per device, run on the functional model, gives the PyTorch model's
own logits (Hugging Face's forward for the HF presets) within the bf16 error bound (the same
greedy tokens where the margin is decisive), writes the prompt's K and V rows
into the paged pool through the slot mapping, and keeps every semaphore balanced; one decode
stream per device then serves every following step, reading the keys through the block
table, with only run-time registers changing."""

import numpy as np
import pytest
from test_capture import torch_logits as model_logits

from npusim.sw import numerics as nx
from npusim.sw.compiler.capture import capture
from npusim.sw.compiler.codegen import generate
from npusim.sw.compiler.execute import (PAD_BLOCK, Sequence, decode, load_weights, local_ids,
                                        prefill, run as run_phase)
from npusim.sw.compiler.models import build_model
from npusim.sw.compiler.reference import apply_rope, rmsnorm, rope_tables
from npusim.sw.compiler.tp import split
from npusim.sw.fm.system import System
from npusim.sw.params import DEFAULT

#: Largest logit error allowed, as a fraction of the largest logit: bf16 operands into every
#: matrix multiply (measured: 0.25-0.8 %).
BOUND = 0.02

GRAPHS = {}


def graph(preset):
    if preset not in GRAPHS:
        GRAPHS[preset] = capture(build_model(preset, seed=2))
    return GRAPHS[preset]


def torch_logits(preset, ids):
    """The PyTorch model's own fp32 logits (Hugging Face's forward for the HF presets)."""
    return model_logits(build_model(preset, seed=2), np.asarray(ids))


def run(preset, tp, tokens, slots=None):
    g = graph(preset)
    tpg = split(g, tp)
    programs = generate(tpg, DEFAULT, tokens=tokens)
    system = System(tp, DEFAULT)
    load_weights(system, programs)
    ids = np.random.default_rng(tokens).integers(0, g.spec.vocab, tokens)
    slots = np.arange(tokens) if slots is None else slots
    logits, cycles = prefill(system, tpg, programs, ids, slots)
    return g, ids, logits, system, programs, cycles


@pytest.mark.parametrize("preset, tp, tokens", [
    ("tiny-llama", 1, 16), ("tiny-llama", 2, 16), ("tiny-llama", 4, 16),
    ("tiny-mistral", 2, 32),          # 32 tokens over a 16-key window
    ("tiny-qwen2", 4, 16),            # biases, tied embeddings, 2 of 8 KV heads per device
    ("tiny-npusim", 2, 16),
])
def test_prefill_logits_within_bound(preset, tp, tokens):
    g, ids, logits, system, _, _ = run(preset, tp, tokens)
    ref = torch_logits(preset, ids)
    assert logits.shape == ref.shape
    assert np.abs(logits - ref).max() <= BOUND * np.abs(ref).max()
    margin = np.sort(ref, axis=-1)[:, -2:]
    decisive = margin[:, 1] - margin[:, 0] > 2 * BOUND * np.abs(ref).max()
    assert np.array_equal(logits.argmax(-1)[decisive], ref.argmax(-1)[decisive])
    for dev in system.devices:
        assert all(v == 0 for v in dev.sems), "a kernel left a semaphore raised"


def test_kv_rows_land_in_their_slots():
    """Slots scattered over blocks 3, 5 and 1 of 16-token blocks: each token's K row (RoPE
    applied, bf16) is in its slot of layer 0's pool on the device that holds its KV head."""
    T = 16
    slots = np.array([3 * 16 + i for i in range(6)] + [5 * 16 + i for i in range(6)]
                     + [16 + i for i in range(4)])
    g, ids, _, system, programs, _ = run("tiny-llama", 2, T, slots)
    attn = g.node("layers.0.self_attn")
    x = g.params["model.embed_tokens.weight"][ids]
    norm = g.node("layers.0.input_layernorm")
    xn = rmsnorm(x, g.weight(norm, "weight"), norm.attrs["eps"])
    d = attn.attrs["head_dim"]
    k = (xn @ g.weight(attn, "k").T).reshape(T, attn.attrs["kv_heads"], d)
    cos, sin = rope_tables(np.arange(T), d, attn.attrs["rope_theta"])
    k = apply_rope(k, cos, sin)
    for dev, p in enumerate(programs):     # KV head `dev` on device `dev`
        pool = p.layout.addr("layers.0.self_attn.k_pool")
        row = d * 2
        for t, slot in enumerate(slots):
            bits = system.devices[dev].dram.read(pool + slot * row, row).view(np.uint16)
            got = nx.bf16_to_fp32(bits).view(np.float32)
            assert np.abs(got - k[t, dev]).max() <= 0.02 * np.abs(k).max()


def test_tensor_parallel_is_faster():
    """The same prefill on 2 devices takes fewer cycles than on 1 (tiny model: the ratio is
    not the scaling target, only its direction)."""
    cycles = {tp: run("tiny-llama", tp, 16)[-1] for tp in (1, 2)}
    assert cycles[2] < cycles[1]


def test_host_side_errors():
    g = graph("tiny-llama")
    tpg = split(g, 2)
    with pytest.raises(ValueError, match="token ids must be in 0 .. 255"):
        local_ids(tpg, 0, [1, 256])
    assert list(local_ids(tpg, 1, [0, 127, 128, 255])) == [128, 128, 0, 127]
    programs = generate(tpg, DEFAULT, tokens=16)
    with pytest.raises(ValueError, match="compiled for 16 new tokens"):
        prefill(System(2, DEFAULT), tpg, programs, [1] * 8, list(range(8)))
    with pytest.raises(ValueError, match="positions"):
        generate(tpg, DEFAULT, tokens=1024)
    with pytest.raises(ValueError, match="power of two"):
        generate(tpg, DEFAULT, tokens=16, block_size=12)


def prefill_and_decode(preset, tp, table, steps=16, T=16, bs=16):
    """A prompt of ``T`` tokens, then ``steps`` greedy decode steps with one decode program:
    ``(ids, [logits of each step])``; the sequence's blocks are ``table``."""
    g = graph(preset)
    tpg = split(g, tp)
    pre = generate(tpg, DEFAULT, tokens=T, block_size=bs)
    dec = generate(tpg, DEFAULT, phase="decode", block_size=bs, max_context=64)
    system = System(tp, DEFAULT)
    load_weights(system, pre)

    def slot(pos):
        return table[pos // bs] * bs + pos % bs
    ids = list(np.random.default_rng(tp).integers(0, g.spec.vocab, T))
    logits, _ = prefill(system, tpg, pre, ids, [slot(i) for i in range(T)])
    out = [logits[-1]]
    for pos in range(T, T + steps):
        ids.append(int(out[-1].argmax()))
        logits, _ = decode(system, tpg, dec, ids[-1], pos, table, slot(pos))
        out.append(logits)
    return ids, out


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mistral"])
def test_prefill_then_16_decode_steps(preset, tp):
    """GQA (tiny-llama) and a sliding window (tiny-mistral, 16 keys: decode positions 16..31
    see only the last 16): 16 prompt tokens in blocks 5 and 2 of a shuffled table, then 16
    greedy decode steps into block 7 with the same decode programs; every step's logits
    within the bound of the PyTorch model run over the whole sequence so far."""
    ids, steps = prefill_and_decode(preset, tp, [5, 2, 7, 1])
    ref = torch_logits(preset, ids)
    for i, logits in enumerate(steps[1:]):
        want = ref[16 + i]
        assert np.abs(logits - want).max() <= BOUND * np.abs(want).max(), i


def test_paged_and_contiguous_kv_agree():
    """The same sequence with its blocks contiguous (0, 1, 2) or scattered (6, 3, 9): the
    decode logits are bit-identical."""
    _, contiguous = prefill_and_decode("tiny-qwen2", 2, [0, 1, 2], steps=6)
    _, scattered = prefill_and_decode("tiny-qwen2", 2, [6, 3, 9], steps=6)
    for a, b in zip(contiguous, scattered):
        assert np.array_equal(a, b)


def slots_of(table, start, n, bs=16):
    return [table[p // bs] * bs + p % bs for p in range(start, start + n)]


def test_batched_decode_with_sliding_window():
    """Three sequences of different lengths (prompts of 16, 9 and 5 tokens, each through an
    extend phase from position 0) decode together in a batch of 4 (one padding sequence
    writing to the pad block) for 20 greedy steps with tiny-mistral's 16-key window at
    TP = 2: each sequence's logits within the bound of PyTorch over that sequence alone. Once
    the first sequence's block 0 has left its window, that block is filled with NaNs: the
    window layers' gathers never read it again."""
    g = graph("tiny-mistral")
    tpg = split(g, 2)
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, g.spec.vocab, n)) for n in (16, 9, 5)]
    tables = [[5, 2, 7], [3, 8], [11, 4]]
    kw = dict(max_context=64, kv_blocks=16)
    dec = generate(tpg, DEFAULT, phase="decode", batch=4, **kw)
    system = System(2, DEFAULT)
    load_weights(system, dec)
    ids, last = [], []
    for prompt, table in zip(prompts, tables):
        ext = generate(tpg, DEFAULT, phase="extend", tokens=len(prompt), **kw)
        logits, _ = run_phase(system, tpg, ext, [Sequence(prompt, 0, table,
                                                          slots_of(table, 0, len(prompt)))])
        ids.append(list(prompt) + [int(logits[0][-1].argmax())])
        last.append([logits[0][-1]])
    poisoned = False
    for _ in range(20):
        if len(ids[0]) - 1 >= 31 and not poisoned:     # block 0 of sequence 0 out of window
            for p in dec:
                for region, (addr, size) in p.layout.regions.items():
                    if region.endswith("_pool"):
                        block = size // p.layout.kv_blocks
                        system.devices[p.device].dram.write(
                            addr + tables[0][0] * block, np.full(block, 0xFF, np.uint8))
            poisoned = True
        seqs = [Sequence([s[-1]], len(s) - 1, t, slots_of(t, len(s) - 1, 1))
                for s, t in zip(ids, tables)]
        logits, _ = run_phase(system, tpg, dec, seqs)
        for s, out, lg in zip(ids, last, logits):
            out.append(lg[0])
            s.append(int(lg[0].argmax()))
    assert poisoned
    for s, out in zip(ids, last):
        ref = torch_logits("tiny-mistral", s[:-1])
        for i, logits in enumerate(out):
            want = ref[len(s) - 1 - len(out) + i]
            assert np.abs(logits - want).max() <= BOUND * np.abs(want).max(), i
            assert np.isfinite(logits).all()


def test_extend_continues_a_prefix():
    """A 24-token prompt as a prefill of 16 then an extend of 8 (the new tokens attend over
    the cached prefix through the block table): the 8 rows' logits within the bound of
    PyTorch's for the whole prompt."""
    g = graph("tiny-llama")
    tpg = split(g, 2)
    ids = list(np.random.default_rng(9).integers(0, g.spec.vocab, 24))
    table = [6, 1]
    pre = generate(tpg, DEFAULT, tokens=16, max_context=32)
    ext = generate(tpg, DEFAULT, phase="extend", tokens=8, max_context=32)
    system = System(2, DEFAULT)
    load_weights(system, pre)
    prefill(system, tpg, pre, ids[:16], slots_of(table, 0, 16))
    logits, _ = run_phase(system, tpg, ext, [Sequence(ids[16:], 16, table,
                                                      slots_of(table, 16, 8))])
    ref = torch_logits("tiny-llama", ids)[16:]
    assert np.abs(logits[0] - ref).max() <= BOUND * np.abs(ref).max()


def test_batch_errors():
    tpg = split(graph("tiny-llama"), 1)
    dec = generate(tpg, DEFAULT, phase="decode", batch=2, max_context=32)
    system = System(1, DEFAULT)
    one = Sequence([1], 3, [1], [19])
    with pytest.raises(ValueError, match="take 1 to 2 sequences, got 3"):
        run_phase(system, tpg, dec, [one] * 3)
    with pytest.raises(ValueError, match="1 to 16"):
        generate(tpg, DEFAULT, phase="decode", batch=17)
    with pytest.raises(ValueError, match="an extend phase continues"):
        run_phase(system, tpg, generate(tpg, DEFAULT, tokens=1), [Sequence([1], 3, [], [3])])
    assert PAD_BLOCK == 0


def test_model_larger_than_device_memory():
    tpg = split(graph("tiny-llama"), 1)
    with pytest.raises(ValueError, match="does not fit device 0.s DRAM"):
        generate(tpg, DEFAULT.replace(dram_bytes=512 << 10), tokens=16)


def test_decode_errors():
    tpg = split(graph("tiny-llama"), 1)
    dec = generate(tpg, DEFAULT, phase="decode", max_context=32)
    system = System(1, DEFAULT)
    with pytest.raises(ValueError, match="hold 32 keys"):
        decode(system, tpg, dec, 1, 32, [0, 1, 2], 32)
    with pytest.raises(ValueError, match="need 2 blocks"):
        decode(system, tpg, dec, 1, 20, [0], 20)
    with pytest.raises(ValueError, match="not in the block"):
        decode(system, tpg, dec, 1, 20, [0, 3], 20)
    with pytest.raises(ValueError, match="whole blocks"):
        generate(tpg, DEFAULT, phase="decode", max_context=40)
    with pytest.raises(ValueError, match="these are decode programs, not prefill"):
        prefill(system, tpg, dec, [1], [0])
