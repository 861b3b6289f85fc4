"""Paged KV-cache block manager: which device DRAM blocks each sequence's keys and values use.

Every decoder layer has a KV pool of ``num_blocks`` blocks x ``block_size`` token rows; token
row ``slot`` lives in block ``slot // block_size`` at offset ``slot % block_size`` (vLLM's
layout), and one block id indexes every layer's pool at once. A sequence's *block table* entry
``i`` covers its positions ``i*block_size .. (i+1)*block_size - 1``; the device reads keys
through the table and writes a new token's K/V at its *slot*
(``block_id * block_size + offset``). This module is the bookkeeping only (pure Python, exact,
O(1) amortised per appended token and O(blocks) per allocate/fork/free, plus a heap push/pop).

Contract with the runtime
-------------------------
* :meth:`BlockManager.allocate` returns the slot of every prompt token and ``cached_tokens``:
  the runtime computes (and writes the K/V of) positions ``cached_tokens ..`` only. Tokens in a
  reused block get that block's existing slots; when the runtime recomputes such a token (see
  the cached-token rule below) it rewrites the identical values there, which is harmless.
* :meth:`BlockManager.append` returns the new token's slot and, for copy-on-write, a
  ``(src, dst)`` block copy the device must do (every layer's pool) *before* writing the token.
* Blocks are hashed (made shareable) when the manager sees them full, which for a prompt is at
  allocation, before the device has computed them: a prompt allocated in the same step may reuse
  them. That is right as long as, within a layer, every scheduled token's K/V is written before
  that layer's attention reads (vLLM's order).
* Block 0 is the *null block*: never handed to a sequence, never free; padding/dummy streams
  write there and window-freed table entries point at it.

Choices (the semantics are vLLM's block manager; where vLLM leaves a choice, these are ours)
------------------------------------------------------------------------------------------
* **Free-pool order**: the lowest free block id first (a heap), so tables are deterministic.
  Blocks that hold no cached content are used before any cached block is evicted.
* **Prefix caching**: a full block's identity is its *content id*, given per distinct
  ``(parent content id, block token ids)`` pair: a chain over the whole prefix, as vLLM's
  hashes, but exact (the key holds the full token tuple and content ids are never reused, so an
  evicted parent can never make a stale child match a different prefix).
* **Cached-token rule**: a prompt reuses its longest run of leading full blocks that are cached
  (live, or freed and not yet evicted) and reports ``min(reused_blocks * block_size, len - 1)``
  cached tokens: at least the last token is computed (its logits are needed). When that cap
  cuts into the last reused block, the block is still shared and the runtime recomputes the last
  token into it (identical values).
* **Eviction**: freed cached blocks wait in an LRU; the least recently freed is evicted first.
  A sequence frees its blocks last to first, so its tail goes before its prefix (a tail block is
  useless without its prefix).
* **Duplicate content**: when a block fills (by decode) with a content another block already
  caches, it takes that content id (so its successors still chain) but stays private; freed, it
  goes straight back to the free pool.
* **Watermark**: ``int(watermark * usable blocks)`` blocks. Only :meth:`can_allocate` applies
  it (new sequences); :meth:`allocate` and :meth:`append` refuse only when the blocks are
  really not there, so appends may use the watermark's blocks.
* **Sliding window** (``window=W``: position ``p`` sees ``p-W+1 .. p``): on each append, the
  blocks entirely before the window of the new token are released and their table entries set to
  the null block (the table keeps its length). Allocation does not trim: a prompt's prefill
  reads the early keys, so a prompt holds all its blocks until its first append, after which a
  sequence holds at most ``ceil(W / block_size) + 1`` blocks.
* **Errors** are :class:`KVCacheError` (a ``ValueError``); running out of blocks is its subclass
  :class:`NoFreeBlocks`. A refused call changes nothing, so the scheduler can preempt (free) a
  sequence and retry.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass


class KVCacheError(ValueError):
    """A request the block manager refuses; its state is unchanged."""


class NoFreeBlocks(KVCacheError):
    """Not enough free blocks now; state unchanged (preempt a sequence and retry)."""


@dataclass(frozen=True)
class Allocation:
    """A new sequence: its block table, the slot of every prompt token, and how many leading
    tokens' K/V are already in the cache (the runtime computes the rest)."""
    block_table: list[int]
    slots: list[int]
    cached_tokens: int


