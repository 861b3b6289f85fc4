# amaranth: UnusedElaboratable=no
"""Tests of ``hw/link/switch.py`` in Amaranth's simulator: configuration space and windows,
routing of memory requests (both windows, their boundaries, the upstream default, peer to
peer, Unsupported Requests and their UR completions), completions by requester bus,
configuration requests, interrupt messages, malformed TLPs of every kind dropped and counted
while the traffic around them passes intact, order per ingress-egress pair, and throughput.

:class:`SwitchTB` drives every port with TLPs built by the Python codec (``tlp.Tlp``),
pausing randomly on every stream, and collects what every port sends; each test lists the
TLPs it expects where (or, for random traffic, a small Python model of the routing rules
does) and :meth:`SwitchTB.check` compares: per egress the same TLPs, byte for byte, and from
each ingress in the order sent.
"""

import random
from collections import Counter, deque
from functools import partial

import pytest
from amaranth.sim import Simulator

from npusim.hw.link.switch import SWITCH_DEVICE_ID, Switch
from npusim.hw.link.tlp import VENDOR_ID, CplStatus, Kind, Tlp, decode, make_id
from npusim.sw.params import HwParams
from pauses import never, pauses

PARAMS = HwParams()
MAX_PAYLOAD = PARAMS.link_max_payload
ROOT = make_id(0)
SWITCH = "switch"        # the source of the completions the switch makes itself
SHAPES = [(2, 8), (2, 16), (4, 8), (4, 16)]   # (downstream ports, beat bytes)


