"""Ring collectives of fp32 vectors across devices, as command streams: all-reduce, broadcast
and reduce (docs/collectives.md).

Devices ``0 .. n-1`` form a ring; device ``d`` writes only to its right neighbour
``(d + 1) % n``: ``DMA_COPY`` into the neighbour's DRAM over the link (the link cannot write
SRAM), then a remote ``SEM_SIGNAL`` on the same LINK queue, which the link delivers after the
data. Peers are reached through run-time registers (:class:`RingRegs`) the host sets at launch
(:func:`ring_registers`), so one compiled stream works wherever the BARs are.

**All-reduce** (:func:`ring_allreduce`): the vector is cut into ``n`` chunks (chunk ``k`` has
``count // n`` elements, one more for ``k < count % n``). Reduce-scatter, steps ``s = 0 ..
n-2``: device ``d`` sends chunk ``(d-1-s) % n`` (its own data at ``s = 0``, else the partial
sum it made at step ``s-1``) and receives chunk ``(d-2-s) % n``, which it adds to its own
data; after it, device ``d`` holds chunk ``d`` summed over every device. All-gather, steps
``t = 0 .. n-2``: device ``d`` sends chunk ``(d-t) % n`` and stores the chunk it receives.
So chunk ``k`` is summed in ring order starting at device ``k+1``::

    acc = x[k+1];  acc = acc + x[k+2];  ...;  acc = acc + x[k+n]     (indices mod n)

in fp32 (RNE), and every device ends with the same bits.
**Reduce** to ``root`` sums the whole vector in the same order as chunk ``root`` of the
all-reduce (along the chain ``root+1 -> ... -> root``); **broadcast** copies the root's vector
along the chain ``root -> root+1 -> ... -> root-1``.

Every step is pipelined in *pieces* (at most ``slot_bytes`` each; chunks split evenly): a
piece travels as soon as its previous step is done on it, so the link, the DRAM -> SRAM loads
(DMA_IN) and the vector adds (COMPUTE) overlap. Queues and counting semaphores (indices
``plan.sems[role]``, roles below; every wait consumes):

* LINK: sends piece ``i`` into the right neighbour's receive slot ``i % recv_slots`` and signals
  its ``FULL``; from piece ``recv_slots`` on it first waits a ``CREDIT`` (the slot is free);
  before a forwarded piece it waits ``READY_ADD`` (the add that made it) or ``READY_COPY``
  (the load that brought it); at the end it waits for its last ``min(recv_slots, sends)``
  credits, so every receive slot is free when the stream ends.
* DMA_IN: waits ``FULL``, loads the receive slot into an SRAM staging slot (to be added) or
  into the destination (a copy), then returns the slot's ``CREDIT`` to the left neighbour.
* COMPUTE: waits ``STAGE_FULL``, adds (``VECTOR ADD``, own data + received partial), signals
  ``STAGE_FREE`` (staging slot reusable), ``READY_ADD`` and, for a DRAM destination,
  ``STORE``.
* DMA_OUT: loads a DRAM source into the SRAM work area (``LOADED``) and stores finished
  pieces to a DRAM destination (after ``STORE``); local copies (root, ``n = 1``).

The plan's semaphores belong to the collective: they must be 0 when it starts, and every one
receives exactly as many increments as are consumed, so a run leaves each at 0 as it found it
and the stream can run again (every decoder layer), or run another collective with the same
semaphores and receive area. Chunks or vectors too short to fill every piece (``count < n``
leaves chunks empty) simply have fewer pieces: an empty chunk moves nothing. Commands are emitted
in the order an estimate of their start times gives (:func:`estimate_cycles`, the functional
model's costs), which is also an order in which every wait follows the signals it needs: the
command processor dispatching in stream order into bounded queues cannot deadlock.
"""

import heapq
import itertools
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil
from typing import NamedTuple

from npusim.sw.fm import timing
from npusim.sw.isa import Command
from npusim.sw.isa.enums import DType, Engine, Space, VBMode, VectorOp
from npusim.sw.isa.table import NUM_REGS, NUM_SEMAPHORES

from .dma import MAX_COPY

