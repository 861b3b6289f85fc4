"""Running two kernels at once in one stream, without a FENCE between them.

A FENCE stalls the command processor until every engine drains, so a kernel after it cannot
start before the one before it has finished. Two independent kernels (different semaphores,
scratchpad areas and DRAM data) can instead be *interleaved*: each engine queue then holds
both kernels' commands in an order consistent with each kernel's own. Each kernel emits its
commands so that every wait follows the signals it needs; an interleaving keeps that
property, so the merged stream cannot deadlock, and the engines one kernel leaves idle run
the other's work.

Where the two kernels share an engine queue, the order matters for speed: a command waiting
on one kernel's semaphore holds back the other kernel's commands behind it.
:func:`interleave` spreads each kernel's commands evenly over the merged stream (ordering
by each kernel's estimated start times measured slower: the estimates of a kernel alone do
not hold while the other shares its engines).

A kernel that reads what an earlier one wrote on another engine waits for it with a
:func:`handoff`: the producing engine signals once its earlier commands have finished, and
every engine of the consumer waits for that signal before its first command. Two kernels
that share buffers (two collectives in a row: the same staging slots, work area and receive
slots) are separated by a :func:`barrier`: no engine starts the second before every engine
has finished the first.
"""

from npusim.sw.isa import Command
from npusim.sw.isa.enums import Engine

__all__ = ["interleave", "handoff", "barrier", "HANDOFF", "BARRIER"]

#: The semaphores of :func:`handoff`, one per consuming engine (``HANDOFF + engine``), clear
#: of the GEMM's 0..7, the row pipeline's 8..13 and the collectives' 32..39. One per engine,
#: so that an engine already waiting for the next handoff cannot take this one's signal.
HANDOFF = 16
#: The semaphores of :func:`barrier`, one per waiting engine (``BARRIER + engine``).
BARRIER = 20


def interleave(a, b):
    """Commands of ``a`` and ``b`` merged in proportion: command ``i`` of ``a`` goes at about
    ``i / len(a)`` of the way, as does command ``j`` of ``b``, so both kernels progress at the
    rate of their own length."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and i * len(b) <= j * len(a)):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def handoff(producer, consumers=tuple(Engine)):
    """``(signal, waits)``: put ``signal`` after the producing kernel's commands (it fires on
    ``producer``'s queue once that engine's earlier commands have finished) and ``waits``
    before the consuming kernel's (one per engine in ``consumers``)."""
    signal = [Command("SEM_SIGNAL", engine=producer, sem=HANDOFF + e, amount=1)
              for e in consumers]
    waits = [Command("SEM_WAIT", engine=e, sem=HANDOFF + e, value=1, consume=True)
             for e in consumers]
    return signal, waits


def barrier(engines=tuple(Engine)):
    """``(signals, waits)`` between two kernels that reuse each other's buffers or
    semaphores (two collectives back to back): put ``signals`` after the first kernel's
    commands and ``waits`` before the second's. Every engine of the second waits until every
    engine of the first has finished its commands (each engine's wait counts one signal from
    each): without it, the second kernel's first loads could overwrite a staging slot the
    first kernel's adds have not read yet."""
    signals = [Command("SEM_SIGNAL", engine=p, sem=BARRIER + c, amount=1)
               for p in engines for c in engines]
    waits = [Command("SEM_WAIT", engine=c, sem=BARRIER + c, value=len(engines), consume=True)
             for c in engines]
    return signals, waits
