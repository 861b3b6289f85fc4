"""cocotb test module: the system RTL as a server of the runtime's ``rtl`` backend.

``npusim.cosim.rtl_backend.RtlBackend`` builds a :class:`~npusim.cosim.system_top.SystemTop`,
starts the simulator on this module's one test and waits for it to connect back
(``NPUSIM_SERVER_ADDRESS``, ``NPUSIM_SERVER_KEY``). The test resets and enumerates the system
through the root complex and the switch (:class:`~npusim.cosim.system.SystemHost`), then
serves requests until the client says ``close`` or goes away:

====================  =============================================================
``write d addr data``  device DRAM through its model's backdoor (memory images)
``read d addr n``      the same, read back
``mmio_write d off v`` a register write on BAR0: a memory-write TLP over the link
``mmio_read d off``    a register read: a memory-read TLP and its completion
``read_host addr n``   host memory (completion records land there)
``run_until irqs t``   simulate until device ``d`` has raised ``irqs[d]`` MSIs (vector
                       ``d``), a device stopped, or ``t`` cycles passed
``now``                cycles since reset
``trace on``           start (``True``) or stop recording the engines' commands
``events d``           the commands device ``d``'s engines ran since tracing started
                       (``(engine, start, end, held)``, ``held`` the head's raw
                       ``QueueEntry``), taken: the next call returns only newer ones
====================  =============================================================

Tracing watches the system's ``busy`` bits (a head holds a command) and wakes only when one
changes: a command's span runs from the cycle its head took it to the cycle the head let it
go, and its identity is the head's ``running`` command, read when the span starts.

The simulation only advances inside requests; between them the simulator waits on the
connection (at most ``NPUSIM_SERVER_IDLE`` seconds, then it ends).
"""

import json
import os
import traceback
from multiprocessing.connection import Client

import cocotb
from cocotb.utils import get_sim_time

from npusim.cosim.system import SystemHost
from npusim.sw.fm.system import BusMap
from npusim.sw.isa.enums import Engine
from npusim.sw.params import HwParams

CLOCK_NS = 10


@cocotb.test()
async def serve(dut):
    params = HwParams(**json.loads(os.environ["NPUSIM_SERVER_PARAMS"]))
    bus = BusMap(**json.loads(os.environ["NPUSIM_SERVER_BUS"]))
    n = int(os.environ["NPUSIM_SERVER_DEVICES"])
    idle = float(os.environ.get("NPUSIM_SERVER_IDLE", "600"))
    host = SystemHost(dut, params, bus, n, clock_ns=CLOCK_NS)
    await host.reset()
    zero = get_sim_time(unit="ns")
    await host.enumerate()
    host_name, port = os.environ["NPUSIM_SERVER_ADDRESS"].rsplit(":", 1)
    conn = Client((host_name, int(port)), authkey=bytes.fromhex(os.environ["NPUSIM_SERVER_KEY"]))

    def now():
        return int((get_sim_time(unit="ns") - zero) // CLOCK_NS)

    tracer = EngineTracer(dut, n, now)

    handlers = {
        "write": lambda d, addr, data: host.dram[d].load(addr, data),
        "read": lambda d, addr, n: host.dram[d].dump(addr, n),
        "mmio_write": host.write,
        "mmio_read": host.read,
        "read_host": host.host.dump,
        "run_until": lambda irqs, timeout: host.wait({int(k): v for k, v in irqs.items()},
                                                     timeout),
    }
    conn.send(("ready", now()))
    while True:
        if not conn.poll(idle):
            dut._log.warning(f"no request for {idle:.0f} s: ending")
            break
        try:
            op, *args = conn.recv()
        except EOFError:
            break
        if op == "close":
            conn.send(("ok", None))
            break
        try:
            if op == "now":
                result = now()
            elif op == "trace":
                result = tracer.switch(*args)
            elif op == "events":
                result = tracer.take(*args)
            else:
                result = await handlers[op](*args)
            conn.send(("ok", result))
        except Exception as e:      # the client raises it; the server goes on
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    conn.close()


class EngineTracer:
    """Records every command the engine heads of ``n`` devices hold, as spans of cycles."""

    def __init__(self, dut, n, now):
        self.dut, self.n, self.now = dut, n, now
        self.task = None
        self.events = [[] for _ in range(n)]

    def switch(self, on):
        if on and self.task is None:
            self.task = cocotb.start_soon(self._watch())
        elif not on and self.task is not None:
            self.task.cancel()
            self.task = None
            self.events = [[] for _ in range(self.n)]

    def take(self, d):
        got, self.events[d] = self.events[d], []
        return got

    async def _watch(self):
        busy = self.dut.busy
        was = 0
        held = {}                       # head -> (start cycle, its raw QueueEntry)
        while True:
            now_busy = busy.value.to_unsigned()
            t = self.now()
            changed = was ^ now_busy
            while changed:
                k = (changed & -changed).bit_length() - 1
                changed &= changed - 1
                if now_busy >> k & 1:
                    held[k] = (t, getattr(self.dut, f"running__{k}").value.to_unsigned())
                elif k in held:
                    start, raw = held.pop(k)
                    self.events[k // len(Engine)].append((k % len(Engine), start, t, raw))
            was = now_busy
            await busy.value_change