__all__ = ["Buffer", "RingRegs", "RingPlan", "plan_allreduce", "plan_broadcast", "plan_reduce",
           "ring_allreduce", "broadcast", "reduce", "ring_registers", "estimate_cycles",
           "bus_bandwidth", "chunks", "MAX_COPY",
           "FULL", "CREDIT", "STAGE_FULL", "STAGE_FREE", "READY_ADD", "READY_COPY", "LOADED",
           "STORE", "N_SEMS", "DEFAULT_SEMS", "DEFAULT_REGS"]

#: Semaphore roles: positions in ``RingPlan.sems``.
FULL, CREDIT, STAGE_FULL, STAGE_FREE, READY_ADD, READY_COPY, LOADED, STORE = range(8)
N_SEMS = 8
DEFAULT_SEMS = tuple(range(32, 32 + N_SEMS))   # clear of the GEMM kernel's 0..7

_ELEM = 4                   # fp32
_MAX_PIECE = 65535          # elements: VECTOR's cols field
_SLOT_SIZES = 16            # the planner tries link_max_payload << 0 .. 15
_MIN_SLOT = 512             # bytes: smaller pieces are all overhead


@dataclass(frozen=True)
class Buffer:
    """Where a vector lives: ``space`` (``Space.SRAM`` or ``Space.DRAM``), byte address."""
    space: Space
    addr: int

    @classmethod
    def sram(cls, addr):
        return cls(Space.SRAM, addr)

    @classmethod
    def dram(cls, addr):
        return cls(Space.DRAM, addr)


class RingRegs(NamedTuple):
    """Run-time registers holding the ring neighbours' bus addresses (set by the host)."""
    right_dram: int = 29   #: the right neighbour's DRAM BAR (where sends land)
    right_mmio: int = 30   #: its MMIO BAR (FULL signals)
    left_mmio: int = 31    #: the left neighbour's MMIO BAR (credits go back there)


DEFAULT_REGS = RingRegs()


@dataclass(frozen=True)
class RingPlan:
    """One collective on ``n_devices`` devices: the same plan serves every device.

    ``count`` fp32 elements per device at ``src``, result at ``dst``; ``root`` for broadcast
    and reduce. Scratch: ``recv_slots`` receive slots of ``slot_bytes`` at DRAM ``recv`` (on
    every device), ``stage_slots`` staging slots at SRAM ``stage`` (adds only), and a work
    area of the vector's size at SRAM ``work`` when adds write a DRAM destination.
    """
    kind: str               # "allreduce", "broadcast" or "reduce"
    params: object          # HwParams: the costs the command order is estimated with
    n_devices: int
    count: int
    src: Buffer
    dst: Buffer
    root: int
    slot_bytes: int
    recv: int
    recv_slots: int
    stage: int
    stage_slots: int
    work: int
    sems: tuple
    regs: RingRegs

    @property
    def nbytes(self):
        return _ELEM * self.count

    @property
    def adds(self):
        """Whether the collective sums (needs staging slots and, for DRAM, a work area)."""
        return self.kind != "broadcast" and self.n_devices > 1

    @property
    def work_addr(self):
        """SRAM address where this device's adds write: the destination, or the work area."""
        return self.dst.addr if self.dst.space == Space.SRAM else self.work


# -- planning ------------------------------------------------------------------------------------

def plan_allreduce(params, n_devices, count, src, dst=None, *, recv=None, stage=None, work=None,
                   slot_bytes=None, recv_slots=4, stage_slots=2, sems=DEFAULT_SEMS,
                   regs=DEFAULT_REGS):
    """Plan a ring all-reduce (sum) of ``count`` fp32 elements at ``src`` into ``dst``
    (default: in place). ``slot_bytes=None`` picks the piece size with the shortest
    :func:`estimate_cycles` among those whose slots fit. ValueError on a bad plan."""
    return _plan("allreduce", params, n_devices, count, src, dst, 0, recv, stage, work,
                 slot_bytes, recv_slots, stage_slots, sems, regs)


def plan_broadcast(params, n_devices, count, src, dst=None, *, root=0, recv=None,
                   slot_bytes=None, recv_slots=4, sems=DEFAULT_SEMS, regs=DEFAULT_REGS):
    """Plan a broadcast of the root's ``count`` elements at ``src`` into ``dst`` (default:
    ``src``) on every device, along the chain root -> root+1 -> ... (the root copies locally
    when ``dst`` differs from ``src``)."""
    return _plan("broadcast", params, n_devices, count, src, dst, root, recv, None, None,
                 slot_bytes, recv_slots, 1, sems, regs)


