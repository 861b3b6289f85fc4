"""cocotb testbench for ``test_dram.py``: the DRAM model behind the AXI arbiter.

:class:`TB` owns the clock, the reset, one :class:`AxiMaster` per arbiter port, the backdoor
(:class:`~npusim.cosim.dram.DramBackdoor`) and the reference image. All masters' channels are
driven by one loop (:meth:`TB.run`): drive after the falling edge, sample handshakes in the
read-only phase, one Python wake-up pair per cycle for the whole bus. Every run has a cycle
budget and a simulated-time timeout.

Configuration comes from ``DRAM_TB_CONFIG`` (JSON: masters, addr_width, id_width, data_bytes,
dram_bytes, latency, outstanding), the seed from ``DRAM_TB_SEED``; measurements go to the
JSON file ``DRAM_TB_REPORT``.
"""

import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, with_timeout

from npusim.cosim.dram import DramBackdoor
from npusim.hw.axi import BOUNDARY_BYTES, AxiParams, AxiSignature, Resp


CONFIG = json.loads(os.environ["DRAM_TB_CONFIG"])
SEED = int(os.environ.get("DRAM_TB_SEED", "1"))
REPORT = os.environ.get("DRAM_TB_REPORT")
PERIOD_NS = 10

MiB = 1 << 20


def report(**values):
    """Add measurements to the JSON report."""
    if not REPORT:
        return
    measured = json.loads(Path(REPORT).read_text()) if os.path.exists(REPORT) else {}
    measured.update(values)
    with open(REPORT, "w") as file:
        json.dump(measured, file, indent=2)


# -- Pause generators ------------------------------------------------------------------------

def never():
    while True:
        yield False


def random_pauses(rng, busy):
    """Pauses with a probability that changes every few dozen cycles (0 up to ``busy``)."""
    while True:
        probability = rng.choice([0.0, busy / 3, busy])
        for _ in range(rng.randint(4, 48)):
            yield rng.random() < probability


# -- Payloads --------------------------------------------------------------------------------

class Fields:
    """One stream's payload layout (a ``data.StructLayout``): fields <-> the packed int."""

    def __init__(self, layout):
        self.fields = {name: (f.offset, f.width) for name, f in layout}

    def pack(self, **values):
        word = 0
        for name, value in values.items():
            offset, width = self.fields[name]
            assert 0 <= value < 1 << width, f"{name}={value} does not fit {width} bits"
            word |= value << offset
        return word

    def unpack(self, word):
        return {name: (word >> offset) & ((1 << width) - 1)
                for name, (offset, width) in self.fields.items()}


PARAMS = AxiParams(addr_width=CONFIG["addr_width"], data_bytes=CONFIG["data_bytes"],
                   id_width=CONFIG["id_width"])
_SIGNATURE = AxiSignature(PARAMS)
LAYOUT = {name: Fields(member.signature.members["payload"].shape)
          for name, member in _SIGNATURE.members.items()}
BEAT = PARAMS.data_bytes
FULL_STRB = (1 << BEAT) - 1


# -- Channels --------------------------------------------------------------------------------

class Source:
    """A channel the master drives (AR, AW, W): shows queued payloads, each until taken."""

    def __init__(self, dut, name, pauses):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.pauses = pauses
        self.queue = deque()
        self.current = None
        self.showing = False
        self.taken = []  # cycle of each handshake

    def drive(self):
        if self.current is None and self.queue and not next(self.pauses):
            self.current = self.queue.popleft()
            self.payload.value = self.current
        if (self.current is not None) != self.showing:
            self.showing = self.current is not None
            self.valid.value = int(self.showing)

    def sample(self, cycle):
        if self.current is not None and self.ready.value:
            self.taken.append(cycle)
            self.current = None

    def idle(self):
        return self.current is None and not self.queue


