# amaranth: UnusedElaboratable=no
"""The root complex's parts in Amaranth's simulator: whole-TLP merge and split
(``hw/link/tlp_stream.py``), the host request engine and the interrupt collector
(``cosim/root_complex.py``). The link partner is Python, building and checking TLPs with the
codec of ``hw/link/tlp.py``."""

import random

import pytest
from amaranth.sim import Simulator

from npusim.cosim.root_complex import HostOp, HostRequester, InterruptCollector
from npusim.hw.link.tlp import CplStatus, Kind, Tlp, decode, make_id
from npusim.hw.link.tlp_stream import TlpMerge, TlpSplit
from npusim.sw.params import HwParams

from link_tb import recv_tlp, send_tlp

WIDTHS = [8, 16]


def random_write(rng, source, seq):
    """An MWr whose tag and address say where it came from and its order."""
    return Tlp(Kind.MWR64, tag=seq & 0xFF, requester_id=source,
               addr=(1 << 40) + 4 * rng.randrange(1 << 20),
               payload=rng.randbytes(4 * rng.randint(1, 20))).encode()


@pytest.mark.parametrize("width", WIDTHS)
def test_merge_keeps_tlps_whole_and_in_order(width):
    n, per_input = 3, 12
    dut = TlpMerge(width, n)
    rng = random.Random(width)
    sent = {k: [random_write(rng, k, i) for i in range(per_input)] for k in range(n)}
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    def producer(k):
        async def bench(ctx):
            r = random.Random(k)
            for raw in sent[k]:
                await send_tlp(ctx, dut.inputs[k], raw, width, r, stall=0.3)
        return bench

    async def consumer(ctx):
        r = random.Random(99)
        for _ in range(n * per_input):
            got.append(await recv_tlp(ctx, dut.o, width, r, stall=0.3))

    for k in range(n):
        sim.add_testbench(producer(k), background=True)
    sim.add_testbench(consumer)
    sim.run()
    for k in range(n):
        assert [g for g in got if decode(g).requester_id == k] == sent[k]


@pytest.mark.parametrize("width", WIDTHS)
def test_split_routes_whole_tlps_by_first_beat(width):
    n = 3
    dut = TlpSplit(width, n, lambda m, beat: beat.data[8:16] % n)   # by byte 1 (tc/attr bits)
    rng = random.Random(width)
    tlps = []
    for i in range(30):
        raw = bytearray(random_write(rng, 0, i))
        raw[1] = rng.randrange(n) << 4    # tc = output index (tc field: byte 1 bits 6:4)
        tlps.append(bytes(raw))
    route = {raw: raw[1] % n for raw in tlps}
    got = {k: [] for k in range(n)}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def producer(ctx):
        r = random.Random(1)
        for raw in tlps:
            await send_tlp(ctx, dut.i, raw, width, r, stall=0.3)

    def consumer(k):
        async def bench(ctx):
            r = random.Random(10 + k)
            for _ in range(sum(1 for raw in tlps if route[raw] == k)):
                got[k].append(await recv_tlp(ctx, dut.outputs[k], width, r, stall=0.3))
        return bench

    sim.add_testbench(producer, background=True)
    for k in range(n):
        sim.add_testbench(consumer(k))
    sim.run()
    for k in range(n):
        assert got[k] == [raw for raw in tlps if route[raw] == k]


class HostTB:
    """Drives ``HostRequester``: one request, the TLP it sends, the completion we answer."""

    def __init__(self, width, **changes):
        self.width = width
        self.params = HwParams().replace(link_lanes=width // 4, link_bytes_per_lane=4,
                                         **changes)
        self.dut = HostRequester(self.params)

    async def request(self, ctx, op, *, addr=0, data=0, dws=2, cfg_id=0, cfg_reg=0,
                      answer=None, limit=20_000):
        """Issue a request; ``answer(tlp) -> list of completion bytes`` replies to it.
        Returns (the TLP sent, the response)."""
        dut = self.dut
        ctx.set(dut.req.payload, {"op": op, "addr": addr, "data": data, "dws": dws,
                                  "cfg_id": cfg_id, "cfg_reg": cfg_reg})
        ctx.set(dut.req.valid, 1)
        await ctx.tick().until(dut.req.ready)
        ctx.set(dut.req.valid, 0)
        sent = decode(await recv_tlp(ctx, dut.tlp_tx, self.width))
        for raw in (answer(sent) if answer else []):
            await send_tlp(ctx, dut.cpl_rx, raw, self.width)
        ctx.set(dut.resp.ready, 1)
        for _ in range(limit):
            _, _, valid, resp = await ctx.tick().sample(dut.resp.valid, dut.resp.payload)
            if valid:
                ctx.set(dut.resp.ready, 0)
                return sent, resp
        raise TimeoutError("no response")

    def run(self, bench):
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()


