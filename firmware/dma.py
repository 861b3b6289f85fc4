"""Plain DMA copies as kernels use them: a copy of any length cut into ``DMA_COPY`` commands
the ``len`` field holds."""

from npusim.sw.isa import Command
from npusim.sw.isa.table import BY_NAME

__all__ = ["MAX_COPY", "copy"]

#: Bytes per DMA_COPY when a copy is split: the largest power of two its ``len`` field holds.
MAX_COPY = 1 << (BY_NAME["DMA_COPY"].field("len").width - 1)


def copy(engine, src_space, src, dst_space, dst, nbytes):
    """``nbytes`` from ``src`` to ``dst`` on ``engine``'s queue, in pieces of at most
    :data:`MAX_COPY`."""
    return [Command("DMA_COPY", engine=engine, src_space=src_space, src_off=src + at,
                    dst_space=dst_space, dst_off=dst + at, len=min(MAX_COPY, nbytes - at),
                    n1=1, n2=1)
            for at in range(0, nbytes, MAX_COPY)]
