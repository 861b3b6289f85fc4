"""The paged KV-cache block manager (``sw/runtime/kv_cache.py``): exact tables and slots for
each behaviour (null block, lowest-id-first free pool, watermark, prefix sharing by hash chain,
cached-token rule, LRU eviction, fork and copy-on-write, sliding window, out-of-blocks and
errors leaving the state unchanged), then a stateful model check: random allocate / append /
fork / free against a shadow "device" where each slot holds the prefix its K/V depends on, read
back through every live sequence's block table after every step. Deliberately broken managers
(no copy-on-write, hashes without the parent chain, eviction keeping the cache entry) must fail
that model check."""

import copy
import random

import pytest
from hypothesis import Phase, event, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from npusim.sw.runtime.kv_cache import (Allocation, Append, BlockManager, KVCacheError,
                                        NoFreeBlocks)


def snapshot(m):
    """A copy of all the manager's state (its containers hold immutable values, except the
    sequences, copied field by field)."""
    snap = {k: copy.copy(v) for k, v in vars(m).items()}
    snap["_seqs"] = {sid: {k: copy.copy(v) for k, v in vars(s).items()}
                     for sid, s in m._seqs.items()}
    return snap


def assert_unchanged(m, snap):
    assert snapshot(m) == snap, "a refused call changed the manager's state"


def refused(m, exc, fn, *args):
    """``fn(*args)`` raises ``exc`` and leaves ``m`` as it was."""
    snap = snapshot(m)
    with pytest.raises(exc):
        fn(*args)
    assert_unchanged(m, snap)
    m.check()


# ---- construction, allocation, free pool -----------------------------------------------------

@pytest.mark.parametrize("args, kwargs", [
    ((1, 4), {}), ((8, 3), {}), ((8, 0), {}), ((8, 4), {"watermark": 1.0}),
    ((8, 4), {"watermark": -0.1}), ((8, 4), {"window": 0}), ((8, 4), {"max_tokens_per_seq": 0}),
])
def test_bad_construction(args, kwargs):
    with pytest.raises(KVCacheError):
        BlockManager(*args, **kwargs)


def test_allocate_lowest_blocks_first_never_the_null_block():
    m = BlockManager(8, 4)
    assert (m.num_usable_blocks, m.num_free_blocks, m.usage) == (7, 7, 0)
    a = m.allocate("a", [10, 11, 12, 13, 14, 15])
    assert a == Allocation(block_table=[1, 2], slots=[4, 5, 6, 7, 8, 9], cached_tokens=0)
    b = m.allocate("b", [20])
    assert b == Allocation(block_table=[3], slots=[12], cached_tokens=0)
    assert (m.num_free_blocks, m.usage) == (4, 3 / 7)
    assert m.sequences() == ["a", "b"] and "a" in m and "z" not in m
    assert (m.num_tokens("a"), m.slot("a", 5), m.block_table("b")) == (6, 9, [3])
    m.free("a")                                          # 2 is free, 1 cached (it was full)
    c = m.allocate("c", list(range(100, 113)))          # free blocks before cached ones
    assert c.block_table == [2, 4, 5, 6] and c.slots[-1] == 6 * 4
    assert m.allocate("d", [7] * 8).block_table == [7, 1]   # then evicts the cached one
    assert m.num_free_blocks == 0 and m.usage == 1
    refused(m, NoFreeBlocks, m.allocate, "e", [1])
    assert all(0 not in m.block_table(s) for s in m.sequences())
    m.check()


def test_append_fills_then_takes_a_fresh_block():
    m = BlockManager(8, 4)
    m.allocate("a", [1, 2, 3])
    assert m.append("a", 4) == Append(slot=7, copy=None)      # fills block 1
    assert m.append("a", 5) == Append(slot=8, copy=None)      # full last block: fresh block 2
    assert m.block_table("a") == [1, 2] and m.num_tokens("a") == 5
    m.check()