def plan_reduce(params, n_devices, count, src, dst=None, *, root=0, recv=None, stage=None,
                work=None, slot_bytes=None, recv_slots=4, stage_slots=2, sems=DEFAULT_SEMS,
                regs=DEFAULT_REGS):
    """Plan a reduce (sum) of every device's ``src`` into the root's ``dst``, along the chain
    root+1 -> ... -> root. On the other devices ``dst`` (the work area when ``dst`` is DRAM)
    is scratch and ends holding partial sums: in place (``dst == src``) their input is
    overwritten."""
    return _plan("reduce", params, n_devices, count, src, dst, root, recv, stage, work,
                 slot_bytes, recv_slots, stage_slots, sems, regs)


def _plan(kind, p, n, count, src, dst, root, recv, stage, work, slot_bytes, recv_slots,
          stage_slots, sems, regs):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_devices = {n!r}: at least one device is needed")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count = {count!r}: at least one element is needed")
    if not 0 <= root < n:
        raise ValueError(f"root {root} is not a device of 0 .. {n - 1}")
    dst = src if dst is None else dst
    for name, b in (("src", src), ("dst", dst)):
        if not isinstance(b, Buffer) or b.space not in (Space.SRAM, Space.DRAM):
            raise ValueError(f"{name} must be a Buffer in SRAM or DRAM, not {b!r}")
    sems = tuple(sems)
    if len(sems) != N_SEMS or len(set(sems)) != N_SEMS \
            or not all(isinstance(s, int) and 0 <= s < NUM_SEMAPHORES for s in sems):
        raise ValueError(f"sems must be {N_SEMS} distinct semaphore indices in "
                         f"0 .. {NUM_SEMAPHORES - 1}, not {sems}")
    regs = RingRegs(*regs)
    if len(set(regs)) != 3 or not all(isinstance(r, int) and 1 <= r < NUM_REGS for r in regs):
        raise ValueError(f"regs must be 3 distinct run-time registers in 1 .. {NUM_REGS - 1} "
                         f"(r0 reads 0), not {tuple(regs)}")
    if not (1 <= recv_slots < 1 << 16 and 1 <= stage_slots < 1 << 16):
        raise ValueError(f"recv_slots = {recv_slots} and stage_slots = {stage_slots} must be "
                         "in 1 .. 65535")
    base = RingPlan(kind, p, n, count, src, dst, root, 0, 0, recv_slots, 0, stage_slots, 0,
                    sems, regs)
    if n > 1:
        if recv is None:
            raise ValueError("recv (DRAM address of the receive slots) is required for n > 1")
        base = replace(base, recv=recv)
    if base.adds:
        if stage is None:
            raise ValueError(f"{kind}: stage (SRAM address of the staging slots) is required")
        base = replace(base, stage=stage)
        if dst.space == Space.DRAM:
            if work is None:
                raise ValueError(f"{kind} into DRAM: work (an SRAM work area of "
                                 f"{_ELEM * count} bytes) is required")
            base = replace(base, work=work)
    longest = _longest_chunk(base)
    if slot_bytes is not None:
        if slot_bytes < _ELEM or slot_bytes % _ELEM:
            raise ValueError(f"slot_bytes = {slot_bytes} must be a positive multiple of 4")
        plan = replace(base, slot_bytes=min(slot_bytes, _ELEM * longest))
        _check(plan)
        return plan
    best, error = None, None
    # pieces of a power of two times the max payload (the last piece takes the rest): full
    # link TLPs and burst-aligned DMAs, which the hardware moves faster than ragged ones
    slots = {min(_ELEM * longest, p.link_max_payload << k) for k in range(_SLOT_SIZES)}
    slots = {b for b in slots if b >= min(_MIN_SLOT, _ELEM * longest)}
    for slot_bytes in sorted(slots, reverse=True):
        plan = replace(base, slot_bytes=slot_bytes)
        try:
            _check(plan)
        except ValueError as e:
            error = e                   # the smallest slots' error, if none fits
            continue
        cycles = estimate_cycles(plan)
        if best is None or cycles < best[0]:
            best = (cycles, plan)
    if best is None:
        raise error
    return best[1]


