"""NE-tile commands on the scratchpad, executed with the golden numerics.

Each function takes the SRAM and a resolved command (register operands already added) and
updates SRAM exactly as the RTL must; it checks every operand before writing anything, so a
faulting command leaves SRAM untouched.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import numerics as nx
from ..isa.enums import DType, ErrorCode, RedOp, VBMode, VectorOp
from .fault import DeviceFault

__all__ = ["matmul", "vector", "reduce", "mask", "macs"]

_DTYPE = {DType.FP32: np.dtype("<u4"), DType.BF16: np.dtype("<u2")}


class _Tile:
    """A rows x cols strided view of SRAM (row stride ``ld`` elements), bounds-checked."""

    def __init__(self, sram, addr, rows, cols, ld, dtype, what, write=False):
        self.dtype = _DTYPE[dtype]
        self.addr, self.ld = addr, ld
        es = self.dtype.itemsize
        self.shape = (rows, cols)
        self.what = what
        if rows == 0 or cols == 0:
            self.extent = (addr, addr)
            self.view = None
            return
        if addr % es:
            raise DeviceFault(ErrorCode.ALIGNMENT, f"{what} at {addr:#x} is not {es}-byte aligned")
        if write and rows > 1 and ld < cols:
            raise DeviceFault(ErrorCode.BAD_SHAPE, f"{what}: row stride {ld} < {cols} columns")
        end = addr + ((rows - 1) * ld + cols) * es
        if end > sram.size:
            raise DeviceFault(ErrorCode.SRAM_BOUNDS,
                              f"{what} [{addr:#x}, {end:#x}) runs past SRAM ({sram.size:#x})")
        self.extent = (addr, end)
        flat = sram.data[addr:end].view(self.dtype)
        self.view = as_strided(flat, self.shape, (ld * es, es), writeable=write)

    def load_fp32(self):
        """The tile's values as fp32 bit patterns (bf16 widened exactly)."""
        if self.view is None:
            return np.zeros(self.shape, np.uint32)
        if self.dtype.itemsize == 2:
            return nx.bf16_to_fp32(self.view.astype(np.uint16))
        return self.view.astype(np.uint32)

    def store_fp32(self, values):
        """Store fp32 bit patterns, rounding to bf16 (RNE) for a bf16 tile."""
        if self.view is None:
            return
        if self.dtype.itemsize == 2:
            values = nx.fp32_to_bf16(values)
        self.view[...] = values

    def overlaps(self, other):
        (a0, a1), (b0, b1) = self.extent, other.extent
        return a0 < b1 and b0 < a1

    def same_elements(self, other):
        """Element (i, j) of both is the same bytes: an elementwise command may write one
        while reading the other (each element is read before it is written)."""
        return (self.addr == other.addr and self.dtype == other.dtype
                and self.shape == other.shape and (self.shape[0] <= 1 or self.ld == other.ld))


def _check_in_place(dst, sources):
    """An elementwise result may overwrite a source only exactly in place."""
    for t in sources:
        if t is not None and dst.overlaps(t) and not dst.same_elements(t):
            raise DeviceFault(ErrorCode.OPERAND_OVERLAP,
                              f"{dst.what} overlaps {t.what} without being it")


def macs(name, c):
    """Multiply-accumulates the command does (what utilisation counts): MATMUL's m n k."""
    return c["m"] * c["n"] * c["k"] if name == "MATMUL" else 0