def test_watermark_refuses_new_sequences_not_appends():
    m = BlockManager(11, 2, watermark=0.2)                   # 10 usable, watermark 2 blocks
    assert m.watermark_blocks == 2
    assert m.can_allocate(16) and not m.can_allocate(17)     # 8 blocks leave 2; 9 would leave 1
    m.allocate("a", list(range(16)))
    assert not m.can_allocate(1)
    assert m.can_append(["a"])
    for _ in range(4):
        m.append("a", 0)                                      # uses the watermark's blocks
    assert m.num_free_blocks == 0 and not m.can_append(["a"])
    m.check()


def test_length_errors():
    m = BlockManager(8, 4, max_tokens_per_seq=5)
    refused(m, KVCacheError, m.allocate, "a", [])
    refused(m, KVCacheError, m.allocate, "a", [1] * 6)
    refused(m, KVCacheError, m.can_allocate, 6)
    refused(m, KVCacheError, m.can_allocate, [])
    m.allocate("a", [1] * 4)
    m.append("a", 1)
    refused(m, KVCacheError, m.append, "a", 1)              # already at max_tokens_per_seq
    refused(m, KVCacheError, m.can_append, ["a"])


def test_unknown_and_duplicate_ids_are_refused():
    m = BlockManager(8, 4)
    m.allocate("a", [1, 2, 3])
    m.allocate("b", [4])
    for fn, args in [(m.append, ("x", 1)), (m.free, ("x",)), (m.fork, ("x", "y")),
                     (m.block_table, ("x",)), (m.num_tokens, ("x",)), (m.slot, ("x", 0)),
                     (m.slot, ("a", 3)), (m.slot, ("a", -1)), (m.can_append, (["a", "x"],)),
                     (m.can_append, (["a", "a"],)), (m.allocate, ("a", [1])),
                     (m.fork, ("a", "b")), (m.append, ([], 1))]:
        refused(m, KVCacheError, fn, *args)
    assert issubclass(KVCacheError, ValueError) and issubclass(NoFreeBlocks, KVCacheError)


# ---- prefix caching ----------------------------------------------------------------------------

def test_shared_prefix_and_cached_token_rule():
    m = BlockManager(16, 4)
    m.allocate("a", list(range(10)))                         # blocks 1, 2 full, 3 partial
    b = m.allocate("b", list(range(8)) + [50, 51, 52])       # same two full blocks
    assert b.block_table == [1, 2, 4] and b.cached_tokens == 8
    assert b.slots[:8] == list(range(4, 12))                 # the reused blocks' own slots
    c = m.allocate("c", list(range(8)))                      # the whole prompt is cached:
    assert c.block_table == [1, 2] and c.cached_tokens == 7  # still shares block 2, computes 1
    d = m.allocate("d", list(range(4)))
    assert d.block_table == [1] and d.cached_tokens == 3
    e = m.allocate("e", list(range(7)))                      # block 2 is not full in e
    assert e.block_table == [1, 5] and e.cached_tokens == 4
    assert m.num_free_blocks == 15 - 5
    m.check()


def test_can_allocate_counts_hits_on_live_blocks():
    m = BlockManager(5, 4, watermark=0)
    m.allocate("a", list(range(8)))                          # 1, 2: two blocks left
    assert not m.can_allocate(16)                            # a count assumes no hit
    assert m.can_allocate(list(range(8)) + [0] * 8)          # 4 blocks, 2 of them a's
    assert not m.can_allocate(list(range(8)) + [0] * 9)
    assert m.allocate("b", list(range(8)) + [0] * 8).block_table == [1, 2, 3, 4]


def test_hash_is_a_chain_over_the_whole_prefix():
    m = BlockManager(16, 2)
    m.allocate("a", [1, 2, 3, 4])
    b = m.allocate("b", [9, 9, 3, 4])                        # same second block, other prefix
    assert b.block_table == [3, 4] and b.cached_tokens == 0
    assert m.allocate("c", [9, 9, 3, 4, 5]).block_table == [3, 4, 5]   # each chain finds
    assert m.allocate("d", [1, 2, 3, 4, 5]).block_table == [1, 2, 6]   # its own [3, 4]
    m.check()


