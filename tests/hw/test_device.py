# amaranth: UnusedElaboratable=no
"""One device in Verilator (``cosim/device_top.py``) against the functional model: whole
command streams through the command processor, the engine heads, the DMA engines and the NE
tile, with the DRAM model and a host stand-in on the link port (``device_tb.py``).

One build of the 4x4-array device (small DRAM and SRAM keep the build and the images small;
the same build as ``cosim/device_timing.py``'s) and one ``run()`` for every cocotb test.
"""

import dataclasses
import json
import time
from pathlib import Path

import pytest

from npusim.cosim.device_top import DeviceTestTop
from npusim.cosim.verilator_flow import build, run
from npusim.sw.fm.system import BusMap
from npusim.sw.params import HwParams

TESTBENCH = Path(__file__).with_name("device_tb.py")
PARAMS = HwParams(array_rows=4, array_cols=4, vector_lanes=4, sram_bytes=64 * 1024,
                  dram_bytes=1 << 22)
BUS = BusMap(host_bytes=1 << 24)


@pytest.mark.rtl
def test_device_streams(tmp_path):
    started = time.monotonic()
    design = build(DeviceTestTop(PARAMS, BUS), "device_4x4")
    result = run(design, TESTBENCH, timeout=900, env={
        "DEVICE_TB_PARAMS": json.dumps(dataclasses.asdict(PARAMS)),
        "DEVICE_TB_HOST_BYTES": str(BUS.host_bytes),
    })
    print(f"device_4x4: build {design.seconds:.1f} s ({'cached' if design.cached else 'cold'}), "
          f"{result.tests} cocotb tests in {result.seconds:.1f} s, "
          f"{time.monotonic() - started:.1f} s in all")
