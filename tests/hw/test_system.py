# amaranth: UnusedElaboratable=no
"""The multi-device system in Verilator (``cosim/system_top.py``) against the functional
model: enumeration through the switch, registers over the link, peer-to-peer DMA, remote
semaphores, host-memory traffic, bit flips on every link, a link going down, malformed TLPs
dropped at the switch, and the ring
collectives of ``firmware/collectives.py`` (``system_tb.py``).

One build per device count and one ``run()`` for its cocotb tests. Two devices run in the
default suite; four are ``slow``.
"""

import json
import time
from pathlib import Path

import pytest

from npusim.cosim.system_top import SYSTEM_BUS, SYSTEM_PARAMS, build_system
from npusim.cosim.verilator_flow import run

TESTBENCH = Path(__file__).with_name("system_tb.py")
#: The cocotb tests that run.
TESTCASES = ["enumeration_and_registers", "peer_writes_and_remote_semaphores",
             "peer_reads_both_ways_with_host_traffic", "peer_to_peer_and_remote_semaphores",
             "bit_flips_are_replayed", "allreduce_out_of_place", "allreduce_in_place",
             "broadcast_from_the_last_device", "reduce_to_device_0",
             "link_down_is_a_completion_timeout", "malformed_tlps_are_dropped_and_counted"]


@pytest.mark.rtl
@pytest.mark.parametrize("n", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_system(n):
    started = time.monotonic()
    design = build_system(n, SYSTEM_PARAMS, SYSTEM_BUS, timeout=2400)
    result = run(design, TESTBENCH, testcase=TESTCASES, timeout=1800, env={
        "SYSTEM_TB_PARAMS": json.dumps(SYSTEM_PARAMS.as_dict()),
        "SYSTEM_TB_HOST_BYTES": str(SYSTEM_BUS.host_bytes),
        "SYSTEM_TB_DEVICES": str(n),
    })
    print(f"system_{n}: build {design.seconds:.1f} s ({'cached' if design.cached else 'cold'}), "
          f"{result.tests} cocotb tests in {result.seconds:.1f} s, "
          f"{time.monotonic() - started:.1f} s in all")
