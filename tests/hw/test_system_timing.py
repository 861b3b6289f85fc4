"""The functional model's link timing against the RTL system.

Every case of :func:`calibration_cases` (peer writes and reads of 4 and 64 KiB between two
devices, remote semaphore ping-pong, a ring all-reduce) runs on the functional model and on the
2-device system in Verilator (the build of ``test_system.py``), from the same images; each
case's span (first device's start to last device's finish, from completion records) must agree
within ``TOLERANCE``, and the DRAM regions the cases write match the model's bit for bit.
"""

import time

import pytest

from npusim.cosim.system_timing import (allreduce_case, fm_run, measure, peer_read_case,
                                        peer_write_case, ping_pong_case)
from npusim.cosim.system_top import SYSTEM_BUS, SYSTEM_PARAMS
from npusim.sw.fm.system import System

TOLERANCE = 0.08


def calibration_cases():
    return [peer_write_case(4096), peer_write_case(65536), peer_read_case(4096),
            peer_read_case(65536), ping_pong_case(8), allreduce_case(2, 4096),
            allreduce_case(2, 8192)]


def test_cases_run_on_the_model():
    """Every case runs on the functional model alone, one after another, without a fault."""
    system = System(2, SYSTEM_PARAMS, bus=SYSTEM_BUS)
    for case in calibration_cases():
        _, records, _ = fm_run(system, case)
        assert case.span(records) > 0, case.name


@pytest.mark.rtl
def test_fm_link_timing_within_tolerance_of_rtl():
    started = time.monotonic()
    rows, run = measure(calibration_cases(), 2)
    print(f"\n{'case':<28} {'FM':>6} {'RTL':>6} {'error':>7}")
    bad = []
    for r in rows:
        error = r["fm"] / r["rtl"] - 1
        print(f"{r['name']:<28} {r['fm']:>6} {r['rtl']:>6} {100 * error:>+6.1f}%")
        if abs(error) > TOLERANCE:
            bad.append(f"{r['name']}: FM {r['fm']} RTL {r['rtl']} ({100 * error:+.1f}%)")
    print(f"build {run['build_seconds']:.1f} s ({'cached' if run['cached'] else 'cold'}), "
          f"simulation {run['simulation_seconds']:.1f} s, {time.monotonic() - started:.1f} s")
    assert not bad, "functional-model link timing off the RTL:\n" + "\n".join(bad)
