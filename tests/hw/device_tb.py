"""cocotb testbench for ``test_device.py``: whole command streams on one device, against the
functional model.

Each test builds a stream, runs it on the functional model (``System``) and on the RTL
(``DeviceTestTop``) from the same DRAM image and registers (:func:`model_launch`), waits for
the interrupt (or a stop) and compares: the DRAM regions the stream writes, the completion
record in host memory, the interrupt vector, STATUS and ERROR_OFFSET. Configuration comes
from ``DEVICE_TB_PARAMS`` (JSON ``HwParams`` fields) and ``DEVICE_TB_HOST_BYTES``.
"""

import json
import os

import cocotb
import numpy as np

from npusim.cosim.device import DeviceHost, model_launch
from npusim.sw import regmap
from npusim.sw.fm.system import BusMap, System
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import DType, Engine, ErrorCode, Space
from npusim.sw.params import HwParams

PARAMS = HwParams(**json.loads(os.environ["DEVICE_TB_PARAMS"]))
BUS = BusMap(host_bytes=int(os.environ["DEVICE_TB_HOST_BYTES"]))
STREAM = 0x8000
TIMEOUT = 20_000


def signal_wait(sem, signaller, waiter):
    """``waiter`` starts only after ``signaller``'s earlier commands finished."""
    return [Command("SEM_SIGNAL", engine=signaller, sem=sem, amount=1),
            Command("SEM_WAIT", engine=waiter, sem=sem, value=1, consume=True)]


async def run_both(dut, cmds, inputs, outputs, regs=None, expect=ErrorCode.OK):
    """Run ``cmds`` on the model and the RTL; compare ``outputs`` ([(addr, n)] of DRAM)."""
    system = System(1, PARAMS, bus=BUS)
    d = system.devices[0]
    for addr, data in inputs:
        d.dram.write(addr, np.frombuffer(bytes(data), np.uint8))
    launch = model_launch(system, 0, encode_stream(cmds), STREAM, regs=regs,
                          extra_regions=inputs)
    system.run(50_000_000)
    assert d.error_code == expect, (d.error_code, d.error_message)

    host = DeviceHost(dut, PARAMS)
    await host.reset()
    await host.start(launch)
    try:
        waited = await host.wait(1 if expect == ErrorCode.OK else None, TIMEOUT)
    except TimeoutError:
        R = regmap.OFFSET
        seen = {name: hex(await host.read(R[name])) for name in
                ("STATUS", "RING_HEAD", "RING_TAIL", "ERROR_OFFSET", "CYCLES")}
        seen["sems"] = [await host.read(regmap.SEM_VALUE + 8 * i) for i in range(4)]
        seen["record"] = (await host.host.dump(BUS.completion(0), 16)).hex()
        for addr, n in outputs:
            seen[f"dram {addr:#x}"] = (await host.dram.dump(addr, min(n, 32))).hex()
            seen[f"model {addr:#x}"] = d.dram.read(addr, min(n, 32)).tobytes().hex()
        raise AssertionError(f"stuck: {seen}, irqs {dut.irq_count.value.to_unsigned()}; "
                             f"the model ran {d.last_activity} cycles") from None
    state, code = await host.status()
    dut._log.info(f"stream of {len(cmds)} commands: {state.name} {ErrorCode(code).name} "
                  f"after ~{waited} cycles (model {d.last_activity})")
    assert code == d.error_code, (ErrorCode(code).name, d.error_code.name, d.error_message)
    if expect != ErrorCode.OK:
        assert state == regmap.DeviceState.FAULT
        assert await host.error_offset() == d.error_offset
    else:
        assert dut.irq_count.value.to_unsigned() == 1
        assert dut.irq_vector.value.to_unsigned() == 0
        record = await host.host.dump(BUS.completion(0), 16)
        want = system.host.read(BUS.completion(0), 16).tobytes()
        assert record[:8] == want[:8], (record.hex(), want.hex())   # seq, status
    for addr, n in outputs:
        got = await host.dram.dump(addr, n)
        want = d.dram.read(addr, n).tobytes()
        if got != want:
            first = next(i for i in range(n) if got[i] != want[i])
            raise AssertionError(f"DRAM [{addr:#x}, +{n}) differs from byte {first} on: "
                                 f"RTL {got[first:first + 16].hex()} model "
                                 f"{want[first:first + 16].hex()}")
    return system


