"""cocotb testbench for ``test_device.py``: whole command streams on one device, against the
functional model.

Each test builds a stream, runs it on the functional model (``System``) and on the RTL
(``DeviceTestTop``) from the same DRAM image and registers (:func:`model_launch`), waits for
the interrupt (or a stop) and compares bit for bit: the DRAM and host-memory regions the
stream writes, the whole SRAM (the stream loads it from a seeded image first and copies it
out to DRAM last), every run-time register and semaphore, the completion record, the MSI,
STATUS and ERROR_OFFSET. A stream that faults (or halts) is followed, on both executions, by
a queue reset (CONTROL = 1) and a second launch that must complete; it copies the SRAM out,
so a faulting command is seen to have written nothing there either. Configuration comes from
``DEVICE_TB_PARAMS`` (JSON ``HwParams`` fields) and ``DEVICE_TB_HOST_BYTES``.

Tests: control flow (REG_SET, every REG_OP, BRANCH loops, FENCE, HALT), every kind of DMA
(1-D to 3-D copies between DRAM, SRAM and host memory, overlapping copies, rings, gathers,
scatters), every compute command, semaphores across engines, a paged-attention step (block
table gather, Q K^T and P V, slot-mapping scatters), a sliding-window ring, and every error
path the device reports.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, FallingEdge
from npusim.cosim.device import DeviceHost, model_launch
from npusim.sw import numerics as nx
from npusim.sw import regmap
from npusim.sw.fm.system import RING_BYTES, BusMap, System
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import (
    BranchCond,
    DType,
    Engine,
    ErrorCode,
    RedOp,
    RegOp,
    Space,
    VBMode,
    VectorOp,
)
from npusim.sw.isa.table import COMMAND_BYTES, HEADER_BYTES, NUM_REGS, NUM_SEMAPHORES
from npusim.sw.params import HwParams
from npusim.sw.regmap import DeviceState
from memory_compare import first_difference

PARAMS = HwParams(**json.loads(os.environ["DEVICE_TB_PARAMS"]))
BUS = BusMap(host_bytes=int(os.environ["DEVICE_TB_HOST_BYTES"]))
R = regmap.OFFSET

# DRAM map of the tests (4 MiB; the ring the model's System sets up is the top 64 KiB)
RECOVERY_STREAM = 0x7000   #: the launch after a queue reset
STREAM = 0x8000            #: the launched stream
SRAM_IMAGE = 0x100000      #: the SRAM's initial contents (seeded random), loaded first
SRAM_DUMP = 0x110000       #: the whole SRAM, copied out at the end
IN = 0x140000              #: test inputs from here
OUT = 0x180000             #: test outputs from here
HOST_IN, HOST_OUT = 0x10000, 0x20000   #: host memory, over the link (window 1)
TIMEOUT = 100_000


def signal_wait(sem, signaller, waiter):
    """``waiter`` starts only after ``signaller``'s earlier commands finished."""
    return [Command("SEM_SIGNAL", engine=signaller, sem=sem, amount=1),
            Command("SEM_WAIT", engine=waiter, sem=sem, value=1, consume=True)]


def copy(engine, src, dst, length, n1=1, n2=1, s1=0, d1=0, s2=0, d2=0,
         src_space=Space.DRAM, dst_space=Space.DRAM, **fields):
    """A DMA_COPY (``src``/``dst`` are the immediate offsets)."""
    return Command("DMA_COPY", engine=engine, src_space=src_space, src_off=src,
                   dst_space=dst_space, dst_off=dst, len=length, n1=n1, n2=n2,
                   src_stride1=s1, dst_stride1=d1, src_stride2=s2, dst_stride2=d2, **fields)


def sram_load():
    """The SRAM from its image in DRAM, before the test's commands."""
    return [copy(Engine.DMA_IN, SRAM_IMAGE, 0, PARAMS.sram_bytes, dst_space=Space.SRAM),
            Command("FENCE")]


def sram_dump():
    """The whole SRAM to DRAM, after everything else."""
    return [Command("FENCE"),
            copy(Engine.DMA_OUT, 0, SRAM_DUMP, PARAMS.sram_bytes, src_space=Space.SRAM)]


def f32(values):
    """fp32 bit patterns of ``values``."""
    return np.asarray(values, np.float32).view(np.uint32)


def bf16(values):
    """bf16 bit patterns of ``values`` (round to nearest even)."""
    return nx.fp32_to_bf16(f32(values))


def command_address(index, prefix=2, stream=STREAM):
    """DRAM address of ``cmds[index]`` of a :func:`run_both` stream (after the SRAM load)."""
    return stream + HEADER_BYTES + (prefix + index) * COMMAND_BYTES


class Bench:
    """The RTL side of one cocotb test: a :class:`DeviceHost` whose clock starts once; every
    later :meth:`reset` only pulses the reset (a test may run several streams)."""

    def __init__(self, dut):
        self.dut, self.host, self.started = dut, DeviceHost(dut, PARAMS), False

    async def reset(self):
        if not self.started:
            self.started = True
            await self.host.reset()
            return
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await FallingEdge(self.dut.clk)


async def settled_status(host, polls=50):
    """STATUS once the device has settled: the MSI of a launch's COMPLETE leaves before the
    command processor retires the command, so STATUS may read RUNNING for a few cycles after
    the interrupt (the model, whose MSI arrives ``link_latency`` later, is IDLE by then)."""
    for _ in range(polls):
        state, code = await host.status()
        if state != DeviceState.RUNNING:
            break
    return state, code


async def _compare_state(host, d, what):
    """Run-time registers and semaphores, RTL against the model (over MMIO on both)."""
    for kind, count in (("RUNTIME_REG", NUM_REGS), ("SEM_VALUE", NUM_SEMAPHORES)):
        for i in range(count):
            off = R[kind] + 8 * i
            got, want = await host.read(off), d.mmio_read(off)
            assert got == want, f"{what}: {kind}[{i}] RTL {got:#x} model {want:#x}"


