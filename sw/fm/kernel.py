"""A small discrete-event kernel: processes are generators stepping in cycle time.

A process yields either an ``int`` (sleep that many cycles) or an :class:`Until` (park until a
predicate holds, optionally with a timeout); ``Until`` resumes the generator with ``True`` when
the predicate held and ``False`` when the timeout expired first. Parked predicates are
re-checked after every step, so any state change a step makes wakes whoever waits on it.
"""

import heapq
import itertools

__all__ = ["Kernel", "Until"]


class Until:
    __slots__ = ("pred", "timeout")

    def __init__(self, pred, timeout=None):
        self.pred = pred
        self.timeout = timeout


class _Parked:
    __slots__ = ("proc", "pred", "alive")

    def __init__(self, proc, pred):
        self.proc, self.pred, self.alive = proc, pred, True


class Kernel:
    def __init__(self):
        self.now = 0
        self._heap = []
        self._seq = itertools.count()
        self._parked = []

    def spawn(self, gen, delay=0):
        self._push(self.now + delay, gen, None)

    def call_at(self, time, fn):
        """Run ``fn()`` at cycle ``time`` (a one-shot event, e.g. a link delivery)."""
        def once():
            fn()
            return
            yield  # pragma: no cover - makes this a generator
        self._push(time, once(), None)

    def _push(self, time, proc, value):
        heapq.heappush(self._heap, (time, next(self._seq), proc, value))

    def _step(self, proc, value):
        try:
            req = proc.send(value)
        except StopIteration:
            return
        if isinstance(req, Until):
            if req.pred():
                self._push(self.now, proc, True)
                return
            parked = _Parked(proc, req.pred)
            self._parked.append(parked)
            if req.timeout is not None:
                self._push(self.now + req.timeout, _Expiry(parked), None)
        else:
            self._push(self.now + int(req), proc, None)

    def _wake(self):
        if not self._parked:
            return
        still = []
        for p in self._parked:
            if not p.alive:
                continue
            if p.pred():
                p.alive = False
                self._push(self.now, p.proc, True)
            else:
                still.append(p)
        self._parked = still

    def run(self, until=None):
        """Run events until none is left (or until cycle ``until``); returns the cycle reached.

        Parked predicates are checked first: the host may have changed state (an MMIO write,
        a doorbell) since the last run."""
        self._wake()
        while self._heap:
            time, _, proc, value = self._heap[0]
            if until is not None and time > until:
                self.now = until
                break
            heapq.heappop(self._heap)
            if isinstance(proc, _Expiry):
                if not proc.parked.alive:
                    continue  # the wait ended in time: a stale timeout does not advance time
                self.now = time
                proc.parked.alive = False
                self._step(proc.parked.proc, False)
            else:
                self.now = time
                self._step(proc, value)
            self._wake()
        return self.now

    @property
    def pending(self):
        """Whether any event is scheduled."""
        return bool(self._heap)


class _Expiry:
    __slots__ = ("parked",)

    def __init__(self, parked):
        self.parked = parked