@dataclass(frozen=True)
class Append:
    """Where one decoded token goes: its slot, after the ``(src, dst)`` block copy if any."""
    slot: int
    copy: tuple[int, int] | None = None


@dataclass
class _Seq:
    table: list[int]
    num_tokens: int
    tail: list          # token ids of the partial last block (num_tokens % block_size of them)
    last_cid: int       # content id of the last full block (0: none, or caching off)
    trimmed: int = 0    # leading table entries the window has set to the null block


class BlockManager:
    """vLLM-style paged KV block manager (see the module docstring for the semantics)."""

    NULL_BLOCK = 0

    def __init__(self, num_blocks, block_size, *, watermark=0.01, window=None,
                 enable_prefix_caching=True, max_tokens_per_seq=None):
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise KVCacheError(f"num_blocks must be an int >= 2 (block 0 is the null block), "
                               f"got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1 or block_size & (block_size - 1):
            raise KVCacheError(f"block_size must be a power of two, got {block_size!r}")
        if not 0 <= watermark < 1:
            raise KVCacheError(f"watermark must be a fraction in [0, 1), got {watermark!r}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise KVCacheError(f"window must be None or an int >= 1, got {window!r}")
        if max_tokens_per_seq is not None and (not isinstance(max_tokens_per_seq, int)
                                               or max_tokens_per_seq < 1):
            raise KVCacheError(f"max_tokens_per_seq must be None or an int >= 1, "
                               f"got {max_tokens_per_seq!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.window = window
        self.enable_prefix_caching = enable_prefix_caching
        self.max_tokens_per_seq = max_tokens_per_seq
        self.watermark_blocks = int(watermark * (num_blocks - 1))
        self._ref = [0] * num_blocks          # sequences holding each block
        self._cid = [0] * num_blocks          # content id of a full block (0: none)
        self._key = [None] * num_blocks       # key under which the block is cached, if it is
        self._by_key = {}                     # (parent cid, tokens) -> the block caching it
        self._next_cid = 1
        self._free = list(range(1, num_blocks))   # heap: free blocks without cached content
        self._lru = OrderedDict()             # cached blocks nobody holds, oldest freed first
        self._seqs = {}

    # ---- queries -------------------------------------------------------------------------

    @property
    def num_usable_blocks(self):
        return self.num_blocks - 1

    @property
    def num_free_blocks(self):
        """Blocks an allocation can take: free ones plus evictable cached ones."""
        return len(self._free) + len(self._lru)

    @property
    def usage(self):
        """Fraction of the usable blocks held by sequences."""
        return (self.num_usable_blocks - self.num_free_blocks) / self.num_usable_blocks

    def sequences(self):
        """Live sequence ids, in allocation/fork order."""
        return list(self._seqs)

    def __contains__(self, seq_id):
        return seq_id in self._seqs

    def block_table(self, seq_id):
        return list(self._get(seq_id).table)

    def num_tokens(self, seq_id):
        return self._get(seq_id).num_tokens

    def slot(self, seq_id, position):
        """Slot of a position the sequence holds (not one the window has released)."""
        seq = self._get(seq_id)
        if not 0 <= position < seq.num_tokens:
            raise KVCacheError(f"sequence {seq_id!r} has no position {position} "
                               f"(it has {seq.num_tokens} tokens)")
        block = seq.table[position // self.block_size]
        if block == self.NULL_BLOCK:
            raise KVCacheError(f"position {position} of sequence {seq_id!r} fell out of the "
                               f"window and its block was released")
        return block * self.block_size + position % self.block_size

    def can_allocate(self, prompt):
        """Whether a new sequence fits and leaves at least the watermark free.

        ``prompt`` is a token count (assumes no prefix-cache hit) or the token ids (counts the
        hits on blocks other sequences hold, which need no free block). An empty or too long
        prompt raises :class:`KVCacheError`, as :meth:`allocate` would.
        """
        if isinstance(prompt, int):
            n, live_hits = prompt, 0
        else:
            tokens = list(prompt)
            n = len(tokens)
            live_hits = sum(1 for b in self._match(tokens) if self._ref[b] > 0)
        self._check_length(n)
        needed = -(-n // self.block_size) - live_hits
        return self.num_free_blocks - needed >= self.watermark_blocks

    def can_append(self, seq_ids):
        """Whether appending one token to each sequence, in this order, would succeed
        (window releases and copy-on-writes counted as they would happen). A sequence already
        at ``max_tokens_per_seq`` raises :class:`KVCacheError`: it can never append."""
        ids = list(seq_ids)
        if len(set(ids)) != len(ids):
            raise KVCacheError(f"duplicate sequence ids in {ids!r}")
        seqs = [self._get(s) for s in ids]
        refdelta, avail = {}, self.num_free_blocks
        for seq in seqs:
            freed, need, _, _ = self._plan_append(seq, refdelta)
            avail += freed
            if need > avail:
                return False
            avail -= need
        return True

    # ---- updates -------------------------------------------------------------------------

    def allocate(self, seq_id, token_ids):
        """Blocks for a new sequence's prompt, reusing its cached leading full blocks."""
        if seq_id in self._seqs:
            raise KVCacheError(f"sequence {seq_id!r} already exists")
        tokens = list(token_ids)
        self._check_length(len(tokens))
        bs, n = self.block_size, len(tokens)
        n_blocks, n_full = -(-n // bs), n // bs
        hits = self._match(tokens)
        revived = sum(1 for b in hits if self._ref[b] == 0)
        need = n_blocks - len(hits)
        if need > self.num_free_blocks - revived:
            raise NoFreeBlocks(f"prompt of {n} tokens needs {need} new blocks, "
                               f"{self.num_free_blocks - revived} free")
        for b in hits:                       # revive before taking, so they are not evicted
            if self._ref[b] == 0:
                del self._lru[b]
            self._ref[b] += 1
        seq = _Seq(table=list(hits), num_tokens=n, tail=tokens[n_full * bs:],
                   last_cid=self._cid[hits[-1]] if hits else 0)
        for i in range(len(hits), n_blocks):
            block = self._take()
            seq.table.append(block)
            if i < n_full:
                self._seal(block, seq, tokens[i * bs:(i + 1) * bs])
        self._seqs[seq_id] = seq
        table = seq.table
        return Allocation(block_table=list(table),
                          slots=[table[i // bs] * bs + i % bs for i in range(n)],
                          cached_tokens=min(len(hits) * bs, n - 1))

    def append(self, seq_id, token_id):
        """Room for one decoded token: a new block when the last is full, a copy-on-write when
        the partial last block is shared; the window's old blocks are released first."""
        seq = self._get(seq_id)
        freed, need, trim_to, cow = self._plan_append(seq, {})
        if need > self.num_free_blocks + freed:
            raise NoFreeBlocks(f"sequence {seq_id!r} needs a block, none free")
        bs, p = self.block_size, seq.num_tokens
        for i in range(seq.trimmed, trim_to):
            block, seq.table[i] = seq.table[i], self.NULL_BLOCK
            self._release(block)
        seq.trimmed = max(seq.trimmed, trim_to)
        copy = None
        if p % bs == 0:
            seq.table.append(self._take())
        elif cow:
            src, dst = seq.table[-1], self._take()
            self._ref[src] -= 1               # still held by the others sharing it
            seq.table[-1] = dst
            copy = (src, dst)
        block = seq.table[-1]
        seq.tail.append(token_id)
        seq.num_tokens += 1
        if seq.num_tokens % bs == 0:
            self._seal(block, seq, seq.tail)
            seq.tail = []
        return Append(slot=block * bs + p % bs, copy=copy)

    def fork(self, parent_id, child_id):
        """A child sharing all the parent's blocks (the partial last one too, until either
        appends: copy-on-write)."""
        parent = self._get(parent_id)
        if child_id in self._seqs:
            raise KVCacheError(f"sequence {child_id!r} already exists")
        for b in parent.table:
            if b != self.NULL_BLOCK:
                self._ref[b] += 1
        self._seqs[child_id] = _Seq(table=list(parent.table), num_tokens=parent.num_tokens,
                                    tail=list(parent.tail), last_cid=parent.last_cid,
                                    trimmed=parent.trimmed)

    def free(self, seq_id):
        """Drop a sequence: its blocks' refcounts fall; cached ones wait in the LRU."""
        seq = self._get(seq_id)
        del self._seqs[seq_id]
        for b in reversed(seq.table):        # tail first: evicted before the prefix
            if b != self.NULL_BLOCK:
                self._release(b)

    # ---- internals -----------------------------------------------------------------------

    def _get(self, seq_id):
        try:
            return self._seqs[seq_id]
        except (KeyError, TypeError):
            raise KVCacheError(f"unknown sequence {seq_id!r}") from None

    def _check_length(self, n):
        if n < 1:
            raise KVCacheError("empty prompt")
        if self.max_tokens_per_seq is not None and n > self.max_tokens_per_seq:
            raise KVCacheError(f"prompt of {n} tokens exceeds max_tokens_per_seq = "
                               f"{self.max_tokens_per_seq}")

    def _content_key(self, parent_cid, tokens):
        return (parent_cid, tuple(tokens))

    def _match(self, tokens):
        """The cached blocks holding the prompt's leading full blocks (no state change)."""
        hits = []
        if not self.enable_prefix_caching:
            return hits
        bs, parent = self.block_size, 0
        for i in range(len(tokens) // bs):
            block = self._by_key.get(self._content_key(parent, tokens[i * bs:(i + 1) * bs]))
            if block is None:
                break
            hits.append(block)
            parent = self._cid[block]
        return hits

    def _seal(self, block, seq, tokens):
        """``block`` just became full with ``tokens``: give it its content id, cache it."""
        if not self.enable_prefix_caching:
            return
        key = self._content_key(seq.last_cid, tokens)
        holder = self._by_key.get(key)
        if holder is None:
            self._by_key[key] = block
            self._key[block] = key
            self._cid[block] = self._next_cid
            self._next_cid += 1
        else:                                # same content cached elsewhere: stay private
            self._cid[block] = self._cid[holder]
        seq.last_cid = self._cid[block]

    def _take(self):
        """A block for a sequence (refcount 1): the lowest free one, else evict the LRU."""
        if self._free:
            block = heapq.heappop(self._free)
        else:
            block, _ = self._lru.popitem(last=False)
            del self._by_key[self._key[block]]
            self._key[block] = None
            self._cid[block] = 0
        self._ref[block] = 1
        return block

    def _release(self, block):
        self._ref[block] -= 1
        if self._ref[block] == 0:
            if self._key[block] is not None:
                self._lru[block] = None
            else:
                self._cid[block] = 0
                heapq.heappush(self._free, block)

    def _plan_append(self, seq, refdelta):
        """What appending to ``seq`` would do, given earlier planned appends' refcount changes
        in ``refdelta`` (updated): (blocks the window frees, blocks needed, trim end, CoW?)."""
        bs, p = self.block_size, seq.num_tokens
        if self.max_tokens_per_seq is not None and p >= self.max_tokens_per_seq:
            raise KVCacheError(f"sequence already has max_tokens_per_seq = "
                               f"{self.max_tokens_per_seq} tokens")
        freed, trim_to = 0, seq.trimmed
        if self.window is not None:
            trim_to = max(seq.trimmed, min(max(0, p - self.window + 1) // bs, len(seq.table)))
            for i in range(seq.trimmed, trim_to):
                b = seq.table[i]
                refdelta[b] = refdelta.get(b, 0) - 1
                freed += self._ref[b] + refdelta[b] == 0
        if p % bs == 0:
            return freed, 1, trim_to, False
        last = seq.table[-1]
        if self._ref[last] + refdelta.get(last, 0) > 1:
            refdelta[last] = refdelta.get(last, 0) - 1
            return freed, 1, trim_to, True
        return freed, 0, trim_to, False

    def check(self):
        """Assert every internal invariant (for tests); raises AssertionError naming it."""
        def need(cond, msg):
            if not cond:
                raise AssertionError(msg)

        bs, nb, null = self.block_size, self.num_blocks, self.NULL_BLOCK
        free = set(self._free)
        need(len(free) == len(self._free), "a block is twice in the free pool")
        need(all(self._free[i] <= self._free[c] for i in range(len(self._free))
                 for c in (2 * i + 1, 2 * i + 2) if c < len(self._free)), "free pool not a heap")
        need(null not in free and null not in self._lru, "the null block is free")
        need(self._ref[null] == 0 and self._cid[null] == 0 and self._key[null] is None,
             "the null block is held or cached")
        holders = {}
        for sid, s in self._seqs.items():
            n = s.num_tokens
            need(n >= 1 and (self.max_tokens_per_seq is None or n <= self.max_tokens_per_seq),
                 f"{sid!r}: bad length {n}")
            need(len(s.table) == -(-n // bs), f"{sid!r}: table length {len(s.table)} for {n}")
            need(len(s.tail) == n % bs, f"{sid!r}: tail of {len(s.tail)} tokens for {n}")
            if self.window is None:
                need(s.trimmed == 0, f"{sid!r}: trimmed without a window")
            else:
                need(0 <= s.trimmed <= max(0, n - self.window) // bs,
                     f"{sid!r}: trimmed {s.trimmed} blocks, some inside the window")
            for i, b in enumerate(s.table):
                if i < s.trimmed:
                    need(b == null, f"{sid!r}: trimmed entry {i} is block {b}, not null")
                    continue
                need(0 < b < nb, f"{sid!r}: entry {i} is block {b}")
                holders.setdefault(b, []).append((sid, i))
                full = (i + 1) * bs <= n
                if self.enable_prefix_caching and full:
                    need(self._cid[b] != 0, f"{sid!r}: full block {b} has no content id")
                if not full:
                    need(self._cid[b] == 0 and self._key[b] is None,
                         f"{sid!r}: partial block {b} is hashed")
            k = n // bs - 1
            if not self.enable_prefix_caching or k < 0:
                need(s.last_cid == 0, f"{sid!r}: last_cid {s.last_cid} without a full block")
            elif s.table[k] != null:
                need(s.last_cid == self._cid[s.table[k]], f"{sid!r}: last_cid out of date")
        referenced = 0
        for b in range(1, nb):
            held = holders.get(b, [])
            need(self._ref[b] == len(held), f"block {b}: refcount {self._ref[b]}, "
                                            f"held by {len(held)} table entries")
            if held:
                referenced += 1
                need(b not in free and b not in self._lru, f"block {b} held and free")
                need(len({sid for sid, _ in held}) == len(held), f"block {b} twice in a table")
                need(len({i for _, i in held}) == 1, f"block {b} at different table indices")
                # a block partial for one holder is partial for all, with the same tokens
                # (forked, not diverged); full shared blocks were matched by content id
                seqs = [self._seqs[sid] for sid, _ in held]
                end = (held[0][1] + 1) * bs
                if any(end > s.num_tokens for s in seqs):
                    need(all(s.num_tokens == seqs[0].num_tokens and s.tail == seqs[0].tail
                             for s in seqs), f"block {b}: shared partial block diverged")
            elif b in free:
                need(b not in self._lru and self._key[b] is None and self._cid[b] == 0,
                     f"free block {b} still cached")
            else:
                need(b in self._lru and self._key[b] is not None, f"block {b} leaked")
            if self._key[b] is not None:
                need(self._by_key.get(self._key[b]) == b and self._cid[b] != 0,
                     f"block {b}: cache entry inconsistent")
                need(self._key[b][0] < self._cid[b] < self._next_cid,
                     f"block {b}: content id out of order")
        need(len(free) + len(self._lru) + referenced == self.num_usable_blocks,
             "free + cached + referenced != usable")
        need(all(self._key[b] == k for k, b in self._by_key.items()), "stale cache entry")