async def run_both(dut, cmds, inputs, outputs, regs=None, expect=ErrorCode.OK, *,
                   host_inputs=(), host_outputs=(), grants=(), patches=(), halt=None, at=None,
                   at_addr=None, intact=(), intact_sram=(), sram=True, recovery=None, seed=0,
                   bench=None, watchdog=None):
    """Run ``cmds`` on the model and the RTL and compare them.

    ``inputs``: [(addr, bytes)] of DRAM loaded on both; ``outputs``: [(addr, n)] of DRAM
    compared (zeroed first); ``host_inputs`` / ``host_outputs`` the same in host memory;
    ``grants``: [(window, base, size, flags)] DMA windows set before the launch (on the model
    by ``System.grant``; the launch's register writes carry them to the RTL); ``patches``:
    [(index, byte, value)] bytes overwritten in the encoded stream (``index`` into ``cmds``,
    or ``"header"``); ``halt``: end the stream with ``HALT`` of that code; ``at``: index of
    the command that must fault (``at_addr``: its DRAM address); ``intact``: [(addr, n)] of the inputs that must be unchanged
    (and ``intact_sram`` of the SRAM image); ``sram``: wrap the stream in the SRAM load and
    dump; ``recovery``: (cmds, inputs, outputs) of the launch after the queue reset of a
    faulted or halted stream (default: just the SRAM dump); ``bench``: the test's
    :class:`Bench` when it runs several streams."""
    rng = np.random.default_rng(seed)
    system = System(1, PARAMS, bus=BUS)
    d = system.devices[0]
    dram, host_mem = [], []
    for addr, n in outputs:
        dram.append((addr, bytes(n)))
    for addr, n in host_outputs:
        host_mem.append((addr, bytes(n)))
    dram += [(addr, bytes(data)) for addr, data in inputs]
    host_mem += [(addr, bytes(data)) for addr, data in host_inputs]
    prefix, suffix = (sram_load(), sram_dump()) if sram else ([], [])
    image = rng.integers(0, 256, PARAMS.sram_bytes, dtype=np.uint8).tobytes()
    if sram:
        dram += [(SRAM_IMAGE, image), (SRAM_DUMP, bytes(PARAMS.sram_bytes))]
    for addr, data in dram:
        d.dram.write(addr, np.frombuffer(data, np.uint8))
    for addr, data in host_mem:
        system.host.write(addr, np.frombuffer(data, np.uint8))
    for window, base, size, flags in grants:
        system.grant(0, window, base, size, flags)
    if watchdog is not None:   # the launch's register writes carry it to the RTL
        d.mmio_write(regmap.OFFSET["WATCHDOG"], watchdog)
    body = prefix + list(cmds) + suffix + ([Command("HALT", code=halt)] if halt is not None
                                           else [])
    stream = bytearray(encode_stream(body))
    for index, byte, value in patches:
        where = 0 if index == "header" else HEADER_BYTES + (len(prefix) + index) * COMMAND_BYTES
        stream[where + byte] = value
    launch = model_launch(system, 0, bytes(stream), STREAM, regs=regs, extra_regions=dram)
    system.run(50_000_000)
    stopped = expect != ErrorCode.OK or halt is not None
    assert d.error_code == expect, (d.error_code, d.error_message)
    if halt is not None:
        assert d.state == DeviceState.HALTED, d.state
    if at is not None:
        assert d.error_offset == command_address(at, len(prefix)), \
            (hex(d.error_offset), hex(command_address(at, len(prefix))))
    if at_addr is not None:
        assert d.error_offset == at_addr, (hex(d.error_offset), hex(at_addr))

    bench = bench or Bench(dut)
    host = bench.host
    await bench.reset()
    for addr, data in host_mem:
        await host.host.load(addr, data)
    await host.start(launch)
    try:
        waited = await host.wait(None if stopped else 1, TIMEOUT)
    except TimeoutError:
        seen = {name: hex(await host.read(R[name])) for name in
                ("STATUS", "RING_HEAD", "RING_TAIL", "ERROR_OFFSET", "CYCLES")}
        seen["sems"] = [await host.read(regmap.SEM_VALUE + 8 * i) for i in range(4)]
        seen["record"] = (await host.host.dump(BUS.completion(0), 16)).hex()
        raise AssertionError(f"stuck: {seen}, irqs {dut.irq_count.value.to_unsigned()}; "
                             f"the model ran {d.last_activity} cycles") from None
    state, code = await settled_status(host)
    dut._log.info(f"stream of {len(body)} commands: {state.name} {ErrorCode(code).name} "
                  f"after ~{waited} cycles (model {d.last_activity})")
    assert code == d.error_code, (ErrorCode(code).name, d.error_code.name, d.error_message)
    assert state == d.state, (state.name, d.state.name)
    if expect != ErrorCode.OK:
        assert state == DeviceState.FAULT
        offset = await host.error_offset()
        assert offset == d.error_offset, (hex(offset), hex(d.error_offset))
    if stopped:
        assert dut.irq_count.value.to_unsigned() == 0, "a stopped launch raised its MSI"
    else:
        assert dut.irq_count.value.to_unsigned() == 1
        assert dut.irq_vector.value.to_unsigned() == 0
        record = await host.host.dump(BUS.completion(0), 16)
        want = system.host.read(BUS.completion(0), 16).tobytes()
        assert record[:8] == want[:8], (record.hex(), want.hex())   # seq, status
    await _compare_state(host, d, "after the stream")

    if stopped:   # reset the queue, then a launch that must complete
        r_cmds, r_inputs, r_outputs = recovery or ([], [], [])
        d.mmio_write(R["CONTROL"], 1)
        r_dram = [(addr, bytes(n)) for addr, n in r_outputs] + \
            [(addr, bytes(data)) for addr, data in r_inputs]
        for addr, data in r_dram:
            d.dram.write(addr, np.frombuffer(data, np.uint8))
        r_body = list(r_cmds) + (sram_dump() if sram else []) or [Command("NOP")]
        r_launch = model_launch(system, 0, encode_stream(r_body), RECOVERY_STREAM,
                                extra_regions=r_dram)
        system.run(50_000_000)
        assert d.error_code == ErrorCode.OK and d.state == DeviceState.IDLE, \
            (d.error_code, d.error_message, d.state)
        await host.write(R["CONTROL"], 1)
        state, code = await host.status()
        assert (state, code) == (DeviceState.IDLE, 0), ("after CONTROL = 1", state.name, code)
        await host.start(r_launch)
        try:
            await host.wait(1, TIMEOUT)
        except TimeoutError:
            raise AssertionError("the launch after the queue reset did not complete: STATUS "
                                 f"{await host.read(R['STATUS']):#x}") from None
        state, code = await settled_status(host)
        assert (state, code) == (DeviceState.IDLE, 0), ("after the second launch", state.name,
                                                        ErrorCode(code).name)
        assert dut.irq_count.value.to_unsigned() == 1
        record = await host.host.dump(BUS.completion(0), 16)
        want = system.host.read(BUS.completion(0), 16).tobytes()
        assert record[:8] == want[:8] and want[:4] == (2).to_bytes(4, "little"), \
            (record.hex(), want.hex())
        await _compare_state(host, d, "after the second launch")
        outputs = list(outputs) + list(r_outputs)

    regions = list(outputs) + [(addr, n) for addr, n in intact if (addr, n) not in outputs]
    if sram:
        regions.append((SRAM_DUMP, PARAMS.sram_bytes))
    for addr, n in regions:
        first_difference("DRAM", await host.dram.dump(addr, n), d.dram.read(addr, n).tobytes(),
                          addr)
    for addr, n in host_outputs:
        first_difference("host memory", await host.host.dump(addr, n),
                          system.host.read(addr, n).tobytes(), addr)
    for addr, n in intact:   # as loaded by the last region holding it
        base, data = next((b, x) for b, x in reversed(dram) if b <= addr and addr + n <= b + len(x))
        first_difference("intact DRAM", await host.dram.dump(addr, n),
                          data[addr - base:addr - base + n], addr)
    if intact_sram:
        dump = await host.dram.dump(SRAM_DUMP, PARAMS.sram_bytes)
        for addr, n in intact_sram:
            first_difference("intact SRAM", dump[addr:addr + n], image[addr:addr + n], addr)
    return system


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def dma_matmul_round_trip(dut):
    """A and B in by DMA, a MATMUL on the tile, C out by DMA, synchronised by semaphores."""
    await run_both(dut, *matmul_round_trip())