def matmul(sram, c):
    """MATMUL: C (+)= A x B with the defined accumulation order (see numerics)."""
    m, n, k = c["m"], c["n"], c["k"]
    if c["acc"] and c["c_dtype"] != DType.FP32:
        raise DeviceFault(ErrorCode.BAD_SHAPE, "MATMUL accumulates only into an FP32 C")
    a_shape = (k, m) if c["a_trans"] else (m, k)
    b_shape = (n, k) if c["b_trans"] else (k, n)
    ta = _Tile(sram, c["a"], *a_shape, c["lda"], DType.BF16, "A")
    tb = _Tile(sram, c["b"], *b_shape, c["ldb"], DType.BF16, "B")
    tc = _Tile(sram, c["c"], m, n, c["ldc"], c["c_dtype"], "C", write=True)
    for t in (ta, tb):
        if tc.overlaps(t):
            raise DeviceFault(ErrorCode.OPERAND_OVERLAP, f"C overlaps {t.what}")
    if m == 0 or n == 0:
        return
    a = ta.view.astype(np.uint16) if ta.view is not None else np.zeros(a_shape, np.uint16)
    b = tb.view.astype(np.uint16) if tb.view is not None else np.zeros(b_shape, np.uint16)
    if c["a_trans"]:
        a = a.T
    if c["b_trans"]:
        b = b.T
    acc = tc.load_fp32() if c["acc"] else None
    tc.store_fp32(nx.matmul_bf16(a, b, acc))


def vector(sram, c):
    """VECTOR: one lane-wise op over a rows x cols tile."""
    rows, cols, op = c["rows"], c["cols"], VectorOp(c["op"])
    ta = _Tile(sram, c["a"], rows, cols, c["lda"], c["a_dtype"], "a")
    td = _Tile(sram, c["dst"], rows, cols, c["ldd"], c["d_dtype"], "dst", write=True)
    b = c_ = tb = tc = None
    if nx.OPERANDS[op] > 1:
        mode = VBMode(c["b_mode"])
        if mode == VBMode.IMM:
            b = np.full((rows, cols), c["imm"], np.uint32)
        else:
            shape = {VBMode.TILE: (rows, cols), VBMode.ROW: (rows, 1),
                     VBMode.COL: (1, cols), VBMode.SCALAR: (1, 1)}[mode]
            ld = c["ldb"] if mode == VBMode.TILE else (1 if mode == VBMode.ROW else cols)
            if 0 in (rows, cols):
                shape = (0, 0)
            tb = _Tile(sram, c["b"], *shape, ld, DType.FP32, "b")
            b = np.broadcast_to(tb.load_fp32(), (rows, cols)) if tb.view is not None else None
    if op == VectorOp.SELECT:
        tc = _Tile(sram, c["c"], rows, cols, c["lda"], DType.FP32, "c")
        c_ = tc.load_fp32()
    _check_in_place(td, (ta, tb, tc))
    if rows == 0 or cols == 0:
        return
    td.store_fp32(nx.vector_op(op, ta.load_fp32(), b, c_))


def reduce(sram, c):
    """REDUCE: sequential row reduction into one fp32 per row."""
    rows, cols = c["rows"], c["cols"]
    ta = _Tile(sram, c["a"], rows, cols, c["lda"], c["a_dtype"], "a")
    td = _Tile(sram, c["dst"], 1, rows, rows, DType.FP32, "dst", write=True)
    if td.overlaps(ta):
        raise DeviceFault(ErrorCode.OPERAND_OVERLAP, "REDUCE dst overlaps a")
    if rows == 0:
        return
    a = ta.load_fp32()
    acc = np.full(rows, nx.REDUCE_IDENTITY[RedOp(c["op"])], np.uint32)
    step = nx.fp32_add if c["op"] == RedOp.SUM else nx.fp32_max
    for j in range(cols):
        acc = step(acc, a[:, j])
    td.store_fp32(acc[None, :])


def mask(sram, c):
    """MASK: -inf where the key is after the query (causal), outside the window, or past klen."""
    rows, cols = c["rows"], c["cols"]
    ta = _Tile(sram, c["a"], rows, cols, c["ld"], DType.FP32, "a")
    td = _Tile(sram, c["dst"], rows, cols, c["ld"], DType.FP32, "dst", write=True)
    _check_in_place(td, (ta,))
    if rows == 0 or cols == 0:
        return
    q = c["q0"] + (np.arange(rows, dtype=np.int64) >> c["q_shift"])[:, None]
    kpos = c["k0"] + np.arange(cols, dtype=np.int64)[None, :]
    masked = kpos >= c["klen"]
    if c["causal"]:
        masked = masked | (kpos > q)
    if c["window"]:
        masked = masked | (kpos <= q - c["window"])
    td.store_fp32(np.where(masked, np.uint32(nx.NEG_INF), ta.load_fp32()))