def _longest_chunk(plan):
    if plan.kind == "allreduce":
        return ceil(plan.count / plan.n_devices)
    return plan.count


def _check(plan):
    """ValueError unless every buffer is aligned, inside its memory and apart from the others
    (``src == dst`` exactly is in place and allowed)."""
    p = plan.params
    if plan.slot_bytes > _ELEM * _MAX_PIECE:
        raise ValueError(f"slot_bytes = {plan.slot_bytes}: a piece is at most {_MAX_PIECE} "
                         "elements (VECTOR cols)")
    regions = {Space.SRAM: [], Space.DRAM: []}
    regions[plan.src.space].append(("src", plan.src.addr, plan.nbytes))
    if plan.dst != plan.src:
        regions[plan.dst.space].append(("dst", plan.dst.addr, plan.nbytes))
    if plan.n_devices > 1:
        regions[Space.DRAM].append(("recv", plan.recv, plan.recv_slots * plan.slot_bytes))
    if plan.adds:
        regions[Space.SRAM].append(("stage", plan.stage, plan.stage_slots * plan.slot_bytes))
        if plan.dst.space == Space.DRAM:
            regions[Space.SRAM].append(("work", plan.work, plan.nbytes))
    limits = {Space.SRAM: p.sram_bytes, Space.DRAM: min(p.dram_bytes, 1 << 31)}
    for space, items in regions.items():
        mem = space.name
        for name, addr, n in items:
            if not isinstance(addr, int) or addr % max(p.dma_align, _ELEM):
                raise ValueError(f"{name} at {addr!r} must be a {max(p.dma_align, _ELEM)}-byte "
                                 f"aligned {mem} address")
            if addr < 0 or addr + n > limits[space]:
                raise ValueError(f"{name} [{addr:#x}, {addr + n:#x}) does not fit {mem} "
                                 f"({limits[space]:#x} bytes): too big for {mem}")
        for i, (na, a, sa) in enumerate(items):
            for nb, b, sb in items[i + 1:]:
                if a < b + sb and b < a + sa:
                    raise ValueError(f"{mem} buffers {na} [{a:#x}, {a + sa:#x}) and {nb} "
                                     f"[{b:#x}, {b + sb:#x}) overlap")


# -- the schedule: what each device sends and receives, in order -------------------------------

def chunks(count, n):
    """The all-reduce's chunks ``[(first element, elements)]``: chunk ``k`` has
    ``count // n`` elements, one more for ``k < count % n`` (empty chunks when ``count < n``)."""
    out, at = [], 0
    for k in range(n):
        size = count // n + (k < count % n)
        out.append((at, size))
        at += size
    return out


def _pieces(first, size, slot_elems):
    """A chunk's pieces ``[(first element, elements)]``: ``slot_elems`` each, the last one
    the rest; none empty."""
    return [(at, min(slot_elems, first + size - at))
            for at in range(first, first + size, slot_elems)]


@dataclass(frozen=True)
class _Send:
    space: Space
    addr: int
    nbytes: int
    after: int          # READY_ADD / READY_COPY to wait first, or None


@dataclass(frozen=True)
class _Recv:
    nbytes: int
    add: bool           # add into SRAM dst (own data at ``a``), else copy into dst
    dst: Buffer
    a: int = 0          # SRAM address of the own operand (add)
    load: int = None    # DRAM address the own operand is first loaded from (to ``a``)
    ready: bool = False  # the result is forwarded: signal READY_ADD / READY_COPY
    store: int = None   # DRAM address the sum is stored to (add)