def test_no_sharing_without_prefix_caching():
    m = BlockManager(16, 4, enable_prefix_caching=False)
    m.allocate("a", list(range(8)))
    b = m.allocate("b", list(range(8)))
    assert b.block_table == [3, 4] and b.cached_tokens == 0
    m.free("a")
    m.free("b")
    assert m.num_free_blocks == 15 and sorted(m._free) == list(range(1, 16))
    m.check()


def test_freed_blocks_are_revived_by_a_hit():
    m = BlockManager(8, 4)
    m.allocate("a", list(range(9)))                          # 1, 2 full (cached), 3 partial
    m.free("a")
    assert m.num_free_blocks == 7 and list(m._lru) == [2, 1] and sorted(m._free) == [3, 4, 5, 6, 7]
    assert m.can_allocate(list(range(8)) + [0] * 20)        # 2 revived + 5 new = all 7
    assert not m.can_allocate(8 + 21)
    b = m.allocate("b", list(range(8)) + [99])
    assert b.block_table == [1, 2, 3] and b.cached_tokens == 8
    assert m.num_free_blocks == 4 and not m._lru
    m.check()


def test_lru_evicts_least_recently_freed_tail_first():
    m = BlockManager(7, 2)                                   # 6 usable
    m.allocate("a", [1, 2, 3, 4])                            # 1, 2
    m.allocate("b", [5, 6, 7, 8])                            # 3, 4
    m.free("b")
    m.free("a")                                              # tail first: LRU 4, 3, 2, 1
    assert list(m._lru) == [4, 3, 2, 1] and m.num_free_blocks == 6
    c = m.allocate("c", [0] * 8)                             # 5, 6 are free, then evict 4, 3
    assert c.block_table == [5, 6, 4, 3] and list(m._lru) == [2, 1]
    d = m.allocate("d", [5, 6])                              # b's blocks are gone; evicts 2
    assert d.block_table == [2] and d.cached_tokens == 0 and list(m._lru) == [1]
    e = m.allocate("e", [1, 2])                              # a's head survived its tail
    assert e.block_table == [1] and e.cached_tokens == 1 and not m._lru
    refused(m, NoFreeBlocks, m.allocate, "f", [1, 2, 3, 4])  # needs a's evicted tail back
    m.check()


def test_a_stale_child_never_matches_a_new_chain():
    # W = 1, block size 1: the window releases a's prefix (parent before child), the parent is
    # evicted and reused for other content; a's cached child must not match behind it
    m = BlockManager(6, 1, window=1)
    m.allocate("a", [1, 2, 3])                               # 1, 2, 3
    assert m.append("a", 4).slot == 4                        # releases 1, 2, 3 (LRU in order)
    assert m.block_table("a") == [0, 0, 0, 4] and list(m._lru) == [1, 2, 3]
    b = m.allocate("b", [7, 8])                              # block 5, then evicts block 1
    assert b.block_table == [5, 1]
    c = m.allocate("c", [7, 8, 2, 5])                        # (.., 8) then 2: not a's block 2
    assert c.block_table == [5, 1, 2, 3] and c.cached_tokens == 2
    m.check()


def test_decode_filled_blocks_become_shareable():
    m = BlockManager(8, 4)
    m.allocate("a", [1, 2, 3])
    m.append("a", 4)
    b = m.allocate("b", [1, 2, 3, 4, 5])
    assert b.block_table == [1, 2] and b.cached_tokens == 4
    m.check()


def test_duplicate_content_stays_private():
    m = BlockManager(8, 4)
    m.allocate("a", [1, 2, 3])
    m.allocate("b", [1, 2, 3])                               # partial blocks are never shared
    m.append("a", 4)
    m.append("b", 4)                                         # same content as block 1
    assert m.block_table("b") == [2] and m._cid[2] == m._cid[1] and m._key[2] is None
    m.append("a", 5)
    m.append("b", 5)
    m.free("b")                                              # block 2 goes back to the free pool
    assert 2 in m._free and 2 not in m._lru
    assert m.allocate("c", [1, 2, 3, 4, 0]).block_table == [1, 2]
    m.check()


