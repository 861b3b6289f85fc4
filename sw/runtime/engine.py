"""The serving engine: requests in, tokens out, with continuous batching over a paged KV
cache (vLLM's design, on simulated devices).

:class:`LLM` compiles a model for TP devices (prefill, extend and decode phases in buckets),
loads it on a :class:`~.cluster.Cluster` and serves requests. Each engine step is either

- a **prefill step**: waiting requests are admitted first come, first served while the
  running batch has room (``max_num_seqs``), the step's prompt tokens stay within
  ``max_num_batched_tokens`` and the KV cache can hold them (above its watermark); each
  admitted prompt runs as one sequence (a prefill from position 0, or an extend after the
  prefix the KV cache already holds, chunked when longer than the largest bucket), and its
  first token is sampled; or
- a **decode step**: every running sequence gets one token, in one launch of the smallest
  decode bucket that holds them all (padding sequences write to the pad block). When the KV
  cache cannot take a token for each, the most recently admitted sequence is *preempted*: its
  blocks are freed and it goes back to the head of the queue, to be recomputed (prompt and
  tokens so far, as one prompt) when there is room.

The engine's clock is the cluster's: requests carry an arrival cycle and join the queue once
the devices have run that long, so prompts can arrive while others decode. Time to first
token and throughput are device cycles, converted at ``HwParams.clock_hz``.
"""

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from npusim.sw.compiler.codegen import MAX_BATCH
from npusim.sw.compiler.driver import compile_model
from npusim.sw.compiler.execute import PAD_BLOCK, Sequence
from npusim.sw.compiler.models import load_config

from .cluster import Cluster
from .kv_cache import BlockManager
from .model import Model

__all__ = ["LLM", "SamplingParams", "RequestOutput", "ByteTokenizer", "StreamEvent"]


@dataclass(frozen=True)
class SamplingParams:
    """How a request's tokens are chosen: greedy at ``temperature`` 0, else sampled from the
    softmax at ``temperature`` over the ``top_k`` most likely tokens (0: all) within the
    smallest set of probability ``top_p``, from a generator seeded with ``seed`` (None: the
    request's index). Generation stops after ``max_tokens``, at a token of
    ``stop_token_ids``, or when the text contains a string of ``stop`` (cut before it)."""
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = None
    stop: tuple = ()
    stop_token_ids: tuple = ()

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens = {self.max_tokens}: at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature}: not negative")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"top_k = {self.top_k}, top_p = {self.top_p}: top_k >= 0, "
                             f"0 < top_p <= 1")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))


class ByteTokenizer:
    """Text as UTF-8 bytes, one token per byte (the byte-level fallback; the trained test
    model's vocabulary)."""
    vocab_size = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@dataclass
class RequestOutput:
    """A finished (or, while streaming, running) request."""
    request_id: int
    prompt: object                 # the prompt as given (text or token ids)
    prompt_token_ids: list
    token_ids: list = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str = None      # "length", "stop", "rejected"
    error: str = None              # why a request was rejected
    arrival: int = 0               # cycles
    first_token: int = None        # cycle of the first token
    finish: int = None             # cycle of the last
    preemptions: int = 0
    cached_tokens: int = 0         # prompt tokens the KV cache already held
    logits: list = None            # each new token's logits (fp32), with record_logits

    @property
    def ttft_cycles(self):
        return None if self.first_token is None else self.first_token - self.arrival


@dataclass(frozen=True)
class StreamEvent:
    """One new token of a request (``token_id`` None for a rejected request)."""
    request_id: int
    token_id: int
    text: str                      # the text this token added
    finished: bool
    output: RequestOutput


class _Request:
    def __init__(self, rid, prompt, ids, params, arrival):
        self.id, self.params = rid, params
        self.out = RequestOutput(rid, prompt, list(ids), arrival=arrival)
        seed = params.seed if params.seed is not None else rid
        self.rng = np.random.default_rng(seed)
        self.text_len = 0          # characters of out.text already streamed

    @property
    def tokens(self):
        """Every token of the sequence so far: the prompt, then the generated ones."""
        return self.out.prompt_token_ids + self.out.token_ids


def _buckets(limit, start=16):
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    return out + [limit]


