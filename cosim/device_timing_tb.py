"""cocotb testbench of timed streams on one device (built and run by
:func:`npusim.cosim.device_timing.measure`).

The design is :class:`~npusim.cosim.device_top.DeviceTestTop`. One test: for each case of the
spec, reset the device, make the launch the functional model made (memory regions, register
writes, doorbell last), wait for the interrupt, and read back the completion records the
stream wrote to DRAM (their ``cycles`` fields), the launch's own record in host memory and,
if asked, DRAM regions to compare with the model's. Python wakes only for these events.

Environment (set by ``measure``):

``DEVICE_TIMING_SPEC``
    Path of a JSON file: ``{"params": {HwParams fields}, "host_bytes": int, "timeout_cycles":
    int, "cases": [{"name", "regions": [[addr, hex]], "writes": [[offset, value]],
    "records": [addr, ...], "checks": [[addr, hex]]}]}``.
``DEVICE_TIMING_RESULT``
    Path the results are written to: ``{"cases": [{"name", "records": [cycles, ...],
    "total_cycles", "wall_s"}]}``. A check that differs fails the test.
"""

import json
import os
import struct
import time
from pathlib import Path

import cocotb

from npusim.cosim.device import DeviceHost, Launch
from npusim.sw.fm.system import BusMap
from npusim.sw.params import HwParams


@cocotb.test(timeout_time=20, timeout_unit="sec")  # simulated time: 2G cycles at 10 ns
async def timed_streams(dut):
    """Each case from reset: the cycles stamped in its completion records."""
    spec = json.loads(Path(os.environ["DEVICE_TIMING_SPEC"]).read_text())
    params = HwParams(**spec["params"])
    bus = BusMap(host_bytes=spec["host_bytes"])
    host = DeviceHost(dut, params)
    out = []
    for case in spec["cases"]:
        await host.reset()
        launch = Launch([(a, bytes.fromhex(h)) for a, h in case["regions"]],
                        [tuple(w) for w in case["writes"]])
        await host.start(launch)
        loaded = time.perf_counter()
        await host.wait(1, spec["timeout_cycles"])
        wall = time.perf_counter() - loaded
        _, code = await host.status()
        assert code == 0, f"{case['name']}: the device stopped with error {code}"
        records = []
        for addr in case["records"]:
            _, _, cycles = struct.unpack("<IIQ", await host.dram.dump(addr, 16))
            records.append(cycles)
        _, _, total = struct.unpack("<IIQ", await host.host.dump(bus.completion(0), 16))
        for addr, want in case["checks"]:
            want = bytes.fromhex(want)
            got = await host.dram.dump(addr, len(want))
            assert got == want, f"{case['name']}: DRAM [{addr:#x}, +{len(want)}) differs " \
                f"from the functional model's"
        out.append({"name": case["name"], "records": records, "total_cycles": total,
                    "wall_s": wall})
        dut._log.info("%-40s %s (%d cycles in %.3f s)", case["name"],
                      [b - a for a, b in zip(records, records[1:])], total, wall)
    Path(os.environ["DEVICE_TIMING_RESULT"]).write_text(json.dumps({"cases": out}, indent=1))