# ---- fork and copy-on-write --------------------------------------------------------------------

def test_fork_and_copy_on_write():
    m = BlockManager(8, 4)
    m.allocate("p", [1, 2, 3, 4, 5, 6])                      # 1, 2 (partial)
    m.fork("p", "c")
    assert m.block_table("c") == [1, 2] and m.num_tokens("c") == 6
    assert m.num_free_blocks == 5
    assert m.append("p", 7) == Append(slot=3 * 4 + 2, copy=(2, 3))
    assert m.block_table("p") == [1, 3] and m.block_table("c") == [1, 2]
    assert m.append("c", 8) == Append(slot=2 * 4 + 2, copy=None)   # c holds block 2 alone now
    m.check()


def test_fork_with_full_last_block_needs_no_copy():
    m = BlockManager(8, 4)
    m.allocate("p", [1, 2, 3, 4])
    m.fork("p", "c")
    assert m.append("p", 5) == Append(slot=8, copy=None)
    assert m.append("c", 5) == Append(slot=12, copy=None)
    assert m.block_table("p") == [1, 2] and m.block_table("c") == [1, 3]
    m.check()


def test_can_append_counts_copies_of_a_shared_block_once_per_extra_holder():
    m = BlockManager(4, 4)                                   # 3 usable
    m.allocate("p", [1, 2])                                  # 1
    m.fork("p", "c1")
    m.fork("p", "c2")
    assert m.num_free_blocks == 2
    assert m.can_append(["p", "c1", "c2"])                   # two copies, the last writes in place
    m.allocate("x", [9])                                     # 2: one block left
    assert m.can_append(["p"]) and m.can_append(["c2"]) and not m.can_append(["p", "c1"])
    assert m.append("p", 3).copy == (1, 3)
    refused(m, NoFreeBlocks, m.append, "c1", 3)              # c1 and c2 still share block 1
    m.free("x")
    assert m.append("c1", 3).copy == (1, 2)
    assert m.append("c2", 3).copy is None
    m.check()


# ---- sliding window ----------------------------------------------------------------------------

def test_window_releases_blocks_behind_it():
    m = BlockManager(16, 4, window=8)
    a = m.allocate("a", list(range(10)))                     # allocation keeps every block
    assert a.block_table == [1, 2, 3]
    m.append("a", 10)                                        # position 10 sees 3..10: keep block 0
    assert m.block_table("a") == [1, 2, 3]
    m.append("a", 11)                                        # position 11 sees 4..11
    assert m.block_table("a") == [0, 2, 3]
    refused(m, KVCacheError, m.slot, "a", 3)
    assert m.slot("a", 4) == 8
    for t in range(12, 40):
        m.append("a", t)
        live = [b for b in m.block_table("a") if b]
        assert len(live) <= 8 // 4 + 1 and len(m.block_table("a")) == -(-(t + 1) // 4)
    assert m.block_table("a")[-3:] == [0] + live and len(live) == 2    # 32..39 seen from 39
    assert m.num_free_blocks == 15 - 2
    m.check()


def test_window_drops_only_its_reference_to_a_shared_block():
    m = BlockManager(16, 4, window=4)
    m.allocate("a", list(range(8)))                          # 1, 2
    m.fork("a", "b")
    m.append("a", 8)                                         # a: sees 5..8, releases block 1
    assert m.block_table("a") == [0, 2, 3] and m.block_table("b") == [1, 2]
    assert m._ref[1] == 1 and 1 not in m._free and 1 not in m._lru
    m.free("b")
    assert list(m._lru) == [1]                               # block 2 is a's
    m.check()


def test_window_append_reuses_the_block_it_releases():
    m = BlockManager(4, 2, window=2)                         # 3 usable
    m.allocate("a", [1, 2, 3, 4, 5, 6])                      # 1, 2, 3: pool full
    assert m.num_free_blocks == 0 and m.can_append(["a"])
    r = m.append("a", 7)                                     # position 6 sees 5..6: frees 1, 2
    assert list(m._lru) == [2] and m.block_table("a") == [0, 0, 3, 1]   # evicted 1
    assert r == Append(slot=1 * 2, copy=None)
    m.check()


