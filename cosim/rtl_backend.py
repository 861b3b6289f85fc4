"""The ``rtl`` backend of :class:`~npusim.sw.runtime.cluster.Cluster`: the Verilated system
RTL, driven by the cosim host over the link. (It lives in ``cosim``, which depends on ``sw``;
the cluster imports it by name when asked for ``backend="rtl"``, so ``sw`` never imports the
RTL.)

:class:`RtlBackend` builds the system (``cosim/system_top.py``: root complex, switch and
``n`` devices; Verilator builds are cached by a hash of the generated Verilog), starts the
simulator on ``cosim/cluster_server.py`` in a background thread and serves the cluster's
primitives as requests over a local connection. Register reads and writes are memory TLPs
through the root complex, the link and the switch; launches ring the doorbell that way and
complete with an MSI. Memory images (weights, streams, the host's inputs and outputs) move
through the DRAM models' backdoors, as a test bench loads memories: a link at simulated
speed would take longer than the run itself for the weights.
"""

import json
import secrets
import threading
from functools import cache
from multiprocessing.connection import Listener
from pathlib import Path

from amaranth.hdl import Shape

from ..hw.device.cp import QueueEntry
from ..hw.device.decode import ResolvedCommand
from ..hw.isa import resolved_layout
from ..sw.fm import compute, dma
from ..sw.fm.device import TraceEvent
from ..sw.isa.enums import CommandClass, Engine
from ..sw.isa.table import BY_OPCODE
from .system_top import SYSTEM_BUS as RTL_BUS
from .system_top import SYSTEM_PARAMS as RTL_PARAMS

__all__ = ["RtlBackend", "RTL_PARAMS", "RTL_BUS", "RtlBackendError"]


class RtlBackendError(RuntimeError):
    """The simulator failed, or a request to it did."""


