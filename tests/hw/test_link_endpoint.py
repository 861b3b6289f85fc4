# amaranth: UnusedElaboratable=no
"""Tests of the whole endpoint (``hw/link/endpoint.py``) in Amaranth's simulator: requester
and completer behind one TLP stream each way, as the data-link layer sees them.

The testbench is the requester's and the completer's put together (``test_requester.py``,
``test_completer.py``): a Python AXI master on ``axi``, a Python memory on ``mem``, a Python
register block on ``mmio``, and one Python link partner that enumerates the endpoint with
configuration requests, then sends memory requests to its BARs while it answers the
device's own reads -- completions and requests interleaved on ``tlp_rx``, pauses on every
channel. Everything is checked against the same Python references.
"""

import random

import pytest
from amaranth.sim import Simulator

from npusim.hw.axi import AxiParams, Resp
from npusim.hw.link.endpoint import Endpoint
from npusim.hw.link.tlp import Kind, Tlp, make_id
from npusim.sw.fm.system import BusMap
from npusim.sw.params import DEFAULT

from test_completer import (BAR2, HOST, MemoryModel, MmioModel, Reference, check_against,
                            check_enumeration, enumeration, random_traffic)
from test_requester import (AxiMaster, LinkPartner, check_write_tlps, expected_r, params_for,
                            random_reads, random_write, random_writes)

WIDTHS = [8, 16]
BEAT = DEFAULT.dram_bytes_per_cycle
BUS = 1
ID = make_id(BUS)


class Bench:
    """The endpoint with all its models; ``host`` requests go after the enumeration."""

    def __init__(self, width, seed, busy, *, writes=(), reads=(), host=(), enumerate=True,
                 gated=True, **extra):
        self.params = params_for(width, **extra)
        self.width = width
        self.dut = dut = Endpoint(self.params)
        self.rng = rng = random.Random(seed)
        self.steps = enumeration(bus=BUS) if enumerate else []
        self.master = AxiMaster(dut.axi, rng, busy, writes=writes, reads=reads,
                                gate=self.enumerated if gated else None)
        self.partner = LinkPartner(dut.tlp_tx, dut.tlp_rx, width, rng, busy,
                                   mps=self.params.link_max_payload)
        self.memory = MemoryModel(dut.mem, rng, busy)
        self.mmio = MmioModel(dut, rng, busy)
        for request, _ in self.steps:
            self.partner.request(request.encode())
        for t in host:
            self.partner.request(t.encode())

    def completions(self):
        """The completer's completions (to the host's requests)."""
        return [t for t in self.partner.tlps(Kind.CPL, Kind.CPLD) if t.requester_id == HOST]

    def enumerated(self):
        return len(self.completions()) >= len(self.steps)

    def run(self, *, cycles, until, dl_up=1):
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        self.master.add(sim)
        self.partner.add(sim)
        sim.add_testbench(self.memory.run, background=True)
        sim.add_testbench(self.mmio.run, background=True)
        counters = {}

        async def bench(ctx):
            ctx.set(self.dut.dl_up, dl_up)
            for _ in range(cycles):
                await ctx.tick()
                if until():
                    for _ in range(60):
                        await ctx.tick()
                    for name in ("timeouts", "dropped_completions", "discarded",
                                 "dropped_writes", "unsupported", "mem_errors", "dropped", "id",
                                 "bus_master", "memory_enable"):
                        counters[name] = ctx.get(getattr(self.dut, name))
                    return
            raise AssertionError(f"not done after {cycles} cycles")
        sim.add_testbench(bench)
        sim.run()
        return counters


