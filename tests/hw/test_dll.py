# amaranth: UnusedElaboratable=no
"""Tests of the data-link layer (``hw/link/dll.py``) in Amaranth's simulator.

Two :class:`DataLinkLayer` ends are connected back to back through :class:`Channel`, a Python
model of the physical layer and the wire: a fixed delay each way, and faults (whole packets
dropped, one bit flipped in a packet, packets cut short), drawn per packet. The channel also
plays the framer's rules: random stalls only between packets, beats of a started packet
back to back, and ``phy_rx.ready`` must be high whenever a beat comes. Python sources offer
random TLPs of every kind on ``tlp_tx`` and sinks take them from ``tlp_rx``, both with random
pauses. The checks: every TLP arrives exactly once, in order, bit-exact; a receiver never
holds more than the credits it advertised; the counters see the faults; the packets on the
wire are PCIe's (cocotbext-pcie decodes the DLLPs, zlib checks the LCRCs); link down and up
re-initialises; and back-to-back TLPs leave one beat per cycle.
"""

import random
from collections import deque

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator
from cocotbext.pcie.core.dllp import Dllp, DllpType

from npusim.hw.link.crc import lcrc
from npusim.hw.link.dll import DataLinkLayer, rx_buffer_words
from npusim.hw.link.tlp import (CplStatus, FcClass, Kind, Tlp, data_credits, decode,
                                fc_class, link_packet, make_id, tlp_beat)
from npusim.sw.params import HwParams
from pauses import never, pauses

#: A short replay timeout, so lost packets recover quickly in short runs.
PARAMS = HwParams(link_replay_timeout=400, link_ack_latency=32)
DELAY = 40


# -- traffic ---------------------------------------------------------------------------------

