"""cocotb testbench of timed streams on the multi-device system (built and run by
:func:`npusim.cosim.system_timing.measure`).

The design is :class:`~npusim.cosim.system_top.SystemTop`. One test: reset and enumerate the
system once; then, for each case of the spec, make every device's launch the functional model
made (memory regions, register writes over the link, doorbell last: each device's stream now
waits on the GO semaphore), let every device reach that wait, release every device by writing GO (posted writes, back to back),
wait for each device's interrupt, and read the completion records (their ``cycles`` fields)
and, if asked, DRAM regions to compare with the model's. Python wakes only for host requests
and interrupts.

Environment (set by ``measure``):

``SYSTEM_TIMING_SPEC``
    Path of a JSON file: ``{"params": {HwParams fields}, "host_bytes", "devices",
    "timeout_cycles", "go": GO's register offset, "records": records' DRAM address,
    "cases": [{"name", "launches": {device: {"regions": [[addr, hex]], "writes": [[offset,
    value]]}}, "checks": [[device, addr, hex]]}]}``.
``SYSTEM_TIMING_RESULT``
    Path the results go to: ``{"cases": [{"name", "records": {device: [cycles, cycles]},
    "go": {device: cycle its GO write was requested}, "wall_s", "cycles"}]}``. A check that differs fails the test.
"""

import json
import os
import struct
import time
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge
from cocotb.utils import get_sim_time

from npusim.cosim.system import Launch, SystemHost
from npusim.sw.fm.system import BusMap
from npusim.sw.params import HwParams

#: Cycles from the last doorbell to the release: a command processor needs a few hundred at
#: most to fetch its ring and reach the GO wait, so every device is waiting when GO comes.
SETTLE_CYCLES = 2000


@cocotb.test(timeout_time=60, timeout_unit="sec")   # simulated time: 6G cycles at 10 ns
async def timed_streams(dut):
    """Each case, after the previous one: the cycles stamped in its completion records."""
    spec = json.loads(Path(os.environ["SYSTEM_TIMING_SPEC"]).read_text())
    params = HwParams(**spec["params"])
    bus = BusMap(host_bytes=spec["host_bytes"])
    n = spec["devices"]
    host = SystemHost(dut, params, bus, n)
    await host.reset()
    reset_done = get_sim_time(unit="ns")      # the devices count cycles from here
    await host.enumerate()
    out = []
    for case in spec["cases"]:
        launches = {int(d): Launch([(a, bytes.fromhex(h)) for a, h in l["regions"]],
                                   [tuple(w) for w in l["writes"]])
                    for d, l in case["launches"].items()}
        for d, launch in launches.items():
            await host.start(d, launch)
        irqs = {d: host.irqs(d) + 1 for d in launches}
        await ClockCycles(dut.clk, SETTLE_CYCLES)     # every device fetched up to its GO wait
        await FallingEdge(dut.clk)                    # where host requests start
        released = time.perf_counter()
        first = get_sim_time(unit="ns")
        go = {}           # device cycle (since reset) when its GO write went to the root complex
        for d in launches:
            go[d] = round((get_sim_time(unit="ns") - reset_done) / host.clock_ns)
            await host.write(d, spec["go"], 1)
        await host.wait(irqs, spec["timeout_cycles"])
        wall = time.perf_counter() - released
        cycles = round((get_sim_time(unit="ns") - first) / host.clock_ns)
        records = {}
        for d in launches:
            state, code = await host.status(d)
            assert code == 0, f"{case['name']}: device {d} stopped with error {code}"
            raw = await host.dram[d].dump(spec["records"], 32)
            records[d] = [struct.unpack_from("<IIQ", raw, 16 * i)[2] for i in range(2)]
        for d, addr, want in case["checks"]:
            want = bytes.fromhex(want)
            got = await host.dram[d].dump(addr, len(want))
            assert got == want, f"{case['name']}: device {d} DRAM [{addr:#x}, +{len(want)}) " \
                f"differs from the functional model's"
        out.append({"name": case["name"], "records": records, "go": go, "wall_s": wall,
                    "cycles": cycles})
        span = max(r[1] for r in records.values()) - min(r[0] for r in records.values())
        dut._log.info("%-36s span %d cycles (%d simulated in %.2f s)", case["name"], span,
                      cycles, wall)
    Path(os.environ["SYSTEM_TIMING_RESULT"]).write_text(json.dumps({"cases": out}, indent=1))