def _schedule(plan, d):
    """Device ``d``'s sends and receipts (each in order) and local copies."""
    n, src, dst = plan.n_devices, plan.src, plan.dst
    w = plan.work_addr
    slot = plan.slot_bytes // _ELEM
    sends, recvs, copies = [], [], []

    def at(buf, e):
        return buf.addr + _ELEM * e

    def add(first, size, ready, final):
        src_dram = src.space == Space.DRAM
        return _Recv(_ELEM * size, True, Buffer.sram(w + _ELEM * first),
                     a=w + _ELEM * first if src_dram else at(src, first),
                     load=at(src, first) if src_dram else None, ready=ready,
                     store=at(dst, first) if final and dst.space == Space.DRAM else None)

    if n == 1:
        if src != dst:
            copies.append((src, dst, plan.nbytes))
        return sends, recvs, copies
    if plan.kind == "allreduce":
        parts = [_pieces(first, size, slot) for first, size in chunks(plan.count, n)]
        for s in range(n - 1):                      # reduce-scatter
            for first, size in parts[(d - 1 - s) % n]:
                sends.append(_Send(src.space, at(src, first), _ELEM * size, None) if s == 0
                             else _Send(Space.SRAM, w + _ELEM * first, _ELEM * size, READY_ADD))
            for first, size in parts[(d - 2 - s) % n]:
                recvs.append(add(first, size, True, s == n - 2))
        for t in range(n - 1):                      # all-gather
            for first, size in parts[(d - t) % n]:
                sends.append(_Send(Space.SRAM, w + _ELEM * first, _ELEM * size, READY_ADD)
                             if t == 0 else
                             _Send(dst.space, at(dst, first), _ELEM * size, READY_COPY))
            for first, size in parts[(d - 1 - t) % n]:
                recvs.append(_Recv(_ELEM * size, False, Buffer(dst.space, at(dst, first)),
                                   ready=t < n - 2))
        return sends, recvs, copies
    whole = _pieces(0, plan.count, slot)
    if plan.kind == "broadcast":
        pos = (d - plan.root) % n
        for first, size in whole:
            if pos == 0:
                sends.append(_Send(src.space, at(src, first), _ELEM * size, None))
                continue
            recvs.append(_Recv(_ELEM * size, False, Buffer(dst.space, at(dst, first)),
                               ready=pos < n - 1))
            if pos < n - 1:
                sends.append(_Send(dst.space, at(dst, first), _ELEM * size, READY_COPY))
        if pos == 0 and src != dst:
            copies.append((src, dst, plan.nbytes))
        return sends, recvs, copies
    pos = (d - plan.root - 1) % n                   # reduce: root is last
    for first, size in whole:
        if pos == 0:
            sends.append(_Send(src.space, at(src, first), _ELEM * size, None))
            continue
        recvs.append(add(first, size, pos < n - 1, pos == n - 1))
        if pos < n - 1:
            sends.append(_Send(Space.SRAM, w + _ELEM * first, _ELEM * size, READY_ADD))
    return sends, recvs, copies


# -- commands per queue -------------------------------------------------------------------------

@dataclass
class _Op:
    """A command to be (``name`` and ``fields``; built only for the plan chosen), its
    estimated cycles, and what it waits for or signals."""
    name: str
    fields: dict
    cycles: int = 0
    wait: tuple = None      # (role, value)
    signal: tuple = None    # (device, role, remote)

    def command(self):
        return Command(self.name, **self.fields)


def _dma(p, engine, src_space, src, dst_space, dst, nbytes, dst_reg=0):
    fields = dict(engine=engine, src_space=src_space, src_off=src, dst_space=dst_space,
                  dst_reg=dst_reg, dst_off=dst, len=nbytes, n1=1, n2=1)
    return _Op("DMA_COPY", fields, timing.dma_cycles(p, src_space, dst_space, 1, nbytes,
                                                     src_offset=src, dst_offset=dst))


