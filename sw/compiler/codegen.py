"""The back end: a tensor-parallel graph -> device memory layout and one command stream per
device and phase (prefill of a ``tokens``-long bucket, or one decode step), with the weights
in the layouts the kernels read.

Schedule (first version): the layer runs as a sequence of phases separated by ``FENCE``;
within a phase the kernels overlap their own DMA and compute (the GEMM's double buffering,
the collectives' pipelined pieces). Activations go back to DRAM between phases, so every
phase may use the whole scratchpad from address 0 (row-wise phases in chunks of tokens that
fit). Phases of one decoder layer::

    norm1     x -> rmsnorm -> xn (bf16)
    qkv       xn @ [Wq | Wk | Wv]^T                      (GEMM, fp32 out)
    attend    per KV head: + biases, RoPE on q and k, -> bf16, its K/V columns into the
              paged pools through the slot mapping (DMA_SCATTER); decode: the context's
              K/V through the block table (DMA_GATHER); attention -> bf16
    o         attn @ Wo^T                                (GEMM), then all-reduce (TP > 1)
    norm2     x += o (+ bias); x -> rmsnorm -> xn
    gate_up   xn @ [Wgate | Wup]^T                       (GEMM)
    swiglu    silu(gate) * up -> bf16
    down      h @ Wdown^T                                (GEMM), then all-reduce
    residual  x += down (+ bias)

The embedding is a ``DMA_GATHER`` of fp32 rows by token id (block size 1: the "block table"
is the device's token ids, out-of-range ids pointing at an all-zero row) and an all-reduce;
the LM head is a GEMM into the device's slice of the logits.
"""

from dataclasses import dataclass, field

import numpy as np

from npusim.firmware import collectives as col
from npusim.firmware.attention import attention, attention_work
from npusim.firmware.dma import copy
from npusim.firmware.gemm import gemm_commands, plan_gemm
from npusim.firmware.pipeline import pipelined
from npusim.firmware.schedule import barrier, handoff, interleave
from npusim.firmware.rowops import Tile, add, convert, rmsnorm, rope, swiglu, vec
from npusim.sw import numerics as nx
from npusim.sw.isa import Command
from npusim.sw.isa.enums import DType, Engine, RegOp, Space, VBMode, VectorOp

from .reference import rope_tables

__all__ = ["Layout", "DeviceProgram", "generate", "weight_image", "stream_area", "kv_group",
           "SEQ_REG0", "MAX_BATCH", "SCRATCH_REGS"]

_ALIGN = 64