class Sink:
    """A channel the master receives (R, B): ``ready`` per its pauses, every beat recorded."""

    def __init__(self, dut, name, pauses):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.pauses = pauses
        self.ready_now = None
        self.beats = []  # (cycle, payload)

    def drive(self):
        ready = not next(self.pauses)
        if ready != self.ready_now:
            self.ready_now = ready
            self.ready.value = int(ready)

    def sample(self, cycle):
        if self.ready_now and self.valid.value:
            self.beats.append((cycle, self.payload.value.to_unsigned()))


# -- One master ------------------------------------------------------------------------------

@dataclass
class Burst:
    addr: int
    beats: int
    id: int
    data: bytes = b""                         # writes: the bytes, beats * BEAT
    strobes: list = field(default_factory=list)  # writes: one strb per beat


class AxiMaster:
    """The bursts one arbiter port issues and the responses it gets, in order."""

    def __init__(self, dut, index, pauses):
        prefix = f"masters__{index}__"
        self.index = index
        self.ar = Source(dut, prefix + "ar", pauses("ar"))
        self.r = Sink(dut, prefix + "r", pauses("r"))
        self.aw = Source(dut, prefix + "aw", pauses("aw"))
        self.w = Source(dut, prefix + "w", pauses("w"))
        self.b = Sink(dut, prefix + "b", pauses("b"))
        self.channels = [self.ar, self.r, self.aw, self.w, self.b]
        self.reads, self.writes = [], []

    def read(self, addr, beats, ident=0):
        self.reads.append(Burst(addr, beats, ident))
        self.ar.queue.append(LAYOUT["ar"].pack(addr=addr, len=beats - 1, id=ident))

    def write(self, addr, data, strobes=None, ident=0):
        beats = len(data) // BEAT
        strobes = strobes or [FULL_STRB] * beats
        self.writes.append(Burst(addr, beats, ident, data, strobes))
        self.aw.queue.append(LAYOUT["aw"].pack(addr=addr, len=beats - 1, id=ident))
        for beat in range(beats):
            word = int.from_bytes(data[beat * BEAT:(beat + 1) * BEAT], "little")
            self.w.queue.append(LAYOUT["w"].pack(data=word, strb=strobes[beat],
                                                 last=int(beat == beats - 1)))

    def done(self):
        return (len(self.r.beats) == sum(burst.beats for burst in self.reads)
                and len(self.b.beats) == len(self.writes))

    def read_bursts(self):
        """The R beats split by the issued bursts: [(burst, [(cycle, fields), ...])]."""
        beats = iter(self.r.beats)
        return [(burst, [(cycle, LAYOUT["r"].unpack(word))
                         for cycle, word in (next(beats) for _ in range(burst.beats))])
                for burst in self.reads]

    def check_reads(self, image, resp=Resp.OKAY):
        """Every read burst came back whole, in order, with its ID, ``last`` on its final
        beat, ``resp`` and the bytes of ``image`` (zeros if refused)."""
        for burst, beats in self.read_bursts():
            where = f"master {self.index}, read of {burst.beats} beats at {burst.addr:#x}"
            assert [f["id"] for _, f in beats] == [burst.id] * burst.beats, f"{where}: IDs"
            assert [f["last"] for _, f in beats] == [0] * (burst.beats - 1) + [1], \
                f"{where}: last"
            assert [f["resp"] for _, f in beats] == [resp] * burst.beats, f"{where}: resp"
            got = b"".join(f["data"].to_bytes(BEAT, "little") for _, f in beats)
            expected = (bytes(image[burst.addr:burst.addr + burst.beats * BEAT])
                        if resp == Resp.OKAY else bytes(burst.beats * BEAT))
            assert got == expected, f"{where}: data differs"

    def check_writes(self, resp=Resp.OKAY):
        for burst, (_, word) in zip(self.writes, self.b.beats, strict=True):
            b = LAYOUT["b"].unpack(word)
            assert (b["id"], b["resp"]) == (burst.id, resp), \
                f"master {self.index}: B of the write at {burst.addr:#x}: {b}"