def _device_ops(plan, d):
    """Device ``d``'s commands per engine queue, with what each waits for and signals."""
    p, n, s, r = plan.params, plan.n_devices, plan.sems, plan.regs
    R, K, slot = plan.recv_slots, plan.stage_slots, plan.slot_bytes
    right, left = (d + 1) % n, (d - 1) % n
    sends, recvs, copies = _schedule(plan, d)
    q = {e: [] for e in Engine}

    def wait(e, role, value=1):
        q[e].append(_Op("SEM_WAIT", dict(engine=e, sem=s[role], value=value, consume=True),
                        wait=(role, value)))

    def signal(e, role, to=None, peer_reg=0):
        q[e].append(_Op("SEM_SIGNAL", dict(engine=e, sem=s[role], amount=1,
                                           remote=to is not None, peer_reg=peer_reg),
                        signal=(d if to is None else to, role, to is not None)))

    for i, x in enumerate(sends):
        if i >= R:
            wait(Engine.LINK, CREDIT)
        if x.after is not None:
            wait(Engine.LINK, x.after)
        q[Engine.LINK].append(_dma(p, Engine.LINK, x.space, x.addr, Space.LINK,
                                   plan.recv + (i % R) * slot, x.nbytes, dst_reg=r.right_dram))
        signal(Engine.LINK, FULL, to=right, peer_reg=r.right_mmio)
    if sends:
        wait(Engine.LINK, CREDIT, min(R, len(sends)))

    adds = [x for x in recvs if x.add]
    k = 0
    for j, x in enumerate(recvs):
        wait(Engine.DMA_IN, FULL)
        at = plan.recv + (j % R) * slot
        if x.add:
            if k >= K:
                wait(Engine.DMA_IN, STAGE_FREE)
            q[Engine.DMA_IN].append(_dma(p, Engine.DMA_IN, Space.DRAM, at, Space.SRAM,
                                         plan.stage + (k % K) * slot, x.nbytes))
            signal(Engine.DMA_IN, CREDIT, to=left, peer_reg=r.left_mmio)
            signal(Engine.DMA_IN, STAGE_FULL)
            k += 1
        else:
            q[Engine.DMA_IN].append(_dma(p, Engine.DMA_IN, Space.DRAM, at, x.dst.space,
                                         x.dst.addr, x.nbytes))
            signal(Engine.DMA_IN, CREDIT, to=left, peer_reg=r.left_mmio)
            if x.ready:
                signal(Engine.DMA_IN, READY_COPY)

    for k, x in enumerate(adds):
        wait(Engine.COMPUTE, STAGE_FULL)
        if x.load is not None:
            wait(Engine.COMPUTE, LOADED)
        e = x.nbytes // _ELEM
        fields = dict(op=VectorOp.ADD, dst=x.dst.addr, ldd=e, a=x.a, lda=e,
                      b=plan.stage + (k % K) * slot, ldb=e, b_mode=VBMode.TILE,
                      a_dtype=DType.FP32, d_dtype=DType.FP32, rows=1, cols=e)
        q[Engine.COMPUTE].append(_Op("VECTOR", fields,
                                     timing.compute_cycles(p, "VECTOR", fields)))
        if k + K < len(adds):
            signal(Engine.COMPUTE, STAGE_FREE)
        if x.ready:
            signal(Engine.COMPUTE, READY_ADD)
        if x.store is not None:
            signal(Engine.COMPUTE, STORE)

    for x in adds:
        if x.load is not None:
            q[Engine.DMA_OUT].append(_dma(p, Engine.DMA_OUT, Space.DRAM, x.load, Space.SRAM,
                                          x.a, x.nbytes))
            signal(Engine.DMA_OUT, LOADED)
    for a, b, nbytes in copies:
        for off in range(0, nbytes, MAX_COPY):
            q[Engine.DMA_OUT].append(_dma(p, Engine.DMA_OUT, a.space, a.addr + off, b.space,
                                          b.addr + off, min(MAX_COPY, nbytes - off)))
    for x in adds:
        if x.store is not None:
            wait(Engine.DMA_OUT, STORE)
            q[Engine.DMA_OUT].append(_dma(p, Engine.DMA_OUT, Space.SRAM, x.dst.addr,
                                          Space.DRAM, x.store, x.nbytes))
    return q


