"""The functional model's DMA and command-processor timing against the device RTL.

Every case of :func:`~npusim.cosim.device_timing.calibration_cases` (linear and 2-D DMA_COPY
in every direction, DRAM to DRAM, gathers through a block table, a ring, short streams of
control commands) runs on the functional model and on the 4x4 device in Verilator (the build
of ``test_device.py``), from the same image; the cycles between the two completion records
around the commands must agree within 5 % for every transfer of 1 KiB or more and every
control stream (smaller transfers are printed, not asserted). DRAM regions the cases write are
compared with the model's too.
"""

import time

import pytest

from npusim.cosim.device_timing import calibration_cases, measure

TOLERANCE = 0.05


def test_calibration_cases_are_valid():
    """Every case runs on the functional model alone (no fault) and has its shape."""
    from npusim.cosim.device_timing import fm_run
    for case in calibration_cases():
        _, records, _ = fm_run(case)
        assert records[1] > records[0], case.name
        assert "kind" in case.info and "bytes" in case.info


@pytest.mark.rtl
def test_fm_dma_and_cp_timing_within_5_percent_of_rtl():
    started = time.monotonic()
    rows, run = measure(calibration_cases())
    print(f"\n{'case':<34} {'FM':>6} {'RTL':>6} {'error':>7}")
    bad = []
    for r in rows:
        error = r["fm"] / r["rtl"] - 1
        asserted = r["info"]["kind"] == "control" or r["info"]["bytes"] >= 1024
        print(f"{r['name']:<34} {r['fm']:>6} {r['rtl']:>6} {100 * error:>+6.1f}%"
              f"{'' if asserted else '  (below 1 KiB: not asserted)'}")
        if asserted and abs(error) > TOLERANCE:
            bad.append(f"{r['name']}: FM {r['fm']}, RTL {r['rtl']} ({100 * error:+.1f} %)")
    print(f"build {run['build_seconds']:.1f} s ({'cached' if run['cached'] else 'cold'}), "
          f"simulation {run['simulation_seconds']:.1f} s, "
          f"{time.monotonic() - started:.1f} s in all")
    assert not bad, "FM timing off by more than 5 %:\n" + "\n".join(bad)