def apply_write(image, burst):
    """What a write burst does to the reference ``image`` (a bytearray), strobes honoured."""
    for beat, strb in enumerate(burst.strobes):
        for byte in range(BEAT):
            if strb >> byte & 1:
                offset = beat * BEAT + byte
                image[burst.addr + offset] = burst.data[offset]


# -- The testbench ---------------------------------------------------------------------------

class TB:
    def __init__(self, dut, *, busy=0.0, seed=SEED):
        self.dut = dut
        self.rng = random.Random(seed)
        self.size = CONFIG["dram_bytes"]
        self.latency = CONFIG["latency"]
        self.outstanding = CONFIG["outstanding"]

        def pauses(_channel):
            return random_pauses(random.Random(self.rng.random()), busy) if busy else never()
        self.masters = [AxiMaster(dut, index, pauses) for index in range(CONFIG["masters"])]
        self.channels = [channel for master in self.masters for channel in master.channels]
        self.backdoor = DramBackdoor(dut, data_bytes=BEAT)
        self.cycle = 0

    async def reset(self):
        dut = self.dut
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
        dut.rst.value = 1
        for name in ("load", "dump", "addr", "words"):
            getattr(dut, f"backdoor__{name}").value = 0
        for master in self.masters:
            for channel in master.channels:
                port = channel.valid if isinstance(channel, Source) else channel.ready
                port.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0

    async def run(self, max_cycles):
        """Drive every master until all its bursts are answered; at most ``max_cycles``."""
        await with_timeout(self._run(max_cycles), (max_cycles + 10) * PERIOD_NS, "ns")

    async def _run(self, max_cycles):
        for _ in range(max_cycles):
            await FallingEdge(self.dut.clk)
            for channel in self.channels:
                channel.drive()
            await ReadOnly()
            for channel in self.channels:
                channel.sample(self.cycle)
            self.cycle += 1
            if all(master.done() for master in self.masters):
                break
        else:
            progress = [(len(m.r.beats), len(m.b.beats)) for m in self.masters]
            raise AssertionError(f"traffic not done in {max_cycles} cycles: (R beats, B) "
                                 f"per master {progress}")
        await FallingEdge(self.dut.clk)
        for master in self.masters:
            for channel in master.channels:
                if isinstance(channel, Source):
                    assert channel.idle()
                    channel.valid.value = 0
                    channel.showing = False

    async def random_image(self):
        """Load a random image of the whole DRAM; returns it (a bytearray)."""
        image = bytearray(self.rng.randbytes(self.size))
        await self.backdoor.load(0, image)
        return image

    def random_burst(self, low, high, max_beats=32):
        """A random legal burst inside ``[low, high)``: (addr, beats)."""
        beats = self.rng.randint(1, max_beats)
        while True:
            addr = self.rng.randrange(low, high - beats * BEAT + 1, BEAT)
            if addr % BOUNDARY_BYTES + beats * BEAT <= BOUNDARY_BYTES:
                return addr, beats

    def random_id(self):
        return self.rng.randrange(1 << PARAMS.id_width)


# -- Tests -----------------------------------------------------------------------------------