@lru_cache(maxsize=64)
def _simulate(plan):
    """Run every device's queues on estimated costs (the functional model's DMA and VECTOR
    timing; a remote signal arrives ``link_latency`` after it leaves and not before the data
    its device's last link DMA wrote, as on the model; the command processor's dispatch is
    left out).

    Returns each device's operations ordered by estimated start time, and the estimated
    cycles.
    Each step starts the queue head that can start earliest (start times never decrease), so
    a wait is placed after every signal it needs: an order free of deadlock."""
    n, lat = plan.n_devices, plan.params.link_latency
    data_lands = timing.link_write_arrival(plan.params)
    posted = [[] for _ in range(n)]  # per device: (answered, lands) of each link DMA
    ops = [_device_ops(plan, d) for d in range(n)]
    heads = {(d, e): 0 for d in range(n) for e in Engine}
    free = dict.fromkeys(heads, 0)
    arrivals = defaultdict(list)     # (device, role) -> arrival time of each increment
    consumed = defaultdict(int)      # (device, role) -> increments consumed (one consumer queue)
    blocked = {}                     # (device, role) -> the queue whose head waits for it
    ready, tie = [], itertools.count()   # heap of (start, tie, device, engine)
    order = [[] for _ in range(n)]

    def arm(d, e):
        """Queue (d, e)'s head goes on the heap once what it waits for has arrived."""
        if heads[d, e] == len(ops[d][e]):
            return
        op, start = ops[d][e][heads[d, e]], free[d, e]
        if op.wait is not None:
            role, value = op.wait
            need, got = consumed[d, role] + value, arrivals[d, role]
            if len(got) < need:
                blocked[d, role] = e
                return
            start = max(start, got[need - 1])
        heapq.heappush(ready, (start, next(tie), d, e))

    for d, e in heads:
        arm(d, e)
    end_time = 0
    while ready:
        start, _, d, e = heapq.heappop(ready)
        op = ops[d][e][heads[d, e]]
        heads[d, e] += 1
        if op.wait is not None:
            consumed[d, op.wait[0]] += op.wait[1]
        end = start + op.cycles
        free[d, e] = end
        end_time = max(end_time, end)
        order[d].append(op)
        if op.name == "DMA_COPY" and op.fields["dst_space"] == Space.LINK:
            posted[d].append((end, end + data_lands))
        if op.signal is not None:
            to, role, remote = op.signal
            arrival = end
            if remote:   # behind the data of the link DMAs answered before it
                arrival = max([end + lat] + [lands + 1 for done, lands in posted[d]
                                             if done <= end])
            arrivals[to, role].append(arrival)
            if (to, role) in blocked:
                arm(to, blocked.pop((to, role)))
        arm(d, e)
    if any(heads[k] != len(ops[k[0]][k[1]]) for k in heads):
        raise AssertionError(f"{plan.kind} schedule deadlocks")   # a bug in this module
    return tuple(tuple(o) for o in order), end_time


def estimate_cycles(plan):
    """Estimated cycles of the whole collective (every device done), from the functional
    model's costs; the command processor's fetch and dispatch are not counted."""
    return _simulate(plan)[1]


def _commands(plan, kind, device):
    if plan.kind != kind:
        raise ValueError(f"a {plan.kind} plan, not a {kind} plan")
    if not 0 <= device < plan.n_devices:
        raise ValueError(f"device {device} is not one of 0 .. {plan.n_devices - 1}")
    return [op.command() for op in _simulate(plan)[0][device]]


def ring_allreduce(plan, device):
    """Device ``device``'s commands of the all-reduce ``plan`` (:func:`plan_allreduce`)."""
    return _commands(plan, "allreduce", device)


def broadcast(plan, device):
    """Device ``device``'s commands of the broadcast ``plan`` (:func:`plan_broadcast`)."""
    return _commands(plan, "broadcast", device)


def reduce(plan, device):
    """Device ``device``'s commands of the reduce ``plan`` (:func:`plan_reduce`)."""
    return _commands(plan, "reduce", device)


def ring_registers(plan, device, bus):
    """The run-time register values device ``device`` needs, ``{register: value}``, from the
    host's :class:`~npusim.sw.fm.system.BusMap` ``bus``: its neighbours' BARs."""
    n, r = plan.n_devices, plan.regs
    right, left = (device + 1) % n, (device - 1) % n
    return {r.right_dram: bus.dram(right), r.right_mmio: bus.mmio(right),
            r.left_mmio: bus.mmio(left)}


def bus_bandwidth(plan, cycles):
    """Bus bandwidth in bytes per cycle, as nccl-tests define it: ``S / t`` times
    ``2 (n-1) / n`` for an all-reduce (1 for broadcast and reduce), ``S`` the bytes per
    device."""
    factor = 2 * (plan.n_devices - 1) / plan.n_devices if plan.kind == "allreduce" else 1
    return plan.nbytes / cycles * factor

