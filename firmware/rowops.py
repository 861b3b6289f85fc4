"""Row-wise kernels of a decoder layer on scratchpad tiles: RMSNorm, RoPE, SwiGLU, residual
add, fp32 -> bf16 conversion.

Each function returns the COMPUTE commands of one kernel on tiles already in the scratchpad
(the schedule moves them in and out and synchronises); activations are ``rows`` tokens of
fp32 (a kernel's output may be bf16, the matrix unit's operand type). Every step is one
VECTOR or REDUCE command, so the functional model and the RTL compute the same bits; the
maths matches ``sw/compiler/reference.py`` within the error of fp32 accumulation order and of
the microcoded RSQRT, EXP and SILU.
"""

from dataclasses import dataclass

from npusim.sw.isa import Command
from npusim.sw.isa.enums import DType, RedOp, VBMode, VectorOp

__all__ = ["Tile", "vec", "rmsnorm", "rope", "swiglu", "add", "convert", "f32_bits"]


@dataclass(frozen=True)
class Tile:
    """``rows x cols`` elements at SRAM byte ``addr``, rows ``ld`` elements apart."""
    addr: int
    rows: int
    cols: int
    ld: int = None
    dtype: DType = DType.FP32

    def __post_init__(self):
        if self.ld is None:
            object.__setattr__(self, "ld", self.cols)
        if self.ld < self.cols:
            raise ValueError(f"row stride {self.ld} is less than the {self.cols} columns")

    @property
    def esize(self):
        return 4 if self.dtype == DType.FP32 else 2

    @property
    def nbytes(self):
        """Bytes from the first element to one past the last."""
        return ((self.rows - 1) * self.ld + self.cols) * self.esize if self.rows else 0

    def rows_at(self, start, rows):
        """Rows ``start .. start + rows - 1``."""
        return Tile(self.addr + start * self.ld * self.esize, rows, self.cols, self.ld,
                    self.dtype)

    def cols_at(self, start, cols):
        """Columns ``start .. start + cols - 1`` of every row."""
        return Tile(self.addr + start * self.esize, self.rows, cols, self.ld, self.dtype)


def f32_bits(value):
    """The fp32 bit pattern of ``value`` (a VECTOR immediate)."""
    import struct
    return struct.unpack("<I", struct.pack("<f", value))[0]


def vec(op, dst, a, b=None, *, mode=VBMode.TILE, imm=0, ldb=0):
    """One VECTOR command: ``dst = op(a, b)`` over ``a``'s shape, ``b`` per ``mode``."""
    fields = dict(op=op, dst=dst.addr, ldd=dst.ld, a=a.addr, lda=a.ld, a_dtype=a.dtype,
                  d_dtype=dst.dtype, rows=a.rows, cols=a.cols, b_mode=mode, imm=imm)
    if b is not None:
        fields.update(b=b.addr, ldb=b.ld if mode == VBMode.TILE else ldb)
    return Command("VECTOR", **fields)


def _same_shape(*tiles):
    shapes = {(t.rows, t.cols) for t in tiles}
    if len(shapes) != 1:
        raise ValueError(f"tiles of different shapes: {sorted(shapes)}")


def rmsnorm(x, weight, out, eps, *, squares, stats):
    """``out = x * rsqrt(mean(x^2) + eps) * weight`` per row. ``x`` fp32; ``weight`` the
    address of ``x.cols`` fp32 values; ``squares`` an fp32 scratch tile of ``x``'s shape,
    ``stats`` the address of ``x.rows`` fp32 scratch values; ``out`` fp32 or bf16 (it may be
    ``x`` itself when fp32). The mean is the sequential row sum times ``1 / cols``."""
    _same_shape(x, out, squares)
    n = x.rows
    row = Tile(stats, n, 1)
    return [
        vec(VectorOp.MUL, squares, x, x),
        Command("REDUCE", op=RedOp.SUM, dst=stats, a=squares.addr, lda=squares.ld,
                a_dtype=DType.FP32, rows=n, cols=x.cols),
        vec(VectorOp.MUL, row, row, mode=VBMode.IMM, imm=f32_bits(1.0 / x.cols)),
        vec(VectorOp.ADD, row, row, mode=VBMode.IMM, imm=f32_bits(eps)),
        vec(VectorOp.RSQRT, row, row),
        vec(VectorOp.MUL, squares, x, row, mode=VBMode.ROW, ldb=1),
        vec(VectorOp.MUL, out, squares, Tile(weight, 1, x.cols), mode=VBMode.COL,
                ldb=x.cols),
    ]


def rope(x, cos, sin, heads, head_dim, *, scratch):
    """Rotate-half RoPE in place on ``x`` (``rows`` tokens of ``heads`` heads of
    ``head_dim`` fp32 each, heads side by side in a row). ``cos``, ``sin``: fp32 tiles of
    ``rows x head_dim / 2`` (the first half of the tables of the tokens' positions; the
    second half repeats it). ``scratch``: address of four fp32 ``rows x head_dim / 2``
    tiles. Per head, with ``x1, x2`` its halves: ``x1' = x1 cos - x2 sin``,
    ``x2' = x2 cos + x1 sin``."""
    half = head_dim // 2
    if head_dim % 2 or x.cols < heads * head_dim:
        raise ValueError(f"{heads} heads of {head_dim} do not fit {x.cols} columns evenly")
    for t in (cos, sin):
        if (t.rows, t.cols) != (x.rows, half):
            raise ValueError(f"RoPE tables are {t.rows} x {t.cols}, need {x.rows} x {half}")
    tmp = [Tile(scratch + k * 4 * x.rows * half, x.rows, half) for k in range(4)]
    cmds = []
    for h in range(heads):
        x1, x2 = x.cols_at(h * head_dim, half), x.cols_at(h * head_dim + half, half)
        cmds += [vec(VectorOp.MUL, tmp[0], x1, cos), vec(VectorOp.MUL, tmp[1], x2, sin),
                 vec(VectorOp.MUL, tmp[2], x2, cos), vec(VectorOp.MUL, tmp[3], x1, sin),
                 vec(VectorOp.SUB, x1, tmp[0], tmp[1]),
                 vec(VectorOp.ADD, x2, tmp[2], tmp[3])]
    return cmds


def swiglu(gate, up, out):
    """``out = silu(gate) * up``; ``gate`` (fp32) is overwritten with ``silu(gate)``;
    ``out`` fp32 or bf16 (the down projection's operand)."""
    _same_shape(gate, up, out)
    return [vec(VectorOp.SILU, gate, gate), vec(VectorOp.MUL, out, gate, up)]


def add(a, b, out):
    """``out = a + b`` (the residual connection); ``out`` may be ``a``."""
    _same_shape(a, b, out)
    return [vec(VectorOp.ADD, out, a, b)]


def convert(src, dst):
    """``dst = src`` in ``dst``'s element type (fp32 -> bf16 rounds to nearest even)."""
    _same_shape(src, dst)
    return [vec(VectorOp.MOV, dst, src)]
