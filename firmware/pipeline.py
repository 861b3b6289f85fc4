"""Row-wise kernels over DRAM in double-buffered chunks: one chunk loads while the one before
computes and the one before that stores.

A row-wise phase (RMSNorm, residual add, SwiGLU) reads a few DRAM rows per token and writes
a few. Run as load-all, compute, store-all its DMAs and its vector work take turns; here the
three engines overlap, synchronised by counting semaphores as the GEMM kernel does
(``firmware/gemm.py``), chunk ``i`` using buffer slot ``s = i % 2``:

* DMA_IN waits ``EMPTY + s`` (consumes it), loads the chunk, signals ``FULL + s``;
* COMPUTE waits ``FULL + s``, computes, signals ``DONE + s``;
* DMA_OUT waits ``DONE + s``, stores, signals ``EMPTY + s``.

Both slots start empty (two signals first); at the end DMA_IN takes back both ``EMPTY``
signals, which also waits for the last stores, so every semaphore is 0 again.
"""

from npusim.sw.isa import Command
from npusim.sw.isa.enums import Engine

__all__ = ["pipelined", "FULL", "DONE", "EMPTY"]

#: First semaphore of each pair (two slots), clear of the GEMM's 0..7 and the collectives'
#: 32..39.
FULL, DONE, EMPTY = 8, 10, 12


def _wait(engine, sem):
    return Command("SEM_WAIT", engine=engine, sem=sem, value=1, consume=True)


def _signal(engine, sem):
    return Command("SEM_SIGNAL", engine=engine, sem=sem, amount=1)


def pipelined(chunks, load, compute, store):
    """Commands running ``chunks`` (any items) through the three engines; ``load(chunk,
    slot)`` returns DMA_IN commands, ``compute(chunk, slot)`` COMPUTE commands, ``store(chunk,
    slot)`` DMA_OUT commands, each using slot ``slot``'s buffers (0 or 1)."""
    cmds = [_signal(Engine.DMA_IN, EMPTY + s) for s in range(2)]
    for i, chunk in enumerate(chunks):
        s = i % 2
        cmds += [_wait(Engine.DMA_IN, EMPTY + s), *load(chunk, s), _signal(Engine.DMA_IN, FULL + s),
                 _wait(Engine.COMPUTE, FULL + s), *compute(chunk, s),
                 _signal(Engine.COMPUTE, DONE + s),
                 _wait(Engine.DMA_OUT, DONE + s), *store(chunk, s),
                 _signal(Engine.DMA_OUT, EMPTY + s)]
    return cmds + [_wait(Engine.DMA_IN, EMPTY + s) for s in range(2)]