@pytest.mark.parametrize("width", WIDTHS)
def test_both_directions_at_once(width):
    """Enumeration, then the device's DMA (writes, MSIs, reads of host memory) and the host's
    accesses to the device's BARs at the same time."""
    rng = random.Random(width)
    p = params_for(width)
    writes = random_writes(rng, 16)
    reads = random_reads(rng, 12, [0x0040_0000, 0x1_0000_0000, BusMap().dram(2)])
    host, ref = random_traffic(rng, 40, p.link_max_payload)
    b = Bench(width, width, 0.3, writes=writes, reads=reads, host=host)
    counters = b.run(cycles=40_000, until=lambda: b.master.done()
                     and len(b.completions()) >= len(b.steps) + len(ref.completions))
    check_write_tlps(b.partner, writes, p.link_max_payload, rid=ID)
    assert b.master.b == [(w.id, Resp.OKAY) for w in writes]
    assert b.master.r == expected_r(reads, b.partner.policy, p.link_max_read_request)
    assert all(t.requester_id == ID for t in b.partner.tlps(Kind.MRD32, Kind.MRD64))
    rest = check_enumeration(b.steps, b.completions(), bus=BUS)
    check_against(ref, None, b.memory, b.mmio, counters, rest)
    assert counters["id"] == ID and counters["bus_master"] and counters["memory_enable"]
    assert (counters["timeouts"], counters["dropped_completions"], counters["discarded"],
            counters["dropped"]) == (0, 0, 0, 0)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_bus_master_no_requests(width):
    """Before bus mastering is enabled (and while the link is down) the device's requests
    fail with SLVERR and nothing leaves; the completer still answers configuration."""
    rng = random.Random(3)
    writes = [random_write(rng, 0x1000 * k, 2, k) for k in range(3)]
    reads = [(0x8000, 16, 1), (0x9000, 1, 2)]
    b = Bench(width, 3, 0.2, writes=writes, reads=reads, enumerate=False, gated=False)
    counters = b.run(cycles=3000, until=b.master.done)
    assert b.partner.log == []
    assert b.master.b == [(k, Resp.SLVERR) for k in range(3)]
    assert [r[2] for r in b.master.r] == [Resp.SLVERR] * 17
    assert counters["discarded"] == 3 and counters["bus_master"] == 0

    b = Bench(width, 4, 0.2, writes=writes, reads=reads, gated=True)
    b.run(cycles=6000, dl_up=0, until=lambda: b.master.done())
    assert b.partner.tlps(Kind.MWR32, Kind.MWR64, Kind.MRD32, Kind.MRD64) == []
    assert b.master.b == [(k, Resp.SLVERR) for k in range(3)]
    check_enumeration(b.steps, b.completions(), bus=BUS)


@pytest.mark.parametrize("width", WIDTHS)
def test_tx_throughput_with_both_sources(width):
    """The device streams 16-beat writes while the host reads 512-byte blocks of its DRAM:
    MWr and CplD TLPs share ``tlp_tx`` without idle cycles."""
    rng = random.Random(5)
    p = params_for(width)
    writes = [random_write(rng, 0x1_0000_0000 + 512 * k, 16, 0, start=0, end=512)
              for k in range(16)]
    host = [Tlp(Kind.MRD64, requester_id=HOST, tag=k, addr=BAR2 + 0x4000 + 512 * k,
                length=128, last_be=0xF) for k in range(8)]
    ref = Reference(p.link_max_payload)
    for t in host:
        ref.request(t)
    b = Bench(width, 5, 0.0, writes=writes, host=host)
    b.run(cycles=20_000, until=lambda: b.master.done()
          and len(b.completions()) >= len(b.steps) + len(ref.completions))
    check_write_tlps(b.partner, writes, p.link_max_payload, rid=ID)
    # between the end of the first MWr and the end of the last MWr or CplD
    ends = [c for c, t in b.partner.log if t.kind in (Kind.MWR64, Kind.CPLD)]
    first = min(c for c, t in b.partner.log if t.kind == Kind.MWR64)
    beats = [c for c in b.partner.tx_beats if first < c <= max(ends)]
    rate = len(beats) / (max(ends) - first)
    assert sum(1 for c in ends if c > first) >= 40      # both kinds, interleaved
    print(f"W={width}: {rate:.3f} tlp_tx beats per cycle with both sources")
    assert rate >= 0.95


def test_bad_parameters():
    with pytest.raises(ValueError):
        Endpoint(DEFAULT.replace(link_read_tags=3))
    with pytest.raises(ValueError):
        Endpoint(DEFAULT, mem_axi=AxiParams(addr_width=20, data_bytes=BEAT, id_width=1))