class LLM:
    """A model (preset name, ``config.json`` path or dict) served on ``tp`` devices of
    ``backend``. ``max_num_seqs``: sequences decoding together; ``max_num_batched_tokens``:
    prompt tokens per prefill step; ``max_context``: positions per sequence (default the
    model's, at most 256); the KV cache has ``kv_blocks`` blocks of ``block_size`` tokens per
    layer and device (block 0 kept back as the pad block). Hardware parameters: ``params``
    (default the backend's). ``seed`` draws the weights of models without a checkpoint;
    ``record_logits`` keeps each new token's logits in its output; ``backend_options`` go
    to the cluster's backend."""

    def __init__(self, model="tiny-trained", tp=1, backend="functional", *, max_num_seqs=4,
                 max_num_batched_tokens=256, block_size=16, kv_blocks=64, max_context=None,
                 prompt_buckets=None, enable_prefix_caching=True, watermark=0.01, params=None,
                 seed=0, tokenizer=None, record_logits=False, backend_options=None):
        config = load_config(model)
        positions = config.get("max_position_embeddings", 256)
        self.max_context = max_context or min(positions, 256)
        if not 1 <= max_num_seqs <= MAX_BATCH:
            raise ValueError(f"max_num_seqs = {max_num_seqs}: 1 to {MAX_BATCH} (the largest "
                             f"decode batch a program takes)")
        self.cluster = Cluster(tp, backend, params=params, backend_options=backend_options)
        try:
            buckets = prompt_buckets or _buckets(self.max_context)
            decode = sorted({min(b, max_num_seqs) for b in (1, 2, 4, 8, 16)})
            compiled = compile_model(config, tp, self.cluster.params, tokens=buckets,
                                     batch=decode, extend=buckets, block_size=block_size,
                                     kv_blocks=kv_blocks, max_context=self.max_context,
                                     seed=seed, estimate=False)
            self.model = Model(self.cluster, compiled)
        except BaseException:
            self.cluster.close()       # (the RTL backend's simulator is a process)
            raise
        self.spec = compiled.graph.spec
        self.block_size = block_size
        self.kv = {group: BlockManager(kv_blocks, block_size, window=window,
                                       watermark=watermark,
                                       enable_prefix_caching=enable_prefix_caching,
                                       max_tokens_per_seq=self.max_context)
                   for group, window in self.model.groups.items()}
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.tokenizer = tokenizer or (ByteTokenizer() if self.spec.vocab >= 256 else None)
        self.record_logits = record_logits
        self._ids = itertools.count()
        self.pending = []            # not yet arrived: (arrival, id, request)
        self.waiting = deque()       # arrived, not running (FCFS; preempted ones in front)
        self.running = []            # in admission order
        self.steps = {"prefill": 0, "decode": 0}
        self.kv_samples = []         # (used token rows, allocated rows) per decode step
        self.idle = 0                # cycles the devices sat idle waiting for a request

    @property
    def now(self):
        """The engine's clock in cycles: the devices' time plus the idle time between
        requests."""
        return self.cluster.cycles + self.idle

    # -- requests ----------------------------------------------------------------------------

    def add_request(self, prompt, params=None, arrival=0):
        """Queue ``prompt`` (text, or a list of token ids) to arrive at cycle ``arrival``;
        returns its id. A prompt the engine can never serve is not refused here: it finishes
        at once with ``finish_reason`` "rejected" and the reason in ``error``."""
        params = params or SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer (the model's vocabulary has "
                                 f"{self.spec.vocab} tokens)")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        req = _Request(next(self._ids), prompt, ids, params, arrival)
        self.pending.append((arrival, req.id, req))
        self.pending.sort(key=lambda x: x[:2])
        return req.id

    def _reject_reason(self, req):
        ids = req.out.prompt_token_ids
        if not ids:
            return "the prompt is empty"
        if any(not 0 <= t < self.spec.vocab for t in ids):
            return f"token ids must be in 0 .. {self.spec.vocab - 1}"
        if len(ids) >= self.max_context:
            return (f"the prompt has {len(ids)} tokens; the engine holds {self.max_context} "
                    f"positions per sequence (prompt + at least one new token)")
        need = -(-(len(ids) + 1) // self.block_size)
        for group, kv in self.kv.items():
            if need > kv.num_usable_blocks - kv.watermark_blocks:
                return (f"the prompt needs {need} KV blocks, the cache has "
                        f"{kv.num_usable_blocks - kv.watermark_blocks} above its watermark")
        return None

    def has_unfinished(self):
        return bool(self.pending or self.waiting or self.running)

    # -- the loop -----------------------------------------------------------------------------

    def step(self):
        """One engine step; returns the :class:`StreamEvent` s it produced."""
        events = []
        if not self.waiting and not self.running and self.pending:
            self.idle += max(0, self.pending[0][0] - self.now)   # idle until the next arrival
        now = self.now
        while self.pending and self.pending[0][0] <= now:
            req = self.pending.pop(0)[2]
            reason = self._reject_reason(req)
            if reason:
                req.out.finished, req.out.finish_reason, req.out.error = True, "rejected", reason
                events.append(StreamEvent(req.id, None, "", True, req.out))
            else:
                self.waiting.append(req)
        admitted = self._admit()
        if admitted:
            self.steps["prefill"] += 1
            for req in admitted:
                events += self._prefill(req)
        elif self.running:
            self.steps["decode"] += 1
            events += self._decode()
        elif self.waiting:
            req = self.waiting.popleft()   # nothing runs and it still does not fit: never will
            req.out.finished, req.out.finish_reason = True, "rejected"
            req.out.error = "the KV cache cannot hold the prompt"
            events.append(StreamEvent(req.id, None, "", True, req.out))
        return events

    def _admit(self):
        """Waiting requests that start this step (first come, first served)."""
        admitted, budget = [], self.max_num_batched_tokens
        while self.waiting and len(self.running) + len(admitted) < self.max_num_seqs:
            req = self.waiting[0]
            tokens = req.tokens
            if admitted and len(tokens) > budget:
                break
            if not all(kv.can_allocate(tokens) for kv in self.kv.values()):
                break
            self.waiting.popleft()
            allocs = {g: kv.allocate(req.id, tokens) for g, kv in self.kv.items()}
            req.allocs = allocs
            admitted.append(req)
            budget -= len(tokens)
        return admitted

    def _prefill(self, req):
        """Compute the KV of ``req``'s tokens not in the cache, then sample its next token."""
        tokens = req.tokens
        cached = min(a.cached_tokens for a in req.allocs.values())
        req.out.cached_tokens = cached
        at, logits = cached, None
        prefill, extend = self.model.phases("prefill"), self.model.phases("extend")
        while at < len(tokens):
            left = len(tokens) - at
            kind = prefill if at == 0 else extend
            fits = [b for b in kind if at + b <= self.max_context]   # padding included
            if not fits:             # too near the end of the context to pad: from the start
                at, kind, fits = 0, prefill, list(prefill)
                left = len(tokens)
            bucket = min([b for b in fits if b >= left], default=max(fits))
            n = min(left, bucket)
            seq = self._sequence(req, at, n, bucket)
            out, _ = self.model.run(kind[bucket], [seq])
            logits = out[0][n - 1]
            at += n
        self.running.append(req)
        return self._emit(req, logits)

    def _sequence(self, req, start, n, bucket):
        """The :class:`Sequence` of ``req``'s tokens ``start .. start + n - 1``, padded to
        ``bucket`` tokens (padding writes to the pad block)."""
        bs, pad = self.block_size, bucket - n
        tokens = req.tokens[start:start + n] + [0] * pad
        tables, slots = {}, {}
        for g, kv in self.kv.items():
            table = kv.block_table(req.id)
            last = -(-(start + bucket) // bs)
            tables[g] = table + [PAD_BLOCK] * max(0, last - len(table))
            slots[g] = [kv.slot(req.id, p) for p in range(start, start + n)] + \
                [PAD_BLOCK * bs + (p % bs) for p in range(start + n, start + bucket)]
        return Sequence(tokens, start, tables, slots)

    def _decode(self):
        while not all(kv.can_append([r.id for r in self.running]) for kv in self.kv.values()):
            self._preempt(self.running[-1])
        if not self.running:
            return []
        copies, seqs = [], []
        for req in self.running:
            pos = len(req.tokens) - 1
            for kv in self.kv.values():
                appended = kv.append(req.id, req.tokens[-1])
                if appended.copy:
                    copies.append(appended.copy)
            seqs.append(Sequence([req.tokens[-1]], pos,
                                 {g: kv.block_table(req.id) for g, kv in self.kv.items()},
                                 {g: [kv.slot(req.id, pos)] for g, kv in self.kv.items()}))
        self._sample_kv()
        self.model.copy_blocks(copies)
        decode = self.model.phases("decode")
        bucket = min(b for b in decode if b >= len(seqs))
        logits, _ = self.model.run(decode[bucket], seqs)
        events = []
        for req, lg in zip(list(self.running), logits):
            events += self._emit(req, lg[0])
        return events

    def _preempt(self, req):
        """Free ``req``'s blocks and queue it first, to be recomputed."""
        for kv in self.kv.values():
            kv.free(req.id)
        self.running.remove(req)
        req.out.preemptions += 1
        self.waiting.appendleft(req)

    def _emit(self, req, logits):
        """Sample ``req``'s next token from ``logits``; finish it if it is done."""
        token = self._sample(req, logits)
        out, params = req.out, req.params
        out.token_ids.append(token)
        if self.record_logits:
            out.logits = (out.logits or []) + [np.array(logits, np.float32)]
        now = self.now
        if out.first_token is None:
            out.first_token = now
        if self.tokenizer:
            out.text = self.tokenizer.decode(out.token_ids)
        reason = None
        if token in params.stop_token_ids:
            reason = "stop"
        elif any(s in out.text for s in params.stop):
            cut = min(out.text.index(s) for s in params.stop if s in out.text)
            out.text, reason = out.text[:cut], "stop"
        elif len(out.token_ids) >= params.max_tokens or len(req.tokens) >= self.max_context:
            reason = "length"
        piece = out.text[req.text_len:]
        req.text_len = len(out.text)
        if reason:
            out.finished, out.finish_reason, out.finish = True, reason, now
            self.running.remove(req)
            for kv in self.kv.values():
                kv.free(req.id)
        return [StreamEvent(req.id, token, piece, out.finished, out)]

    def _sample(self, req, logits):
        p = req.params
        logits = np.asarray(logits, np.float64)
        if p.temperature == 0:
            return int(np.argmax(logits))
        order = np.argsort(-logits, kind="stable")
        if p.top_k:
            order = order[:p.top_k]
        z = logits[order] / p.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if p.top_p < 1:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[req.rng.choice(len(order), p=probs)])

    def _sample_kv(self):
        """KV utilisation now: token rows holding a live token vs rows of allocated blocks."""
        kv = next(iter(self.kv.values()))
        used = sum(kv.num_tokens(r.id) for r in self.running)
        allocated = (kv.num_usable_blocks - kv.num_free_blocks) * self.block_size
        self.kv_samples.append((used, allocated))

    @property
    def kv_waste(self):
        """Fraction of the allocated KV rows not holding a token, over the decode steps."""
        used = sum(u for u, _ in self.kv_samples)
        allocated = sum(a for _, a in self.kv_samples)
        return 1 - used / allocated if allocated else 0.0

    # -- the API -----------------------------------------------------------------------------

    def stream(self, prompts, sampling_params=None, *, arrivals=None):
        """Serve ``prompts`` (text or token-id lists; ``sampling_params`` one for all or one
        each; ``arrivals`` cycles, default all at once), yielding a :class:`StreamEvent` per
        new token as the engine steps."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        n = len(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) \
            else [sampling_params] * n
        arrivals = arrivals or [self.now] * n
        if len(params) != n or len(arrivals) != n:
            raise ValueError(f"{n} prompts, {len(params)} sampling parameters, "
                             f"{len(arrivals)} arrivals")
        ids = [self.add_request(p, s, a) for p, s, a in zip(prompts, params, arrivals)]
        mine, left = set(ids), set(ids)
        while left:
            for ev in self.step():
                if ev.request_id in mine:
                    if ev.finished:
                        left.discard(ev.request_id)
                    yield ev

    def generate(self, prompts, sampling_params=None, *, arrivals=None, progress=None):
        """Serve ``prompts`` to the end: one :class:`RequestOutput` per prompt, in order.
        ``progress(done, total)`` is called as requests finish."""
        outputs = {}
        single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], int))
        for ev in self.stream(prompts, sampling_params, arrivals=arrivals):
            if ev.finished:
                outputs[ev.request_id] = ev.output
                if progress:
                    progress(len(outputs), 1 if single else len(prompts))
        ordered = [outputs[k] for k in sorted(outputs)]
        return ordered

    def close(self):
        self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
