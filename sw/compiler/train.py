"""Train the tiny test checkpoint: a 2-layer Llama (Hugging Face's class, byte-level
vocabulary) on a small public-domain text, so greedy decoding has decisive logits and prints
readable text -- the honest oracle the compiler and runtime tests compare against (a model
with random weights has near-tied logits, and bf16 rounding would flip its argmax).

The text (``data/corpus.txt``): the opening of the Declaration of Independence (1776) and the
Gettysburg Address (1863), both in the public domain. Tokens are the UTF-8 bytes.

    python -m npusim.sw.compiler.train            # writes data/tiny_llama.pt (about 0.5 MB)

Training is reproducible from the seed: one CPU thread, deterministic algorithms, the same
batches in the same order. It takes about a minute on a 2-core machine.
"""

import argparse
import time
from pathlib import Path

import numpy as np

__all__ = ["CONFIG", "CORPUS", "CHECKPOINT", "encode", "decode", "train"]

DATA = Path(__file__).with_name("data")
CORPUS = DATA / "corpus.txt"
CHECKPOINT = DATA / "tiny_llama.pt"

#: The checkpoint's configuration (``models.PRESETS["tiny-trained"]`` with the checkpoint).
CONFIG = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64,
          "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5}


def encode(text):
    """Token ids of ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def decode(ids):
    """Text of token ids (bytes that do not form UTF-8 are replaced)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def train(seed=0, steps=1500, seq=64, batch=16, lr=3e-3, log=None):
    """The trained model (eval mode)."""
    import torch

    from .models import build_model
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = build_model(CONFIG, seed=seed).train()
    data = torch.tensor(encode(CORPUS.read_text()))
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        starts = rng.integers(0, len(data) - seq - 1, batch)
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        logits = model(x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 250 == 0 or step == steps - 1):
            log(f"step {step:5d} loss {loss.item():.4f}")
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("-o", "--output", default=str(CHECKPOINT))
    args = p.parse_args(argv)
    import torch
    started = time.monotonic()
    model = train(args.seed, args.steps, log=print)
    torch.save(model.state_dict(), args.output)
    print(f"wrote {args.output} in {time.monotonic() - started:.0f} s")
    prompt = "We hold these truths"
    ids = torch.tensor([encode(prompt)])
    out = model.generate(ids, max_new_tokens=60, do_sample=False)
    print(repr(decode(out[0].tolist())))


if __name__ == "__main__":
    main()