def test_out_of_blocks_append_changes_nothing():
    m = BlockManager(6, 2, window=3)                         # 5 usable
    m.allocate("a", [1, 2, 3, 4, 5])                         # 1, 2, 3 (partial)
    m.allocate("b", [5, 6, 7])                               # 4, 5 (partial)
    m.fork("b", "c")
    assert m.num_free_blocks == 0 and not m.can_append(["c"])
    refused(m, NoFreeBlocks, m.append, "c", 8)               # copy-on-write needs a block
    assert m.can_append(["a", "c"])                          # a's append releases block 1 ...
    assert not m.can_append(["c", "a"])                      # ... but only once it has run
    assert m.append("a", 6) == Append(slot=3 * 2 + 1, copy=None)
    assert m.block_table("a") == [0, 2, 3] and list(m._lru) == [1]
    assert m.append("c", 8) == Append(slot=1 * 2 + 1, copy=(5, 1))
    m.check()


# ---- the stateful model check -------------------------------------------------------------------

CORPUS = random.Random(1).choices(range(3), k=200)
GARBAGE = "garbage"


class KVMachine(RuleBasedStateMachine):
    """Random allocate / append / fork / free against a shadow device: slot -> the prefix (as a
    tuple of tokens) whose K/V the runtime wrote there. Reading every live sequence back through
    its table must give its own prefixes."""

    NUM_BLOCKS, BLOCK_SIZE, WINDOW, CACHING = 16, 4, None, True
    MANAGER = BlockManager
    MODEL_ONLY = False          # mutation tests: keep only the model (shadow device) checks

    def __init__(self):
        super().__init__()
        self.bs = self.BLOCK_SIZE
        self.max_tokens = self.NUM_BLOCKS * self.BLOCK_SIZE
        self.m = self.MANAGER(self.NUM_BLOCKS, self.bs, watermark=0.1, window=self.WINDOW,
                              enable_prefix_caching=self.CACHING,
                              max_tokens_per_seq=self.max_tokens)
        self.tokens = {}        # shadow: seq -> its tokens
        self.device = {}        # shadow device: slot -> tuple of the tokens up to that position
        self.appended = set()   # sequences the window has trimmed (appended since allocation)
        self.next_id = 0

    def new_id(self):
        self.next_id += 1
        return self.next_id

    def live(self):
        return st.sampled_from(sorted(self.tokens))

    def draw_prompt(self, data):
        n = data.draw(st.integers(1, 3 * self.bs + 2), label="length")
        source = data.draw(st.sampled_from(["corpus", "sequence", "random"]))
        base = CORPUS if source == "corpus" or not self.tokens else (
            [] if source == "random" else self.tokens[data.draw(self.live())])
        k = data.draw(st.integers(0, min(n, len(base))), label="shared prefix")
        digits = data.draw(st.integers(0, 3 ** (n - k) - 1), label="suffix")  # one draw: fast
        return base[:k] + [digits // 3 ** i % 3 for i in range(n - k)]

    def do_append(self, sid, token):
        m, toks = self.m, self.tokens[sid]
        if len(toks) == self.max_tokens:
            event("append: at max_tokens_per_seq")
            snap = snapshot(m)
            with pytest.raises(KVCacheError):
                m.append(sid, token)
            assert_unchanged(m, snap)
            return False
        can = m.can_append([sid])
        snap = None if can else snapshot(m)     # (a refusal is checked against can_append)
        try:
            r = m.append(sid, token)
        except NoFreeBlocks:
            assert not can, "can_append said yes"
            assert_unchanged(m, snap)
            event("append: out of blocks")
            return False
        assert can, "can_append said no"
        if r.copy is not None:
            event("append: copy-on-write")
            src, dst = r.copy
            for o in range(self.bs):
                self.device[dst * self.bs + o] = self.device.get(src * self.bs + o, GARBAGE)
        toks.append(token)
        assert r.slot == m.slot(sid, len(toks) - 1)
        self.device[r.slot] = tuple(toks)
        self.appended.add(sid)
        return True

    @rule(data=st.data())
    def allocate(self, data):
        m, prompt, sid = self.m, self.draw_prompt(data), self.new_id()
        can = m.can_allocate(prompt)
        assert can or not m.can_allocate(len(prompt)), "the token count is not conservative"
        snap = None if can else snapshot(m)
        try:
            a = m.allocate(sid, prompt)
        except NoFreeBlocks:
            assert not can, "can_allocate said yes"
            assert_unchanged(m, snap)
            event("allocate: out of blocks")
            return
        if a.cached_tokens:
            event("allocate: prefix-cache hit")
        assert a.block_table == m.block_table(sid)
        assert a.slots == [a.block_table[p // self.bs] * self.bs + p % self.bs
                           for p in range(len(prompt))]
        assert 0 <= a.cached_tokens < len(prompt)
        assert self.CACHING or a.cached_tokens == 0
        for p, slot in enumerate(a.slots):
            if p < a.cached_tokens:
                assert self.device.get(slot) == tuple(prompt[:p + 1]), "model: cached KV wrong"
            else:
                self.device[slot] = tuple(prompt[:p + 1])
        self.tokens[sid] = list(prompt)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), token=st.integers(0, 2))
    def append(self, data, token):
        self.do_append(data.draw(self.live()), token)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def append_batch(self, data):
        ids = data.draw(st.lists(self.live(), min_size=1, max_size=4, unique=True))
        if any(len(self.tokens[s]) == self.max_tokens for s in ids):
            return
        can = self.m.can_append(ids)
        assert can == all(self.do_append(s, data.draw(st.integers(0, 2))) for s in ids)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def long_append(self, data):
        sid = data.draw(self.live())
        for _ in range(data.draw(st.integers(1, 3 * (self.WINDOW or 2 * self.bs)))):
            if not self.do_append(sid, data.draw(st.integers(0, 2))):
                break

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data):
        parent, child = data.draw(self.live()), self.new_id()
        self.m.fork(parent, child)
        self.tokens[child] = list(self.tokens[parent])
        if parent in self.appended:
            self.appended.add(child)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(self.live())
        self.m.free(sid)
        del self.tokens[sid]
        self.appended.discard(sid)

    @rule()
    def bad_calls(self):
        m, snap = self.m, snapshot(self.m)
        for fn, args in [(m.append, (-1, 0)), (m.free, (-1,)), (m.fork, (-1, -2)),
                         (m.allocate, (-1, []))] + [
                (m.allocate, (s, [0])) for s in self.tokens][:1]:
            with pytest.raises(KVCacheError) as e:
                fn(*args)
            assert not isinstance(e.value, NoFreeBlocks)
            assert_unchanged(m, snap)

    @invariant()
    def internal_invariants(self):
        if not self.MODEL_ONLY:
            self.m.check()

    @invariant()
    def no_block_leaked(self):
        if self.MODEL_ONLY:
            return
        m = self.m
        assert sorted(m.sequences()) == sorted(self.tokens)
        held = {b for s in self.tokens for b in m.block_table(s)} - {0}
        assert m.num_free_blocks == m.num_usable_blocks - len(held)
        assert len(m._free) + len(m._lru) + len(held) == m.num_usable_blocks
        assert 0 not in m._free and 0 not in m._lru

    @invariant()
    def tables_cover_the_window(self):
        if self.MODEL_ONLY:
            return
        bs, w = self.bs, self.WINDOW
        for sid, toks in self.tokens.items():
            table, n = self.m.block_table(sid), len(toks)
            assert self.m.num_tokens(sid) == n and len(table) == -(-n // bs)
            for i, b in enumerate(table):
                # null exactly for blocks entirely before the latest position's window
                # (once the sequence has appended: allocation keeps the whole prompt)
                released = w is not None and sid in self.appended and (i + 1) * bs <= n - w
                assert (b == 0) == released, f"{sid}: entry {i} = {b}"
                assert 0 <= b < self.NUM_BLOCKS

    @invariant()
    def sharing_is_legitimate(self):
        if self.MODEL_ONLY:
            return
        holders = {}
        for sid in self.tokens:
            for i, b in enumerate(self.m.block_table(sid)):
                if b:
                    holders.setdefault(b, []).append((sid, i))
        for b, held in holders.items():
            if len(held) < 2:
                continue
            assert len({i for _, i in held}) == 1, f"block {b} at different positions"
            end = (held[0][1] + 1) * self.bs
            seqs = [self.tokens[s] for s, _ in held]
            if any(len(t) < end for t in seqs):             # partial: forked, not diverged
                assert all(t == seqs[0] for t in seqs), f"block {b}: diverged sequences share it"
            else:                                           # full: the same prefix
                assert all(t[:end] == seqs[0][:end] for t in seqs), f"block {b}: other prefix"

    @invariant()
    def model_readback(self):
        """The check that catches wrong sharing: every held position reads back its prefix."""
        m, bs = self.m, self.bs
        for sid, toks in self.tokens.items():
            table = m.block_table(sid)
            for p in range(len(toks)):
                b = table[p // bs]
                if b == 0:
                    continue
                slot = b * bs + p % bs
                assert self.device.get(slot) == tuple(toks[:p + 1]), \
                    f"model: sequence {sid} position {p} reads back wrong K/V"
                assert m.slot(sid, p) == slot
        for b in m._free:            # a free block's contents are garbage from now on
            for o in range(bs):
                self.device[b * bs + o] = GARBAGE


def machine(name, **attrs):
    return type(name, (KVMachine,), attrs)


MACHINES = [
    machine("Plain1", BLOCK_SIZE=1, NUM_BLOCKS=24),
    machine("Plain4", BLOCK_SIZE=4, NUM_BLOCKS=16),
    machine("Plain16", BLOCK_SIZE=16, NUM_BLOCKS=8),
    machine("NoCaching4", BLOCK_SIZE=4, NUM_BLOCKS=12, CACHING=False),
    machine("Window1", BLOCK_SIZE=1, NUM_BLOCKS=24, WINDOW=3),
    machine("Window4", BLOCK_SIZE=4, NUM_BLOCKS=16, WINDOW=6),
    machine("Window16", BLOCK_SIZE=16, NUM_BLOCKS=10, WINDOW=20),
]


@pytest.mark.parametrize("machine_class", MACHINES, ids=lambda c: c.__name__)
def test_state_machine(machine_class):
    run_state_machine_as_test(machine_class, settings=settings(
        max_examples=30, stateful_step_count=40, deadline=None))


# ---- the model check can fail: deliberately broken managers ------------------------------------

class NoCopyOnWrite(BlockManager):
    def _plan_append(self, seq, refdelta):
        freed, need, trim_to, cow = super()._plan_append(seq, refdelta)
        return freed, need - cow, trim_to, False


class HashWithoutParent(BlockManager):
    def _content_key(self, parent_cid, tokens):
        return (0, tuple(tokens))


class EvictionKeepsCacheEntry(BlockManager):
    def _take(self):
        if self._free:
            return super()._take()
        block, _ = self._lru.popitem(last=False)
        self._ref[block] = 1
        return block


@pytest.mark.parametrize("broken", [NoCopyOnWrite, HashWithoutParent, EvictionKeepsCacheEntry])
@pytest.mark.parametrize("window", [None, 6])
def test_model_check_catches_a_broken_manager(broken, window):
    cls = machine(f"Broken{broken.__name__}", BLOCK_SIZE=4, NUM_BLOCKS=10, WINDOW=window,
                  MANAGER=broken, MODEL_ONLY=True)
    with pytest.raises(AssertionError, match="model: "):
        run_state_machine_as_test(cls, settings=settings(
            max_examples=300, stateful_step_count=40, deadline=None, derandomize=True,
            database=None, phases=[Phase.generate], report_multiple_bugs=False,
            print_blob=False))
