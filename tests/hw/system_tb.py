"""cocotb testbench for ``test_system.py``: the multi-device system over the real link, against
the functional model.

The host driver (``cosim/system.py``) enumerates the devices through the root complex and
the switch (configuration TLPs, BAR sizing, switch windows), then each test runs one stream
per device on the model (``System``) and on the RTL from the same images and register writes
(:func:`model_launch`; on the RTL the writes are memory TLPs to the devices' BAR0), waits for
every device's interrupt and compares bit for bit: the DRAM regions of every device, host
memory, every device's run-time registers and semaphores (read over the link), the
completion records and the interrupts per device. Configuration: ``SYSTEM_TB_PARAMS``
(JSON ``HwParams`` fields), ``SYSTEM_TB_HOST_BYTES``, ``SYSTEM_TB_DEVICES``.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, FallingEdge
from npusim.cosim.system import SystemHost, model_launch
from npusim.firmware import collectives as col
from npusim.firmware.collectives import Buffer
from npusim.sw import regmap
from npusim.hw.link.port import LINK_STATS
from npusim.hw.link.tlp import Kind, Tlp
from npusim.sw.fm.system import BusMap, System
from npusim.sw.isa import Command, encode_stream
from npusim.sw.isa.enums import Engine, ErrorCode, Space
from npusim.sw.isa.table import NUM_REGS, NUM_SEMAPHORES
from npusim.sw.params import HwParams
from npusim.sw.regmap import DeviceState
from memory_compare import first_difference

PARAMS = HwParams(**json.loads(os.environ["SYSTEM_TB_PARAMS"]))
BUS = BusMap(host_bytes=int(os.environ["SYSTEM_TB_HOST_BYTES"]))
N = int(os.environ["SYSTEM_TB_DEVICES"])
R = regmap.OFFSET

STREAM = 0x8000            #: each device's stream
IN, OUT = 0x140000, 0x180000   #: DRAM inputs and outputs
HOST_IN, HOST_OUT = 0x10000, 0x20000
RECV = 0x200000            #: the collectives' receive slots (DRAM)
WORK, STAGE = 0x0000, 0xC000   #: and their SRAM work area and staging slots
TIMEOUT = 400_000


def copy(engine, src, dst, length, src_space=Space.DRAM, dst_space=Space.DRAM, **fields):
    return Command("DMA_COPY", engine=engine, src_space=src_space, src_off=src,
                   dst_space=dst_space, dst_off=dst, len=length, n1=1, n2=1, **fields)


class Bench:
    """One enumerated system; every test starts from here."""

    def __init__(self, dut):
        self.dut = dut
        self.host = SystemHost(dut, PARAMS, BUS, N)

    async def start(self):
        await self.host.reset()
        return await self.host.enumerate()


async def run_system(bench, streams, *, inputs=(), outputs=(), host_inputs=(),
                     host_outputs=(), regs=None):
    """Run ``streams`` ({device: commands}) on the model and the RTL and compare (once per
    reset: the model's rings start empty).

    ``inputs``/``outputs``: [(device, addr, bytes or length)] of DRAM loaded / compared (outputs
    zeroed first); ``host_inputs``/``host_outputs`` the same in host memory without a device;
    ``regs``: {device: {register: value}} run-time registers."""
    host, dut = bench.host, bench.dut
    system = System(N, PARAMS, bus=BUS)
    images = {d: [] for d in range(N)}
    for d, addr, n in outputs:
        images[d].append((addr, bytes(n)))
    for d, addr, data in inputs:
        images[d].append((addr, bytes(data)))
    host_mem = [(a, bytes(n)) for a, n in host_outputs] + [(a, bytes(x)) for a, x in host_inputs]
    for d, regions in images.items():
        for addr, data in regions:
            system.devices[d].dram.write(addr, np.frombuffer(data, np.uint8))
    for addr, data in host_mem:
        system.host.write(addr, np.frombuffer(data, np.uint8))
    launches = {d: model_launch(system, d, encode_stream(cmds), STREAM,
                                regs=(regs or {}).get(d), extra_regions=images[d])
                for d, cmds in streams.items()}
    system.run(50_000_000)
    system.check()

    for addr, data in host_mem:
        await host.host.load(addr, data)
    for d, launch in launches.items():
        await host.start(d, launch)
    irqs_before = {d: host.irqs(d) for d in launches}
    try:
        waited = await host.wait({d: irqs_before[d] + 1 for d in launches}, TIMEOUT)
    except TimeoutError as e:
        seen = {d: hex(await host.read(d, R["STATUS"])) for d in launches}
        raise AssertionError(f"stuck: {e}; STATUS {seen}; the model ran "
                             f"{[system.devices[d].last_activity for d in launches]}") from None
    dut._log.info(f"streams on {sorted(launches)}: ~{waited} cycles "
                  f"(model {max(system.devices[d].last_activity for d in launches)})")
    for d in launches:
        dev = system.devices[d]
        state, code = await settled_status(host, d)
        assert (state, ErrorCode(code)) == (dev.state, dev.error_code), \
            (d, state.name, ErrorCode(code).name, dev.error_message)
        assert host.irqs(d) == irqs_before[d] + 1
        record = await host.host.dump(BUS.completion(d), 16)
        want = system.host.read(BUS.completion(d), 16).tobytes()
        assert record[:8] == want[:8], (d, record.hex(), want.hex())
        await compare_state(host, system, d)
    for d, addr, n in outputs:
        n = n if isinstance(n, int) else len(n)
        first_difference(f"device {d} DRAM", await host.dram[d].dump(addr, n),
                          system.devices[d].dram.read(addr, n).tobytes(), addr)
    for addr, n in host_outputs:
        first_difference("host memory", await host.host.dump(addr, n),
                          system.host.read(addr, n).tobytes(), addr)
    return system


async def settled_status(host, d, polls=50):
    """STATUS once device ``d`` has settled (its MSI leaves a few cycles before the command
    processor retires the COMPLETE)."""
    for _ in range(polls):
        state, code = await host.status(d)
        if state != DeviceState.RUNNING:
            break
    return state, code


async def compare_state(host, system, d):
    """Run-time registers and semaphores of device ``d``, RTL (over the link) against the
    model."""
    dev = system.devices[d]
    for kind, count in (("RUNTIME_REG", NUM_REGS), ("SEM_VALUE", NUM_SEMAPHORES)):
        for i in range(count):
            off = R[kind] + 8 * i
            got, want = await host.read(d, off), dev.mmio_read(off)
            assert got == want, f"device {d}: {kind}[{i}] RTL {got:#x} model {want:#x}"


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def enumeration_and_registers(dut):
    """The host finds every device behind the switch, sizes its BARs, places them and reads
    and writes its registers through the link."""
    bench = Bench(dut)
    sizes = await bench.start()
    assert sizes == [{"BAR0": regmap.MMIO_BYTES, "BAR2": PARAMS.dram_bytes}] * N, sizes
    host = bench.host
    for d in range(N):
        await host.write(d, R["WATCHDOG"], 1000 + d)
    for d in range(N):
        assert await host.read(d, R["WATCHDOG"]) == 1000 + d
        state, code = await host.status(d)
        assert (state, code) == (DeviceState.IDLE, 0)


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def peer_to_peer_and_remote_semaphores(dut):
    """Every device writes into its right neighbour's DRAM over the link, then signals the
    neighbour's semaphore; each waits for its left neighbour's signal, reads the neighbour's
    data back over the link, and also reads from and writes to host memory."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **ring_exchange())


def ring_exchange(size=0x1800, seed=5):
    """Every device writes into its right neighbour's DRAM, signals it, waits for its left
    neighbour's signal, reads the neighbour's data back, and reads from and writes to host
    memory: (streams, inputs, outputs, regs, host_inputs, host_outputs)."""
    rng = np.random.default_rng(seed)
    streams, inputs, outputs, regs = {}, [], [], {}
    for d in range(N):
        right, left = (d + 1) % N, (d - 1) % N
        inputs.append((d, IN, rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
        outputs += [(d, OUT, 3 * size), (d, OUT + 4 * size, 0x400)]
        regs[d] = {20: BUS.dram(right) + OUT, 21: BUS.mmio(right), 22: BUS.dram(left) + IN,
                   23: HOST_IN + 0x400 * d, 24: HOST_OUT + 0x400 * d}
        streams[d] = [
            copy(Engine.LINK, IN, 0, size, dst_space=Space.LINK, dst_reg=20),
            Command("SEM_SIGNAL", engine=Engine.LINK, sem=5, amount=1, remote=True,
                    peer_reg=21),
            Command("SEM_WAIT", engine=Engine.LINK, sem=5, value=1, consume=True),
            copy(Engine.LINK, 0, OUT + size, size, src_space=Space.LINK, src_reg=22),
            copy(Engine.DMA_IN, 0, OUT + 2 * size, 0x400, src_space=Space.LINK, src_reg=23),
            copy(Engine.DMA_OUT, IN, 0, 0x400, dst_space=Space.LINK, dst_reg=24),
            Command("FENCE"),
        ]
    host_in = rng.integers(0, 256, 0x400 * N, dtype=np.uint8).tobytes()
    return dict(streams=streams, inputs=inputs, outputs=outputs, regs=regs,
                host_inputs=[(HOST_IN, host_in)], host_outputs=[(HOST_OUT, 0x400 * N)])


def ring_exchange_part(commands, size=0x1800):
    """:func:`ring_exchange` keeping only the commands at these indices (and the FENCE)."""
    kw = ring_exchange(size=size)
    kw["streams"] = {d: [c for i, c in enumerate(cmds) if i in commands]
                     for d, cmds in kw["streams"].items()}
    return kw


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def peer_writes_and_remote_semaphores(dut):
    """Each device writes 6 KiB into its right neighbour's DRAM (MWr through the switch,
    device to device), then signals the neighbour's semaphore over the link and waits for its
    left neighbour's signal: the data is there when the wait passes."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **ring_exchange_part({0, 1, 2, 6}))


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def peer_reads_both_ways_with_host_traffic(dut):
    """Each device reads its left neighbour's DRAM (both directions at once: MRd and CplD
    through the switch) while it reads host memory."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **ring_exchange_part({3, 4, 6}))


def link_totals(dut):
    """Sums of every link end's error counters, and the flits corrupted on all links."""
    totals = {}
    for name, field in LINK_STATS:
        totals[name] = sum(
            getattr(dut, f"link_stats__{k}").value.to_unsigned() >> field.offset
            & ((1 << field.width) - 1) for k in range(2 * (N + 1)))
    totals["flips"] = sum(getattr(dut, f"flips__{k}").value.to_unsigned() for k in range(N + 1))
    return totals



#: Chance per flit and direction of a flipped bit, in 1/65536: about 0.6 %, so about a fifth
#: of the 35-flit max-payload TLPs fail their LCRC on each link they cross (go-back-N resends
#: them and everything after). At 2.3 % (1500) over the two links of a peer read through the
#: switch, with four devices busy, a read's completion could take more than the 50,000-cycle
#: completion timeout: the link is then too poor for PCIe to run at all, not what this test
#: is about.
FLIP_RATE = 400

@cocotb.test(timeout_time=200, timeout_unit="ms")
async def bit_flips_are_replayed(dut):
    """The ring exchange with bits flipping on every link: the data-link layers replay what
    the LCRC rejects, and every byte still arrives exactly as on the model."""
    bench = Bench(dut)
    await bench.start()
    before = link_totals(dut)
    for k in range(N + 1):
        getattr(dut, f"flip_rate__{k}").value = FLIP_RATE
    await run_system(bench, **ring_exchange(seed=11))
    for k in range(N + 1):
        getattr(dut, f"flip_rate__{k}").value = 0
    after = link_totals(dut)
    seen = {name: after[name] - before[name] for name in after}
    dut._log.info(f"with bit flips: {seen}")
    assert seen["flips"] > 0 and seen["replays"] > 0 and seen["bad_tlps"] > 0, seen


def collective(kind, count, *, in_place=False, root=0, seed=1):
    """Every device runs collective ``kind`` on its own random fp32 vector of ``count``
    elements in DRAM (``IN``; into ``OUT``, or in place): keyword arguments of
    :func:`run_system` that compare the results, the receive slots and the semaphores."""
    src = Buffer.dram(IN)
    dst = src if in_place else Buffer.dram(OUT)
    if kind == "broadcast":
        plan = col.plan_broadcast(PARAMS, N, count, src, dst, root=root, recv=RECV)
    else:
        planner = col.plan_allreduce if kind == "allreduce" else col.plan_reduce
        plan = planner(PARAMS, N, count, src, dst, recv=RECV, stage=STAGE, work=WORK,
                       **({} if kind == "allreduce" else {"root": root}))
    kernel = {"allreduce": col.ring_allreduce, "broadcast": col.broadcast,
              "reduce": col.reduce}[kind]
    rng = np.random.default_rng(seed)
    nbytes = 4 * count
    inputs = [(d, IN, rng.standard_normal(count).astype(np.float32).tobytes())
              for d in range(N)]
    # compared after the run (the inputs are loaded over the zeros of their region)
    outputs = [(d, addr, n) for d in range(N)
               for addr, n in ((RECV, plan.recv_slots * plan.slot_bytes), (IN, nbytes),
                               *(() if in_place else ((OUT, nbytes),)))]
    streams = {d: kernel(plan, d) for d in range(N)}
    regs = {d: col.ring_registers(plan, d, BUS) for d in range(N)}
    return dict(streams=streams, inputs=inputs, outputs=outputs, regs=regs)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def allreduce_out_of_place(dut):
    """Ring all-reduce (reduce-scatter + all-gather over peer writes and remote semaphores)
    of 4099 fp32 elements: every device's result, receive slots and semaphores equal the
    model's bit for bit."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **collective("allreduce", 4099))


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def allreduce_in_place(dut):
    """The same, in place, with an element count that leaves the chunks uneven."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **collective("allreduce", 1001, in_place=True, seed=2))


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def broadcast_from_the_last_device(dut):
    """Broadcast from device N-1 along the chain, out of place."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **collective("broadcast", 3000, root=N - 1, seed=3))


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def reduce_to_device_0(dut):
    """Reduce to device 0 along the chain 1 -> ... -> 0, out of place."""
    bench = Bench(dut)
    await bench.start()
    await run_system(bench, **collective("reduce", 2500, seed=4))


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def link_down_is_a_completion_timeout(dut):
    """Device 1's link goes down: device 0's read of device 1's DRAM fails with LINK_TIMEOUT
    at the same command as on the model, its posted writes to device 1 are lost without an
    error, and device 0's own DRAM outside them is untouched."""
    bench = Bench(dut)
    await bench.start()
    host = bench.host
    system = System(N, PARAMS, bus=BUS)
    system.devices[1].link_up = False
    data = bytes(range(256)) * 4
    cmds = [copy(Engine.LINK, IN, 0x100, 0x400, dst_space=Space.LINK, dst_reg=20),
            Command("SEM_SIGNAL", engine=Engine.LINK, sem=3, amount=1, remote=True,
                    peer_reg=21),
            copy(Engine.LINK, 0, OUT, 0x400, src_space=Space.LINK, src_reg=22),
            copy(Engine.DMA_IN, IN, OUT + 0x1000, 0x400)]
    regs = {20: BUS.dram(1), 21: BUS.mmio(1), 22: BUS.dram(1) + 0x100}
    system.devices[0].dram.write(IN, np.frombuffer(data, np.uint8))
    launch = model_launch(system, 0, encode_stream(cmds), STREAM, regs=regs,
                          extra_regions=[(IN, data), (OUT, bytes(0x2000))])
    system.run(50_000_000)
    dev = system.devices[0]
    assert dev.error_code == ErrorCode.LINK_TIMEOUT, dev.error_message
    assert system.lost_writes.count == 2

    dut.links_up.value = (1 << (N + 1)) - 1 - (1 << 1)
    await host.start(0, launch)
    await host.wait({}, TIMEOUT + 2 * PARAMS.link_completion_timeout)   # until it stops
    state, code = await settled_status(host, 0)
    assert (state, ErrorCode(code)) == (DeviceState.FAULT, ErrorCode.LINK_TIMEOUT)
    assert await host.read(0, R["ERROR_OFFSET"]) == dev.error_offset
    first_difference("device 0 DRAM", await host.dram[0].dump(OUT, 0x2000),
                      dev.dram.read(OUT, 0x2000).tobytes(), OUT)
    assert dut.stopped.value.to_unsigned() & 1
    dut.links_up.value = (1 << (N + 1)) - 1


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def malformed_tlps_are_dropped_and_counted(dut):
    """Malformed TLPs sent from the root complex's side over a good link -- an unknown type, a
    length field that disagrees with the payload, a payload over the maximum, a write across
    a 4 KiB boundary -- are dropped and counted by the switch, and none of them touches device
    0's DRAM; a well-formed write sent the same way afterwards lands."""
    bench = Bench(dut)
    await bench.start()
    host = bench.host
    base = BUS.dram(0) + OUT
    image = await host.dram[0].dump(OUT, 0x2000)

    def mwr(addr, payload):
        return bytearray(Tlp(Kind.MWR64, addr=addr, payload=payload, last_be=0xF).encode())

    payload = bytes(range(1, 65))
    unknown = mwr(base, payload)
    unknown[0] = 0b011 << 5 | 0b11011           # fmt 4DW with data, a reserved type
    short = mwr(base, payload)
    short[3] += 4                               # length says 4 dwords more than it carries
    oversize = mwr(base, bytes(PARAMS.link_max_payload + 4))
    straddle = mwr(base + 4096 - 32, payload)   # crosses a 4 KiB boundary
    malformed = dut.malformed.value.to_unsigned()
    for name, raw in (("unknown type", unknown), ("short", short), ("oversize", oversize),
                      ("straddle", straddle)):
        counted = dut.malformed.value.to_unsigned()
        await host.inject(bytes(raw))
        await ClockCycles(dut.clk, 500)
        await FallingEdge(dut.clk)
        assert dut.malformed.value.to_unsigned() == counted + 1, \
            f"{name}: not counted as malformed; link ends {link_totals(dut)}"
    assert dut.malformed.value.to_unsigned() - malformed == 4
    first_difference("device 0 DRAM", await host.dram[0].dump(OUT, 0x2000), image, OUT)

    await host.inject(bytes(mwr(base + 0x100, payload)))
    await ClockCycles(dut.clk, 2000)
    await FallingEdge(dut.clk)
    assert await host.dram[0].dump(OUT + 0x100, len(payload)) == payload
    assert dut.malformed.value.to_unsigned() - malformed == 4
    assert await host.status(0) == (DeviceState.IDLE, 0)