@cocotb.test()
async def backdoor_load_dump_and_axi_read(dut):
    """A backdoor image reads back identically through the backdoor and by AXI bursts; the
    backdoor handles unaligned ranges."""
    tb = TB(dut)
    await tb.reset()
    image = bytearray(tb.rng.randbytes(tb.size))
    started = time.perf_counter()
    await tb.backdoor.load(0, image)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    dumped = await tb.backdoor.dump(0, tb.size)
    dump_s = time.perf_counter() - started
    assert dumped == image, "backdoor dump differs from the loaded image"
    report(backdoor_load_mib_s=round(tb.size / MiB / load_s, 1),
           backdoor_dump_mib_s=round(tb.size / MiB / dump_s, 1))

    # Unaligned: the bytes around the range keep their values.
    for _ in range(4):
        addr, length = tb.rng.randrange(tb.size - 200), tb.rng.randrange(1, 200)
        patch = tb.rng.randbytes(length)
        await tb.backdoor.load(addr, patch)
        image[addr:addr + length] = patch
        assert await tb.backdoor.dump(addr - addr % 64, 320) == \
            bytes(image[addr - addr % 64:addr - addr % 64 + 320])

    # AXI: a contiguous 64 KiB in full 4 KiB bursts from master 0, random bursts from the rest.
    for addr in range(0, 64 * 1024, BOUNDARY_BYTES):
        tb.masters[0].read(addr, BOUNDARY_BYTES // BEAT)
    for master in tb.masters[1:]:
        for _ in range(40):
            master.read(*tb.random_burst(0, tb.size), tb.random_id())
    await tb.run(20_000)
    for master in tb.masters:
        master.check_reads(image)


@cocotb.test()
async def axi_writes_with_strobes(dut):
    """Writes with random strobes from every master (each in its own third of the DRAM), then
    a backdoor dump equals the reference image."""
    tb = TB(dut)
    await tb.reset()
    image = await tb.random_image()
    region = tb.size // len(tb.masters) // BOUNDARY_BYTES * BOUNDARY_BYTES
    for index, master in enumerate(tb.masters):
        for _ in range(40):
            addr, beats = tb.random_burst(index * region, (index + 1) * region)
            strobes = [tb.rng.choice([0, FULL_STRB, tb.rng.getrandbits(BEAT)])
                       for _ in range(beats)]
            master.write(addr, tb.rng.randbytes(beats * BEAT), strobes, tb.random_id())
    await tb.run(20_000)
    for master in tb.masters:
        master.check_writes()
        for burst in master.writes:
            apply_write(image, burst)
    assert await tb.backdoor.dump(0, tb.size) == image, "DRAM differs from the reference"


@cocotb.test()
async def random_traffic_with_pauses(dut):
    """Reads and writes from all masters at once, random pauses on every channel: every R
    beat and B response reaches the master that asked, with its ID and the right data."""
    tb = TB(dut, busy=0.6)
    await tb.reset()
    image = await tb.random_image()
    shared = tb.size // 4  # the first quarter is read by everyone, written by no one
    region = (tb.size - shared) // len(tb.masters) // BOUNDARY_BYTES * BOUNDARY_BYTES
    for index, master in enumerate(tb.masters):
        low = shared + index * region
        for _ in range(30):
            if tb.rng.random() < 0.5:
                master.read(*tb.random_burst(0, shared), tb.random_id())
            else:
                addr, beats = tb.random_burst(low, low + region)
                master.write(addr, tb.rng.randbytes(beats * BEAT), None, tb.random_id())
    await tb.run(30_000)
    for master in tb.masters:
        master.check_reads(image)
        master.check_writes()
        for burst in master.writes:
            apply_write(image, burst)
    assert await tb.backdoor.dump(0, tb.size) == image, "DRAM differs from the reference"


@cocotb.test()
async def latency_and_bandwidth(dut):
    """The first R beat comes exactly ``latency`` cycles after its AR, B ``latency`` cycles
    after the last W beat; with enough bursts in flight R and W carry a beat every cycle."""
    tb = TB(dut)
    await tb.reset()
    image = await tb.random_image()
    master = tb.masters[0]

    master.read(0x2000, 4)
    master.write(0x3000, bytes(2 * BEAT))
    await tb.run(1000)
    read_latency = master.r.beats[0][0] - master.ar.taken[0]
    write_latency = master.b.beats[0][0] - master.w.taken[-1]
    assert read_latency == tb.latency, f"read latency {read_latency}"
    assert write_latency == tb.latency, f"write response latency {write_latency}"
    image[0x3000:0x3000 + 2 * BEAT] = bytes(2 * BEAT)

    # One master streaming 16-beat bursts: outstanding * 16 beats in flight cover the latency.
    tb = TB(dut)
    master = tb.masters[0]
    bursts, beats = 256, 16
    for number in range(bursts):
        master.read(number * beats * BEAT % tb.size, beats)
    await tb.run(bursts * beats + 10 * tb.latency)
    cycles = [cycle for cycle, _ in master.r.beats]
    single = len(cycles) / (cycles[-1] - cycles[0] + 1)
    master.check_reads(image)

    # Every master streaming at once: the port is shared, the sum is still a beat per cycle.
    tb = TB(dut)
    for index, master in enumerate(tb.masters):
        for number in range(64):
            master.read((index * 64 + number) * beats * BEAT % tb.size, beats)
    await tb.run(len(tb.masters) * 64 * beats + 10 * tb.latency)
    cycles = sorted(cycle for master in tb.masters for cycle, _ in master.r.beats)
    shared = len(cycles) / (cycles[-1] - cycles[0] + 1)
    for master in tb.masters:
        master.check_reads(image)

    # Writes: W beats back to back across bursts and masters.
    tb = TB(dut)
    for index, master in enumerate(tb.masters):
        for number in range(32):
            addr = (index * 32 + number) * beats * BEAT
            master.write(addr, tb.rng.randbytes(beats * BEAT))
    await tb.run(len(tb.masters) * 32 * beats + 10 * tb.latency)
    cycles = sorted(cycle for master in tb.masters for cycle in master.w.taken)
    writes = len(cycles) / (cycles[-1] - cycles[0] + 1)
    for master in tb.masters:
        master.check_writes()

    dut._log.info("read latency %d cycles, write response latency %d; bandwidth (beats per "
                  "cycle): one master reading %.3f, three reading %.3f, three writing %.3f",
                  read_latency, write_latency, single, shared, writes)
    report(read_latency_cycles=read_latency, write_response_latency_cycles=write_latency,
           read_bandwidth_ratio=round(single, 4), shared_read_bandwidth_ratio=round(shared, 4),
           write_bandwidth_ratio=round(writes, 4))
    assert single >= 0.95 and shared >= 0.95 and writes >= 0.95


@cocotb.test()
async def error_responses(dut):
    """Unmapped addresses answer DECERR, misaligned or 4 KiB-crossing bursts SLVERR; refused
    reads return every beat with zero data, refused writes change nothing; the model works
    normally afterwards."""
    tb = TB(dut)
    await tb.reset()
    image = await tb.random_image()
    unmapped = tb.size  # the port is wider than the DRAM
    last_page = (1 << PARAMS.addr_width) - BOUNDARY_BYTES
    cases = [  # (master, addr, beats, response)
        (0, unmapped, 4, Resp.DECERR),
        (0, last_page, 128, Resp.DECERR),
        (1, 0x1000 + BEAT // 2, 2, Resp.SLVERR),          # misaligned
        (1, 0x2000 - 2 * BEAT, 4, Resp.SLVERR),            # crosses 4 KiB
        (2, tb.size - BEAT, 2, Resp.SLVERR),               # crosses 4 KiB and the end
    ]
    for index, addr, beats, resp in cases:
        tb.masters[index].read(addr, beats, ident=1)
        tb.masters[index].write(addr, tb.rng.randbytes(beats * BEAT), ident=2)
    await tb.run(5000)
    by_master = {index: [case for case in cases if case[0] == index]
                 for index in range(len(tb.masters))}
    for index, master in enumerate(tb.masters):
        for (burst, beats), (_, _, _, resp) in zip(master.read_bursts(), by_master[index],
                                                   strict=True):
            assert [f["resp"] for _, f in beats] == [resp] * burst.beats, \
                f"read at {burst.addr:#x}: resp"
            assert all(f["data"] == 0 for _, f in beats), f"read at {burst.addr:#x}: data"
            assert [f["last"] for _, f in beats][-1] == 1
        for (_, word), (_, _, _, resp) in zip(master.b.beats, by_master[index], strict=True):
            assert LAYOUT["b"].unpack(word) == {"resp": resp, "id": 2}
    assert await tb.backdoor.dump(0, tb.size) == image, "a refused write changed the DRAM"

    tb = TB(dut)
    tb.masters[0].read(0, 8)
    await tb.run(1000)
    tb.masters[0].check_reads(image)