@cocotb.test()
async def dma_matmul_round_trip(dut):
    """A and B in by DMA, a MATMUL on the tile, C out by DMA, synchronised by semaphores."""
    rng = np.random.default_rng(1)
    n = 4 * PARAMS.array_rows
    a = rng.integers(0x3C00, 0x4000, (n, n), dtype=np.uint16)   # bf16 in [1, 2)
    b = rng.integers(0xBC00, 0xC000, (n, n), dtype=np.uint16)
    A, B, C = 0x10000, 0x11000, 0x20000
    sa, sb, sc = 0x0, 0x1000, 0x2000
    cmds = [
        Command("DMA_COPY", engine=Engine.DMA_IN, src_off=A, dst_space=Space.SRAM, dst_off=sa,
                len=2 * n * n, n1=1, n2=1),
        Command("DMA_COPY", engine=Engine.DMA_IN, src_off=B, dst_space=Space.SRAM, dst_off=sb,
                len=2 * n, n1=n, n2=1, src_stride1=2 * n, dst_stride1=2 * n),
        *signal_wait(1, Engine.DMA_IN, Engine.COMPUTE),
        Command("MATMUL", a=sa, lda=n, b=sb, ldb=n, c=sc, ldc=n, m=n, n=n, k=n,
                c_dtype=DType.FP32),
        *signal_wait(2, Engine.COMPUTE, Engine.DMA_OUT),
        Command("DMA_COPY", engine=Engine.DMA_OUT, src_space=Space.SRAM, src_off=sc,
                dst_space=Space.DRAM, dst_off=C, len=4 * n * n, n1=1, n2=1),
    ]
    await run_both(dut, cmds, [(A, a.tobytes()), (B, b.tobytes())], [(C, 4 * n * n)])


@cocotb.test()
async def strided_copies_on_three_engines(dut):
    """2-D and 3-D strided DMA on DMA_IN, DMA_OUT and LINK at once (disjoint data), with
    run-time register operands."""
    rng = np.random.default_rng(2)
    src = rng.integers(0, 256, 0x4000, dtype=np.uint8)
    cmds = []
    for i, engine in enumerate((Engine.DMA_IN, Engine.DMA_OUT, Engine.LINK)):
        cmds.append(Command("DMA_COPY", engine=engine, src_reg=1, src_off=0x400 * i,
                            dst_off=0x30000 + 0x1000 * i, len_reg=2, len=4 * i, n1=3, n2=2,
                            src_stride1=0x60, dst_stride1=0x40, src_stride2=0x200,
                            dst_stride2=0x100))
    await run_both(dut, cmds, [(0x40000, src.tobytes())], [(0x30000, 0x3000)],
                   regs={1: 0x40000, 2: 36})


@cocotb.test()
async def faults_stop_the_device(dut):
    """A DMA outside every window: DMA_WINDOW at that command, nothing written after."""
    cmds = [Command("REG_SET", rd=3, imm=7),
            Command("DMA_COPY", engine=Engine.DMA_IN, src_off=PARAMS.dram_bytes - 32,
                    dst_space=Space.SRAM, len=64, n1=1, n2=1),
            Command("DMA_COPY", engine=Engine.DMA_IN, src_off=0x100, dst_off=0x50000,
                    len=64, n1=1, n2=1)]
    await run_both(dut, cmds, [(0x100, bytes(range(64)))], [(0x50000, 64)],
                   expect=ErrorCode.DMA_WINDOW)