def completion(t, payload, *, tag=None, status=CplStatus.SC):
    kind = Kind.CPLD if payload else Kind.CPL
    return Tlp(kind, requester_id=t.requester_id, tag=t.tag if tag is None else tag,
               completer_id=make_id(1), status=status, payload=payload,
               byte_count=len(payload) or 4).encode()


@pytest.mark.parametrize("width", WIDTHS)
def test_host_requests(width):
    tb = HostTB(width)

    async def bench(ctx):
        # a posted 8-byte register write above 4 GiB: MWr64, no completion
        t, resp = await tb.request(ctx, HostOp.MEM_WRITE, addr=0x10_0000_0040,
                                   data=0x1122334455667788)
        assert (t.kind, t.addr, t.first_be, t.last_be) == (Kind.MWR64, 0x10_0000_0040, 0xF, 0xF)
        assert t.payload == (0x1122334455667788).to_bytes(8, "little")
        assert (resp.timeout, resp.status) == (0, 0)
        # a read below 4 GiB: MRd32, answered after a stale completion for another tag
        value = 0x0BADF00D_CAFEBABE
        t, resp = await tb.request(ctx, HostOp.MEM_READ, addr=0x1000, answer=lambda t: [
            completion(t, bytes(8), tag=t.tag ^ 0x55),
            completion(t, value.to_bytes(8, "little"))])
        assert (t.kind, t.addr, t.length) == (Kind.MRD32, 0x1000, 2)
        assert (resp.data, resp.status, resp.timeout) == (value, 0, 0)
        # configuration write and read
        t, resp = await tb.request(ctx, HostOp.CFG_WRITE, cfg_id=make_id(2), cfg_reg=4,
                                   data=0xFFFF_FFFF, dws=1,
                                   answer=lambda t: [completion(t, b"")])
        assert (t.kind, t.cfg_id, t.cfg_reg, t.payload) == \
            (Kind.CFGWR0, make_id(2), 4, b"\xff" * 4)
        t, resp = await tb.request(ctx, HostOp.CFG_READ, cfg_id=make_id(2), cfg_reg=4, dws=1,
                                   answer=lambda t: [completion(t, b"\x0c\0\xf0\xff")])
        assert t.kind == Kind.CFGRD0 and resp.data & 0xFFFF_FFFF == 0xFFF0_000C
        # an unsupported request comes back with its status
        t, resp = await tb.request(ctx, HostOp.MEM_READ, addr=0x30_0000_0000, answer=lambda t: [
            completion(t, b"", status=CplStatus.UR)])
        assert resp.status == CplStatus.UR
    tb.run(bench)


def test_host_read_times_out():
    tb = HostTB(8, link_completion_timeout=300)

    async def bench(ctx):
        _, resp = await tb.request(ctx, HostOp.MEM_READ, addr=0x2000, limit=1000)
        assert resp.timeout == 1
        # the next request is served normally, and the late completion of the first is ignored
        _, resp = await tb.request(ctx, HostOp.MEM_READ, addr=0x2000, answer=lambda t: [
            completion(t, bytes(8), tag=t.tag - 1), completion(t, b"\x01" * 8)])
        assert (resp.timeout, resp.data) == (0, 0x0101010101010101)
    tb.run(bench)


@pytest.mark.parametrize("width", WIDTHS)
def test_interrupts_counted_by_vector(width):
    dut = InterruptCollector(width, vectors=4)
    rng = random.Random(width)
    vectors = [rng.randrange(6) for _ in range(40)]
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        for v in vectors:
            raw = Tlp(Kind.MSGD, requester_id=make_id(1 + v % 4),
                      payload=v.to_bytes(4, "little")).encode()
            await send_tlp(ctx, dut.msg_rx, raw, width, rng, stall=0.3)
        await ctx.tick()
        assert ctx.get(dut.count) == len(vectors)
        assert ctx.get(dut.last_vector) == vectors[-1]
        assert [ctx.get(dut.per_vector[v]) for v in range(4)] == \
            [vectors.count(v) for v in range(4)]
    sim.add_testbench(bench)
    sim.run()