def matmul_round_trip():
    """(cmds, inputs, outputs) of a small DMA -> MATMUL -> DMA stream."""
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
    return cmds, [(A, a.tobytes()), (B, b.tobytes())], [(C, 4 * n * n)]


@cocotb.test(timeout_time=50, timeout_unit="ms")
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


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def faults_stop_the_device(dut):
    """A DMA outside every window: DMA_WINDOW at that command, nothing written after."""
    cmds = [Command("REG_SET", rd=3, imm=7),
            Command("DMA_COPY", engine=Engine.DMA_IN, src_off=PARAMS.dram_bytes - 32,
                    dst_space=Space.SRAM, len=64, n1=1, n2=1),
            Command("DMA_COPY", engine=Engine.DMA_IN, src_off=0x100, dst_off=0x50000,
                    len=64, n1=1, n2=1)]
    await run_both(dut, cmds, [(0x100, bytes(range(64)))], [(0x50000, 64)],
                   expect=ErrorCode.DMA_WINDOW)


# -- every command class --------------------------------------------------------------------


def reg_op(op, rd, rs1, rs2=0, imm=0):
    return Command("REG_OP", op=op, rd=rd, rs1=rs1, rs2=rs2, imm=imm)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def control_flow_and_registers(dut):
    """REG_SET, every REG_OP, a BRANCH loop driving register-addressed DMAs, forward branches
    taken and not, one to the end of the stream, writes to r0, FENCE on an engine mask;
    registers compared over MMIO."""
    rng = np.random.default_rng(10)
    src = rng.integers(0, 256, 0x400, dtype=np.uint8)
    cmds = [
        Command("REG_SET", rd=3, imm=0),                       # i
        reg_op(RegOp.ADD, 4, 0, 2),                            # count = R2 (from the host)
        reg_op(RegOp.ADD, 5, 1),                               # source pointer = R1
        Command("REG_SET", rd=6, imm=OUT),                     # destination pointer
        # loop: 5 register-addressed DRAM -> DRAM copies
        copy(Engine.DMA_IN, 0, 0, 48, src_reg=5, dst_reg=6),
        reg_op(RegOp.ADD, 5, 5, imm=0x40),
        reg_op(RegOp.ADD, 6, 6, imm=0x80),
        reg_op(RegOp.ADD, 3, 3, imm=1),
        Command("BRANCH", cond=BranchCond.LTU, ra=3, rb=4, target=-4),
        # forward branches: taken (skip a copy), not taken, taken
        Command("BRANCH", cond=BranchCond.EQ, ra=0, rb=0, target=2),
        copy(Engine.DMA_IN, IN, OUT + 0x1000, 64),             # skipped
        Command("BRANCH", cond=BranchCond.NE, ra=3, rb=4, target=2),
        copy(Engine.DMA_IN, IN + 0x100, OUT + 0x1040, 64),     # runs
        Command("BRANCH", cond=BranchCond.GEU, ra=4, rb=3, target=2),
        copy(Engine.DMA_IN, IN, OUT + 0x1080, 64),             # skipped
        # every REG_OP
        Command("REG_SET", rd=7, imm=0x8123_4567_89AB_CDEF),
        Command("REG_SET", rd=8, imm=0x0F0F),
        reg_op(RegOp.MUL, 10, 7, 8, 3),
        reg_op(RegOp.SUB, 11, 0, 7),
        reg_op(RegOp.AND, 12, 7, 8),
        reg_op(RegOp.OR, 13, 7, 8, -1),
        reg_op(RegOp.XOR, 14, 7, 0, -1),
        reg_op(RegOp.SHL, 15, 7, 0, 68),                       # shift by 68 mod 64
        reg_op(RegOp.SHR, 16, 7, 0, 12),
        reg_op(RegOp.MIN, 17, 7, 8),
        reg_op(RegOp.MAX, 18, 7, 8),
        reg_op(RegOp.ADD, 0, 7, 7),                            # r0 stays 0
        Command("REG_SET", rd=0, imm=5),
        reg_op(RegOp.ADD, 19, 0, 0, -8),                       # 2**64 - 8
        reg_op(RegOp.SUB, 31, 19, 0, -8),                      # wraps to 0
        # an address computed by shifts, and negative offsets from registers
        reg_op(RegOp.SHR, 20, 6, 0, 8),
        reg_op(RegOp.SHL, 20, 20, 0, 8),                       # OUT + 0x200
        copy(Engine.DMA_OUT, -0x40, 0x1000, 32, src_reg=5, dst_reg=20),
        copy(Engine.DMA_OUT, 0, -0x100 + 0x1120, 32, src_reg=1, dst_reg=20),
        Command("FENCE", engines=1 << Engine.DMA_IN | 1 << Engine.DMA_OUT),
        Command("NOP"),
    ]
    bench = Bench(dut)
    await run_both(dut, cmds, [(IN, src.tobytes())], [(OUT, 0x1400)], regs={1: IN, 2: 5},
                   bench=bench)
    # a BRANCH to index n ends the called stream (no SRAM dump: it would be skipped too)
    cmds = [copy(Engine.DMA_IN, IN, OUT, 64),
            Command("BRANCH", cond=BranchCond.EQ, target=2),
            copy(Engine.DMA_IN, IN, OUT + 0x100, 64)]
    await run_both(dut, cmds, [(IN, src.tobytes())], [(OUT, 0x200)], sram=False, bench=bench)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def halt_stops_the_launch(dut):
    """A stream ending in HALT: both stop HALTED after the engines drain, before the launch's
    COMPLETE (no completion record, no MSI: HALT stops the queue, so a launched stream that
    halts never completes); after CONTROL = 1 the next launch completes."""
    rng = np.random.default_rng(11)
    src = rng.integers(0, 256, 0x200, dtype=np.uint8)
    cmds = [copy(Engine.DMA_IN, IN, OUT, 0x200),
            copy(Engine.DMA_OUT, IN, 0x200, 0x100, dst_space=Space.SRAM),
            Command("REG_SET", rd=9, imm=77)]
    await run_both(dut, cmds, [(IN, src.tobytes())], [(OUT, 0x200)], halt=0x1234)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def dma_every_kind(dut):
    """DMA_COPY 1-D, 2-D and 3-D between DRAM, SRAM and host memory (over the link, window 1)
    in every direction, DRAM -> DRAM and SRAM -> SRAM, overlapping copies (memmove order,
    rows overlapping each other), rings in SRAM and DRAM, a gather and a scatter, commands
    moving no bytes (no extents, so no window or bounds check), on all three DMA engines,
    ordered by semaphores (consuming and not, and a wait for 0)."""
    rng = np.random.default_rng(12)
    src = rng.integers(0, 256, 0x2000, dtype=np.uint8)
    hsrc = rng.integers(0, 256, 0x1000, dtype=np.uint8)
    ov = rng.integers(0, 256, 0x400, dtype=np.uint8)
    OV = OUT + 0x3000
    POOL, TABLE, SLOTS, SPOOL = IN + 0x1000, IN + 0x1400, IN + 0x1480, OUT + 0xE00
    table = np.array([5, 2, 7, 0], np.uint32)
    slots = rng.permutation(32)[:7].astype(np.uint32)
    paged = {"row_stride": 16, "block_log2": 2, "pool_blocks": 8}
    cmds = [
        copy(Engine.DMA_IN, IN, OUT, 0x300),
        copy(Engine.DMA_IN, IN + 0x400, 0x1004, 40, n1=6, s1=100, d1=44, dst_space=Space.SRAM),
        *signal_wait(1, Engine.DMA_IN, Engine.DMA_OUT),
        copy(Engine.DMA_OUT, 0x1004, 0x3000, 12, n1=3, n2=2, s1=44, d1=16, s2=132, d2=64,
             src_space=Space.SRAM, dst_space=Space.SRAM),
        copy(Engine.DMA_OUT, 0x3000, OUT + 0x400, 16, n1=8, s1=16, d1=32, src_space=Space.SRAM),
        copy(Engine.LINK, IN + 0x800, HOST_OUT, 0x60, n1=4, s1=0x80, d1=0x70,
             dst_space=Space.LINK),
        copy(Engine.LINK, HOST_IN, 0x5000, 0x300, src_space=Space.LINK, dst_space=Space.SRAM),
        copy(Engine.DMA_IN, HOST_IN + 0x400, OUT + 0x800, 20, n1=3, n2=3, s1=0x20, d1=0x18,
             s2=0x100, d2=0x50, src_space=Space.LINK),
        *signal_wait(2, Engine.LINK, Engine.DMA_OUT),
        copy(Engine.DMA_OUT, 0x5000, HOST_OUT + 0x400, 0x100, src_space=Space.SRAM,
             dst_space=Space.LINK),
        copy(Engine.DMA_OUT, 0x5000, 0x5010, 0x80, src_space=Space.SRAM, dst_space=Space.SRAM),
        copy(Engine.DMA_IN, OV, OV + 0x24, 0x100),                           # memmove upwards
        copy(Engine.DMA_IN, OV + 0x200, OV + 0x1F0, 0x40, n1=4, s1=0x30, d1=0x38),
        Command("DMA_RING", engine=Engine.DMA_IN, ring_space=Space.SRAM, ring_off=0x6000,
                lin_off=IN + 0xC00, to_ring=1, row_bytes=8, ring_stride=12, lin_stride=8,
                ring_rows=5, n=7, r0=3),
        Command("DMA_RING", engine=Engine.DMA_IN, ring_space=Space.SRAM, ring_off=0x6000,
                lin_off=OUT + 0xA00, row_bytes=12, ring_stride=12, lin_stride=16,
                ring_rows=5, n=5, r0=9),
        Command("DMA_RING", engine=Engine.LINK, ring_off=OUT + 0xB00, lin_space=Space.LINK,
                lin_off=HOST_IN + 0x800, to_ring=1, row_bytes=16, ring_stride=16,
                lin_stride=16, ring_rows=4, n=6, r0=2),
        Command("DMA_GATHER", engine=Engine.DMA_OUT, table_off=TABLE, pool_off=POOL,
                dst_off=OUT + 0xC00, row_bytes=12, dst_stride=12, n=13, t0=1, **paged),
        Command("DMA_SCATTER", engine=Engine.DMA_IN, slots_off=SLOTS, pool_off=SPOOL,
                src_space=Space.SRAM, src_off=0x1004, row_bytes=12, src_stride=12, n=6, i0=1,
                **paged),
        # commands that move no bytes have no extents: nothing is checked against windows
        copy(Engine.DMA_IN, PARAMS.dram_bytes + 0x1000, BUS.host_bytes + 0x1000, 0,
             dst_space=Space.LINK),
        copy(Engine.DMA_OUT, IN, 2 * PARAMS.sram_bytes, 16, n1=0, dst_space=Space.SRAM),
        Command("DMA_GATHER", engine=Engine.LINK, table_off=TABLE, pool_off=POOL,
                dst_off=PARAMS.dram_bytes, row_bytes=0, dst_stride=12, n=5, t0=2, **paged),
        Command("DMA_RING", engine=Engine.DMA_IN, ring_off=PARAMS.dram_bytes, lin_off=0,
                row_bytes=16, ring_stride=16, lin_stride=16, ring_rows=3, n=0),
        Command("SEM_WAIT", engine=Engine.DMA_IN, sem=10, value=0, consume=True),
        Command("SEM_SIGNAL", engine=Engine.COMPUTE, sem=9, amount=3),
        Command("SEM_WAIT", engine=Engine.LINK, sem=9, value=2, consume=True),
        Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=9, value=1),
    ]
    inputs = [(IN, src.tobytes()), (TABLE, table.tobytes()), (SLOTS, slots.tobytes()),
              (OV, ov.tobytes())]
    await run_both(dut, cmds, inputs, [(OUT, 0x1000), (OV, 0x400)],
                   host_inputs=[(HOST_IN, hsrc.tobytes())], host_outputs=[(HOST_OUT, 0x600)],
                   seed=12)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def compute_every_kind(dut):
    """MATMUL (fp32 C, accumulate with transposed operands, bf16 C, register dimensions),
    VECTOR (ROW, COL, SCALAR, IMM and TILE b, bf16 in and out, SELECT, in place, the
    microcoded EXP, RECIP and SILU, an empty tile), REDUCE (SUM, MAX of bf16, no columns) and MASK (causal, window,
    klen, q_shift; in place and not), all on inputs brought in by DMA."""
    rng = np.random.default_rng(13)
    blk = np.zeros(0x800, np.uint8)

    def put(off, values):
        raw = np.asarray(values).tobytes()
        blk[off:off + len(raw)] = np.frombuffer(raw, np.uint8)

    put(0x000, bf16(rng.uniform(-2, 2, (8, 8))))             # A 8x8
    put(0x100, bf16(rng.uniform(-2, 2, (8, 12))))            # B 8x12
    put(0x200, bf16(rng.uniform(-2, 2, (8, 8))))             # A2 stored K x M
    put(0x300, bf16(rng.uniform(-2, 2, (12, 8))))            # B2 stored N x K
    put(0x400, f32(rng.uniform(-4, 4, (8, 8))))              # X fp32
    put(0x500, f32(rng.uniform(-1, 1, 8)))                   # row vector
    put(0x520, f32(rng.uniform(-1, 1, 8)))                   # column vector
    put(0x540, f32([0.75]))                                  # scalar
    put(0x580, bf16(rng.uniform(-3, 3, (8, 8))))             # Xb bf16
    put(0x600, f32(rng.uniform(-8, 8, (8, 8))))              # scores
    put(0x700, np.array([0x7F800001, 0xFFC00001, 0x3F800000, 0x80000000] * 4, np.uint32))
    S = 0x8000   # where blk lands in SRAM
    A, B, A2, B2, X, ROWV, COLV, SCAL, XB, SC = (S + o for o in (
        0x000, 0x100, 0x200, 0x300, 0x400, 0x500, 0x520, 0x540, 0x580, 0x600))
    T = 0xA000   # results
    vec = {"rows": 8, "cols": 8, "lda": 8, "ldd": 8}
    cmds = [
        copy(Engine.DMA_IN, IN, S, len(blk), dst_space=Space.SRAM),
        *signal_wait(1, Engine.DMA_IN, Engine.COMPUTE),
        Command("MATMUL", a=A, lda=8, b=B, ldb=12, c=T, ldc=12, m_reg=3, m=4, n=12, k=8),
        Command("MATMUL", a=A2, lda=8, b=B2, ldb=8, c=T, ldc=12, a_trans=1, b_trans=1, acc=1,
                m=8, n=12, k=8),
        Command("MATMUL", a=A, lda=8, b=B, ldb=12, c=T + 0x200, ldc=16, m=8, n=12, k_reg=4,
                k=4, c_dtype=DType.BF16),
        Command("VECTOR", op=VectorOp.ADD, dst=T + 0x400, a=X, b=ROWV, b_mode=VBMode.ROW, **vec),
        Command("VECTOR", op=VectorOp.EXP, dst=T + 0x500, a=X, **vec),
        Command("VECTOR", op=VectorOp.MUL, dst=T + 0x600, a=XB, b_mode=VBMode.IMM,
                imm=int(f32([1.5])[0]), a_dtype=DType.BF16, d_dtype=DType.BF16, **vec),
        Command("VECTOR", op=VectorOp.CMP_LT, dst=T + 0x700, a=X, b=COLV, b_mode=VBMode.COL,
                **vec),
        Command("VECTOR", op=VectorOp.SELECT, dst=T + 0x800, a=X, b=SCAL,
                b_mode=VBMode.SCALAR, c=T + 0x700, **vec),
        Command("VECTOR", op=VectorOp.SILU, dst=T + 0x900, a=X, **vec),
        Command("VECTOR", op=VectorOp.RECIP, dst=T + 0xA00, a=X, rows_reg=5, rows=0, cols=8,
                lda=8, ldd=8),
        Command("VECTOR", op=VectorOp.ADD, dst=X, a=X, b=T + 0x400, ldb=8, b_mode=VBMode.TILE,
                **vec),                                                     # in place
        Command("VECTOR", op=VectorOp.F2I, dst=T + 0xB00, a=T + 0x500, **vec),
        Command("REDUCE", op=RedOp.SUM, dst=T + 0xC00, a=T + 0x500, lda=8, rows=8, cols=8),
        Command("REDUCE", op=RedOp.MAX, dst=T + 0xC40, a=XB, lda=8, a_dtype=DType.BF16,
                rows=8, cols_reg=5, cols=0),
        Command("REDUCE", op=RedOp.MAX, dst=T + 0xC80, a=XB, lda=8, rows=4, cols=0),
        Command("MATMUL", a=A, lda=8, b=B, ldb=12, c=S + 0x700, ldc=4, m=4, n=4, k=0,
                acc=1),                                     # K = 0: NaNs become canonical
        Command("VECTOR", op=VectorOp.EXP, dst=T + 0xC80, a=X, rows=0, cols=8, lda=8, ldd=8),
        Command("MASK", dst=T + 0xD00, a=SC, ld=8, causal=1, q_shift=1, rows=8, cols=8, q0=2,
                k0=0, klen=7, window=3),
        Command("MASK", dst=SC, a=SC, ld=8, causal=1, rows=8, cols=8, q0_reg=3, q0=0, k0=1,
                klen_reg=5, klen=0),                                        # in place
        *signal_wait(2, Engine.COMPUTE, Engine.DMA_OUT),
        copy(Engine.DMA_OUT, T, OUT, 0xE00, src_space=Space.SRAM),
    ]
    await run_both(dut, cmds, [(IN, blk.tobytes())], [(OUT, 0xE00)],
                   regs={3: 4, 4: 4, 5: 8}, seed=13)