def to_beats(raw, width, sizes=None):
    """(data, dws, last) beats carrying ``raw``; ``sizes`` (bytes per beat, multiples of 4)
    makes a ragged stream."""
    if sizes is None:
        sizes = [min(width, len(raw) - at) for at in range(0, len(raw), width)]
    assert sum(sizes) == len(raw)
    beats, at = [], 0
    for k, size in enumerate(sizes):
        chunk = raw[at:at + size]
        at += size
        beats.append((int.from_bytes(chunk, "little"), -(-size // 4), k == len(sizes) - 1))
    return beats


def window_values(windows):
    """Register values (dword number -> value) of one port's [(mem base, limit),
    (pref base, limit)]."""
    values = {}
    for first, (base, limit) in zip((0x20 // 4, 0x30 // 4), windows):
        for k, value in enumerate((base, limit)):
            values[first + 2 * k] = value & 0xFFFF_FFFF
            values[first + 2 * k + 1] = value >> 32
    return values


def read_bytes(length, first_be, last_be):
    """A memory read's byte count (PCIe's rule, for the UR completion's ``byte_count``)."""
    if length == 1:
        if first_be == 0:
            return 1
        enabled = [b for b in range(4) if first_be >> b & 1]
        return enabled[-1] - enabled[0] + 1
    low = next(b for b in range(4) if first_be >> b & 1)
    high = next(b for b in range(4) if last_be >> (3 - b) & 1)
    return 4 * length - low - high


def ur_completion(request, completer=0):
    """The completion the switch answers an unsupported ``request`` with."""
    is_read = request.kind in (Kind.MRD32, Kind.MRD64)
    low = next((b for b in range(4) if request.first_be >> b & 1), 0) if is_read else 0
    return Tlp(Kind.CPL, requester_id=request.requester_id, tag=request.tag, length=0,
               completer_id=completer, status=CplStatus.UR,
               byte_count=read_bytes(request.length, request.first_be, request.last_be)
               & 0xFFF if is_read else 4,
               lower_addr=(request.addr & 0x7C | low) if is_read else 0,
               tc=request.tc, attr=request.attr)


class SwitchTB:
    """A switch with Python drivers on every ingress and collectors on every egress.

    Ports are numbered 0 (upstream) and ``i + 1`` (downstream port ``i``). :meth:`send`
    queues a TLP on an ingress and says where it should come out; :meth:`expect` adds a TLP
    the switch makes itself. Drivers pause randomly between beats (never withdrawing a beat
    on offer), collectors randomly drop ``ready`` and check that a beat on offer does not
    change, that every beat but the last is full, and that the bytes are a TLP."""

    def __init__(self, n, width, *, seed, busy, params=PARAMS):
        self.n, self.width = n, width
        self.dut = Switch(params, n, width=width)
        self.rx = [self.dut.up_rx, *self.dut.down_rx]
        self.tx = [self.dut.up_tx, *self.dut.down_tx]
        self.rng = random.Random(seed)
        ports = range(n + 1)
        self.rx_pause = [pauses(random.Random(self.rng.random()), busy) if busy else never()
                         for _ in ports]
        self.tx_pause = [pauses(random.Random(self.rng.random()), busy) if busy else never()
                         for _ in ports]
        self.queues = [deque() for _ in ports]
        self.sending = [False for _ in ports]
        self.expected = []                        # (source, egress, raw)
        self.received = [[] for _ in ports]       # raw TLPs per egress
        self.rx_beats = [[] for _ in ports]       # cycles a beat was taken, per ingress
        self.tx_beats = [[] for _ in ports]       # cycles a beat was sent, per egress
        self._tag = 0

    def tag(self):
        self._tag = (self._tag + 1) % 256
        return self._tag

    def send(self, port, tlp, to=None, *, sizes=None):
        """Queue ``tlp`` (a :class:`Tlp` or raw bytes) on ingress ``port``, expected at egress
        ``to`` (None: dropped)."""
        raw = tlp.encode() if isinstance(tlp, Tlp) else bytes(tlp)
        self.queues[port].append(to_beats(raw, self.width, sizes))
        if to is not None:
            self.expected.append((port, to, raw))

    def expect(self, egress, tlp):
        """A TLP the switch makes (a completion) expected at ``egress``."""
        self.expected.append((SWITCH, egress, tlp.encode()))

    async def drive(self, ctx, port):
        stream, pause = self.rx[port], self.rx_pause[port]
        beats, offered, cycle = None, False, 0
        while True:
            if beats is None and self.queues[port]:
                beats = deque(self.queues[port].popleft())
                self.sending[port] = True
            if beats is None or (not offered and next(pause)):
                ctx.set(stream.valid, 0)
                await ctx.tick()
            else:
                data, dws, last = beats[0]
                ctx.set(stream.payload, {"data": data, "dws": dws, "last": last})
                ctx.set(stream.valid, 1)
                _, _, ready = await ctx.tick().sample(stream.ready)
                offered = not ready
                if ready:
                    self.rx_beats[port].append(cycle)
                    beats.popleft()
                    if not beats:
                        beats = None
                        self.sending[port] = False
            cycle += 1

    async def collect(self, ctx, port):
        stream, pause = self.tx[port], self.tx_pause[port]
        tlp, held, cycle = bytearray(), None, 0
        while True:
            ctx.set(stream.ready, not next(pause))
            _, _, valid, ready, payload = await ctx.tick().sample(
                stream.valid, stream.ready, stream.payload)
            beat = (payload.data, payload.dws, payload.last)
            if held is not None:
                assert valid and beat == held, f"port {port}: beat changed while on offer"
            held = beat if valid and not ready else None
            if valid and ready:
                self.tx_beats[port].append(cycle)
                if not payload.last:
                    assert payload.dws == self.width // 4, f"port {port}: a short beat"
                tlp += payload.data.to_bytes(self.width, "little")[:4 * payload.dws]
                if payload.last:
                    decode(tlp)   # a well-formed TLP
                    self.received[port].append(bytes(tlp))
                    tlp = bytearray()
            cycle += 1

    def _counts(self):
        want = Counter(egress for _, egress, _ in self.expected)
        return [(len(self.received[p]), want[p]) for p in range(self.n + 1)]

    async def settle(self, ctx, limit=4000, quiet=40):
        """Wait until every queued TLP has been sent and every expected one received, then
        ``quiet`` cycles more (anything extra shows up in :meth:`check`)."""
        for _ in range(limit):
            if (not any(self.queues) and not any(self.sending)
                    and all(got >= want for got, want in self._counts())):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"traffic not done after {limit} cycles: "
                                 f"(received, expected) per port {self._counts()}")
        await ctx.tick().repeat(quiet)

    async def counters(self, ctx):
        return ctx.get(self.dut.malformed), ctx.get(self.dut.unsupported)

    async def program_windows(self, ctx, windows):
        """Set every port's windows with configuration writes (the base's low dword in two
        halves, by byte enables), each answered by a Cpl; wait for the answers."""
        for i, port_windows in enumerate(windows):
            for reg, value in window_values(port_windows).items():
                writes = [(0xF, value)] if reg % 2 else [(0x3, value & 0xFFFF),
                                                         (0xC, value & 0xFFFF_0000)]
                for be, part in writes:
                    tag = self.tag()
                    self.send(0, Tlp(Kind.CFGWR0, requester_id=ROOT, tag=tag,
                                     cfg_id=make_id(0, i), cfg_reg=reg, first_be=be,
                                     payload=part.to_bytes(4, "little")))
                    self.expect(0, Tlp(Kind.CPL, requester_id=ROOT, tag=tag, length=0,
                                       completer_id=make_id(0, i), byte_count=4))
        await self.settle(ctx)

    def run(self, scenario):
        sim = Simulator(self.dut)
        sim.add_clock(1e-6)
        for port in range(self.n + 1):
            sim.add_testbench(partial(self.drive, port=port), background=True)
            sim.add_testbench(partial(self.collect, port=port), background=True)

        async def main(ctx):
            await scenario(ctx, self)
        sim.add_testbench(main)
        sim.run()

    def check(self):
        """Every egress got exactly the TLPs expected there, and the TLPs of each ingress in
        the order that ingress sent them."""
        raws = [raw for _, _, raw in self.expected]
        assert len(set(raws)) == len(raws), "test bug: expected TLPs are not distinct"
        for egress in range(self.n + 1):
            want = [(source, raw) for source, to, raw in self.expected if to == egress]
            got = self.received[egress]
            missing = Counter(raw for _, raw in want) - Counter(got)
            extra = Counter(got) - Counter(raw for _, raw in want)
            assert not missing and not extra, (
                f"egress {egress}: missing {[decode(r) for r in missing]}, "
                f"extra {[decode(r) for r in extra]}")
            for source in {source for source, _ in want}:
                mine = [raw for s, raw in want if s == source]
                assert [raw for raw in got if raw in set(mine)] == mine, \
                    f"egress {egress}: TLPs from {source} out of order"


def mem_windows(n):
    """Per downstream port: a 32 KiB memory window below 4 GiB and a 1 MiB prefetchable
    window above (its limit the first byte of its last dword: inclusive, so that dword is
    in)."""
    return [[(0x8000_0000 + i * 0x10_0000, 0x8000_0000 + i * 0x10_0000 + 0x7FFF),
             (0x40_0000_0000 + i * 0x1_0000_0000, 0x40_0000_0000 + i * 0x1_0000_0000 + 0xF_FFFC)]
            for i in range(n)]


def mwr(addr, nbytes, requester, tag, rng):
    kind = Kind.MWR32 if addr < 1 << 32 else Kind.MWR64
    return Tlp(kind, requester_id=requester, tag=tag, addr=addr,
               first_be=0xF, last_be=0xF if nbytes > 4 else 0, payload=rng.randbytes(nbytes))


def mrd(addr, length, requester, tag, first_be=0xF, last_be=None):
    kind = Kind.MRD32 if addr < 1 << 32 else Kind.MRD64
    if last_be is None:
        last_be = 0xF if length > 1 else 0
    return Tlp(kind, requester_id=requester, tag=tag, addr=addr, length=length,
               first_be=first_be, last_be=last_be)


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("n, width", SHAPES)
def test_configuration(n, width):
    """Window registers read back what was written (byte enables honoured), register 0 is
    the vendor/device ID, other registers read 0; configuration requests to a bus behind a
    port pass unchanged; to a missing device, function or bus, or from a downstream port,
    they get UR completions."""
    tb = SwitchTB(n, width, seed=n * width, busy=0.5)
    windows = mem_windows(n)

    async def scenario(ctx, tb):
        assert await tb.counters(ctx) == (0, 0)
        await tb.program_windows(ctx, windows)
        for i in range(n):
            values = {0: VENDOR_ID | SWITCH_DEVICE_ID << 16, 0x04 // 4: 0, 0x40 // 4: 0,
                      0x3FF: 0, **window_values(windows[i])}
            for reg, value in values.items():
                tag = tb.tag()
                tb.send(0, Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tag, cfg_id=make_id(0, i),
                               cfg_reg=reg))
                tb.expect(0, Tlp(Kind.CPLD, requester_id=ROOT, tag=tag, byte_count=4,
                                 completer_id=make_id(0, i), payload=value.to_bytes(4, "little")))
            # A write to a read-only register changes nothing.
            tag = tb.tag()
            tb.send(0, Tlp(Kind.CFGWR0, requester_id=ROOT, tag=tag, cfg_id=make_id(0, i),
                           cfg_reg=0, payload=b"\x12\x34\x56\x78"))
            tb.expect(0, Tlp(Kind.CPL, requester_id=ROOT, tag=tag, length=0, byte_count=4,
                             completer_id=make_id(0, i)))
            # To the endpoint behind port i: forwarded as it is.
            for request in (
                    Tlp(Kind.CFGWR0, requester_id=ROOT, tag=tb.tag(), cfg_id=make_id(i + 1),
                        cfg_reg=4, first_be=0x3, payload=b"\x06\x00\x00\x00"),
                    Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tb.tag(), cfg_id=make_id(i + 1, 3),
                        cfg_reg=0x18 // 4)):
                tb.send(0, request, to=i + 1)
        await tb.settle(ctx)
        # The write to register 0 did not stick.
        tag = tb.tag()
        tb.send(0, Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tag, cfg_id=make_id(0, 0)))
        tb.expect(0, Tlp(Kind.CPLD, requester_id=ROOT, tag=tag, byte_count=4,
                         completer_id=make_id(0, 0),
                         payload=(VENDOR_ID | SWITCH_DEVICE_ID << 16).to_bytes(4, "little")))
        # Unsupported: no such device, function or bus; configuration from a device.
        urs = [(0, Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tb.tag(), cfg_id=make_id(0, n)),
                make_id(0, n)),
               (0, Tlp(Kind.CFGWR0, requester_id=ROOT, tag=tb.tag(), cfg_id=make_id(0, 0, 1),
                       cfg_reg=8, payload=b"\0\0\0\0"), make_id(0, 0)),
               (0, Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tb.tag(), cfg_id=make_id(n + 1)), 0),
               (1, Tlp(Kind.CFGWR0, requester_id=make_id(1), tag=tb.tag(),
                       cfg_id=make_id(0, 1), cfg_reg=8, payload=b"\0\0\0\0"), make_id(0, 1)),
               (n, Tlp(Kind.CFGRD0, requester_id=make_id(n), tag=tb.tag(),
                       cfg_id=make_id(2)), 0)]
        for port, request, completer in urs:
            tb.send(port, request)
            tb.expect(port, ur_completion(request, completer))
        # Answers to a requester on no port's bus go nowhere (and count again).
        tb.send(0, mrd(0x1000_0000, 1, make_id(n + 1), tb.tag()))
        tb.send(0, Tlp(Kind.CFGRD0, requester_id=make_id(n + 1), tag=tb.tag(),
                       cfg_id=make_id(0, 0)))
        nowhere = 3
        await tb.settle(ctx)
        # The UR'd write to function 1 did not touch function 0's window.
        tag = tb.tag()
        tb.send(0, Tlp(Kind.CFGRD0, requester_id=ROOT, tag=tag, cfg_id=make_id(0, 0),
                       cfg_reg=8))
        tb.expect(0, Tlp(Kind.CPLD, requester_id=ROOT, tag=tag, byte_count=4,
                         completer_id=make_id(0, 0),
                         payload=(windows[0][0][0] & 0xFFFF_FFFF).to_bytes(4, "little")))
        await tb.settle(ctx)
        assert await tb.counters(ctx) == (0, len(urs) + nowhere)

    tb.run(scenario)
    tb.check()


# -- memory requests --------------------------------------------------------------------------

@pytest.mark.parametrize("n, width", SHAPES)
def test_memory_routing(n, width):
    """Memory requests go by window: both windows, their first and last dwords, the dwords
    just outside; from upstream, unclaimed writes are dropped and unclaimed reads answered
    with UR; from a device, unclaimed requests go upstream, a peer's window reaches the peer,
    and the device's own window is UR."""
    tb = SwitchTB(n, width, seed=100 + n * width, busy=0.5)
    windows = mem_windows(n)
    rng = random.Random(7)

    async def scenario(ctx, tb):
        await tb.program_windows(ctx, windows)
        unsupported = 0
        for i, ((mem_base, mem_limit), (pref_base, pref_limit)) in enumerate(windows):
            for base, limit in ((mem_base, mem_limit), (pref_base, pref_limit)):
                # Inside, at both ends: to port i, from upstream and from a peer.
                peer = (i + 1) % n + 1
                last = limit & ~3
                for addr, nbytes in ((base, 64), (last, 4), (last + 4 - 32, 32)):
                    tb.send(0, mwr(addr, nbytes, ROOT, tb.tag(), rng), to=i + 1)
                    tb.send(0, mrd(addr, nbytes // 4, ROOT, tb.tag()), to=i + 1)
                    tb.send(peer, mwr(addr, nbytes, make_id(peer), tb.tag(), rng), to=i + 1)
                    tb.send(peer, mrd(addr, nbytes // 4, make_id(peer), tb.tag()), to=i + 1)
                # Just outside: nobody's from upstream, the host's from a device.
                for addr in (base - 4, last + 4):
                    tb.send(0, mwr(addr, 4, ROOT, tb.tag(), rng))
                    read = mrd(addr, 1, ROOT, tb.tag())
                    tb.send(0, read)
                    tb.expect(0, ur_completion(read))
                    unsupported += 2
                    tb.send(i + 1, mwr(addr, 4, make_id(i + 1), tb.tag(), rng), to=0)
                    tb.send(i + 1, mrd(addr, 1, make_id(i + 1), tb.tag()), to=0)
                # A device addressing itself through the switch: UR.
                tb.send(i + 1, mwr(base + 0x100, 16, make_id(i + 1), tb.tag(), rng))
                read = mrd(base + 0x200, 4, make_id(i + 1), tb.tag())
                tb.send(i + 1, read)
                tb.expect(i + 1, ur_completion(read))
                unsupported += 2
        await tb.settle(ctx)
        # UR completions carry the read's byte count and first byte's address.
        for length, first_be, last_be, addr, byte_count, lower_addr in (
                (1, 0xF, 0, 0x1000_0040, 4, 0x40), (1, 0b0110, 0, 0x1000_0044, 2, 0x45),
                (1, 0b1000, 0, 0x1000_007C, 1, 0x7F), (1, 0, 0, 0x1000_0000, 1, 0),
                (3, 0b1110, 0b0011, 0x1000_0008, 9, 0x09),
                (128, 0b1100, 0b0111, 0x2_0000_0000, 509, 0x02),
                (1024, 0xF, 0xF, 0x2000_0000, 4096, 0)):
            tag = tb.tag()
            read = mrd(addr, length, ROOT, tag, first_be, last_be)
            tb.send(0, read)
            tb.expect(0, Tlp(Kind.CPL, requester_id=ROOT, tag=tag, length=0,
                             status=CplStatus.UR, byte_count=byte_count & 0xFFF,
                             lower_addr=lower_addr))
            unsupported += 1
        await tb.settle(ctx)
        assert await tb.counters(ctx) == (0, unsupported)

    tb.run(scenario)
    tb.check()


# -- completions, messages --------------------------------------------------------------------

@pytest.mark.parametrize("n, width", SHAPES)
def test_completions_and_messages(n, width):
    """Completions go by the requester's bus (0 upstream, b to port b - 1, others and back
    out of their own ingress dropped); MsgD goes upstream, and is dropped from upstream."""
    tb = SwitchTB(n, width, seed=200 + n * width, busy=0.5)
    rng = random.Random(9)

    async def scenario(ctx, tb):
        dropped = 0
        for source in range(n + 1):
            for bus in range(n + 3):
                for data in (b"", rng.randbytes(4 * rng.randint(1, MAX_PAYLOAD // 4))):
                    cpl = Tlp(Kind.CPLD if data else Kind.CPL, requester_id=make_id(bus, 1),
                              tag=tb.tag(), completer_id=make_id(source), payload=data,
                              byte_count=len(data) or 4, lower_addr=rng.randrange(128))
                    routed = bus <= n and bus != source
                    tb.send(source, cpl, to=bus if routed else None)
                    dropped += not routed
            message = Tlp(Kind.MSGD, requester_id=make_id(source), tag=tb.tag(),
                          payload=rng.randbytes(4))
            tb.send(source, message, to=0 if source else None)
            dropped += not source
        await tb.settle(ctx)
        assert await tb.counters(ctx) == (0, dropped)

    tb.run(scenario)
    tb.check()


# -- malformed TLPs ----------------------------------------------------------------------------

def malformed_tlps(rng, width, requester, window):
    """(raw bytes, beat sizes or None) of TLPs the switch must drop, one of each kind,
    each otherwise routable into ``window``."""
    base = window[0]
    good = mwr(base, 16, requester, 1, rng).encode()
    unknown = bytearray(good)
    unknown[0] = 0b010 << 5 | 0b00110              # fmt/type of no kind the link uses
    long_field = bytearray(mwr(base, 8, requester, 2, rng).encode())
    long_field[3] += 1                             # length says 3 dwords, 2 follow
    short_field = bytearray(mwr(base, 12, requester, 3, rng).encode())
    short_field[3] -= 1                            # length says 2 dwords, 3 follow
    read_with_data = mrd(base, 1, requester, 4).encode() + b"\1\2\3\4"
    truncated = good[:8]                           # not even a header
    crossing = mwr(base + 0xFF8, 16, requester, 5, rng).encode()
    read_crossing = mrd(base + 0xFFC, 2, requester, 6).encode()
    oversized = mwr(base, MAX_PAYLOAD + 4, requester, 7, rng).encode()
    runaway = bytearray(mwr(base, 256, requester, 8, rng).encode())
    runaway += rng.randbytes(4 * MAX_PAYLOAD)      # far longer than any TLP may be
    config = Tlp(Kind.CFGWR0, requester_id=requester, tag=9, cfg_id=make_id(1), cfg_reg=8,
                 payload=b"\0" * 8).encode()       # configuration length must be 1
    # A first beat of one dword: the beats add up to the length field's dwords only if every
    # beat is taken as full.
    whole = mwr(base, 4 * width, requester, 10, rng).encode()
    ragged = whole[:4] + whole[width:]
    sizes = [4] + [min(width, len(whole) - at) for at in range(width, len(whole), width)]
    # A last beat with no dwords after full ones.
    empty_last = mwr(base, 2 * width - 12, requester, 11, rng).encode()
    return [(bytes(t), None) for t in (unknown, long_field, short_field, read_with_data,
                                       truncated, crossing, read_crossing, oversized,
                                       runaway, config)] + [
        (ragged, sizes), (empty_last, [width, width, 0])]


@pytest.mark.parametrize("n, width", SHAPES)
def test_malformed_dropped(n, width):
    """Malformed TLPs of every kind, from every port, between good ones: all dropped and
    counted, the good ones delivered intact and in order, no ingress wedged."""
    tb = SwitchTB(n, width, seed=300 + n * width, busy=0.4)
    windows = mem_windows(n)
    rng = random.Random(11)

    async def scenario(ctx, tb):
        await tb.program_windows(ctx, windows)
        malformed = 0
        for source in range(n + 1):
            target = source % n
            requester = make_id(source)
            bad = malformed_tlps(rng, width, requester, windows[target][0])
            rng.shuffle(bad)
            for raw, sizes in bad:
                addr = windows[target][1][0] + 0x100 * rng.randrange(0x100)
                tb.send(source, mwr(addr, 4 * rng.randint(1, 64), requester, tb.tag(), rng),
                        to=target + 1)
                tb.send(source, raw, sizes=sizes)
                malformed += 1
            tb.send(source, mwr(windows[target][0][0], MAX_PAYLOAD, requester, tb.tag(), rng),
                    to=target + 1)
        await tb.settle(ctx, limit=8000)
        assert await tb.counters(ctx) == (malformed, 0)

    tb.run(scenario)
    tb.check()


# -- random traffic ----------------------------------------------------------------------------

class RouteModel:
    """The routing rules, restated: where a well-formed TLP from ``source`` goes."""

    def __init__(self, n, windows):
        self.n, self.windows = n, windows

    def route(self, source, tlp):
        """(egress or None, UR completion or None)."""
        n, kind = self.n, tlp.kind
        if kind in (Kind.MRD32, Kind.MRD64, Kind.MWR32, Kind.MWR64):
            target = next((i + 1 for i, port in enumerate(self.windows)
                           if any(base <= tlp.addr <= limit for base, limit in port)),
                          0 if source else None)
            if target is not None and target != source:
                return target, None
            if kind in (Kind.MRD32, Kind.MRD64):
                return None, ur_completion(tlp)
            return None, None
        if kind in (Kind.CPL, Kind.CPLD):
            bus = tlp.requester_id >> 8
            return (bus if bus <= n and bus != source else None), None
        if kind == Kind.MSGD:
            return (0 if source else None), None
        raise AssertionError(kind)


@pytest.mark.parametrize("n, width", SHAPES + [(3, 32)])
def test_random_traffic(n, width):
    """Random requests, completions and messages from every port at once, with random
    pauses everywhere and a few malformed TLPs mixed in: every TLP arrives where the model
    says, intact and in order per ingress-egress pair; the counters agree."""
    random_traffic(n, width, seed=400 + n * width)


def random_traffic(n, width, seed, count=24):
    """``count`` TLPs per port through the switch, checked against :class:`RouteModel`."""
    tb = SwitchTB(n, width, seed=seed, busy=0.5)
    windows = mem_windows(n)
    model = RouteModel(n, windows)
    rng = random.Random(seed + 1)

    def address():
        choice = rng.random()
        if choice < 0.2:
            return 0x1000_0000 + 4 * rng.randrange(1 << 20)          # unclaimed
        base, limit = windows[rng.randrange(n)][rng.randrange(2)]
        return rng.choice([base, limit & ~3 if choice < 0.3 else
                           base + 4 * rng.randrange((limit - base) // 4)])

    async def scenario(ctx, tb):
        await tb.program_windows(ctx, windows)
        malformed = unsupported = 0
        for serial in range(count * (n + 1)):
            source = rng.randrange(n + 1)
            requester = make_id(source)
            tag = serial % 256
            what = rng.random()
            if what < 0.08:
                raw, sizes = rng.choice(malformed_tlps(rng, width, requester, windows[0][0]))
                tb.send(source, raw, sizes=sizes)
                malformed += 1
                continue
            if what < 0.35:
                addr = address()
                room = (0x1000 - (addr & 0xFFF)) // 4
                tlp = mwr(addr, 4 * rng.randint(1, min(room, MAX_PAYLOAD // 4)), requester,
                          tag, rng)
            elif what < 0.6:
                addr = address()
                room = (0x1000 - (addr & 0xFFF)) // 4
                length = rng.randint(1, min(room, 128))
                tlp = mrd(addr, length, requester, tag, first_be=rng.randint(1, 15),
                          last_be=rng.randint(1, 15) if length > 1 else 0)
            elif what < 0.9:
                data = rng.randbytes(4 * rng.randint(1, 16)) if rng.random() < 0.7 else b""
                tlp = Tlp(Kind.CPLD if data else Kind.CPL, requester_id=make_id(
                    rng.randrange(n + 2)), tag=tag, completer_id=make_id(serial >> 8, 1),
                    payload=data, byte_count=serial & 0xFFF)
            else:
                tlp = Tlp(Kind.MSGD, requester_id=requester, tag=tag, payload=rng.randbytes(4))
            egress, answer = model.route(source, tlp)
            tb.send(source, tlp, to=egress)
            if answer is not None:
                tb.expect(source, answer)
            unsupported += egress is None
        await tb.settle(ctx, limit=12000)
        assert await tb.counters(ctx) == (malformed, unsupported)

    tb.run(scenario)
    tb.check()


# -- throughput ----------------------------------------------------------------------------------

def beats_per_cycle(cycles):
    return len(cycles) / (cycles[-1] - cycles[0] + 1)


@pytest.mark.parametrize("width", [8, 16, 32])
def test_throughput(width):
    """No pauses anywhere. Three streams at once, each to its own egress (host to port 0,
    port 0 to port 1 peer to peer, port 1 to the host): every egress sends one beat per
    cycle, back-to-back TLPs without a gap. Then two ingresses to one egress: it still sends
    one beat per cycle, alternating between them TLP by TLP."""
    n, count, nbytes = 2, 12, 64
    tb = SwitchTB(n, width, seed=500 + width, busy=0.0)
    windows = mem_windows(n)
    rng = random.Random(17)
    figures = {}

    async def scenario(ctx, tb):
        await tb.program_windows(ctx, windows)
        first = [len(beats) for beats in tb.tx_beats]
        streams = ((0, 1, windows[0][0][0]), (1, 2, windows[1][1][0]), (2, 0, 0x1000_0000))
        for k in range(count):
            for source, egress, base in streams:
                tb.send(source, mwr(base + nbytes * k, nbytes, make_id(source), tb.tag(), rng),
                        to=egress)
        await tb.settle(ctx)
        for source, egress, _ in streams:
            cycles = tb.tx_beats[egress][first[egress]:]
            assert len(cycles) == count * -(-(12 + nbytes) // width)
            figures[f"{source}->{egress}"] = beats_per_cycle(cycles)
            latency = cycles[0] - tb.rx_beats[source][-len(cycles)]
            figures[f"{source}->{egress} latency"] = latency
        # Contention: two sources, one egress.
        first = len(tb.tx_beats[1])
        start = len(tb.received[1])
        for k in range(count):
            for source in (0, 2):
                tb.send(source, mwr(windows[0][1][0] + nbytes * k, nbytes, make_id(source),
                                    tb.tag(), rng), to=1)
        await tb.settle(ctx)
        cycles = tb.tx_beats[1][first:]
        figures["0,2->1"] = beats_per_cycle(cycles)
        sources = [decode(raw).requester_id for raw in tb.received[1][start:]]
        assert sources == [make_id(0), make_id(2)] * count or \
            sources == [make_id(2), make_id(0)] * count, f"not round-robin: {sources}"

    tb.run(scenario)
    tb.check()
    print(f"W = {width}: {figures}")
    assert all(value == 1.0 for key, value in figures.items() if "latency" not in key), figures


def test_parameters():
    with pytest.raises(ValueError):
        Switch(PARAMS, 0)
    with pytest.raises(ValueError):
        Switch(PARAMS, 32)
    with pytest.raises(ValueError):
        Switch(PARAMS, 2, width=12)
    with pytest.raises(ValueError):
        Switch(PARAMS, 2, width=4)
    switch = Switch(PARAMS, 3)
    assert switch.width == PARAMS.link_bytes_per_cycle
    assert len(switch.down_rx) == len(switch.down_tx) == 3
