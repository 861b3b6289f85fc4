"""DMA windows: the host-granted address ranges a device may reach, and the one check of an
extent against them, shared by the command processor (CALL headers, completion records), the
engine heads (remote signals) and the DMA engine (``sw/fm/device.py: _check_window``)."""

from amaranth.hdl import Cat, Mux
from amaranth.lib import data

from ...sw.isa.enums import Space
from ...sw.regmap import WINDOW_LINK, WINDOW_READ, WINDOW_WRITE

__all__ = ["WindowLayout", "window_hit"]

#: One DMA window register set (``sw/regmap.py``): base, size and the flags (read, write,
#: link space).
WindowLayout = data.StructLayout({"base": 64, "size": 64,
                                  "flags": WINDOW_LINK.bit_length()})


def window_hit(windows, space, lo, n, write):
    """True when ``[lo, lo + n)`` of ``space`` (DRAM or LINK) lies inside one window whose
    link flag matches ``space`` and which grants the read (``write`` low) or write permission;
    ``n`` = 0 always passes. ``space`` and ``write`` may be constants or values."""
    need = Mux(write, WINDOW_WRITE, WINDOW_READ)
    link = space == Space.LINK
    hits = [((w.flags & WINDOW_LINK).bool() == link) & (w.flags & need).bool()
            & (w.base <= lo) & (lo + n <= w.base + w.size) for w in windows]
    return Cat(*hits).any() | (n == 0)
