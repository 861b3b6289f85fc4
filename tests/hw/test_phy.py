# amaranth: UnusedElaboratable=no
"""Tests of ``hw/link/phy.py`` in Amaranth's simulator: Framer -> Wire -> Deframer with random
link packets (TLP packets of ``4k + 2`` bytes, 6-byte DLLPs) and random gaps, checked against
a Python model of the framing written from the format (not from the RTL): bit-exact delivery
in order, the documented latency, frames at full rate with no idle flit between them, bit
flips (counted, framing errors, resynchronisation), link down and up, a receiver that
overflows, and a transmitter whose input does not keep up. Widths 8, 16 and 32 bytes.
"""

import random
from functools import partial

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from npusim.hw.link.phy import (Deframer, Framer, Phy, Wire, frame_crc, frame_flits,
                                max_tlp_dwords)

MAX_PAYLOAD = 256
MAX_DWORDS = (4 + 16 + MAX_PAYLOAD + 4) // 4
#: Bits of an STP token that the receiver checks: bytes 0-1 and the frame CRC (byte 2, 7:4).
CHECKED_BITS = [*range(16), *range(20, 24)]


# -- reference model -------------------------------------------------------------------------

def fcrc_model(dwords):
    """The frame CRC as the remainder of length(x) * x^4 divided by x^4 + x + 1."""
    r = dwords << 4
    for bit in range(14, 3, -1):
        if r >> bit & 1:
            r ^= 0b10011 << (bit - 4)
    return r


def parity(value):
    return value.bit_count() & 1


def frame_bytes(packet, dllp):
    """The bytes a packet is sent as: its token, then the packet (seq byte 0 carrying the
    frame CRC for a TLP)."""
    if dllp:
        return bytes([0xF0, 0xAC]) + packet
    dwords = (len(packet) + 2) // 4
    crc = fcrc_model(dwords)
    return bytes([0xF | (dwords & 0xF) << 4,
                  dwords >> 4 | parity(dwords << 4 | crc) << 7,
                  packet[0] & 0xF | crc << 4]) + packet[1:]


def frame(packet, dllp, width):
    """The flits (ints, byte ``i`` at bits ``8i``) of one packet's frame."""
    raw = frame_bytes(packet, dllp)
    raw += bytes(-len(raw) % width)
    return [int.from_bytes(raw[i:i + width], "little") for i in range(0, len(raw), width)]


def token_kind(flit, width):
    """'idle', 'sdp', ('stp', dwords) or 'error' for a flit that may start a frame."""
    b = flit.to_bytes(width, "little")
    if not flit:
        return "idle"
    if b[0] == 0xF0 and b[1] == 0xAC:
        return "sdp"
    dwords = b[0] >> 4 | (b[1] & 0x7F) << 4
    crc = b[2] >> 4
    if (b[0] & 0xF == 0xF and crc == fcrc_model(dwords)
            and parity(dwords << 5 | crc << 1 | b[1] >> 7) == 0 and 5 <= dwords <= MAX_DWORDS):
        return ("stp", dwords)
    return "error"