class RtlBackend:
    """``n`` devices of the system RTL with ``params`` behind ``bus``. ``waves`` records an
    FST of the whole run (default ``$WAVES``); ``results_dir`` is where it and the
    simulator's log go."""

    SERVER = Path(__file__).with_name("cluster_server.py")

    def __init__(self, n, params, bus, *, waves=None, results_dir=None, timeout=7200,
                 connect_timeout=1800):
        from .system_top import build_system
        server = self.SERVER
        # a cold build grows with the devices: 4 did not finish in 40 minutes on two busy cores
        self.design = build_system(n, params, bus, waves=waves, timeout=1200 * max(2, n))
        key = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=key)
        host, port = self._listener.address
        env = {"NPUSIM_SERVER_ADDRESS": f"{host}:{port}",
               "NPUSIM_SERVER_PARAMS": json.dumps(params.as_dict()),
               "NPUSIM_SERVER_BUS": json.dumps(vars(bus)),
               "NPUSIM_SERVER_DEVICES": str(n), "NPUSIM_SERVER_KEY": key.hex()}
        self.results_dir = Path(results_dir).resolve() if results_dir else None
        self.n = n
        self._error = None
        self._events = None
        self._thread = threading.Thread(target=self._simulate, daemon=True,
                                        args=(server, env, timeout), name="npusim-rtl")
        self._thread.start()
        self._conn = self._accept(connect_timeout)
        tag, self._start = self._conn.recv()
        if tag != "ready":
            raise RtlBackendError(f"the simulator said {tag!r} instead of ready")

    @property
    def waves(self):
        """The FST file of the run (after :meth:`close`), when recorded."""
        from .verilator_flow import build_root
        if not self.design.trace:
            return None
        root = self.results_dir or build_root() / "results" / \
            f"{self.design.name}-cluster_server"
        return root / "dump.fst"

    def _simulate(self, server, env, timeout):
        from .verilator_flow import run
        try:
            run(self.design, server, testcase="serve", env=env, timeout=timeout,
                results_dir=self.results_dir)
        except BaseException as e:          # reported by the next request
            self._error = e

    def _accept(self, timeout):
        """The simulator's connection, or the reason it never came (the accept waits in a
        thread of its own, so a simulator that dies while starting is noticed)."""
        got = []
        waiter = threading.Thread(target=lambda: got.append(self._listener.accept()),
                                  daemon=True)
        waiter.start()
        waited = 0.0
        while waited < timeout:
            waiter.join(1.0)
            if got:
                return got[0]
            waited += 1.0
            if not self._thread.is_alive():
                raise RtlBackendError(f"the simulator ended before connecting: "
                                      f"{self._error}") from self._error
        raise RtlBackendError(f"the simulator did not connect within {timeout:.0f} s")

    def _call(self, op, *args):
        if self._conn is None:
            raise RtlBackendError("the RTL backend is closed")
        try:
            self._conn.send((op, *args))
            tag, value = self._conn.recv()
        except (EOFError, OSError) as e:
            raise RtlBackendError(f"the simulator went away during {op}: {self._error}") from e
        if tag != "ok":
            raise RtlBackendError(f"{op} failed in the simulator: {value}")
        return value

    # -- the cluster's primitives ----------------------------------------------------------------

    def write(self, d, addr, data):
        self._call("write", d, addr, bytes(data))

    def read(self, d, addr, n):
        return bytes(self._call("read", d, addr, n))

    def mmio_write(self, d, off, value):
        self._call("mmio_write", d, off, value)

    def mmio_read(self, d, off):
        return self._call("mmio_read", d, off)

    def read_host(self, addr, n):
        return bytes(self._call("read_host", addr, n))

    def run_until(self, irqs, timeout_cycles):
        try:
            self._call("run_until", {str(k): v for k, v in irqs.items()}, timeout_cycles)
        except RtlBackendError as e:
            if "TimeoutError" in str(e):
                raise TimeoutError(f"devices did not complete within {timeout_cycles} "
                                   f"cycles: {irqs}") from e
            raise

    def now(self):
        return self._call("now")

    def error_message(self, d):
        return "reported by the RTL (error code and offset only)"

    def trace(self, on):
        """Record the engines' commands from the heads' ``busy`` and ``running`` ports."""
        self._call("trace", bool(on))
        self._events = [[] for _ in range(self.n)] if on else None

    def events(self, d):
        if self._events is None:
            return []
        self._events[d] += [_trace_event(*ev) for ev in self._call("events", d)]
        return list(self._events[d])

    def close(self):
        if self._conn is not None:
            try:
                self._call("close")
            except RtlBackendError:
                pass
            self._conn.close()
            self._conn = None
        self._listener.close()
        self._thread.join(timeout=120)
        if self._error is not None:
            raise RtlBackendError(f"the simulation failed: {self._error}") from self._error



def _bits(raw, field):
    """The bits of ``field`` (an Amaranth layout field) in ``raw``, signed where it is."""
    value = raw >> field.offset & ((1 << field.width) - 1)
    if Shape.cast(field.shape).signed and value >> (field.width - 1):
        value -= 1 << field.width
    return value


@cache
def _args_layout(name):
    return tuple(resolved_layout(name))


def _trace_event(engine, start, end, held):
    """A :class:`~npusim.sw.fm.device.TraceEvent` from the server's record of a command a
    head held (its raw ``QueueEntry``): name, DRAM address, and the bytes and MACs the
    functional model counts for the same resolved operands."""
    cmd = _bits(held, QueueEntry["cmd"])
    spec = BY_OPCODE[_bits(cmd, ResolvedCommand["opcode"])]
    args = cmd >> ResolvedCommand["args"].offset
    c = {name: _bits(args, field) for name, field in _args_layout(spec.name)}
    moved = dma.moved(spec.name, c) if spec.cls == CommandClass.DMA else 0
    return TraceEvent(Engine(engine), spec.name, start, end, _bits(held, QueueEntry["addr"]),
                      moved, compute.macs(spec.name, c))
