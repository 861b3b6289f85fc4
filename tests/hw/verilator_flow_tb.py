"""cocotb testbench for ``test_verilator_flow.py``: an accumulator behind the flow's helpers.

The tests marked ``skip=True`` misbehave on purpose; they run only when selected by name.
"""

import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge


async def reset(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.en.value = 0
    dut.din.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0


@cocotb.test()
async def accumulates(dut):
    """The clock, the reset and the ports are reachable through VPI; the design works."""
    await reset(dut)
    for value in (1, 2, 3, 250):
        await FallingEdge(dut.clk)
        dut.en.value = 1
        dut.din.value = value
    await FallingEdge(dut.clk)
    dut.en.value = 0
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    assert dut.total.value.to_unsigned() == 256


@cocotb.test(skip=True)
async def fails_on_purpose(dut):
    """A test that fails: run() must raise."""
    await reset(dut)
    assert dut.total.value.to_unsigned() == 12345, "deliberate failure"


@cocotb.test(skip=True)
async def hangs_on_purpose(dut):
    """A test stuck in Python (not in simulated time): run()'s wall-clock timeout kills it."""
    time.sleep(120)