def deframe(flits, width):
    """What a receiver recovers from a flit stream: ([(packet, dllp, first flit index)],
    framing errors). Packets whose frame runs past the end are left out."""
    packets, errors, i = [], 0, 0
    while i < len(flits):
        kind = token_kind(flits[i], width)
        if kind == "sdp":
            packets.append((flits[i].to_bytes(width, "little")[2:8], True, i))
            i += 1
        elif isinstance(kind, tuple):
            n = 4 * kind[1]
            count = -(-n // width)
            if i + count > len(flits):
                break
            raw = b"".join(f.to_bytes(width, "little") for f in flits[i:i + count])
            packets.append((bytes([raw[2] & 0xF]) + raw[3:n], False, i))
            i += count
        else:
            errors += kind == "error"
            i += 1
    return packets, errors


def random_packet(rng, *, big=0.2):
    """(bytes, dllp): a 6-byte DLLP, or seq (4 reserved zero bits) + TLP + LCRC with a
    3DW or 4DW header and a payload up to MAX_PAYLOAD (sometimes the largest)."""
    if rng.random() < 0.3:
        return bytes(rng.randrange(256) for _ in range(6)), True
    header = rng.choice([12, 16])
    if rng.random() < big:
        payload = MAX_PAYLOAD
    else:
        payload = rng.choice([0, 4 * rng.randint(1, 16), 4 * rng.randint(1, MAX_PAYLOAD // 4)])
    body = bytes(rng.randrange(256) for _ in range(header + payload + 4))
    return bytes([rng.randrange(16), rng.randrange(256)]) + body, False


# -- harness ---------------------------------------------------------------------------------

class Chain(Elaboratable):
    """Framer -> Wire -> Deframer, the framer's link state tied to the wire's ``up`` and the
    deframer's to the wire's ``link_up``."""

    def __init__(self, width, latency, seed):
        self.framer = Framer(width)
        self.wire = Wire(width, latency, seed=seed)
        self.deframer = Deframer(width, max_payload=MAX_PAYLOAD)

    def elaborate(self, platform):
        m = Module()
        m.submodules.framer, m.submodules.wire = self.framer, self.wire
        m.submodules.deframer = self.deframer
        m.d.comb += [self.wire.i.eq(self.framer.flit), self.deframer.flit.eq(self.wire.o),
                     self.framer.link_up.eq(self.wire.up),
                     self.deframer.link_up.eq(self.wire.link_up)]
        return m


class Item:
    """A packet for the source: ``gap`` idle cycles before it; ``hole`` = (beat, cycles): the
    source withholds that beat for that many cycles (breaking the framer's contract);
    ``length``: a wrong length field to send."""

    def __init__(self, data, dllp, gap=0, hole=None, length=None):
        self.data, self.dllp, self.gap, self.hole = data, dllp, gap, hole
        self.length = len(data) if length is None else length

    def beats(self, width, rng):
        """Payload dicts; ``length`` is only right on the first beat and the bytes past
        ``nbytes`` are random, as the framer must ignore both."""
        result = []
        for start in range(0, len(self.data), width):
            chunk = self.data[start:start + width]
            data = int.from_bytes(chunk + bytes(rng.randrange(256)
                                                for _ in range(width - len(chunk))), "little")
            result.append({"data": data, "nbytes": len(chunk),
                           "last": start + width >= len(self.data), "dllp": self.dllp,
                           "length": self.length if start == 0 else rng.randrange(1 << 13)})
        return result


class Record:
    """What a run saw, cycle by cycle."""

    def __init__(self, width):
        self.width = width
        self.accepts = []    # (cycle, item index, beat index)
        self.tx = []         # framer.flit per cycle
        self.up = []         # wire.up per cycle
        self.rx_flits = []   # wire.o per cycle
        self.link_up = []    # wire.link_up per cycle
        self.beats = []      # (cycle, data, nbytes, last, dllp, length) taken by the receiver
        self.offered = []    # (cycle, ...) offered while ready was low
        self.counters = {}

    def packets(self):
        """The delivered packets: (bytes, dllp, cycle of the first beat)."""
        result, current = [], None
        for cycle, data, nbytes, last, dllp, length in self.beats:
            if current is None:
                current = [b"", dllp, cycle]
            current[0] += data.to_bytes(self.width, "little")[:nbytes]
            if last:
                result.append(tuple(current))
                current = None
        return result


def run(width, items, *, latency=32, seed=1, flip_rate=0, up=None, ready=None,
        cycles=20000, drain=None):
    """Send ``items`` through a Chain; ``up(cycle)`` and ``ready(cycle)`` (default always 1)
    drive the wire's link state and the receiver's ready; ``flip_rate`` is a number or a
    function of the index of the item being sent. Runs until every item was taken
    and ``drain`` more cycles passed; fails after ``cycles``."""
    rng = random.Random(seed)
    dut = Chain(width, latency, seed)
    rec = Record(width)
    drain = latency + 2 * frame_flits(MAX_DWORDS * 4 - 2, width) + 8 if drain is None else drain
    beats = [item.beats(width, rng) for item in items]
    framer, wire, deframer = dut.framer, dut.wire, dut.deframer

    async def bench(ctx):
        index = beat = hole = 0
        wait = items[0].gap if items else 0
        holes_done = set()
        done_at = None
        for cycle in range(cycles):
            item = items[index] if index < len(items) else None
            if (item is not None and item.hole and item.hole[0] == beat and wait == 0
                    and hole == 0 and index not in holes_done):
                hole = item.hole[1]
                holes_done.add(index)
            offering = item is not None and wait == 0 and hole == 0
            ctx.set(framer.packets.valid, offering)
            if offering:
                ctx.set(framer.packets.payload, beats[index][beat])
            ctx.set(wire.up, 1 if up is None else up(cycle))
            ctx.set(wire.flip_rate, flip_rate(index) if callable(flip_rate) else flip_rate)
            ctx.set(deframer.packets.ready, 1 if ready is None else ready(cycle))
            (_, _, f_ready, flit, w_up, o, link_up, valid, payload, d_ready) = \
                await ctx.tick().sample(framer.packets.ready, framer.flit, wire.up, wire.o,
                                        wire.link_up, deframer.packets.valid,
                                        deframer.packets.payload, deframer.packets.ready)
            rec.tx.append(flit)
            rec.up.append(w_up)
            rec.rx_flits.append(o)
            rec.link_up.append(link_up)
            if valid:
                entry = (cycle, payload.data, payload.nbytes, payload.last, payload.dllp,
                         payload.length)
                (rec.beats if d_ready else rec.offered).append(entry)
            if hole:
                hole -= 1
            elif wait:
                wait -= 1
            elif offering and f_ready:
                rec.accepts.append((cycle, index, beat))
                beat += 1
                if beat == len(beats[index]):
                    index, beat = index + 1, 0
                    wait = items[index].gap if index < len(items) else 0
            if index == len(items) and done_at is None:
                done_at = cycle
            if done_at is not None and cycle >= done_at + drain:
                break
        else:
            raise AssertionError(f"not done after {cycles} cycles: {index}/{len(items)} sent")
        for name, signal in (("underruns", framer.underruns), ("flips", wire.flips),
                             ("framing_errors", deframer.framing_errors),
                             ("overflows", deframer.overflows)):
            rec.counters[name] = ctx.get(signal)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return rec


def random_items(rng, count, *, gaps=True, big=0.2):
    items = []
    for _ in range(count):
        data, dllp = random_packet(rng, big=big)
        gap = rng.choice([0, 0, 1, rng.randint(2, 12)]) if gaps else 0
        items.append(Item(data, dllp, gap))
    return items


def frame_starts(rec, items):
    """Cycle of each item's token flit on the framer's output (first beat taken + 1)."""
    return {index: cycle + 1 for cycle, index, beat in rec.accepts if beat == 0}


def check_frames(rec, items, width):
    """The framer sent each packet's model frame in the flits after its first beat was taken,
    and zeros everywhere else."""
    starts = frame_starts(rec, items)
    expected = [0] * len(rec.tx)
    for index, start in starts.items():
        flits = frame(items[index].data, items[index].dllp, width)
        expected[start:start + len(flits)] = flits
    assert rec.tx == expected[:len(rec.tx)]


# -- tests -----------------------------------------------------------------------------------

def test_frame_crc_and_token_checks():
    """The module's frame CRC equals polynomial division; every single-bit error in the 20
    checked token bits of any valid length is caught (not idle, SDP or a valid STP)."""
    assert [frame_crc(n) for n in range(2048)] == [fcrc_model(n) for n in range(2048)]
    for dwords in range(5, MAX_DWORDS + 1):
        packet = bytes([dwords % 16, 0x5A]) + bytes(4 * dwords - 4)
        flit = frame(packet, False, 8)[0]
        assert token_kind(flit, 8) == ("stp", dwords)
        for bit in CHECKED_BITS:
            assert token_kind(flit ^ 1 << bit, 8) == "error", (dwords, bit)


def test_efficiency_formula():
    """A TLP of P payload bytes and an H-byte header takes ceil((P + H + 8) / W) flits."""
    assert frame_flits(2 + 16 + 256 + 4, 8) == 35
    assert 256 / (35 * 8) == pytest.approx(0.914, abs=5e-4)
    for width in (8, 16, 32):
        for header in (12, 16):
            for payload in range(0, 1024, 4):
                assert frame_flits(2 + header + payload + 4, width) == \
                    -(-(payload + header + 8) // width)
        assert frame_flits(6, width, dllp=True) == 1
    assert max_tlp_dwords(256) == MAX_DWORDS == 70


@pytest.mark.parametrize("width,seed", [(8, 1), (8, 2), (16, 3), (32, 4)])
def test_random_packets_end_to_end(width, seed):
    """Random packets with random gaps: the framer's flits are the model's frames, and the
    receiver gets every packet bit-exact, in order, each beat exactly latency + 2 cycles
    after the framer took it, with right nbytes/last/dllp/length and zeros past nbytes."""
    rng = random.Random(seed)
    latency = 32 if width == 8 else 9
    items = random_items(rng, 40 if width == 8 else 30)
    rec = run(width, items, latency=latency, seed=seed)
    check_frames(rec, items, width)
    assert [(p, d) for p, d, _ in rec.packets()] == [(i.data, i.dllp) for i in items]
    assert [cycle + latency + 2 for cycle, _, _ in rec.accepts] == [b[0] for b in rec.beats]
    position = 0
    for item in items:
        count = -(-len(item.data) // width)
        for k, (_, data, nbytes, last, dllp, length) in enumerate(
                rec.beats[position:position + count]):
            assert (nbytes, last, dllp, length) == (
                min(width, len(item.data) - k * width), k == count - 1, item.dllp,
                len(item.data))
            assert data >> 8 * nbytes == 0
        position += count
    assert rec.counters == {"underruns": 0, "flips": 0, "framing_errors": 0, "overflows": 0}
    assert rec.offered == []


@pytest.mark.parametrize("width", [8, 16, 32])
def test_back_to_back_full_rate(width):
    """Largest TLPs (4DW header, 256 B), then a mix of sizes, all with no gap: the framer
    takes a beat every cycle, the flits from the first token to the last packet's end are
    all frames (no idle flit), ceil(280 / W) flits per largest TLP."""
    rng = random.Random(width)
    largest = [Item(bytes([0, n]) + bytes(rng.randrange(256) for _ in range(16 + 256 + 4)),
                    False) for n in range(6)]
    mixed = random_items(rng, 12, gaps=False)
    for items in (largest, mixed):
        rec = run(width, items, latency=4)
        cycles = [cycle for cycle, _, _ in rec.accepts]
        assert cycles == list(range(cycles[0], cycles[0] + len(cycles))), "input bubbles"
        check_frames(rec, items, width)
        starts = frame_starts(rec, items)
        flits = sum(frame_flits(len(i.data), width, dllp=i.dllp) for i in items)
        span = rec.tx[starts[0]:starts[0] + flits]
        assert all(span), "an idle flit between back-to-back packets"
        assert [(p, d) for p, d, _ in rec.packets()] == [(i.data, i.dllp) for i in items]
        if items is largest:
            # ceil((256 + 16 + 8) / W) flits per packet, from one token to the next.
            assert [starts[i + 1] - starts[i] for i in range(5)] == [-(-280 // width)] * 5


@pytest.mark.parametrize("width,seed", [(8, 5), (16, 6)])
def test_bit_flips(width, seed):
    """A flip rate of ~5 %: each counted flip is one flipped bit of one flit; the receiver
    does exactly what the model does with the flits it got (framing errors included); every
    packet with no flipped flit comes through intact unless a corrupted flit happened to pass
    for a token over it; after the flips stop, the next packet is delivered."""
    rng = random.Random(seed)
    latency = 16
    items = random_items(rng, 120, big=0.1)
    rate = 3000
    items.append(Item(*random_packet(rng), gap=200))   # sent after the flips are turned off
    rec = run(width, items, latency=latency, seed=seed,
              flip_rate=lambda index: rate if index < len(items) - 1 else 0)
    # Flips: the wire's count is the flits that differ from what was sent, by one bit.
    sent = rec.tx[:-latency]
    got = rec.rx_flits[latency:]
    flipped = [c for c, (a, b) in enumerate(zip(sent, got)) if a != b]
    assert all((sent[c] ^ got[c]).bit_count() == 1 for c in flipped)
    assert len(flipped) == rec.counters["flips"] > 0
    n = len(sent)
    assert abs(len(flipped) - n * rate / 65536) < 5 * (n * rate / 65536) ** 0.5
    # The receiver matches the model on the flits it got.
    model, errors = deframe(rec.rx_flits, width)
    assert [(p, d) for p, d, _ in rec.packets()] == [(p, d) for p, d, _ in model]
    assert rec.counters["framing_errors"] == errors > 0
    # Against what was sent.
    starts = frame_starts(rec, items)
    real = {starts[i] + latency: i for i in range(len(items))}
    hit_flits = set(flipped)
    false_frames = [(start, start + frame_flits(len(p) if not d else 6, width, dllp=d))
                    for p, d, start in model if start not in real]
    delivered = {real[start]: (p, d) for p, d, start in model if start in real}
    for index, item in enumerate(items):
        span = range(starts[index], starts[index] + frame_flits(len(item.data), width,
                                                                dllp=item.dllp))
        if any(c in hit_flits for c in span):
            continue
        covered = any(lo - latency <= c < hi - latency for lo, hi in false_frames
                      for c in span)
        assert covered or delivered.get(index) == (item.data, item.dllp), \
            f"clean packet {index} lost"
    assert delivered[len(items) - 1] == (items[-1].data, items[-1].dllp)


@pytest.mark.parametrize("width,cut,down", [(8, 9, 5), (8, 9, 60), (8, 3, 40), (16, 2, 3),
                                            (8, 40, 20)])
def test_link_down_and_up(width, cut, down):
    """The link goes down ``cut`` cycles after the third packet's first beat was taken, for
    ``down`` cycles (shorter and longer than the wire). Packets whose frames were wholly sent
    before arrive intact; the one cut arrives at most as a prefix ended by a zero beat with
    ``last`` (or not at all); packets offered meanwhile wait and arrive intact; the rest too;
    no framing error."""
    rng = random.Random(cut * 100 + down)
    latency = 12
    items = [Item(bytes([0, k]) + bytes(rng.randrange(256) for _ in range(16 + 64 + 4)),
                  False, gap=0 if k else 2) for k in range(8)]
    items[5].gap = 30
    # A first run finds when the third packet starts; the real run cuts the link there.
    first_beat = run(width, items, latency=latency).accepts
    start = next(cycle for cycle, index, beat in first_beat if index == 2 and beat == 0)
    low = range(start + cut, start + cut + down)
    rec = run(width, items, latency=latency, up=lambda c: c not in low)
    assert rec.link_up[latency:] == rec.up[:-latency]
    starts = frame_starts(rec, items)
    sizes = [frame_flits(len(i.data), width) for i in items]
    whole = [i for i in range(len(items))
             if all(rec.up[c] for c in range(starts[i], starts[i] + sizes[i]))]
    cut_items = [i for i in range(len(items)) if i not in whole]
    assert len(cut_items) <= 1
    got = rec.packets()
    expected = [(items[i].data, False) for i in whole]
    got_pairs = [(p, d) for p, d, _ in got]
    if len(got_pairs) == len(expected):
        assert got_pairs == expected
    else:
        (index,) = cut_items
        position = len([i for i in whole if i < index])
        assert got_pairs[:position] + got_pairs[position + 1:] == expected
        truncated = got_pairs[position][0]
        original = items[index].data
        beats = -(-len(truncated) // width) - 1
        assert beats >= 1
        assert truncated[:beats * width] == original[:beats * width]
        assert truncated[beats * width:] == bytes(min(width, len(original) - beats * width))
    assert rec.counters["framing_errors"] == 0
    # While down, the framer took no new packet.
    for cycle, index, beat in rec.accepts:
        if beat == 0:
            assert rec.up[cycle]


@pytest.mark.parametrize("latency", [2, 3, 7, 32])
def test_wire_latency_and_link_up(latency):
    """The wire: o(t) = i(t - latency) while up, zeros while down, link_up = up delayed. With
    flips on, a flit differs from what was sent by exactly one bit, only while up, and
    ``flips`` counts those flits."""
    for rate in (0, 30000):
        sent, ups, outs, link, count = _drive_wire(latency, rate)
        assert link == [0] * latency + ups[:-latency]
        expected = [0] * latency + sent[:-latency]
        if rate == 0:
            assert outs == expected and count == 0
            continue
        differ = [t for t in range(len(outs)) if outs[t] != expected[t]]
        assert all((outs[t] ^ expected[t]).bit_count() == 1 and link[t] for t in differ)
        up_cycles = sum(ups[:-latency])
        assert 0.3 * up_cycles < len(differ) < 0.6 * up_cycles
        # Flits still in the wire at the end were counted when sent.
        assert count >= len(differ) and count - len(differ) <= latency


def _drive_wire(latency, rate, cycles=300):
    """Random flits into a Wire with ``up`` toggling: (sent (zero while down), up, o,
    link_up) per cycle and the final ``flips``."""
    rng = random.Random(latency)
    wire = Wire(8, latency, seed=latency)
    sent, ups, outs, link, count = [], [], [], [], []

    async def bench(ctx):
        ctx.set(wire.flip_rate, rate)
        up = 1
        for _ in range(cycles):
            if rng.random() < 0.05:
                up ^= 1
            flit = rng.randrange(1 << 64)
            ctx.set(wire.i, flit)
            ctx.set(wire.up, up)
            _, _, o, link_up = await ctx.tick().sample(wire.o, wire.link_up)
            sent.append(flit if up else 0)
            ups.append(up)
            outs.append(o)
            link.append(link_up)
        count.append(ctx.get(wire.flips))

    sim = Simulator(wire)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return sent, ups, outs, link, count[0]


@pytest.mark.parametrize("width", [8, 16])
def test_framer_underrun_and_long_packet(width):
    """Breaking the framer's contract: a beat withheld mid-packet, a packet longer than its
    length field, and one shorter with a beat withheld. Each frame still has exactly the
    flits its token announces (zeros after the break), the rest of the packet is taken and
    dropped, ``underruns`` counts the breaks, and the following packets arrive intact."""
    rng = random.Random(width)
    body = [bytes([0, k]) + bytes(rng.randrange(256) for _ in range(16 + 128 + 4))
            for k in range(7)]
    items = [Item(body[0], False), Item(body[1], False, hole=(3, 2)), Item(body[2], False),
             Item(body[3], False, length=len(body[3]) - 64), Item(body[4], False),
             Item(body[5], False, hole=(1, 1), length=len(body[5]) + 64), Item(body[6], False)]
    rec = run(width, items, latency=4)
    assert rec.counters["underruns"] == 3
    starts = frame_starts(rec, items)
    flits = frame_flits(len(body[0]), width)
    # The broken frame: its first three flits as sent, then the carried 2 bytes, then zeros.
    expected = frame(body[1], False, width)
    broken = rec.tx[starts[1]:starts[1] + flits]
    assert broken[:3] == expected[:3]
    assert broken[3] == expected[3] & 0xFFFF and broken[4:] == [0] * (flits - 4)
    # The withheld beat delays the rest of the packet, which is drained after the frame.
    assert starts[2] - starts[1] == flits + 2
    # The long packet: its frame follows its length field; its extra beats are drained.
    short = frame_flits(len(body[3]) - 64, width)
    assert rec.tx[starts[3]:starts[3] + short] == \
        frame(body[3][:-64], False, width)[:short - 1] + rec.tx[starts[3] + short - 1:
                                                                 starts[3] + short]
    assert starts[4] - starts[3] == -(-len(body[3]) // width)
    # The short packet's beats end inside its (longer) frame; the next starts right after.
    assert starts[6] - starts[5] == frame_flits(len(body[5]) + 64, width)
    got = rec.packets()
    assert [p for p, _, _ in got][0::2] == [body[0], body[2], body[4], body[6]]
    assert len(got[5][0]) == len(body[5]) + 64 and got[5][0][:width] == body[5][:width]
    assert got[1][0] != body[1] and len(got[1][0]) == len(body[1])
    assert got[3][0] == body[3][:-64]
    assert rec.counters["framing_errors"] == 0


def test_receiver_overflow():
    """``ready`` low under a packet's first beat drops that whole packet; low mid-packet drops
    its beats from there on; both counted, the others delivered."""
    rng = random.Random(7)
    items = [Item(bytes([0, k]) + bytes(rng.randrange(256) for _ in range(16 + 32 + 4)), False,
                  gap=3) for k in range(4)]
    probe = run(8, items, latency=4)
    first = {index: cycle + 4 + 2 for cycle, index, beat in probe.accepts if beat == 0}
    count = -(-len(items[0].data) // 8)
    low = {first[1], first[2] + 3}
    rec = run(8, items, latency=4, ready=lambda c: c not in low)
    assert rec.counters["overflows"] == 2
    assert [cycle for cycle, *_ in rec.offered] == sorted(low)
    assert [beat[0] for beat in rec.beats] == (
        [first[0] + k for k in range(count)] + [first[2] + k for k in range(3)]
        + [first[3] + k for k in range(count)])
    data = b"".join(beat[1].to_bytes(8, "little")[:beat[2]] for beat in rec.beats)
    assert data == items[0].data + items[2].data[:24] + items[3].data


def test_phy_both_directions():
    """Two Phys joined by two wires carry random traffic both ways at once."""
    width, latency = 8, 6
    a, b = Phy(width), Phy(width)
    ab, ba = Wire(width, latency, seed=3), Wire(width, latency, seed=4)

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules += [a, b, ab, ba]
            m.d.comb += [ab.i.eq(a.flit_tx), b.flit_rx.eq(ab.o), b.rx_up.eq(ab.link_up),
                         ba.i.eq(b.flit_tx), a.flit_rx.eq(ba.o), a.rx_up.eq(ba.link_up)]
            return m

    rng = random.Random(11)
    traffic = {0: [random_packet(rng) for _ in range(15)],
               1: [random_packet(rng) for _ in range(15)]}
    received = {0: [], 1: []}

    async def source(ctx, phy, packets):
        for data, dllp in packets:
            for _ in range(rng.randint(0, 3)):
                await ctx.tick()
            for start in range(0, len(data), width):
                chunk = data[start:start + width]
                ctx.set(phy.packets_tx.payload, {
                    "data": int.from_bytes(chunk, "little"), "nbytes": len(chunk),
                    "last": start + width >= len(data), "dllp": dllp, "length": len(data)})
                ctx.set(phy.packets_tx.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(phy.packets_tx.ready)
                    if ready:
                        break
            ctx.set(phy.packets_tx.valid, 0)

    async def sink(ctx, phy, into):
        ctx.set(phy.packets_rx.ready, 1)
        current = b""
        async for _, _, valid, payload in ctx.tick().sample(phy.packets_rx.valid,
                                                            phy.packets_rx.payload):
            if valid:
                current += payload.data.to_bytes(width, "little")[:payload.nbytes]
                if payload.last:
                    into.append((current, bool(payload.dllp)))
                    current = b""

    async def until_done(ctx):
        for _ in range(3000):
            if all(len(received[k]) == len(traffic[k]) for k in (0, 1)):
                return
            await ctx.tick()
        raise AssertionError(f"not done: {[len(received[k]) for k in (0, 1)]}")

    sim = Simulator(Top())
    sim.add_clock(1e-6)
    sim.add_testbench(partial(source, phy=a, packets=traffic[0]), background=True)
    sim.add_testbench(partial(source, phy=b, packets=traffic[1]), background=True)
    sim.add_testbench(partial(sink, phy=b, into=received[0]), background=True)
    sim.add_testbench(partial(sink, phy=a, into=received[1]), background=True)
    sim.add_testbench(until_done)
    sim.run()
    assert received == traffic


def test_deframer_token_errors():
    """Fed crafted flits: every single-bit corruption of valid STP and SDP tokens, and STP
    lengths just outside the limits, are framing errors (one each, sync kept); the limits
    themselves start packets."""
    width = 8
    dut = Deframer(width, max_payload=MAX_PAYLOAD)
    bad, good = [], []
    for dwords in (5, 9, MAX_DWORDS):
        flit = frame(bytes([3, 7]) + bytes(4 * dwords - 4), False, width)[0]
        bad += [flit ^ 1 << bit for bit in CHECKED_BITS]
    sdp = frame(bytes(range(1, 7)), True, width)[0]
    bad += [sdp ^ 1 << bit for bit in range(16)]
    for dwords in (4, MAX_DWORDS + 1):   # the right CRC and parity, length out of range
        crc = fcrc_model(dwords)
        bad.append(0xF | (dwords & 0xF) << 4 | (dwords >> 4 | parity(dwords << 4 | crc) << 7)
                   << 8 | crc << 20)
    for dwords in (5, MAX_DWORDS):
        good.append(frame(counting(dwords), False, width))
    stream = [f for flit in bad for f in (flit, 0)] + [f for g in good for f in g] + [0, 0]
    delivered = []

    async def bench(ctx):
        ctx.set(dut.packets.ready, 1)
        current = b""
        for flit in stream:
            ctx.set(dut.flit, flit)
            _, _, valid, payload = await ctx.tick().sample(dut.packets.valid,
                                                           dut.packets.payload)
            if valid:
                current += payload.data.to_bytes(width, "little")[:payload.nbytes]
                if payload.last:
                    delivered.append(current)
                    current = b""
        assert ctx.get(dut.framing_errors) == len(bad)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert delivered == [counting(d) for d in (5, MAX_DWORDS)]


def counting(dwords):
    """A TLP packet of an STP length of ``dwords``: seq 0x102, then bytes 0, 1, 2, ..."""
    return bytes([1, 2]) + bytes(i % 256 for i in range(4 * dwords - 4))


def test_bad_parameters():
    for width in (4, 12):
        with pytest.raises(ValueError):
            Framer(width)
    with pytest.raises(ValueError):
        Wire(8, 1)
    with pytest.raises(ValueError):
        Wire(8, 4, seed=0)
    with pytest.raises(ValueError):
        Deframer(8, max_payload=6)
