"""Tiled GEMM with operands streamed from DRAM through a double-buffered scratchpad.

``C = A x B`` with ``A`` [M, K] and ``B`` [K, N] bf16 and ``C`` [M, N] fp32, all row-major in
DRAM. The output is cut into ``tm x tn`` tiles and ``K`` into steps of ``tk``. For each output
tile, each k-step loads an A tile and a B tile (2-D DMAs on the DMA_IN engine) into one of two
operand slots, and the tile's MATMUL accumulates into a C buffer in the scratchpad (``acc``
after the first step), so the accumulation order is k = 0 .. K-1, as one MATMUL over all of
K would do (the result is bit-exact with ``matmul_bf16``). A finished C tile is stored by the
DMA_OUT engine from one of two C buffers while the next tile computes.

Synchronisation is by counting semaphores, so the three engines run ahead of each other as
far as the buffers allow:

* ``FULL + s`` — DMA_IN has filled operand slot ``s``; COMPUTE waits for it (consume);
* ``EMPTY + s`` — COMPUTE is done with slot ``s``; DMA_IN waits for it before refilling;
* ``C_FULL + c`` — C buffer ``c`` holds a finished tile; DMA_OUT waits, then stores it;
* ``C_FREE + c`` — DMA_OUT has stored C buffer ``c``; COMPUTE waits before reusing it.

The slots start free: the stream first signals ``EMPTY`` and ``C_FREE`` once per buffer, and
takes those signals back at the end (DMA_IN waits its two ``EMPTY``, DMA_OUT its two
``C_FREE``), so every semaphore is 0 again and the next GEMM of a stream starts from the same
state (without it, the leftover signals would let the next GEMM's loads overwrite slots still
in use).
"""

from dataclasses import dataclass

from npusim.sw.isa import Command
from npusim.sw.isa.enums import DType, Engine, Space

__all__ = ["GemmPlan", "plan_gemm", "gemm_commands", "FULL", "EMPTY", "C_FULL", "C_FREE"]

#: First semaphore of each group (two semaphores per group).
FULL, EMPTY, C_FULL, C_FREE = 0, 2, 4, 6


@dataclass(frozen=True)
class GemmPlan:
    """Tile sizes and scratchpad layout of one GEMM."""
    m: int
    n: int
    k: int
    tm: int
    tn: int
    tk: int
    a_slots: tuple   # SRAM addresses of the two A tiles
    b_slots: tuple   # ... of the two B tiles
    c_slots: tuple   # ... of the two C tiles


def plan_gemm(params, m, n, k, *, tm=None, tn=None, tk=None):
    """Tile sizes (by default 64 x 64 output tiles and 64-deep k-steps, or the whole
    dimension when smaller) and buffer addresses; ValueError if two of each buffer do not
    fit the scratchpad or a dimension is not a multiple of its tile."""
    tm = tm or min(m, 64)
    tn = tn or min(n, 64)
    tk = tk or min(k, 64)
    for name, total, tile in (("m", m, tm), ("n", n, tn), ("k", k, tk)):
        if total % tile:
            raise ValueError(f"{name} = {total} is not a multiple of its tile ({tile})")
    a_bytes, b_bytes, c_bytes = 2 * tm * tk, 2 * tk * tn, 4 * tm * tn
    offsets, at = [], 0
    for size in (a_bytes, a_bytes, b_bytes, b_bytes, c_bytes, c_bytes):
        offsets.append(at)
        at += -(-size // 64) * 64
    if at > params.sram_bytes:
        raise ValueError(f"tiles {tm} x {tn} x {tk} need {at} bytes of scratchpad, "
                         f"{params.sram_bytes} are there")
    return GemmPlan(m, n, k, tm, tn, tk, tuple(offsets[0:2]), tuple(offsets[2:4]),
                    tuple(offsets[4:6]))


def gemm_commands(plan, a_addr, b_addr, c_addr):
    """The command list of ``plan`` with A, B, C at these DRAM addresses."""
    p = plan
    cmds = [Command("SEM_SIGNAL", engine=Engine.DMA_IN, sem=EMPTY + s, amount=1)
            for s in range(2)]
    cmds += [Command("SEM_SIGNAL", engine=Engine.DMA_OUT, sem=C_FREE + c, amount=1)
             for c in range(2)]
    step = 0
    tiles = [(i, j) for i in range(0, p.m, p.tm) for j in range(0, p.n, p.tn)]
    for t, (i, j) in enumerate(tiles):
        c = t % 2
        for kk in range(0, p.k, p.tk):
            s = step % 2
            step += 1
            cmds += [
                Command("SEM_WAIT", engine=Engine.DMA_IN, sem=EMPTY + s, value=1, consume=True),
                Command("DMA_COPY", engine=Engine.DMA_IN, src_off=a_addr + 2 * (i * p.k + kk),
                        dst_space=Space.SRAM, dst_off=p.a_slots[s], len=2 * p.tk, n1=p.tm,
                        n2=1, src_stride1=2 * p.k, dst_stride1=2 * p.tk),
                Command("DMA_COPY", engine=Engine.DMA_IN, src_off=b_addr + 2 * (kk * p.n + j),
                        dst_space=Space.SRAM, dst_off=p.b_slots[s], len=2 * p.tn, n1=p.tk,
                        n2=1, src_stride1=2 * p.n, dst_stride1=2 * p.tn),
                Command("SEM_SIGNAL", engine=Engine.DMA_IN, sem=FULL + s, amount=1),
                Command("SEM_WAIT", engine=Engine.COMPUTE, sem=FULL + s, value=1, consume=True),
            ]
            if kk == 0:
                cmds.append(Command("SEM_WAIT", engine=Engine.COMPUTE, sem=C_FREE + c, value=1,
                                    consume=True))
            cmds += [
                Command("MATMUL", a=p.a_slots[s], lda=p.tk, b=p.b_slots[s], ldb=p.tn,
                        c=p.c_slots[c], ldc=p.tn, m=p.tm, n=p.tn, k=p.tk, acc=kk > 0,
                        c_dtype=DType.FP32),
                Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=EMPTY + s, amount=1),
            ]
        cmds += [
            Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=C_FULL + c, amount=1),
            Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=C_FULL + c, value=1, consume=True),
            Command("DMA_COPY", engine=Engine.DMA_OUT, src_space=Space.SRAM, src_off=p.c_slots[c],
                    dst_space=Space.DRAM, dst_off=c_addr + 4 * (i * p.n + j), len=4 * p.tn,
                    n1=p.tm, n2=1, src_stride1=4 * p.tn, dst_stride1=4 * p.n),
            Command("SEM_SIGNAL", engine=Engine.DMA_OUT, sem=C_FREE + c, amount=1),
        ]
    cmds += [Command("SEM_WAIT", engine=Engine.DMA_IN, sem=EMPTY + s, value=1, consume=True)
             for s in range(2)]
    cmds += [Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=C_FREE + c, value=1, consume=True)
             for c in range(2)]
    return cmds