def _align(n, a=_ALIGN):
    return -(-n // a) * a


class _Arena:
    """A bump allocator of named, aligned regions."""

    def __init__(self, base, limit, what):
        self.at, self.limit, self.what = base, limit, what
        self.regions = {}

    def take(self, name, nbytes):
        addr = self.at
        self.at = _align(addr + max(nbytes, 1))
        if self.at > self.limit:
            raise ValueError(f"{self.what}: {name} ({nbytes} bytes) does not fit below "
                             f"{self.limit:#x}")
        self.regions[name] = (addr, nbytes)
        return addr


@dataclass
class Layout:
    """Where everything lives in one device's DRAM (``{name: (addr, bytes)}``) and the
    constants the streams were generated for."""
    tokens: int
    block_size: int
    kv_blocks: int
    regions: dict = field(default_factory=dict)
    phase: str = "prefill"
    max_context: int = 0
    stream_bytes: int = 0    #: DRAM from 0 left for the streams
    #: new tokens of each sequence of a decode or extend phase (their first positions are
    #: registers ``SEQ_REG0 + i``); a prefill has one sequence from position 0
    segments: tuple = ()
    #: the KV groups (``kv_group``) of the attention layers, ``{group: [layer names]}``:
    #: each has its own slot mapping and block tables (``slots.<group>``, ``table.<group>``)
    groups: dict = field(default_factory=dict)

    def addr(self, name):
        return self.regions[name][0]

    @property
    def table_entries(self):
        """Block-table entries per sequence (``table.<group>`` holds one table per sequence
        of the phase, this many u32 each)."""
        return self.max_context // self.block_size


@dataclass
class DeviceProgram:
    """One device's stream of one phase (commands), its layout, its weight image
    (``{region: bytes}``) and run-time registers (``{register: value}``, set per launch)."""
    device: int
    commands: list
    layout: Layout
    weights: dict
    registers: dict


def stream_area(params):
    """Bytes at the bottom of DRAM for the streams (the runtime's): 8 MiB, or a quarter of a
    smaller DRAM."""
    return min(8 << 20, params.dram_bytes // 4)


def _bf16_bytes(a):
    return nx.fp32_to_bf16(np.ascontiguousarray(a, np.float32).view(np.uint32)).tobytes()


def _f32_bytes(a):
    return np.ascontiguousarray(a, np.float32).tobytes()


def _tile(n, limit=64):
    """The largest divisor of ``n`` not above ``limit`` (a GEMM tile edge)."""
    return max(t for t in range(1, min(n, limit) + 1) if n % t == 0)


def _fence():
    return [Command("FENCE", engines=0)]


def load(sram, dram, nbytes):
    """DMA_IN copies of ``nbytes`` from DRAM to the scratchpad."""
    return copy(Engine.DMA_IN, Space.DRAM, dram, Space.SRAM, sram, nbytes)


def store(dram, sram, nbytes):
    """DMA_OUT copies of ``nbytes`` from the scratchpad to DRAM."""
    return copy(Engine.DMA_OUT, Space.SRAM, sram, Space.DRAM, dram, nbytes)


def weight_image(tpg, device):
    """The bytes of device ``device``'s weights, ``{region name: bytes}``, in the kernels'
    layouts: linear weights transposed (``in x out``) bf16 with the fused projections side by
    side, norms and biases fp32, the embedding fp32 with an all-zero row appended, and the
    RoPE table (one row per position: the cos half then the sin half, fp32)."""
    g, image = tpg.graph, {}
    for n in g.nodes:
        w = {r: parts[device] for r, parts in tpg.shards[n.name].weights.items()}

        def biases(roles):
            return _f32_bytes(np.concatenate([w.get(f"{r}_bias", np.zeros(len(w[r]), np.float32))
                                              for r in roles]))
        if n.op == "embed":
            image[f"{n.name}.table"] = _f32_bytes(np.vstack([w["weight"],
                                                             np.zeros_like(w["weight"][:1])]))
        elif n.op == "rmsnorm":
            image[f"{n.name}.weight"] = _f32_bytes(w["weight"])
        elif n.op == "linear":
            image[f"{n.name}.wt"] = _bf16_bytes(w["weight"].T)
            if "bias" in w:
                image[f"{n.name}.bias"] = _f32_bytes(w["bias"])
        elif n.op == "attention":
            image[f"{n.name}.qkv_t"] = _bf16_bytes(np.vstack([w["q"], w["k"], w["v"]]).T)
            image[f"{n.name}.o_t"] = _bf16_bytes(w["o"].T)
            if any(f"{r}_bias" in w for r in "qkv"):
                image[f"{n.name}.qkv_bias"] = biases("qkv")
            if "o_bias" in w:
                image[f"{n.name}.bias"] = _f32_bytes(w["o_bias"])
        elif n.op == "mlp":
            image[f"{n.name}.gate_up_t"] = _bf16_bytes(np.vstack([w["gate"], w["up"]]).T)
            image[f"{n.name}.down_t"] = _bf16_bytes(w["down"].T)
            if "gate_bias" in w or "up_bias" in w:
                image[f"{n.name}.gate_up_bias"] = biases(("gate", "up"))
            if "down_bias" in w:
                image[f"{n.name}.bias"] = _f32_bytes(w["down_bias"])
    spec = g.spec
    cos, sin = rope_tables(np.arange(spec.max_positions), spec.head_dim, spec.rope_theta)
    half = spec.head_dim // 2
    image["rope"] = _f32_bytes(np.hstack([cos[:, :half], sin[:, :half]]))
    return image


def generate(tpg, params, *, tokens=1, phase="prefill", batch=1, block_size=16,
             kv_blocks=64, max_context=None, bus=None):
    """The programs of one phase, one per device:

    - ``"prefill"``: a ``tokens``-long prompt of one sequence, positions 0 .. (keys and
      values from the scratchpad, blocks of the causal mask skipped at compile time);
    - ``"decode"``: one new token of each of ``batch`` sequences;
    - ``"extend"``: ``tokens`` new tokens of one sequence (a prompt after a cached prefix, or
      a chunk of a long one).

    In a decode or extend phase, sequence ``i``'s first new position is run-time register
    ``SEQ_REG0 + i`` and its keys (up to ``max_context``, default the model's positions;
    a sliding-window layer's only from its window) are read through its block table: one
    program serves every step."""
    from npusim.sw.fm.system import BusMap
    bus = bus or BusMap()
    spec = tpg.graph.spec
    if phase not in ("prefill", "decode", "extend"):
        raise ValueError(f"phase {phase!r}: prefill, decode or extend")
    if block_size & (block_size - 1):
        raise ValueError(f"block size {block_size} is not a power of two")
    max_context = max_context or spec.max_positions
    segments = ()
    if phase != "prefill":
        if max_context % block_size:
            raise ValueError(f"the context of {max_context} tokens is not whole blocks of "
                             f"{block_size}")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"a batch of {batch} sequences: 1 to {MAX_BATCH}")
        segments = (1,) * batch if phase == "decode" else (tokens,)
        tokens = sum(segments)
    if max(segments, default=tokens) > max_context and phase != "prefill" \
            or tokens > spec.max_positions or max_context > spec.max_positions:
        raise ValueError(f"{max(tokens, max_context)} tokens: the model has "
                         f"{spec.max_positions} positions, the context {max_context}")
    return [_Device(tpg, params, d, tokens, phase, segments, block_size, kv_blocks,
                    max_context, bus).program() for d in range(tpg.tp)]


#: Run-time registers of decode and extend programs: sequence ``i``'s first new position is
#: ``SEQ_REG0 + i`` (set by the host, ``i < MAX_BATCH``); the stream derives the others per
#: sequence, in the scratch registers, just before the commands that read them.
SEQ_REG0, MAX_BATCH = 8, 16
POS_REG, KLEN_REG, ROPE_REG, KSTART_REG, KCOUNT_REG = 1, 2, 3, 4, 5
SCRATCH_REGS = {"position": POS_REG, "key_length": KLEN_REG, "rope_offset": ROPE_REG,
                "first_key": KSTART_REG, "keys": KCOUNT_REG}


def kv_group(window):
    """The KV group of an attention layer: layers with the same window (or none) share block
    tables and slot mappings, as vLLM's KV cache groups."""
    return "full" if not window else f"window{window}"


class _Device:
    """The program of one device: its DRAM layout, then one phase per node."""

    def __init__(self, tpg, params, device, tokens, phase, segments, block_size, kv_blocks,
                 max_context, bus):
        self.tpg, self.params, self.device, self.bus = tpg, params, device, bus
        self.T, self.H = tokens, tpg.graph.spec.hidden
        self.phase, self.segments, self.max_context = phase, segments, max_context
        self.block_size, self.kv_blocks = block_size, kv_blocks
        self.image = weight_image(tpg, device)
        self.regs, self.cmds = {}, []
        self._layout()

    def _layout(self):
        g, T, H = self.tpg.graph, self.T, self.H
        dram = _Arena(stream_area(self.params), self.params.dram_bytes,
                      f"the model does not fit device {self.device}'s DRAM (more devices or "
                      f"fewer KV blocks would help)")
        for name, data in self.image.items():
            dram.take(name, len(data))
        attn = [self.tpg.shards[n.name].attrs for n in g.nodes if n.op == "attention"]
        self.kv_row = attn[0]["kv_heads"] * attn[0]["head_dim"] * 2 if attn else 0
        groups = {}
        for n in g.nodes:
            if n.op == "attention":
                groups.setdefault(kv_group(n.attrs["window"]), []).append(n.name)
                for pool in ("k_pool", "v_pool"):
                    dram.take(f"{n.name}.{pool}", self.kv_blocks * self.block_size * self.kv_row)
        widest = max([3 * H] + [2 * self.tpg.shards[n.name].attrs.get("intermediate", 0)
                                for n in g.nodes])
        dram.take("ids", 4 * T)
        tables = max(len(self.segments), 1) * (self.max_context // self.block_size)
        for group in groups:
            dram.take(f"slots.{group}", 4 * T)
            dram.take(f"table.{group}", 4 * tables)
        for name in ("x", "xn", "y", "qkv", "attn", "gu", "h"):
            dram.take(name, 4 * T * widest)
        self.logit_cols = self.tpg.shards[g.output].attrs["rows"]
        dram.take("logits", 4 * T * self.logit_cols)
        dram.take("recv", 4 * _SLOT)
        self.layout = Layout(T, self.block_size, self.kv_blocks, dram.regions, self.phase,
                             self.max_context, stream_area(self.params), self.segments, groups)

    def A(self, name):
        return self.layout.regions[name][0]

    def has(self, name):
        return name in self.layout.regions

    def program(self):
        values, fused = {}, set()
        nodes = self.tpg.graph.nodes
        for i, n in enumerate(nodes):
            s = self.tpg.shards[n.name]
            if n.name in fused:
                values[n.name] = "xn"
            elif n.op == "embed":
                self._embed(n, s)
                values[n.name] = "x"
            elif n.op == "rmsnorm":
                self._rows(values[n.inputs[0]], norm=n)
                values[n.name] = "xn"
            elif n.op == "attention":
                self._attention(n, s)
                values[n.name] = "y"
            elif n.op == "mlp":
                self._mlp(n, s)
                values[n.name] = "y"
            elif n.op == "add":
                # the bias of the row-parallel layer feeding it, added once after its all-reduce
                bias = next((f"{i}.bias" for i in n.inputs if self.has(f"{i}.bias")), None)
                after = nodes[i + 1] if i + 1 < len(nodes) else None
                norm = after if after and after.op == "rmsnorm" and after.inputs == [n.name] \
                    else None     # the RMSNorm of the sum, fused with it
                self._rows(values[n.inputs[0]], values[n.inputs[1]], bias, norm)
                if norm:
                    fused.add(norm.name)
                values[n.name] = "x"
            elif n.op == "linear":
                self._lm_head(n, s, values[n.inputs[0]])
                values[n.name] = "logits"
        return DeviceProgram(self.device, self.cmds, self.layout, self.image, self.regs)

    # -- phases ---------------------------------------------------------------------------

    def _allreduce(self, region, count):
        """Ring all-reduce of ``count`` fp32 in DRAM ``region``, in slices whose adds fit the
        scratchpad (a DRAM all-reduce sums into an SRAM work area of its size)."""
        tp = self.tpg.tp
        if tp == 1:
            return
        work = 2 * _SLOT
        most = (self.params.sram_bytes - work) // 4 // 16 * 16
        slices = -(-count // most)
        most = _align(-(-count // slices), 16)      # even slices
        for at in range(0, count, most):
            n = min(most, count - at)
            plan = col.plan_allreduce(self.params, tp, n,
                                      col.Buffer.dram(self.A(region) + 4 * at),
                                      recv=self.A("recv"), stage=0, work=work,
                                      slot_bytes=_SLOT, recv_slots=4)
            self.regs.update(col.ring_registers(plan, self.device, self.bus))
            self.cmds += col.ring_allreduce(plan, self.device) + _fence()

    def _embed(self, n, s):
        T, H = self.T, self.H
        self.cmds += [Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=self.A("ids"),
                              pool_off=self.A(f"{n.name}.table"), dst_space=Space.DRAM,
                              dst_off=self.A("x"), row_bytes=4 * H, row_stride=4 * H,
                              dst_stride=4 * H, block_log2=0, pool_blocks=s.attrs["rows"] + 1,
                              n=T, t0=0)] + _fence()
        self._allreduce("x", T * H)

    def _chunks(self, per_row, fixed=0, what="phase"):
        """``(first row, rows)`` pieces of the ``T`` rows such that ``fixed`` bytes plus
        ``per_row`` bytes per row (plus alignment) fit the scratchpad."""
        room = self.params.sram_bytes - fixed - 16 * _ALIGN
        rows = min(self.T, room // per_row) if per_row else self.T
        if rows < 1:
            raise ValueError(f"{what}: one row needs {per_row + fixed} bytes of scratchpad, "
                             f"{self.params.sram_bytes} are there")
        return [(r, min(rows, self.T - r)) for r in range(0, self.T, rows)]

    def _rows(self, src, other=None, bias=None, norm=None):
        """A row-wise phase in double-buffered chunks (``firmware/pipeline.py``): the residual
        connection ``x = src + other (+ bias)``, stored as ``x``, and/or the RMSNorm ``norm``
        of the result (or of ``src`` alone) to bf16, stored as ``xn``. After the add, the
        other summand's buffer holds RMSNorm's squares."""
        H = self.H
        slot_row = 4 * H + (4 * H if other else 0) + (2 * H if norm else 0)
        shared_row = 4 * H + 4 if norm and not other else 4     # squares, statistics
        sram = _Arena(0, self.params.sram_bytes, "scratchpad (row-wise phase)")
        if norm:
            w = sram.take("weight", 4 * H)
            self.cmds += load(w, self.A(f"{norm.name}.weight"), 4 * H)
        if bias:
            b = Tile(sram.take("bias", 4 * H), 1, H)
            self.cmds += load(b.addr, self.A(bias), 4 * H)
        chunks = self._chunks(2 * slot_row + shared_row, sram.at, "a row-wise phase")
        rows = chunks[0][1]
        slots = [{name: sram.take(f"{name}{k}", size * rows) for name, size in
                  (("a", 4 * H), ("b", 4 * H if other else 0), ("xn", 2 * H if norm else 0))
                  if size} for k in range(2)]
        squares = sram.take("squares", 4 * H * rows) if norm and not other else None
        stats = sram.take("stats", 4 * rows)

        def loads(chunk, k):
            r0, n = chunk
            cmds = load(slots[k]["a"], self.A(src) + 4 * r0 * H, 4 * n * H)
            if other:
                cmds += load(slots[k]["b"], self.A(other) + 4 * r0 * H, 4 * n * H)
            return cmds

        def compute(chunk, k):
            _, n = chunk
            x = Tile(slots[k]["a"], n, H)
            cmds = []
            if other:
                cmds += add(x, Tile(slots[k]["b"], n, H), x)
                if bias:
                    cmds.append(vec(VectorOp.ADD, x, x, b, mode=VBMode.COL, ldb=H))
            if norm:
                sq = Tile(slots[k]["b"] if other else squares, n, H)
                cmds += rmsnorm(x, w, Tile(slots[k]["xn"], n, H, dtype=DType.BF16),
                                norm.attrs["eps"], squares=sq, stats=stats)
            return cmds

        def stores(chunk, k):
            r0, n = chunk
            cmds = store(self.A("x") + 4 * r0 * H, slots[k]["a"], 4 * n * H) if other else []
            if norm:
                cmds += store(self.A("xn") + 2 * r0 * H, slots[k]["xn"], 2 * n * H)
            return cmds
        self.cmds += pipelined(chunks, loads, compute, stores) + _fence()

    def _gemm(self, a, b, c, m, n, k):
        plan = plan_gemm(self.params, m, n, k, tm=_tile(m), tn=_tile(n), tk=_tile(k))
        self.cmds += gemm_commands(plan, self.A(a), self.A(b), self.A(c)) + _fence()

    def _row_parallel(self, a, w, m, n, k):
        """``y = a @ w`` (bf16 ``a``: the O or down projection's input), then its all-reduce.
        With TP > 1 and enough rows, in ``_OVERLAP_CHUNKS`` chunks of rows: chunk ``c``'s
        all-reduce runs interleaved with chunk ``c + 1``'s GEMM (``firmware/schedule.py``),
        so the link overlaps the matrix unit; a handoff makes the all-reduce wait for its
        rows' stores, a barrier for the previous chunk's all-reduce to finish on every
        engine. The all-reduce's scratchpad follows the GEMM's."""
        rows = -(-m // _OVERLAP_CHUNKS)
        chunks = [(r0, min(rows, m - r0)) for r0 in range(0, m, rows)]
        plans = {r: plan_gemm(self.params, r, n, k, tm=_tile(r), tn=_tile(n), tk=_tile(k))
                 for r in {r for _, r in chunks}}
        stage = _align(max(p.c_slots[1] + 4 * p.tm * p.tn for p in plans.values()))
        if self.tpg.tp == 1 or rows < _MIN_CHUNK \
                or stage + 2 * _SLOT + 4 * rows * n > self.params.sram_bytes:
            self._gemm(a, w, "y", m, n, k)         # one GEMM, then the all-reduce
            self._allreduce("y", m * n)
            return
        pending, after = [], []
        for r0, rows in chunks:
            signal, waits = handoff(Engine.DMA_OUT)
            mine = gemm_commands(plans[rows], self.A(a) + 2 * r0 * k, self.A(w),
                                 self.A("y") + 4 * r0 * n) + signal
            self.cmds += interleave(mine, pending)
            plan = col.plan_allreduce(self.params, self.tpg.tp, rows * n,
                                      col.Buffer.dram(self.A("y") + 4 * r0 * n),
                                      recv=self.A("recv"), stage=stage,
                                      work=stage + 2 * _SLOT, slot_bytes=_SLOT, recv_slots=4)
            self.regs.update(col.ring_registers(plan, self.device, self.bus))
            # after the previous chunk's all-reduce (the same staging, work and receive slots)
            done, ready = barrier()
            pending = waits + after + col.ring_allreduce(plan, self.device) + done
            after = ready
        self.cmds += pending + after + _fence()

    def _add_bias(self, tile, sram, region, offset=0):
        """tile += the fp32 vector ``region`` (from element ``offset``) down the rows."""
        if not self.has(region):
            return
        b = sram.take(f"bias{offset}", 4 * tile.cols)
        self.cmds += load(b, self.A(region) + 4 * offset, 4 * tile.cols) + _fence()
        self.cmds += [vec(VectorOp.ADD, tile, tile, Tile(b, 1, tile.cols), mode=VBMode.COL,
                          ldb=tile.cols)]

    def _attention(self, n, s):
        """QKV GEMM, then per KV head (with its group of query heads): biases, RoPE, bf16,
        its K and V columns into the pools, attention, the output columns back; O GEMM."""
        T, H = self.T, self.H
        a = s.attrs
        heads, kvh, D = a["heads"], a["kv_heads"], a["head_dim"]
        group = heads // kvh
        qw, kw = heads * D, kvh * D
        W = qw + 2 * kw
        self._gemm("xn", f"{n.name}.qkv_t", "qkv", T, W, H)
        for g in range(kvh):
            self._attention_group(n, g, group, D, qw, kw, W)
        self._row_parallel("attn", f"{n.name}.o_t", T, H, qw)

    def _attention_group(self, n, g, group, D, qw, kw, W):
        T = self.T
        gw = group * D
        sram = _Arena(0, self.params.sram_bytes, "scratchpad (attention of one KV head; a "
                      "shorter prefill bucket fits)")
        cols = {"q": (g * gw, gw), "k": (qw + g * D, D), "v": (qw + kw + g * D, D)}
        f32 = {r: Tile(sram.take(r, 4 * T * w), T, w) for r, (_, w) in cols.items()}
        for r, (c0, w) in cols.items():
            self.cmds += [_copy2d(Engine.DMA_IN, Space.DRAM, self.A("qkv") + 4 * c0, 4 * W,
                                  Space.SRAM, f32[r].addr, 4 * w, T, 4 * w)]
        rope_rows = sram.take("rope", 4 * T * D)
        scratch = sram.take("rope_scratch", 4 * 4 * T * (D // 2))
        if self.segments:    # the table rows of each sequence's positions
            for i, (r0, rows) in enumerate(self._segment_rows()):
                self.cmds += self._sequence_registers(i, rows) + [Command(
                    "DMA_COPY", engine=Engine.DMA_IN, src_space=Space.DRAM, src_reg=ROPE_REG,
                    src_off=self.A("rope"), dst_space=Space.SRAM, dst_off=rope_rows + 4 * D * r0,
                    len=4 * D * rows, n1=1, n2=1)]
        else:
            self.cmds += load(rope_rows, self.A("rope"), 4 * T * D)
        for r, (c0, w) in cols.items():
            self._add_bias(f32[r], sram, f"{n.name}.qkv_bias", c0)
        self.cmds += _fence()
        half = D // 2
        cos, sin = Tile(rope_rows, T, half, D), Tile(rope_rows + 4 * half, T, half, D)
        self.cmds += rope(f32["q"], cos, sin, group, D, scratch=scratch)
        self.cmds += rope(f32["k"], cos, sin, 1, D, scratch=scratch)
        b16 = {r: Tile(sram.take(f"{r}16", 2 * T * w), T, w, dtype=DType.BF16)
               for r, (_, w) in cols.items()}
        for r in cols:
            self.cmds += convert(f32[r], b16[r])
        self.cmds += _fence()
        # this head's K and V rows into the pools, one slot per token
        group_name = kv_group(n.attrs["window"])
        for r, pool in (("k", "k_pool"), ("v", "v_pool")):
            self.cmds.append(Command(
                "DMA_SCATTER", engine=Engine.DMA_OUT, slots_off=self.A(f"slots.{group_name}"),
                pool_off=self.A(f"{n.name}.{pool}") + 2 * g * D, src_space=Space.SRAM,
                src_off=b16[r].addr, row_bytes=2 * D, row_stride=self.kv_row, src_stride=2 * D,
                block_log2=self.block_size.bit_length() - 1, pool_blocks=self.kv_blocks, n=T,
                i0=0))
        out = Tile(sram.take("out", 4 * T * gw), T, gw)
        kw_args = dict(heads=group, kv_heads=1, head_dim=D, scale=n.attrs["scale"],
                       window=n.attrs["window"])
        if self.segments:
            self._attend_sequences(n, g, sram, b16["q"], out, kw_args)
        else:
            tq = min(T, 32)
            work = attention_work(sram.at, tq, tq, D)
            sram.take("work", work.nbytes)
            self.cmds += attention(b16["q"], b16["k"], b16["v"], out, work=work, **kw_args)
        ob = Tile(sram.take("out16", 2 * T * gw), T, gw, dtype=DType.BF16)
        self.cmds += convert(out, ob) + _fence()
        self.cmds += [_copy2d(Engine.DMA_OUT, Space.SRAM, ob.addr, 2 * gw, Space.DRAM,
                              self.A("attn") + 2 * g * gw, 2 * gw, T, 2 * qw)] + _fence()

    def _segment_rows(self):
        """``(first row, rows)`` of each sequence of a decode or extend phase."""
        starts = np.cumsum((0,) + self.segments[:-1])
        return list(zip(starts.tolist(), self.segments))

    def _sequence_registers(self, i, rows, window=None):
        """REG_OPs deriving sequence ``i``'s scratch registers from its first position
        ``SEQ_REG0 + i``: the position, the key length (after its ``rows`` new tokens), the
        RoPE row's offset and, for a layer with a ``window``, the first key the window of
        its first query holds (``max(0, position - window + 1)``) and the number of keys
        from there."""
        def op(o, rd, rs1, rs2=0, imm=0):
            return Command("REG_OP", op=o, rd=rd, rs1=rs1, rs2=rs2, imm=imm)
        cmds = [op(RegOp.ADD, POS_REG, SEQ_REG0 + i),
                op(RegOp.ADD, KLEN_REG, POS_REG, imm=rows),
                op(RegOp.MUL, ROPE_REG, POS_REG, imm=4 * self.tpg.graph.spec.head_dim)]
        if window:
            cmds += [op(RegOp.MAX, KSTART_REG, POS_REG, imm=window - 1),
                     op(RegOp.SUB, KSTART_REG, KSTART_REG, imm=window - 1),
                     op(RegOp.SUB, KCOUNT_REG, KLEN_REG, KSTART_REG)]
        return cmds

    def _attend_sequences(self, n, g, sram, q, out, kw_args):
        """Attention of each sequence's new rows over its keys, gathered through its block
        table (the new ones were just scattered): all ``KLEN_REG`` of them, or for a sliding
        window ``KCOUNT_REG`` from ``KSTART_REG``. Two context buffers when they fit, so the
        next sequence's gather overlaps this one's attention; V's are zeroed first (a masked
        key's probability is 0, but 0 times stale NaN bits would be NaN)."""
        D, window = kw_args["head_dim"], kw_args["window"]
        longest = max(self.segments)
        ctx = self.max_context if not window else min(self.max_context, window + longest - 1)
        tq, tk = min(longest, 32), min(ctx, 64)
        work = attention_work(0, tq, tk, D)
        pair = 2 * _align(2 * ctx * D)
        room = self.params.sram_bytes - sram.at - work.nbytes - _ALIGN
        nbuf = 2 if len(self.segments) > 1 and room >= 2 * pair else 1
        bufs = [tuple(Tile(sram.take(f"{r}_ctx{b}", 2 * ctx * D), ctx, D, dtype=DType.BF16)
                      for r in "kv") for b in range(nbuf)]
        work = attention_work(sram.at, tq, tk, D)
        sram.take("work", work.nbytes)
        self.cmds += [vec(VectorOp.AND, v, v, mode=VBMode.IMM, imm=0) for _, v in bufs]
        self.cmds += _fence()
        group_name = kv_group(window)
        table = self.A(f"table.{group_name}")
        in_and_compute = [Command("FENCE", engines=1 << Engine.DMA_IN | 1 << Engine.COMPUTE)]
        for i, (r0, rows) in enumerate(self._segment_rows()):
            k, v = bufs[i % nbuf]
            self.cmds += self._sequence_registers(i, rows, window)
            if nbuf == 1 and i:
                self.cmds += in_and_compute        # the previous attention read the buffer
            for t, pool in ((k, "k_pool"), (v, "v_pool")):
                self.cmds.append(Command(
                    "DMA_GATHER", engine=Engine.DMA_IN,
                    table_off=table + 4 * i * self.layout.table_entries,
                    pool_off=self.A(f"{n.name}.{pool}") + 2 * g * D, dst_space=Space.SRAM,
                    dst_off=t.addr, row_bytes=2 * D, row_stride=self.kv_row, dst_stride=2 * D,
                    block_log2=self.block_size.bit_length() - 1, pool_blocks=self.kv_blocks,
                    n=0, n_reg=KCOUNT_REG if window else KLEN_REG,
                    t0=0, t0_reg=KSTART_REG if window else 0))
            # this gather, and the attention that last read the other buffer, done
            self.cmds += in_and_compute
            self.cmds += attention(q.rows_at(r0, rows), k, v, out.rows_at(r0, rows), work=work,
                                   q_pos=0, q_reg=POS_REG, klen=0, klen_reg=KLEN_REG,
                                   k_reg=KSTART_REG if window else 0, **kw_args)
        self.cmds += _fence()

    def _mlp(self, n, s):
        T, H = self.T, self.H
        inter = s.attrs["intermediate"]
        self._gemm("xn", f"{n.name}.gate_up_t", "gu", T, 2 * inter, H)
        # silu(gate) * up -> bf16, in double-buffered chunks
        sram = _Arena(0, self.params.sram_bytes, "scratchpad (swiglu)")
        bias = self.has(f"{n.name}.gate_up_bias")
        if bias:
            b = Tile(sram.take("bias", 8 * inter), 1, 2 * inter)
            self.cmds += load(b.addr, self.A(f"{n.name}.gate_up_bias"), 8 * inter)
        chunks = self._chunks(2 * (8 * inter + 2 * inter), sram.at, "swiglu")
        rows = chunks[0][1]
        gu = [sram.take(f"gu{k}", 8 * inter * rows) for k in range(2)]
        h = [sram.take(f"h{k}", 2 * inter * rows) for k in range(2)]

        def compute(chunk, k):
            x = Tile(gu[k], chunk[1], 2 * inter)
            cmds = [vec(VectorOp.ADD, x, x, b, mode=VBMode.COL, ldb=2 * inter)] if bias else []
            return cmds + swiglu(x.cols_at(0, inter), x.cols_at(inter, inter),
                                 Tile(h[k], chunk[1], inter, dtype=DType.BF16))
        self.cmds += pipelined(
            chunks, lambda c, k: load(gu[k], self.A("gu") + 8 * c[0] * inter, 8 * c[1] * inter),
            compute, lambda c, k: store(self.A("h") + 2 * c[0] * inter, h[k], 2 * c[1] * inter))
        self.cmds += _fence()
        self._row_parallel("h", f"{n.name}.down_t", T, H, inter)

    def _lm_head(self, n, s, src):
        T, H, cols = self.T, self.H, s.attrs["rows"]
        self._gemm(src, f"{n.name}.wt", "logits", T, cols, H)
        if not self.has(f"{n.name}.bias"):
            return
        for r0, rows in self._chunks(4 * cols, 4 * cols, "LM head bias"):
            sram = _Arena(0, self.params.sram_bytes, "scratchpad (LM head bias)")
            t = Tile(sram.take("logits", 4 * rows * cols), rows, cols)
            self.cmds += load(t.addr, self.A("logits") + 4 * r0 * cols, 4 * rows * cols)
            self.cmds += _fence()
            self._add_bias(t, sram, f"{n.name}.bias")
            self.cmds += _fence() + store(self.A("logits") + 4 * r0 * cols, t.addr,
                                          4 * rows * cols) + _fence()


def _copy2d(engine, src_space, src, src_stride, dst_space, dst, row_bytes, rows, dst_stride):
    """One DMA_COPY of ``rows`` rows of ``row_bytes``."""
    return Command("DMA_COPY", engine=engine, src_space=src_space, src_off=src,
                   dst_space=dst_space, dst_off=dst, len=row_bytes, n1=rows, n2=1,
                   src_stride1=src_stride, dst_stride1=dst_stride)


#: Bytes of one collective piece and receive slot.
_SLOT = 4096
#: A row-parallel GEMM's all-reduce overlaps the GEMM in this many chunks of rows, of at
#: least ``_MIN_CHUNK`` rows each.
_OVERLAP_CHUNKS, _MIN_CHUNK = 4, 8
