# amaranth: UnusedElaboratable=no
"""One device in Verilator (``cosim/device_top.py``) against the functional model: whole
command streams through the command processor, the engine heads, the DMA engines and the NE
tile, with the DRAM model and a host stand-in on the link port (``device_tb.py``).

One build of the 4x4-array device (small DRAM and SRAM keep the build and the images small;
the same build as ``cosim/device_timing.py``'s) and one ``run()`` for every cocotb test.
"""

import json
import time
from pathlib import Path

import pytest

from npusim.cosim.device_top import DEVICE_BUS, DEVICE_PARAMS, build_device
from npusim.cosim.verilator_flow import run

TESTBENCH = Path(__file__).with_name("device_tb.py")
PARAMS, BUS = DEVICE_PARAMS, DEVICE_BUS


@pytest.mark.rtl
def test_device_streams():
    started = time.monotonic()
    design = build_device(PARAMS, BUS, "device_4x4")
    result = run(design, TESTBENCH, timeout=900, env={
        "DEVICE_TB_PARAMS": json.dumps(PARAMS.as_dict()),
        "DEVICE_TB_HOST_BYTES": str(BUS.host_bytes),
    })
    print(f"device_4x4: build {design.seconds:.1f} s ({'cached' if design.cached else 'cold'}), "
          f"{result.tests} cocotb tests in {result.seconds:.1f} s, "
          f"{time.monotonic() - started:.1f} s in all")
