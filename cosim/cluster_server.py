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
====================  =============================================================

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
            result = now() if op == "now" else await handlers[op](*args)
            conn.send(("ok", result))
        except Exception as e:      # the client raises it; the server goes on
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    conn.close()
