"""The command processor against the functional model (Amaranth simulator).

The testbench plays DRAM (an AXI slave with latency), the link (host memory and the MSI page)
and the four engines (it takes what the command processor queues and reports faults). The
functional model runs the same stream from the same DRAM image; the run-time registers, the
commands each engine receives (resolved), the completion record, the MSIs and the status
registers must agree.
"""

from collections import deque

import pytest
from amaranth.sim import Simulator

from npusim.hw.device.cp import CommandProcessor
from npusim.hw.device.windows import WindowLayout
from npusim.sw import regmap
from npusim.sw.fm.system import System
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import BranchCond, Engine, ErrorCode, RegOp, Space
from npusim.sw.params import HwParams

PARAMS = HwParams(dram_bytes=1 << 20)
STREAM = 0x1000
R = regmap.OFFSET


class _Recorder(deque):
    """An engine queue of the model that also logs what was queued."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def append(self, entry):
        cmd, resolved, addr = entry
        self.log.append((cmd.name, dict(resolved), addr))
        super().append(entry)


def model_run(cmds, regs=None, setup=None):
    s = System(1, PARAMS)
    d = s.devices[0]
    logs = {e: [] for e in Engine}
    for e in Engine:
        d.queues[e] = _Recorder(logs[e])
    if setup:
        setup(s)
    s.launch(0, encode_stream(cmds), STREAM, regs=regs)
    ring = (d.ring_base, d.ring_size, d.tail)
    s.run(10_000_000)
    return s, logs, ring


class Harness:
    """Drives a CommandProcessor in the Amaranth simulator."""

    def __init__(self, dut, dram, latency=6):
        self.dut, self.dram, self.latency = dut, dram, latency
        self.host = {}          # link writes: address -> bytes
        self.msis = []
        self.dispatched = {e: [] for e in Engine}
        self.cycle = 0

    async def mmio(self, ctx, addr, value=None):
        d = self.dut
        ctx.set(d.mmio.payload, {"addr": addr, "write": value is not None, "data": value or 0})
        ctx.set(d.mmio.valid, 1)
        ctx.set(d.mmio_rdata.ready, 1)
        for _ in range(20):
            await ctx.tick()
            if ctx.get(d.mmio.ready):
                break
        ctx.set(d.mmio.valid, 0)
        if value is not None:
            return None
        for _ in range(20):
            if ctx.get(d.mmio_rdata.valid):
                return ctx.get(d.mmio_rdata.payload)
            await ctx.tick()
        raise TimeoutError("no MMIO read data")

    async def dram_slave(self, ctx):
        """Single-beat reads with a fixed latency, several outstanding; writes with strobes."""
        d, beat = self.dut.dram, PARAMS.dram_bytes_per_cycle
        pending = deque()
        ctx.set(d.ar.ready, 1)
        ctx.set(d.aw.ready, 1)
        ctx.set(d.w.ready, 1)
        b_pending = deque()
        r_valid = b_valid = False
        async for clk_edge in ctx.tick().sample(d.ar.valid, d.ar.payload, d.r.ready,
                                                d.aw.valid, d.aw.payload, d.w.valid,
                                                d.w.payload, d.b.ready):
            _, _, ar_valid, ar, r_ready, aw_valid, aw, w_valid, w, b_ready = clk_edge
            self.cycle += 1
            if pending and r_valid and r_ready:
                pending.popleft()
            if ar_valid:
                assert ar.len == 0
                pending.append((self.cycle + self.latency, ar.addr))
            if aw_valid and w_valid:
                data = w.data.to_bytes(beat, "little")
                for i in range(beat):
                    if w.strb >> i & 1:
                        self.dram[aw.addr + i] = data[i]
                b_pending.append(self.cycle + self.latency)
            if b_pending and b_valid and b_ready:
                b_pending.popleft()
            if pending and pending[0][0] <= self.cycle:
                addr = pending[0][1]
                ok = addr + beat <= len(self.dram)
                data = bytes(self.dram[addr:addr + beat]) if ok else bytes(beat)
                ctx.set(d.r.payload, {"data": int.from_bytes(data, "little"), "resp": 0 if ok
                                      else 3, "last": 1, "id": 0})
                r_valid = True
            else:
                r_valid = False
            ctx.set(d.r.valid, r_valid)
            b_valid = bool(b_pending and b_pending[0] <= self.cycle)
            ctx.set(d.b.valid, b_valid)

    async def link_slave(self, ctx):
        """Posted writes to bus addresses: host memory, MSIs at the MSI page."""
        d, beat = self.dut.link, PARAMS.dram_bytes_per_cycle
        ctx.set(d.aw.ready, 1)
        ctx.set(d.w.ready, 1)
        b_due = deque()
        b_valid = False
        async for clk_edge in ctx.tick().sample(d.aw.valid, d.aw.payload, d.w.valid,
                                                d.w.payload, d.b.ready):
            _, _, aw_valid, aw, w_valid, w, b_ready = clk_edge
            if b_due and b_valid and b_ready:
                b_due.popleft()
            if aw_valid and w_valid:
                data = w.data.to_bytes(beat, "little")
                chosen = bytes(data[i] for i in range(beat) if w.strb >> i & 1)
                first = next(i for i in range(beat) if w.strb >> i & 1)
                addr = aw.addr + first
                if 0xFEE0_0000 <= addr < 0xFEF0_0000:
                    self.msis.append(int.from_bytes(chosen, "little"))
                else:
                    self.host[addr] = chosen
                b_due.append(0)
            b_valid = bool(b_due)
            ctx.set(d.b.valid, b_valid)
            ctx.set(d.b.payload.resp, 0)

    async def engines(self, ctx):
        """Every queue's head is taken at once and logged; the engines are always idle."""
        d = self.dut
        ctx.set(d.engine_idle, 0b1111)
        for e in Engine:
            ctx.set(d.queue(e).ready, 1)
        ports = [x for e in Engine for x in (d.queue(e).valid, d.queue(e).payload)]
        async for _, _, *sampled in ctx.tick().sample(*ports):
            for e in Engine:
                valid, entry = sampled[2 * e], sampled[2 * e + 1]
                if valid:
                    self.dispatched[e].append(entry)