# -- paged attention, sliding window ---------------------------------------------------------


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def paged_attention_step(dut):
    """One decode step of paged attention: the new tokens' K and V scattered into the KV pool
    through the slot mapping of a random vLLM block table (16-token blocks, 45 + 5 tokens),
    K and V gathered back into SRAM by gathers whose t0 and n come from run-time registers
    (the table at an unaligned address), then S = Q K^T, MASK (klen, causal, a GQA group of
    four query rows), softmax and O = P V; finally more tokens scattered through a random
    slot mapping. Pool, scores, output and SRAM compared."""
    rng = np.random.default_rng(20)
    dim, block, blocks, old, new = 8, 16, 12, 45, 5
    total = old + new
    used = -(-total // block)
    table = rng.permutation(blocks)[:used].astype(np.uint32)
    free = np.setdiff1d(np.arange(blocks), table)
    pool = bf16(rng.uniform(-1, 1, (blocks, block, 2, dim)))        # K | V per token
    newkv = bf16(rng.uniform(-1, 1, (new, 2, dim)))
    q = bf16(rng.uniform(-1, 1, (4, dim)))
    pos = np.arange(old, total)
    slots = (table[pos // block] * block + pos % block).astype(np.uint32)
    rslots = rng.choice(free * block + rng.integers(0, block, len(free)), 6,
                        replace=False).astype(np.uint32)
    POOL = OUT
    TABLE, SLOTS, RSLOTS, NEWKV, Q = IN + 0x2002, IN + 0x2100, IN + 0x2140, IN + 0x2200, IN + 0x2400
    SQ, SK, SV, SS, SP, SO = 0x0, 0x100, 0x800, 0x1000, 0x1800, 0x1C00
    kv = {"pool_off": POOL, "row_stride": 2 * 2 * dim, "block_log2": 4, "pool_blocks": blocks}
    ld = 52   # score columns: 50 keys and 2 masked by klen
    vec = {"rows": 4, "cols": ld, "lda": ld, "ldd": ld}
    cmds = [
        copy(Engine.DMA_IN, Q, SQ, q.nbytes, dst_space=Space.SRAM),
        Command("DMA_SCATTER", engine=Engine.DMA_IN, slots_off=SLOTS, src_off=NEWKV,
                row_bytes=4 * dim, src_stride=4 * dim, n_reg=13, n=3, **kv),
        Command("FENCE", engines=1 << Engine.DMA_IN),
        Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=TABLE, dst_space=Space.SRAM,
                dst_off=SK, row_bytes=2 * dim, dst_stride=2 * dim, t0_reg=10, t0=0,
                n_reg=11, n=7, **kv),
        Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=TABLE, dst_space=Space.SRAM,
                dst_off=SK + 20 * 2 * dim, row_bytes=2 * dim, dst_stride=2 * dim, t0_reg=10,
                t0=20, n_reg=12, n=0, **kv),
        Command("DMA_GATHER", engine=Engine.LINK, table_off=TABLE, dst_space=Space.SRAM,
                dst_off=SV, row_bytes=2 * dim, dst_stride=2 * dim, t0_reg=10, t0=0,
                n_reg=11, n=37, **{**kv, "pool_off": POOL + 2 * dim}),
        *signal_wait(1, Engine.DMA_IN, Engine.COMPUTE),
        *signal_wait(2, Engine.LINK, Engine.COMPUTE),
        Command("MATMUL", a=SQ, lda=dim, b=SK, ldb=dim, b_trans=1, c=SS, ldc=ld, m=4,
                n_reg=14, n=0, k=dim),
        Command("MASK", dst=SS, a=SS, ld=ld, causal=1, q_shift=2, rows=4, cols=ld,
                q0_reg=15, q0=0, k0=0, klen_reg=14, klen=0),
        Command("REDUCE", op=RedOp.MAX, dst=SO + 0x200, a=SS, lda=ld, rows=4, cols=ld),
        Command("VECTOR", op=VectorOp.SUB, dst=SS, a=SS, b=SO + 0x200, b_mode=VBMode.ROW, **vec),
        Command("VECTOR", op=VectorOp.EXP, dst=SS, a=SS, **vec),
        Command("REDUCE", op=RedOp.SUM, dst=SO + 0x220, a=SS, lda=ld, rows=4, cols=ld),
        Command("VECTOR", op=VectorOp.RECIP, dst=SO + 0x240, a=SO + 0x220, rows=1, cols=4,
                lda=4, ldd=4),
        Command("VECTOR", op=VectorOp.MUL, dst=SP, a=SS, b=SO + 0x240, b_mode=VBMode.ROW,
                d_dtype=DType.BF16, **vec),
        Command("MATMUL", a=SP, lda=ld, b=SV, ldb=dim, c=SO, ldc=dim, m=4, n=dim, k_reg=14,
                k=0),
        *signal_wait(3, Engine.COMPUTE, Engine.DMA_OUT),
        copy(Engine.DMA_OUT, SS, OUT + 0x2000, 4 * 4 * ld, src_space=Space.SRAM),
        copy(Engine.DMA_OUT, SO, OUT + 0x2400, 4 * 4 * dim, src_space=Space.SRAM),
        Command("DMA_SCATTER", engine=Engine.DMA_OUT, slots_off=RSLOTS, src_space=Space.SRAM,
                src_off=0xC000, row_bytes=4 * dim, src_stride=4 * dim, i0_reg=16, i0=1, n=4,
                **kv),
    ]
    inputs = [(POOL, pool.tobytes()), (TABLE, table.tobytes()), (SLOTS, slots.tobytes()),
              (RSLOTS, rslots.tobytes()), (NEWKV, newkv.tobytes()), (Q, q.tobytes())]
    await run_both(dut, cmds, inputs, [(POOL, pool.nbytes), (OUT + 0x2000, 0x500)],
                   regs={10: 0, 11: 13, 12: 30, 13: 2, 14: total, 15: total - 1, 16: 1},
                   seed=20)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def sliding_window_ring(dut):
    """A sliding window kept with modulo writes: five decode steps (a BRANCH loop), each
    writing 4 new rows into a 6-row ring in SRAM at r0 = R[20] (a run-time register that
    starts at a host-chosen position and keeps growing past the ring) and reading the whole
    window back oldest first; then one DMA_RING in DRAM that wraps twice within a command,
    with r0 = R + a large immediate."""
    rng = np.random.default_rng(30)
    rows = rng.integers(0, 256, (24, 16), dtype=np.uint8)
    ring = {"ring_space": Space.SRAM, "ring_off": 0x4000, "row_bytes": 16, "ring_stride": 16,
                "lin_stride": 16, "ring_rows": 6}
    cmds = [
        Command("REG_SET", rd=21, imm=IN),
        Command("REG_SET", rd=23, imm=OUT),
        Command("REG_SET", rd=24, imm=0),
        Command("REG_SET", rd=25, imm=5),
        Command("DMA_RING", engine=Engine.DMA_IN, lin_reg=21, to_ring=1, n_reg=22, n=3,
                r0_reg=20, r0=0, **ring),
        Command("DMA_RING", engine=Engine.DMA_IN, lin_reg=23, n=6, r0_reg=20, r0=4, **ring),
        reg_op(RegOp.ADD, 20, 20, imm=4),
        reg_op(RegOp.ADD, 21, 21, imm=64),
        reg_op(RegOp.ADD, 23, 23, imm=96),
        reg_op(RegOp.ADD, 24, 24, imm=1),
        Command("BRANCH", cond=BranchCond.LTU, ra=24, rb=25, target=-6),
        Command("DMA_RING", engine=Engine.DMA_OUT, ring_off=OUT + 0x800, lin_off=IN,
                to_ring=1, row_bytes=20, ring_stride=24, lin_stride=16, ring_rows=5, n=13,
                r0_reg=22, r0=1000),
    ]
    await run_both(dut, cmds, [(IN, rows.tobytes())], [(OUT, 0x900)], regs={20: 3, 22: 1},
                   seed=30)


# -- error paths ----------------------------------------------------------------------------
# Each stream does some good work first (compared), then one faulting command, then a copy
# on the same engine that must never run; the faulting command's own destination and the
# copy's hold a known pattern that must come through intact. run_both then resets the queue
# and makes a second launch (which copies the SRAM out) that must complete.

GUARD = OUT + 0x8000          #: the never-run copy's destination (DRAM, patterned)
DEST = OUT + 0x9000           #: a faulting command's DRAM destination (patterned)
SDEST = 0x9000                #: a faulting command's SRAM destination (the SRAM image)
RW = regmap.WINDOW_READ | regmap.WINDOW_WRITE


async def fault_case(bench, bad, code, *, engine=Engine.DMA_IN, regs=None, inputs=(),
                     intact=(), intact_sram=(), seed=40, **kw):
    """``bad`` (a command or a list ending in the faulting one) between good work and a
    never-run copy on ``engine``; ``code`` expected at the faulting command."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, 0x400, dtype=np.uint8).tobytes()
    guard = rng.integers(0, 256, 0x100, dtype=np.uint8).tobytes()
    dest = rng.integers(0, 256, 0x200, dtype=np.uint8).tobytes()
    bad = list(bad) if isinstance(bad, (list, tuple)) else [bad]
    good = [copy(Engine.DMA_IN, IN, OUT, 0x100),
            copy(Engine.DMA_OUT, IN + 0x100, 0x100, 0x80, dst_space=Space.SRAM),
            Command("REG_SET", rd=30, imm=0x5A5A),
            Command("FENCE")]
    if engine == Engine.COMPUTE:   # the never-run command: a MATMUL over the SRAM image
        after = [Command("MATMUL", a=0x4000, lda=8, b=0x4100, ldb=8, c=SDEST + 0x400, ldc=8,
                         m=8, n=8, k=8)]
        intact_sram = [*intact_sram, (SDEST + 0x400, 0x100)]
    else:
        after = [copy(engine, IN, GUARD, 0x100)]
    cmds = good + bad + after
    await run_both(bench.dut, cmds, [(IN, src), (GUARD, guard), (DEST, dest), *inputs],
                   [(OUT, 0x100)], regs=regs, expect=code,
                   at=kw.pop("at", len(good) + len(bad) - 1),
                   intact=[(GUARD, 0x100), (DEST, 0x200), *intact],
                   intact_sram=[*([(0x180, 0x80)] if "recovery" not in kw else []),
                                *intact_sram], seed=seed, bench=bench, **kw)


def patched(index, byte, value):
    """A patch of byte ``byte`` of ``cmds[4 + index]`` (after fault_case's good commands)."""
    return [(4 + index, byte, value)]


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_bad_opcode(dut):
    """An unknown opcode (0x0F, patched into the encoded stream): BAD_OPCODE."""
    bench = Bench(dut)
    await fault_case(bench, Command("NOP"), ErrorCode.BAD_OPCODE, patches=patched(0, 0, 0x0F))


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_reserved_bits(dut):
    """Bit 255 of a REG_SET set: RESERVED_BITS, and the register keeps its value."""
    bench = Bench(dut)
    await fault_case(bench, [Command("REG_SET", rd=29, imm=1)], ErrorCode.RESERVED_BITS,
                     patches=patched(0, 31, 0x80))


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_bad_field(dut):
    """A DMA_COPY patched to run on the COMPUTE engine, and one with space 3: BAD_FIELD."""
    bench = Bench(dut)
    bad = copy(Engine.DMA_IN, IN, DEST, 0x40)
    raw = bad.encode()
    await fault_case(bench, bad, ErrorCode.BAD_FIELD, patches=patched(0, 1, raw[1] & ~3 | 2))
    await fault_case(bench, bad, ErrorCode.BAD_FIELD, patches=patched(0, 6, raw[6] | 0b110))


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_dma_window(dut):
    """Restricted windows (granted before the doorbell on both): DRAM window 0 cut to
    [0, 2 MiB) and a read-only window 4 above it. A write into the read-only window, a read
    straddling the two windows (each readable, neither holds it all), a host-memory write
    outside window 1: DMA_WINDOW, the destination intact."""
    bench = Bench(dut)
    ro = OUT + 0x80000   # 0x200000
    grants = [(0, 0, ro, RW), (4, ro, 0x10000, regmap.WINDOW_READ)]
    pattern = bytes(range(256))
    await fault_case(bench, copy(Engine.DMA_IN, IN, ro + 0x80, 0x40), ErrorCode.DMA_WINDOW,
                     grants=grants, inputs=[(ro, pattern)], intact=[(ro, 0x100)])
    await fault_case(bench, copy(Engine.DMA_OUT, ro - 0x40, DEST, 0x80), ErrorCode.DMA_WINDOW,
                     engine=Engine.DMA_OUT, grants=grants, inputs=[(ro, pattern)])
    await fault_case(bench, copy(Engine.LINK, IN, BUS.host_bytes + 0x1000, 0x40,
                               dst_space=Space.LINK), ErrorCode.DMA_WINDOW, engine=Engine.LINK)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_block_table(dut):
    """A block-table entry naming a block past the pool (gather into SRAM), and a slot
    mapping entry past the pool after good ones (scatter): BLOCK_TABLE, nothing written."""
    bench = Bench(dut)
    table = np.array([3, 1, 8, 0], np.uint32)       # 8 = pool_blocks
    slots = np.array([5, 17, 40, 2], np.uint32)     # 40 >> 2 = 10 >= 8
    paged = {"pool_off": IN, "row_stride": 16, "block_log2": 2, "pool_blocks": 8, "row_bytes": 16}
    await fault_case(bench, Command("DMA_GATHER", engine=Engine.DMA_IN, table_off=IN + 0x300,
                                  dst_space=Space.SRAM, dst_off=SDEST, dst_stride=16, n=14,
                                  t0=1, **paged),
                     ErrorCode.BLOCK_TABLE, inputs=[(IN + 0x300, table.tobytes())],
                     intact_sram=[(SDEST, 0x100)])
    await fault_case(bench, Command("DMA_SCATTER", engine=Engine.DMA_IN, slots_off=IN + 0x340,
                                  src_off=IN, src_stride=16, n=4,
                                  **{**paged, "pool_off": DEST}),
                     ErrorCode.BLOCK_TABLE, inputs=[(IN + 0x340, slots.tobytes())])


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_sram_bounds(dut):
    """A DMA into SRAM running past its end, and a MATMUL whose C does: SRAM_BOUNDS."""
    bench = Bench(dut)
    end = PARAMS.sram_bytes
    await fault_case(bench, copy(Engine.DMA_IN, IN, end - 0x40, 0x80, dst_space=Space.SRAM),
                     ErrorCode.SRAM_BOUNDS, intact_sram=[(end - 0x40, 0x40)])
    await fault_case(bench, Command("MATMUL", a=0x4000, lda=8, b=0x4100, ldb=8, c=end - 0x80,
                                  ldc=8, m=8, n=8, k=8),
                     ErrorCode.SRAM_BOUNDS, engine=Engine.COMPUTE,
                     intact_sram=[(end - 0x80, 0x80)])


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_alignment(dut):
    """A DMA source 2 bytes off, a MATMUL with an odd A address, a completion record off its
    16 bytes: ALIGNMENT."""
    bench = Bench(dut)
    await fault_case(bench, copy(Engine.DMA_IN, IN + 2, DEST, 0x40), ErrorCode.ALIGNMENT)
    await fault_case(bench, Command("MATMUL", a=0x4001, lda=8, b=0x4100, ldb=8, c=SDEST, ldc=8,
                                  m=8, n=8, k=8),
                     ErrorCode.ALIGNMENT, engine=Engine.COMPUTE, intact_sram=[(SDEST, 0x100)])
    await fault_case(bench, Command("COMPLETE", dst_off=DEST + 8, seq=9), ErrorCode.ALIGNMENT)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_bad_shape(dut):
    """A register operand too large for its field (DMA length R[9] + 16 >= 2**20, MATMUL m):
    BAD_SHAPE in the command processor; accumulate into a bf16 C (the tile) and a ring of
    zero rows (the DMA engine): BAD_SHAPE."""
    bench = Bench(dut)
    await fault_case(bench, copy(Engine.DMA_IN, IN, DEST, 16, len_reg=9), ErrorCode.BAD_SHAPE,
                     regs={9: (1 << 20) - 8})
    await fault_case(bench, Command("MATMUL", a=0x4000, lda=8, b=0x4100, ldb=8, c=SDEST, ldc=8,
                                  m_reg=9, m=1, n=8, k=8),
                     ErrorCode.BAD_SHAPE, engine=Engine.COMPUTE, regs={9: 0xFFFF})
    await fault_case(bench, Command("MATMUL", a=0x4000, lda=8, b=0x4100, ldb=8, c=SDEST, ldc=8,
                                  m=8, n=8, k=8, acc=1, c_dtype=DType.BF16),
                     ErrorCode.BAD_SHAPE, engine=Engine.COMPUTE, intact_sram=[(SDEST, 0x80)])
    await fault_case(bench, Command("DMA_RING", engine=Engine.DMA_IN, ring_off=DEST, lin_off=IN,
                                  to_ring=1, row_bytes=16, ring_stride=16, lin_stride=16,
                                  ring_rows=0, n=4),
                     ErrorCode.BAD_SHAPE)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_operand_overlap(dut):
    """A VECTOR whose result overlaps its operand other than in place: OPERAND_OVERLAP."""
    bench = Bench(dut)
    await fault_case(bench, Command("VECTOR", op=VectorOp.ADD, dst=SDEST + 4, a=SDEST, lda=8,
                                  ldd=8, b_mode=VBMode.IMM, rows=4, cols=8),
                     ErrorCode.OPERAND_OVERLAP, engine=Engine.COMPUTE,
                     intact_sram=[(SDEST, 0x100)])


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_semaphore_deadlock(dut):
    """A SEM_WAIT nobody signals: the watchdog (the WATCHDOG register, shortened to 5000
    cycles for the test) turns it into SEM_TIMEOUT; the compute queue behind it never runs."""
    bench = Bench(dut)
    await fault_case(bench, Command("SEM_WAIT", engine=Engine.COMPUTE, sem=5, value=1),
                     ErrorCode.SEM_TIMEOUT, engine=Engine.COMPUTE, watchdog=5000)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_call_depth(dut):
    """A CALL inside the launched (called) stream: CALL_DEPTH."""
    bench = Bench(dut)
    await fault_case(bench, Command("CALL", addr_off=STREAM), ErrorCode.CALL_DEPTH)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_bad_branch(dut):
    """BRANCH targets past the end of the stream and before its start: BAD_BRANCH (even
    when the branch would not be taken)."""
    bench = Bench(dut)
    await fault_case(bench, Command("BRANCH", cond=BranchCond.EQ, target=100),
                     ErrorCode.BAD_BRANCH)
    await fault_case(bench, Command("BRANCH", cond=BranchCond.NE, target=-7),
                     ErrorCode.BAD_BRANCH)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def error_bad_stream_header(dut):
    """The launched stream's header (reached through the launch's CALL) with a bad magic, an
    unknown major version, more commands than DRAM holds: BAD_MAGIC, BAD_VERSION,
    TRUNCATED_STREAM at the CALL in the ring; nothing of the stream runs."""
    bench = Bench(dut)
    ring_call = PARAMS.dram_bytes - RING_BYTES
    for byte, value, code in ((0, ord("X"), ErrorCode.BAD_MAGIC),
                              (4, 9, ErrorCode.BAD_VERSION),
                              (11, 0x7F, ErrorCode.TRUNCATED_STREAM)):
        await fault_case(bench, Command("NOP"), code, patches=[("header", byte, value)],
                         at=None, at_addr=ring_call, intact=[(OUT, 0x100)],
                         recovery=(sram_load(), [], []))   # the stream never loaded SRAM


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def queue_reset_then_good_launch(dut):
    """After a fault, CONTROL = 1 and a second launch doing real work (DMA, MATMUL, DMA)
    completes on both, with the same results."""
    bench = Bench(dut)
    await fault_case(bench, copy(Engine.DMA_IN, IN, PARAMS.dram_bytes - 0x20, 0x40),
                     ErrorCode.DMA_WINDOW, recovery=matmul_round_trip())