def random_tlp(rng, index, *, max_payload=256, kinds=tuple(Kind)):
    """A random TLP of a random kind, made unique by ``index`` (in its IDs and tag)."""
    kind = rng.choice(kinds)
    t = Tlp(kind, requester_id=index & 0xFFFF, tag=index >> 16 & 0xFF)
    if kind in (Kind.MWR32, Kind.MWR64, Kind.CPLD):
        t.payload = rng.randbytes(4 * rng.randint(1, max_payload // 4))
    elif kind in (Kind.MSGD, Kind.CFGWR0):
        t.payload = rng.randbytes(4)
    if kind in (Kind.MRD32, Kind.MRD64):
        t.length = rng.randint(1, 128)
    if kind in (Kind.MRD32, Kind.MWR32):
        t.addr = rng.randrange(1 << 30) * 4
    elif kind in (Kind.MRD64, Kind.MWR64):
        t.addr = rng.randrange(1 << 30, 1 << 40) * 4
    if kind in (Kind.CFGRD0, Kind.CFGWR0):
        t.cfg_id = make_id(rng.randrange(256))
        t.cfg_reg = rng.randrange(1024)
    if kind in (Kind.CPL, Kind.CPLD):
        t.status = CplStatus.SC if kind == Kind.CPLD else CplStatus.UR
        t.byte_count = 4 * max(1, len(t.payload) // 4)
    return t.encode()


def credits_of(raw):
    """(class, header credits, data credits) a TLP consumes, from the Python codec."""
    t = decode(raw)
    return fc_class(t.kind), 1, data_credits(len(t.payload) // 4) if t.has_data else 0


# -- testbench parts -------------------------------------------------------------------------

class Packing:
    """A stream payload layout as plain ints (the bench samples and sets payloads as raw
    bits: much faster than views)."""

    def __init__(self, layout):
        self.fields = {name: (field.offset, (1 << field.width) - 1) for name, field in layout}

    def pack(self, **values):
        return sum(values[name] << offset for name, (offset, _) in self.fields.items())

    def get(self, raw, name):
        offset, mask = self.fields[name]
        return raw >> offset & mask


class Source:
    """Offers TLPs on a ``tlp_tx`` port, one beat per cycle unless paused; ``taken`` lists
    the TLPs (indices) whose last beat was taken."""

    def __init__(self, port, tlps, width, pause):
        self.port, self.width, self.pause = port, width, pause
        self.packing = Packing(tlp_beat(width))
        self.tlps = []
        self.beats = deque()   # (payload bits, last, TLP index)
        self.taken = []
        self.offered = None
        self.add(tlps)

    def add(self, tlps):
        """Queue more TLPs (indices continue)."""
        width = self.width
        for raw in tlps:
            index = len(self.tlps)
            self.tlps.append(raw)
            for offset in range(0, len(raw), width):
                chunk = raw[offset:offset + width]
                last = offset + width >= len(raw)
                self.beats.append((self.packing.pack(data=int.from_bytes(chunk, "little"),
                                                     dws=len(chunk) // 4, last=last),
                                   last, index))

    def signals(self):
        return [self.port.valid, self.port.ready]

    def drive(self, ctx, cycle):
        offer = self.beats[0] if self.beats and not next(self.pause) else None
        if offer is not self.offered:
            if offer is None:
                ctx.set(self.port.valid, 0)
            else:
                ctx.set(self.port.payload.as_value(), offer[0])
                ctx.set(self.port.valid, 1)
            self.offered = offer

    def observe(self, cycle, valid, ready):
        if valid and ready:
            _, last, index = self.beats.popleft()
            if last:
                self.taken.append(index)


class Sink:
    """Takes TLPs from a ``tlp_rx`` port (ready paused at random); ``tlps`` lists them,
    ``done_at`` the cycle each one's last beat was taken."""

    def __init__(self, port, width, pause):
        self.port, self.width, self.pause = port, width, pause
        self.packing = Packing(tlp_beat(width))
        self.tlps, self.done_at = [], []
        self.partial = b""
        self.ready = None

    def signals(self):
        return [self.port.valid, self.port.ready, self.port.payload.as_value()]

    def drive(self, ctx, cycle):
        ready = not next(self.pause)
        if ready != self.ready:
            ctx.set(self.port.ready, ready)
            self.ready = ready

    def observe(self, cycle, valid, ready, payload):
        if not (valid and ready):
            return
        get = self.packing.get
        dws, last = get(payload, "dws"), get(payload, "last")
        assert last or dws == self.width // 4, "a beat before the last is not full"
        self.partial += get(payload, "data").to_bytes(self.width, "little")[:4 * dws]
        if last:
            self.tlps.append(self.partial)
            self.done_at.append(cycle)
            self.partial = b""


class Channel:
    """One direction of the link: the framer's side of ``src`` (a ``phy_tx``), the wire
    (``delay`` cycles, faults per packet) and the deframer's side of ``dst`` (a ``phy_rx``).

    ``faults``: probabilities per packet of ``drop`` (TLP), ``drop_dllp``, ``flip`` (one bit
    of a TLP packet), ``flip_dllp`` and ``cut`` (a TLP packet ends early, at a random beat,
    as a framing error would make it). ``packets`` logs every packet sent (dllp, bytes,
    cycle of its first beat); ``up`` False loses everything (link down)."""

    def __init__(self, src, dst, width, rng, *, delay=DELAY, faults=None, stall=None,
                 schedule=None):
        self.src, self.dst, self.width, self.rng = src, dst, width, rng
        self.schedule = dict(schedule or {})  # TLP packet ordinal -> fate
        self.tlp_packets = 0
        self.blackout = range(0)              # cycles in which every packet is lost
        self.packing = Packing(link_packet(width))
        self.delay = delay
        self.faults = dict(faults or {})
        self.stall = stall or never()
        self.line = deque()      # (cycle due, payload bits)
        self.mid = False         # a packet's first beat was taken, its last not yet
        self.fate = None         # for the packet being sent: None, "drop", (beat, bit), cut
        self.beat_no = 0
        self.current = b""
        self.packets = []
        self.up = True
        self.driving = False
        self.ready = None
        self.lengths_ok = True

    def signals(self):
        return [self.src.valid, self.src.ready, self.src.payload.as_value(), self.dst.valid,
                self.dst.ready]

    def drive(self, ctx, cycle):
        ready = True if self.mid else not next(self.stall)
        if ready != self.ready:
            ctx.set(self.src.ready, ready)
            self.ready = ready
        if self.line and self.line[0][0] == cycle:
            ctx.set(self.dst.payload.as_value(), self.line.popleft()[1])
            ctx.set(self.dst.valid, 1)
            self.driving = True
        elif self.driving:
            ctx.set(self.dst.valid, 0)
            self.driving = False

    def _decide(self, cycle, dllp, length):
        rng, f = self.rng, self.faults
        if cycle in self.blackout:
            return "drop"
        if not dllp:
            self.tlp_packets += 1
            if self.tlp_packets - 1 in self.schedule:
                return self.schedule[self.tlp_packets - 1]
        if rng.random() < f.get("drop_dllp" if dllp else "drop", 0):
            return "drop"
        if rng.random() < f.get("flip_dllp" if dllp else "flip", 0):
            return ("flip", rng.randrange(8 * length))
        if not dllp and rng.random() < f.get("cut", 0):
            return ("cut", rng.randrange(-(-length // self.width)))
        return None

    def observe(self, cycle, s_valid, s_ready, s_payload, d_valid, d_ready):
        assert d_ready or not d_valid, "phy_rx.ready low while a beat comes"
        if self.mid:
            assert s_valid, "a started packet's beats are not back to back"
        if not (s_valid and s_ready):
            return
        W, get = self.width, self.packing.get
        nbytes, last, dllp = get(s_payload, "nbytes"), get(s_payload, "last"), \
            get(s_payload, "dllp")
        length = get(s_payload, "length")
        if not self.mid:
            self.length = length
            self.fate = self._decide(cycle, dllp, self.length)
            self.beat_no = 0
            self.current = b""
            self.first_cycle = cycle
        assert length == self.length and (last or nbytes == W)
        self.current += get(s_payload, "data").to_bytes(W, "little")[:nbytes]
        self.mid = not last
        beat = s_payload
        fate, k = self.fate, self.beat_no
        self.beat_no += 1
        if last:
            assert len(self.current) == self.length, "length disagrees with the beats"
            self.packets.append((dllp, self.current, self.first_cycle))
        if not self.up or fate == "drop":
            return
        if isinstance(fate, tuple) and fate[0] == "flip" and fate[1] // (8 * W) == k:
            beat ^= 1 << (fate[1] % (8 * W))  # data is bits 0.. of the payload
        if isinstance(fate, tuple) and fate[0] == "cut":
            if k > fate[1]:
                return
            if k == fate[1]:
                beat |= 1 << self.packing.fields["last"][0]
        self.line.append((cycle + self.delay, beat))

    def link(self, up):
        self.up = up
        if not up:
            self.line.clear()


class CreditWatch:
    """The credits a receiver must hold room for, per class: TLPs sent for the first time by
    the other end (seen on the wire, new sequence number) minus TLPs delivered on its
    ``tlp_rx``. Never more than it advertised."""

    def __init__(self, channel, sink, params):
        self.channel, self.sink = channel, sink
        self.limits = [(params.link_ph_credits, params.link_pd_credits),
                       (params.link_nph_credits, params.link_npd_credits),
                       (params.link_cplh_credits, params.link_cpld_credits)]
        self.seen = 0
        self.delivered = 0
        self.seqs = set()
        self.held = [[0, 0] for _ in range(3)]
        self.peak = [[0, 0] for _ in range(3)]

    def signals(self):
        return []

    def drive(self, ctx, cycle):
        pass

    def observe(self, cycle):
        packets = self.channel.packets
        while self.seen < len(packets):
            dllp, raw, _ = packets[self.seen]
            self.seen += 1
            seq = (raw[0] & 0xF) << 8 | raw[1]
            if not dllp and seq not in self.seqs:
                self.seqs.add(seq)
                cls, h, d = credits_of(raw[2:-4])
                self.held[cls][0] += h
                self.held[cls][1] += d
        while self.delivered < len(self.sink.tlps):
            cls, h, d = credits_of(self.sink.tlps[self.delivered])
            self.delivered += 1
            self.held[cls][0] -= h
            self.held[cls][1] -= d
        for cls in range(3):
            for i in range(2):
                self.peak[cls][i] = max(self.peak[cls][i], self.held[cls][i])
                assert self.held[cls][i] <= self.limits[cls][i], \
                    f"class {FcClass(cls).name}: {self.held[cls]} over {self.limits[cls]}"


class Pair(Elaboratable):
    def __init__(self, params, width):
        self.a = DataLinkLayer(params, width)
        self.b = DataLinkLayer(params, width)

    def elaborate(self, platform):
        m = Module()
        m.submodules.a = self.a
        m.submodules.b = self.b
        return m


class Link:
    """Two data-link layers, a channel each way, a source and a sink at each end."""

    def __init__(self, params, width, *, seed, tlps_ab=(), tlps_ba=(), faults=None,
                 busy=0.0, stall=0.0, delay=DELAY):
        rng = random.Random(seed)
        self.params, self.width = params, width
        self.pair = Pair(params, width)
        a, b = self.pair.a, self.pair.b

        def pause(p):
            return pauses(random.Random(rng.random()), p, longest=40) if p else never()
        self.ab = Channel(a.phy_tx, b.phy_rx, width, random.Random(rng.random()),
                          delay=delay, faults=faults, stall=pause(stall))
        self.ba = Channel(b.phy_tx, a.phy_rx, width, random.Random(rng.random()),
                          delay=delay, faults=faults, stall=pause(stall))
        self.src_a = Source(a.tlp_tx, tlps_ab, width, pause(busy))
        self.src_b = Source(b.tlp_tx, tlps_ba, width, pause(busy))
        self.sink_b = Sink(b.tlp_rx, width, pause(busy))
        self.sink_a = Sink(a.tlp_rx, width, pause(busy))
        self.watch_b = CreditWatch(self.ab, self.sink_b, params)
        self.watch_a = CreditWatch(self.ba, self.sink_a, params)
        self.parts = [self.ab, self.ba, self.src_a, self.src_b, self.sink_a, self.sink_b]
        self.watches = []
        self.up = True
        self.cycle = 0
        self.dl_up_log = []  # (cycle, dl_up of a, dl_up of b) whenever they change
        self.counters = {}

    def watch_credits(self):
        self.watches = [self.watch_a, self.watch_b]

    def set_link(self, ctx, up):
        self.up = up
        for dll in (self.pair.a, self.pair.b):
            ctx.set(dll.link_up, up)
        self.ab.link(up)
        self.ba.link(up)

    def run(self, cycles, until, *, events=None):
        """Simulate until ``until(self)`` holds (checked every cycle) or fail after
        ``cycles``. ``events``: {cycle: function(link, ctx)} run before that cycle."""
        a, b = self.pair.a, self.pair.b
        counter_names = ["replays", "naks_sent", "bad_tlps", "bad_dllps", "duplicates",
                         "rx_overflows"]
        extra = [a.dl_up, b.dl_up] + [getattr(d, n) for d in (a, b) for n in counter_names]
        signals, spans = [], []
        for part in self.parts:
            sigs = part.signals()
            spans.append((part, len(signals), len(signals) + len(sigs)))
            signals += sigs
        base = len(signals)
        signals += extra
        events = dict(events or {})
        result = {}

        async def bench(ctx):
            self.set_link(ctx, True)
            last_up = None
            for cycle in range(cycles):
                self.cycle = cycle
                if cycle in events:
                    events[cycle](self, ctx)
                for part in self.parts:
                    part.drive(ctx, cycle)
                values = (await ctx.tick().sample(*signals))[2:]
                for part, lo, hi in spans:
                    part.observe(cycle, *values[lo:hi])
                for watch in self.watches:
                    watch.observe(cycle)
                ups = (values[base], values[base + 1])
                if ups != last_up:
                    self.dl_up_log.append((cycle, *ups))
                    last_up = ups
                counts = values[base + 2:]
                self.counters = {f"{end}.{name}": counts[i * len(counter_names) + j]
                                 for i, end in enumerate("ab")
                                 for j, name in enumerate(counter_names)}
                if until(self):
                    result["cycles"] = cycle + 1
                    return
            raise AssertionError(f"not done after {cycles} cycles: delivered "
                                 f"{len(self.sink_b.tlps)}/{len(self.src_a.tlps)} a->b, "
                                 f"{len(self.sink_a.tlps)}/{len(self.src_b.tlps)} b->a, "
                                 f"{self.counters}")

        async def waiter(ctx):
            # The bench is a process (its ctx.set costs no settling of the design, unlike a
            # testbench's); this critical testbench keeps the simulation going until it ends.
            while "cycles" not in result:
                await ctx.tick()

        sim = Simulator(self.pair)
        sim.add_clock(1e-9)
        sim.add_process(bench)
        sim.add_testbench(waiter)
        sim.run()
        return result["cycles"]

    def all_delivered(self):
        return (len(self.sink_b.tlps) == len(self.src_a.tlps)
                and len(self.sink_a.tlps) == len(self.src_b.tlps))


def traffic(seed, count, **kw):
    rng = random.Random(seed)
    return [random_tlp(rng, seed << 12 | i, **kw) for i in range(count)]


# -- tests -----------------------------------------------------------------------------------

def check_wire(channel, sender_params, receiver_params, tlps):
    """The packets one end sent are PCIe's: DLLPs decode with cocotbext-pcie (CRC-16
    included), InitFC/UpdateFC carry the advertised credits, TLP packets carry sequence
    numbers 0, 1, 2, ... with zlib's CRC-32 as LCRC, and their TLPs are the ones offered."""
    init = {DllpType.INIT_FC1_P: (receiver_params.link_ph_credits,
                                  receiver_params.link_pd_credits),
            DllpType.INIT_FC1_NP: (receiver_params.link_nph_credits,
                                   receiver_params.link_npd_credits),
            DllpType.INIT_FC1_CPL: (receiver_params.link_cplh_credits,
                                    receiver_params.link_cpld_credits)}
    kinds, seqs, sent = set(), [], []
    for dllp, raw, _ in channel.packets:
        if dllp:
            assert len(raw) == 6
            d = Dllp.unpack_crc(raw)   # raises on a bad CRC-16
            assert Dllp.pack_crc(d) == raw
            kinds.add(d.type)
            if d.type in init:
                assert (d.hdr_fc, d.data_fc) == init[d.type]
            if d.type in (DllpType.UPDATE_FC_P, DllpType.UPDATE_FC_NP, DllpType.UPDATE_FC_CPL):
                assert d.hdr_scale == 0 and d.data_scale == 0 and d.vc == 0
        else:
            assert raw[0] >> 4 == 0, "reserved bits of the sequence number"
            assert int.from_bytes(raw[-4:], "little") == lcrc(raw[:-4])
            seqs.append((raw[0] & 0xF) << 8 | raw[1])
            sent.append(raw[2:-4])
    assert {DllpType.INIT_FC1_P, DllpType.INIT_FC1_NP, DllpType.INIT_FC1_CPL,
            DllpType.INIT_FC2_P, DllpType.INIT_FC2_NP, DllpType.INIT_FC2_CPL} <= kinds
    assert seqs == list(range(len(tlps))) and sent == tlps
    return kinds


@pytest.mark.parametrize("width", [8, 16])
def test_clean_link_both_directions(width):
    """No faults, random pauses everywhere: every TLP arrives once, in order, bit-exact,
    nothing is replayed, dropped or Naked, and the packets on the wire are PCIe's."""
    link = Link(PARAMS, width, seed=width, tlps_ab=traffic(1, 50), tlps_ba=traffic(2, 50),
                busy=0.4, stall=0.2)
    link.watch_credits()
    link.run(20_000, Link.all_delivered)
    assert link.sink_b.tlps == link.src_a.tlps
    assert link.sink_a.tlps == link.src_b.tlps
    assert all(v == 0 for v in link.counters.values()), link.counters
    for channel, tlps in ((link.ab, link.src_a.tlps), (link.ba, link.src_b.tlps)):
        kinds = check_wire(channel, PARAMS, PARAMS, tlps)
        assert DllpType.ACK in kinds and DllpType.NAK not in kinds
        assert kinds & {DllpType.UPDATE_FC_P, DllpType.UPDATE_FC_NP, DllpType.UPDATE_FC_CPL}


LOSSY = {"drop": 0.03, "flip": 0.06, "cut": 0.02, "drop_dllp": 0.04, "flip_dllp": 0.04}


@pytest.mark.parametrize("width", [8, 16])
def test_lossy_link(width):
    """Packets dropped, bits flipped in TLPs and DLLPs, TLP packets cut short, random
    pauses on every stream: still every TLP arrives exactly once, in order, bit-exact, and
    no receiver ever holds more than its credits. The counters saw it all."""
    link = Link(PARAMS, width, seed=10 + width, tlps_ab=traffic(3, 70), tlps_ba=traffic(4, 70),
                faults=LOSSY, busy=0.3, stall=0.1)
    link.watch_credits()
    cycles = link.run(60_000, Link.all_delivered)
    assert link.sink_b.tlps == link.src_a.tlps
    assert link.sink_a.tlps == link.src_b.tlps
    c = link.counters
    print(f"\nW={width}: {cycles} cycles, counters {c}")
    for end in "ab":
        assert c[f"{end}.replays"] > 0 and c[f"{end}.naks_sent"] > 0
        assert c[f"{end}.bad_tlps"] > 0 and c[f"{end}.bad_dllps"] > 0
        assert c[f"{end}.rx_overflows"] == 0


def test_nak_replays_from_the_corrupted_tlp():
    """One flipped bit in the 4th TLP packet: the receiver drops it and the ones behind it
    (sequence ahead), sends exactly one Nak, and the sender resends from the 4th on."""
    link = Link(PARAMS, 8, seed=5, tlps_ab=traffic(5, 12, max_payload=64))
    link.ab.schedule = {3: ("flip", 8 * 20 + 3)}
    link.run(10_000, Link.all_delivered)
    assert link.sink_b.tlps == link.src_a.tlps
    c = link.counters
    assert c["b.naks_sent"] == 1 and c["b.bad_tlps"] >= 1 and c["a.replays"] >= 1
    seqs = [(raw[0] & 0xF) << 8 | raw[1] for dllp, raw, _ in link.ab.packets if not dllp]
    resent = seqs[seqs.index(3, 4):]
    assert resent[:len(range(3, 12))] == list(range(3, 12))[:len(resent)]
    assert c["a.replays"] == len(seqs) - 12


def test_replay_timer_recovers_a_lost_last_tlp():
    """The last TLP packet is lost and nothing follows it, so no Nak can come: the replay
    timer resends it (``link_replay_timeout`` after the last Ack)."""
    link = Link(PARAMS, 8, seed=6, tlps_ab=traffic(6, 6, max_payload=32))
    link.ab.schedule = {5: "drop"}
    cycles = link.run(10_000, Link.all_delivered)
    assert link.sink_b.tlps == link.src_a.tlps
    c = link.counters
    assert c["b.naks_sent"] == 0 and c["a.replays"] == 1
    sent = [cycle for dllp, _, cycle in link.ab.packets if not dllp]
    assert len(sent) == 7 and sent[6] - sent[5] >= PARAMS.link_replay_timeout
    assert cycles < sent[6] + 200


def test_lost_acks_make_duplicates():
    """Every DLLP from the receiver is lost for longer than the replay timeout: the sender
    resends TLPs the receiver already has, which it drops as duplicates and Acks at once."""
    link = Link(PARAMS, 8, seed=14, tlps_ab=traffic(14, 8, max_payload=64))
    link.ba.blackout = range(150, 150 + PARAMS.link_replay_timeout + 200)
    link.run(10_000, lambda link: link.all_delivered() and link.counters["b.duplicates"]
             == link.counters["a.replays"] >= 1)
    assert link.sink_b.tlps == link.src_a.tlps
    c = link.counters
    assert c["b.naks_sent"] == 0 and c["b.bad_tlps"] == 0


def test_small_credits_are_never_overrun():
    """Few credits and a slow consumer: the senders wait for UpdateFCs, the receivers never
    hold more than they advertised and never run out of buffer."""
    params = PARAMS.replace(link_ph_credits=2, link_pd_credits=24, link_nph_credits=1,
                            link_npd_credits=1, link_cplh_credits=3, link_cpld_credits=20)
    link = Link(params, 8, seed=7, tlps_ab=traffic(7, 40), tlps_ba=traffic(8, 40), busy=0.5)
    link.watch_credits()
    link.run(40_000, Link.all_delivered)
    assert link.sink_b.tlps == link.src_a.tlps and link.sink_a.tlps == link.src_b.tlps
    assert link.counters["a.rx_overflows"] == link.counters["b.rx_overflows"] == 0
    limits = link.watch_b.limits
    # the credits did limit: some class was filled up to its advertisement
    assert any(link.watch_b.peak[c][i] == limits[c][i] for c in range(3) for i in range(2))


def test_link_down_and_up():
    """Link down in the middle of traffic: dl_up falls at once, TLPs offered while down are
    taken and dropped, what was not acknowledged is lost; when the link comes back flow
    control initialises again and traffic flows. Whatever arrives, arrives once and in
    order, and every TLP offered after the link is back arrives."""
    link = Link(PARAMS, 8, seed=9, tlps_ab=traffic(9, 60), tlps_ba=traffic(10, 60), busy=0.2)
    marks = {}

    def down(link, ctx):
        link.set_link(ctx, False)
        marks["down"] = (link.cycle, len(link.src_a.taken), len(link.src_b.taken))

    def up(link, ctx):
        link.set_link(ctx, True)
        marks["up"] = (link.cycle, len(link.src_a.taken), len(link.src_b.taken))
        link.src_a.add(traffic(11, 15))
        link.src_b.add(traffic(12, 15))

    def done(link):
        return ("up" in marks and not link.src_a.beats and not link.src_b.beats
                and link.sink_b.tlps[-15:] == link.src_a.tlps[-15:]
                and link.sink_a.tlps[-15:] == link.src_b.tlps[-15:])

    link.run(30_000, done, events={350: down, 550: up})
    for src, sink in ((link.src_a, link.sink_b), (link.src_b, link.sink_a)):
        # exactly once and in order: the delivered TLPs are a subsequence of those offered
        it = iter(src.tlps)
        assert all(any(raw == offered for offered in it) for raw in sink.tlps)
        assert len(set(sink.tlps)) == len(sink.tlps)
    down_cycle, up_cycle = marks["down"][0], marks["up"][0]
    log = link.dl_up_log
    assert (down_cycle, 0, 0) in log, log
    back = [cycle for cycle, a, b in log if cycle > up_cycle and a and b]
    assert back and back[0] < up_cycle + 4 * DELAY + 100, log
    # while down, the sources kept going: their TLPs were taken (and dropped)
    assert marks["up"][1] > marks["down"][1] and marks["up"][2] > marks["down"][2]


@pytest.mark.parametrize("width", [8, 16])
def test_back_to_back_throughput(width):
    """256-byte writes offered back to back, enough credits, Acks coming back: the TLP
    packets leave one beat per cycle, with no idle cycle between them."""
    rng = random.Random(width)
    tlps = [Tlp(Kind.MWR64, requester_id=i, addr=(1 << 32) + 256 * i,
                payload=rng.randbytes(256), last_be=0xF).encode() for i in range(40)]
    link = Link(PARAMS, width, seed=width, tlps_ab=tlps)
    beats = {}   # cycle -> dllp of the beat a sent

    class Meter:
        def signals(self):
            a = link.pair.a.phy_tx
            return [a.valid, a.ready, a.payload.dllp]

        def drive(self, ctx, cycle):
            pass

        def observe(self, cycle, valid, ready, dllp):
            if valid and ready:
                beats[cycle] = dllp

    link.parts.append(Meter())
    link.run(20_000, Link.all_delivered)
    assert link.sink_b.tlps == tlps
    starts = [cycle for dllp, _, cycle in link.ab.packets if not dllp]
    ends = starts[-1] + -(-(len(tlps[-1]) + 6) // width)
    window = range(starts[0], ends)
    tlp_beats = sum(1 for c in window if beats.get(c) == 0)
    dllp_beats = sum(1 for c in window if beats.get(c) == 1)
    idle = len(window) - tlp_beats - dllp_beats
    rate = tlp_beats / len(window)
    print(f"\nW={width}: {len(tlps)} TLPs of 256 B in {len(window)} cycles: "
          f"{rate:.3f} TLP beats/cycle, {dllp_beats} DLLP beats, {idle} idle cycles")
    assert tlp_beats == len(tlps) * -(-(len(tlps[0]) + 6) // width)
    assert idle == 0
    assert rate >= 0.98


def test_what_the_transmitter_cannot_send_is_dropped():
    """An empty TLP (a lone last beat with no dwords) and one longer than the replay buffer
    are taken and dropped; TLPs whose length field lies are framed by ``last`` and arrive as
    sent -- even one that claims more data credits than the receiver advertises in all.
    Traffic around them is unaffected."""
    params = PARAMS.replace(link_replay_bytes=256)
    good = traffic(13, 6, max_payload=64)
    short = bytearray(Tlp(Kind.MWR32, addr=0x1000, payload=bytes(range(64)) * 2).encode())
    short[3] = 1   # says one dword, carries 32
    long = bytearray(Tlp(Kind.CFGWR0, cfg_reg=3, payload=b"abcd").encode())
    long[2:4] = b"\0\0"  # says 1024 dwords (256 data credits, NPD advertises 32)
    liars = [bytes(short), bytes(long), bytes(long)]
    huge = Tlp(Kind.MWR32, addr=0x2000, payload=bytes(300)).encode()
    link = Link(params, 8, seed=13)
    link.src_a.add(good[:2])
    link.src_a.beats.append((link.src_a.packing.pack(data=0, dws=0, last=1), True, -1))
    link.src_a.add(good[2:4] + [huge] + liars + good[4:])
    link.run(10_000, lambda link: len(link.sink_b.tlps) == 9)
    assert link.sink_b.tlps == good[:4] + liars + good[4:]
    assert all(v == 0 for v in link.counters.values()), link.counters


@pytest.mark.parametrize("width", [8, 16])
def test_short_tlps_are_framed_by_last(width):
    """TLPs of one to five dwords of random bytes (nonsense headers, no data by fmt) over a
    lossy link: framed by ``last``, not by the header. At W = 16 the packets of one- and
    two-dword TLPs fit in a single beat, and their received word is written in the cycle
    after."""
    rng = random.Random(width)

    def tlp():
        raw = bytearray(rng.randbytes(4 * rng.randint(1, 5)))
        raw[0] &= 0x1F
        return bytes(raw)
    tlps_ab, tlps_ba = [tlp() for _ in range(60)], [tlp() for _ in range(60)]
    link = Link(PARAMS, width, seed=20 + width, tlps_ab=tlps_ab, tlps_ba=tlps_ba,
                faults={"flip": 0.05, "drop": 0.03, "flip_dllp": 0.03}, busy=0.3)
    link.run(20_000, Link.all_delivered)
    assert link.sink_b.tlps == tlps_ab and link.sink_a.tlps == tlps_ba
    assert link.counters["a.bad_tlps"] + link.counters["b.bad_tlps"] > 0


def test_rx_buffer_and_parameters():
    """The receive buffer holds what the default credits allow (640 credits of 16 bytes,
    rounded up to a power of two of words); parameters out of range are refused."""
    assert rx_buffer_words(HwParams(), 8) == 2048     # 1280 words needed
    assert rx_buffer_words(HwParams(), 16) == 1024    # 640
    assert rx_buffer_words(HwParams(), 32) == 512     # 320 + one per header (96)
    for bad in ({"link_replay_bytes": 3000}, {"link_replay_bytes": 16},
                {"link_ph_credits": 0}, {"link_pd_credits": 2048},
                {"link_replay_timeout": 1}):
        with pytest.raises(ValueError):
            DataLinkLayer(HwParams().replace(**bad))
    with pytest.raises(ValueError):
        DataLinkLayer(HwParams(), 12)