def rtl_run(cmds, ring, dram_image, windows=None, regs=None, max_cycles=4000):
    dut = CommandProcessor(PARAMS, window_layout=WindowLayout)
    h = Harness(dut, dram_image)
    result = {}

    async def bench(ctx):
        ring_base, ring_size, tail = ring
        for i, (base, size, flags) in (windows or {}).items():
            off = regmap.WINDOW + regmap.WINDOW_STRIDE * i
            for k, v in enumerate((base, size, flags)):
                await h.mmio(ctx, off + 8 * k, v)
        for i, v in (regs or {}).items():
            await h.mmio(ctx, regmap.RUNTIME_REG + 8 * i, v)
        await h.mmio(ctx, R["MSI_ADDR"], 0xFEE0_0000)
        await h.mmio(ctx, R["RING_BASE"], ring_base)
        await h.mmio(ctx, R["RING_SIZE"], ring_size)
        await h.mmio(ctx, R["RING_TAIL"], tail)
        for _ in range(max_cycles // 50):
            await ctx.tick().repeat(50)
            status = await h.mmio(ctx, R["STATUS"])
            if status & 3 in (regmap.DeviceState.IDLE, regmap.DeviceState.FAULT,
                              regmap.DeviceState.HALTED) and (h.msis or status & 3 != 0):
                break
        else:
            raise TimeoutError(f"command processor still running after {max_cycles} cycles")
        result["status"] = status
        result["error_offset"] = await h.mmio(ctx, R["ERROR_OFFSET"])
        result["head"] = await h.mmio(ctx, R["RING_HEAD"])
        result["regs"] = [await h.mmio(ctx, regmap.RUNTIME_REG + 8 * i) for i in range(32)]

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    for process in (h.dram_slave, h.link_slave, h.engines):
        sim.add_testbench(process, background=True)
    sim.run()
    return h, result


def dram_image(s, ring):
    """The model's DRAM as the RTL starts from: the launched stream and the ring."""
    d = s.devices[0]
    image = bytearray(PARAMS.dram_bytes)
    image[STREAM:STREAM + 0x4000] = d.dram.read(STREAM, 0x4000).tobytes()
    image[ring[0]:ring[0] + ring[1]] = d.dram.read(ring[0], ring[1]).tobytes()
    return image


def model_windows(d):
    return {i: tuple(w) for i, w in enumerate(d.windows)}


def compare(cmds, regs=None, setup=None):
    # the model's DRAM before it runs: launch, copy, then run
    s, logs, ring = model_run(cmds, regs, setup)
    image = dram_image(s, ring)
    d = s.devices[0]
    h, result = rtl_run(cmds, ring, image, regs=regs, windows=model_windows(d))
    assert result["status"] >> 8 == int(d.error_code), (result, d.error_message)
    assert result["status"] & 3 == int(d.state)
    if d.error_code != ErrorCode.OK:
        assert result["error_offset"] == d.error_offset
    assert result["regs"] == d.regs
    assert result["head"] == d.head
    for e in Engine:
        got = h.dispatched[e]
        want = logs[e]
        assert len(got) == len(want), (e, len(got), len(want))
        for entry, (name, fields, addr) in zip(got, want):
            assert entry.addr == addr
            args = entry.cmd.args[name.lower()]
            for key, value in fields.items():
                if key.endswith("_reg") or key.endswith("_off"):
                    continue
                v = getattr(args, key)
                assert int(getattr(v, "value", v)) == int(value), (name, key)
    return s, h, result


def test_registers_branches_and_dispatch():
    """REG_SET/REG_OP, a counted loop (BRANCH in the called stream), engine commands with
    register operands on every engine, FENCE, and the launch's COMPLETE with its MSI."""
    cmds = [
        Command("REG_SET", rd=1, imm=3),
        Command("REG_SET", rd=2, imm=0x2000),
        Command("REG_OP", op=RegOp.MUL, rd=3, rs1=1, rs2=0, imm=7),
        # loop body: a DMA and a MATMUL whose operands come from registers
        Command("DMA_COPY", engine=Engine.DMA_IN, src_reg=2, src_off=0x40, dst_space=Space.SRAM,
                dst_off=0x100, len=64, n1_reg=1, n1=1, n2=1, src_stride1=64, dst_stride1=64),
        Command("MATMUL", a=0, lda=8, b=0x200, ldb=8, c=0x400, ldc=8, m=8, n=8, k_reg=1, k=5),
        Command("REG_OP", op=RegOp.SUB, rd=1, rs1=1, rs2=0, imm=1),
        Command("REG_OP", op=RegOp.ADD, rd=2, rs1=2, rs2=0, imm=0x100),
        Command("BRANCH", cond=BranchCond.NE, ra=1, rb=0, target=-5),
        Command("SEM_SIGNAL", engine=Engine.LINK, sem=3, amount=2),
        Command("SEM_WAIT", engine=Engine.DMA_OUT, sem=3, value=2, consume=True),
        Command("FENCE", engines=0),
        Command("REG_OP", op=RegOp.SHL, rd=4, rs1=3, rs2=1, imm=4),
    ]
    s, h, _ = compare(cmds)
    assert h.msis == [0]                        # the launch's COMPLETE, vector = device 0
    record = h.host[s.bus.completion(0)]
    assert record[:8] == s.host.read(s.bus.completion(0), 8).tobytes()   # seq, status
    assert int.from_bytes(record[4:8], "little") == 1   # RUNNING, no error


@pytest.mark.parametrize("bad,code", [
    (Command("BRANCH", cond=BranchCond.EQ, target=100), ErrorCode.BAD_BRANCH),
    (Command("CALL", addr_off=STREAM), ErrorCode.CALL_DEPTH),
    (Command("COMPLETE", dst_space=Space.SRAM, dst_off=0), ErrorCode.BAD_FIELD),
    (Command("COMPLETE", dst_space=Space.DRAM, dst_off=0x108), ErrorCode.ALIGNMENT),
    (Command("MATMUL", m_reg=5, m=1), ErrorCode.BAD_SHAPE),
])
def test_faults(bad, code):
    """The fault's code and command address, the registers at that point, nothing queued
    after it."""
    cmds = [Command("REG_SET", rd=5, imm=0xFFFF), Command("REG_SET", rd=6, imm=1), bad,
            Command("REG_SET", rd=6, imm=2)]
    s, _, _ = compare(cmds)
    assert s.devices[0].error_code == code


def test_bad_opcode_and_reserved_bits_in_the_stream():
    cmds = [Command("NOP"), Command("REG_SET", rd=1, imm=9), Command("NOP")]
    s, logs, ring = model_run(cmds)
    image = dram_image(s, ring)
    for patch_at, value, code in ((STREAM + 32 + 64, 0xEE, ErrorCode.BAD_OPCODE),
                                  (STREAM + 32 + 64 + 31, 0x80, ErrorCode.RESERVED_BITS)):
        bad = bytearray(image)
        bad[patch_at] = value
        stream = bytes(bad[STREAM:STREAM + 32 + 3 * 32])
        s2 = System(1, PARAMS)
        s2.launch(0, stream, STREAM)
        ring2 = (s2.devices[0].ring_base, s2.devices[0].ring_size, s2.devices[0].tail)
        s2.run(1_000_000)
        h, result = rtl_run([], ring2, bad, windows=model_windows(s2.devices[0]))
        assert result["status"] >> 8 == code == s2.devices[0].error_code
        assert result["error_offset"] == s2.devices[0].error_offset
        assert result["regs"][1] == 9
