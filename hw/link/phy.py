"""The physical layer: link packets <-> flits on a wire, with latency and injected faults.

The data-link layer hands over link packets (:func:`~npusim.hw.link.tlp.link_packet`); one
direction of a link carries a flit of ``W`` bytes every cycle. Framing is modelled on PCIe
Gen3 (128b/130b) tokens, without scrambling, sync headers or ordered sets:

- **idle** (IDL): a flit of zero bytes;
- **TLP**: the 4-byte STP token, the TLP, the LCRC. The token's last two bytes are the
  packet's sequence number bytes, so a framed TLP is the link packet with two bytes in front:
  byte 0 = ``0xF`` in bits 3:0 and ``length[3:0]`` in bits 7:4, byte 1 = ``length[10:4]`` in
  bits 6:0 and the frame parity in bit 7, byte 2 = the frame CRC in bits 7:4 (where the link
  packet has its 4 reserved zero bits) and ``seq[11:8]`` in bits 3:0, byte 3 = ``seq[7:0]``.
  ``length`` counts the dwords of token + TLP + LCRC (``(packet bytes + 2) / 4``), the frame
  CRC is :func:`frame_crc` of it and the parity makes the 15 bits of length, frame CRC and
  parity even;
- **DLLP**: the 2-byte SDP token ``0xF0, 0xAC``, then the packet's 6 bytes.

Simplification: every packet starts at byte 0 of a flit (PCIe packs the next token right
after the previous packet), so idle bytes pad each packet's last flit: a packet of ``n`` bytes
takes ``ceil((n + 2) / W)`` flits (:func:`frame_flits`). Back to back, a new packet starts in
the flit after the previous one's last. See ``docs/hw/link.md`` for the efficiency this gives.

:class:`Framer` and :class:`Deframer` are the two halves of one end (:class:`Phy` pairs them);
:class:`Wire` is one direction of the cable: a fixed latency, bit flips at a set rate, link
down.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .tlp import link_packet

__all__ = ["Framer", "Deframer", "Wire", "Phy", "frame_crc", "frame_flits", "SDP",
           "STP_NIBBLE", "MIN_TLP_DWORDS", "max_tlp_dwords"]

#: The SDP token (first two bytes of a framed DLLP).
SDP = (0xF0, 0xAC)
#: Bits 3:0 of an STP token's first byte.
STP_NIBBLE = 0xF
#: The shortest framed TLP: token + 3DW header without data + LCRC (PCIe's minimum too).
MIN_TLP_DWORDS = 5
_LENGTH_BITS = 11
_FCRC_POLY = 0b0011  # x^4 + x + 1 (the x^4 term implied)


def frame_crc(dwords):
    """The 4-bit frame CRC of an STP token's 11-bit ``length``: the CRC with generator
    x^4 + x + 1 (PCIe's FCRC polynomial), zero initial value, ``length[10]`` shifted in
    first. Linear in ``length``, so the RTL is a few XOR gates (:func:`_frame_crc_rtl`)."""
    crc = 0
    for bit in reversed(range(_LENGTH_BITS)):
        feedback = (crc >> 3 ^ dwords >> bit) & 1
        crc = (crc << 1) & 0xF
        if feedback:
            crc ^= _FCRC_POLY
    return crc


def _frame_crc_rtl(dwords):
    """:func:`frame_crc` of an 11-bit Value: each CRC bit is the XOR of the length bits whose
    own CRC has that bit set."""
    taps = [[i for i in range(_LENGTH_BITS) if frame_crc(1 << i) >> j & 1] for j in range(4)]
    return Cat(*[Cat(*[dwords[i] for i in tap]).xor() for tap in taps])


def frame_flits(packet_bytes, width, *, dllp=False):
    """Flits a link packet of ``packet_bytes`` takes on a ``width``-byte wire (its token
    included, idle padding to the end of its last flit)."""
    framed = 8 if dllp else packet_bytes + 2
    return -(-framed // width)


def max_tlp_dwords(max_payload):
    """The longest STP ``length`` (dwords): token + 4DW header + ``max_payload`` + LCRC."""
    return (4 + 16 + max_payload + 4) // 4


def _check_width(width):
    if width < 8 or width & (width - 1):
        raise ValueError(f"the flit width is a power of two of at least 8 bytes, not {width}")


def _mask_bytes(value, nbytes, count):
    """``value`` (``count`` bytes) with the bytes from ``nbytes`` on zeroed."""
    return Cat(*[Mux(i < nbytes, value[8 * i:8 * i + 8], 0) for i in range(count)])


class Framer(wiring.Component):
    """Link packets -> one flit every cycle (transmit half of the physical layer).

    Each packet becomes a frame of exactly :func:`frame_flits` flits: its token in bytes 0-1 of
    the first flit, then the packet shifted by two bytes, zero bytes after its end. The frame
    always has the length its token announces, whatever the input does, so the receiver never
    loses frame alignment through the transmitter:

    - a packet's beats must come back to back (each one valid in the cycle after the previous
      was taken; the data-link layer reads them from its replay buffer). If a beat is missing
      (an *underrun*), or the packet has more beats than its ``length`` says, the rest of the
      frame is sent as zeros (its LCRC then fails at the receiver), the remaining beats of the
      packet are taken and discarded, and ``underruns`` counts it;
    - a packet with fewer beats than its ``length`` says is padded with zeros.

    ``packets.ready`` does not depend on ``packets.valid``. A packet may start in every flit
    that does not continue a frame, so back-to-back packets leave no idle flit between them;
    valid packets (``4k + 2`` bytes, or a 6-byte DLLP) take one flit per beat, so the framer
    takes one beat every cycle.

    Link down (``link_up`` low): the flits are zeros, a frame in progress is abandoned (the
    rest of its packet is taken and discarded), and no new packet is taken (``ready`` low)
    until the link is up again; the next packet then starts on a fresh flit.

    Parameters
    ----------
    width : int
        ``W``: flit and beat bytes (a power of two, at least 8).

    Members
    -------
    packets : ``In(stream.Signature(link_packet(W)))``
        From the data-link layer.
    flit : ``Out(8 * W)``
        To the wire, registered: a packet whose first beat is taken in cycle ``t`` has its
        token on ``flit`` in cycle ``t + 1``, and beat ``k`` (taken in ``t + k``) ends in flit
        ``k`` (cycle ``t + k + 1``).
    link_up : ``In(1)``, init 1
        The link can carry flits (tie to the outgoing :class:`Wire`'s ``up``).
    underruns : ``Out(32)``
        Frames sent with zeros because their packet did not keep up or was longer than said.
    """

    def __init__(self, width):
        _check_width(width)
        self.width = width
        super().__init__({
            "packets": In(stream.Signature(link_packet(width))),
            "flit": Out(8 * width),
            "link_up": In(1, init=1),
            "underruns": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.width
        body = 8 * (width - 2)  # bits of a beat that fit in a flit after the 2-byte shift
        beat_in, up = self.packets, self.link_up
        payload = beat_in.payload
        beat = _mask_bytes(payload.data, payload.nbytes, width)

        left = Signal(range(-(-4 * ((1 << _LENGTH_BITS) - 1) // width) + 1))  # flits to come
        consuming = Signal()  # the input packet's beats belong to the frame on the wire
        draining = Signal()   # the input packet's remaining beats are discarded
        carry = Signal(16)    # the last two bytes of the previous beat

        dwords = Signal(_LENGTH_BITS)
        fcrc = _frame_crc_rtl(dwords)
        frame = Signal.like(left)
        m.d.comb += [
            dwords.eq((payload.length + 2) >> 2),
            frame.eq(Mux(payload.dllp, 1,
                         (Cat(Const(0, 2), dwords) + width - 1) >> (width.bit_length() - 1))),
        ]
        stp = Cat(Const(STP_NIBBLE, 4), dwords, Cat(dwords, fcrc).xor(),
                  beat[0:4], fcrc, beat[8:body])
        sdp = Cat(Const(SDP[0], 8), Const(SDP[1], 8), beat[:body])

        taken = beat_in.valid & beat_in.ready
        last = payload.last
        m.d.comb += beat_in.ready.eq(draining | consuming | (up & (left == 0)))

        with m.If(~up):
            m.d.sync += [self.flit.eq(0), left.eq(0), carry.eq(0), consuming.eq(0)]
            with m.If(consuming | draining):
                m.d.sync += draining.eq(~(taken & last))
        with m.Elif(left == 0):
            with m.If(draining):
                m.d.sync += self.flit.eq(0)
                with m.If(taken & last):
                    m.d.sync += draining.eq(0)
            with m.Elif(beat_in.valid):
                m.d.sync += [self.flit.eq(Mux(payload.dllp, sdp, stp)), carry.eq(beat[body:]),
                             left.eq(Mux(frame == 0, 0, frame - 1))]
                with m.If(~last):
                    with m.If(frame <= 1):
                        m.d.sync += [draining.eq(1), self.underruns.eq(self.underruns + 1)]
                    with m.Else():
                        m.d.sync += consuming.eq(1)
            with m.Else():
                m.d.sync += self.flit.eq(0)
        with m.Else():
            m.d.sync += left.eq(left - 1)
            with m.If(consuming & beat_in.valid):
                m.d.sync += [self.flit.eq(Cat(carry, beat[:body])), carry.eq(beat[body:])]
                with m.If(last):
                    m.d.sync += consuming.eq(0)
                with m.Elif(left == 1):
                    m.d.sync += [consuming.eq(0), draining.eq(1),
                                 self.underruns.eq(self.underruns + 1)]
            with m.Else():
                m.d.sync += [self.flit.eq(carry), carry.eq(0)]
                with m.If(consuming):
                    m.d.sync += [consuming.eq(0), draining.eq(1),
                                 self.underruns.eq(self.underruns + 1)]
                with m.If(draining & taken & last):
                    m.d.sync += draining.eq(0)
        return m


class Deframer(wiring.Component):
    """Flits -> link packets (receive half of the physical layer).

    Out of a frame, each flit is a token candidate: zero is idle; an SDP token starts a
    6-byte DLLP; an STP token with the right frame CRC and parity and a length from
    :data:`MIN_TLP_DWORDS` to :func:`max_tlp_dwords` starts a TLP packet of ``4 * length - 2``
    bytes (the frame CRC bits of its first sequence byte put back to zero). Anything else is
    a framing error: counted in ``framing_errors``, discarded, and the next flit is a token
    candidate again. Inside a frame (the flits its length covers) nothing is checked: a
    corrupted body is delivered as it came, and the data-link layer's LCRC or CRC-16 catches
    it.

    Beat ``k`` of a packet holds bytes 2.. of flit ``k`` and bytes 0-1 of flit ``k + 1``, so it
    is offered (combinationally, from registers and ``flit``) in the cycle flit ``k + 1`` is
    on ``flit``, even a last beat whose bytes all came in flit ``k``: every beat takes the
    same time. ``nbytes``,
    ``last``, ``dllp`` and ``length`` (the packet's bytes) are set on every beat; bytes past
    ``nbytes`` are zero.

    The deframer cannot stall: ``packets.ready`` must be 1 whenever ``valid`` is (the
    data-link layer promises it). A beat offered while ``ready`` is low is lost: ``overflows``
    counts it and the rest of that packet is not delivered (a receiver that lowers ``ready``
    mid-packet must throw away what it got of it).

    Link down (``link_up`` low): the flits are ignored (treated as idle) and the packet in
    progress is abandoned. If none of its beats was delivered yet, nothing is; otherwise it
    is ended at once by a beat with ``last`` set and zero data, so the data-link layer sees a
    whole (short) packet that fails its LCRC check and drops it. When the link comes back,
    the next flit is a token candidate.

    Parameters
    ----------
    width : int
        ``W`` (a power of two, at least 8).
    max_payload : int
        Largest TLP payload (bytes; ``params.link_max_payload``): longer STP lengths are
        framing errors.

    Members
    -------
    flit : ``In(8 * W)``
        From the wire.
    packets : ``Out(stream.Signature(link_packet(W)))``
        To the data-link layer; ``ready`` must stay 1.
    link_up : ``In(1)``, init 1
        The flits are valid (tie to the incoming :class:`Wire`'s ``link_up``).
    framing_errors, overflows : ``Out(32)``
        Counters (see above).
    """

    def __init__(self, width, *, max_payload=256):
        _check_width(width)
        if max_payload % 4 or not 0 < max_payload <= 4096:
            raise ValueError(f"max_payload is 4..4096 bytes in dwords, not {max_payload}")
        self.width = width
        self.max_dwords = max_tlp_dwords(max_payload)
        super().__init__({
            "flit": In(8 * width),
            "packets": Out(stream.Signature(link_packet(width))),
            "link_up": In(1, init=1),
            "framing_errors": Out(32),
            "overflows": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        width, out, up = self.width, self.packets, self.link_up
        body = 8 * (width - 2)
        max_bytes = 4 * self.max_dwords - 2

        flit = Signal(8 * width)
        m.d.comb += flit.eq(Mux(up, self.flit, 0))

        # The beat being assembled: bytes 2.. of the previous flit, waiting for 2 more.
        pend = Signal(body)
        pend_valid = Signal()
        remaining = Signal(range(max_bytes + 1))  # packet bytes from this beat on
        first = Signal()                          # the beat is the packet's first
        dllp = Signal()
        length = Signal(13)
        left = Signal(range(-(-4 * self.max_dwords // width)))  # frame flits still to come
        dropping = Signal()                       # the rest of an overflowed packet

        nbytes = Mux(remaining >= width, width, remaining)
        ends = remaining <= width
        m.d.comb += [
            out.valid.eq(pend_valid & ~dropping & (up | ~first)),
            out.payload.data.eq(Mux(up, _mask_bytes(Cat(pend, flit[:16]), nbytes, width), 0)),
            out.payload.nbytes.eq(nbytes),
            out.payload.last.eq(ends | ~up),
            out.payload.dllp.eq(dllp),
            out.payload.length.eq(length),
        ]
        overflow = out.valid & ~out.ready
        with m.If(overflow):
            m.d.sync += self.overflows.eq(self.overflows + 1)

        # Token decoding.
        dwords = flit[4:15]
        fcrc = flit[20:24]
        is_stp = ((flit[:4] == STP_NIBBLE) & (fcrc == _frame_crc_rtl(dwords))
                  & ~Cat(dwords, flit[15], fcrc).xor()
                  & (dwords >= MIN_TLP_DWORDS) & (dwords <= self.max_dwords))
        is_sdp = (flit[:8] == SDP[0]) & (flit[8:16] == SDP[1])
        tlp_bytes = Cat(Const(0, 2), dwords) - 2

        with m.If(~up):
            m.d.sync += [left.eq(0), pend_valid.eq(0), dropping.eq(0)]
        with m.Elif(left != 0):
            m.d.sync += left.eq(left - 1)
            with m.If(pend_valid & (remaining > width)):
                m.d.sync += [pend.eq(flit[16:]), remaining.eq(remaining - width), first.eq(0)]
            with m.Else():
                m.d.sync += pend_valid.eq(0)
            with m.If(overflow & ~ends):
                m.d.sync += dropping.eq(1)
        with m.Else():
            m.d.sync += dropping.eq(0)
            with m.If(is_sdp):
                m.d.sync += [pend.eq(flit[16:]), pend_valid.eq(1), remaining.eq(6),
                             length.eq(6), dllp.eq(1), first.eq(1)]
            with m.Elif(is_stp):
                m.d.sync += [pend.eq(Cat(flit[16:20], Const(0, 4), flit[24:])),
                             pend_valid.eq(1), remaining.eq(tlp_bytes), length.eq(tlp_bytes),
                             dllp.eq(0), first.eq(1),
                             left.eq((Cat(Const(0, 2), dwords) - 1)
                                     >> (width.bit_length() - 1))]
            with m.Else():
                m.d.sync += pend_valid.eq(0)
                with m.If(flit.any()):
                    m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
        return m


class Wire(wiring.Component):
    """One direction of a link: flits arrive ``latency`` cycles after they are sent, some
    with a bit flipped, none while the link is down.

    The flits wait in a ring buffer (a ``latency - 1`` entry memory read and written at the
    same address each cycle, the read seeing the old entry), so a long wire costs one memory,
    not ``latency`` flit registers.

    Faults, set at run time:

    - ``flip_rate``: each flit sent while up has a ``flip_rate / 65536`` chance of getting
      exactly one bit flipped, at a position drawn with it. Both come from a xorshift32
      generator (``seed``; one step per cycle: bits 31:16 against ``flip_rate``, the low
      ``log2(8W)`` bits the position). ``flips`` counts the flits corrupted.
    - ``up``: while low, the wire carries zeros. ``link_up`` is ``up`` delayed like the flits,
      so the receiver sees the link go down with the first flit lost and come back with the
      first flit sent after ``up`` rose. After reset the wire holds zeros with ``link_up``
      low: the link comes up ``latency`` cycles after reset.

    Parameters
    ----------
    width : int
        ``W`` (a power of two, at least 8).
    latency : int
        Cycles from ``i`` to ``o`` (``params.link_wire_latency``), at least 2.
    seed : int
        Non-zero 32-bit seed of the fault generator (give each wire its own).

    Members
    -------
    i : ``In(8 * W)``
        The flit sent this cycle.
    o : ``Out(8 * W)``
        The flit sent ``latency`` cycles ago (registered).
    up : ``In(1)``, init 1
        The link is up.
    link_up : ``Out(1)``
        ``up`` as it was ``latency`` cycles ago.
    flip_rate : ``In(16)``
        Chance per flit of a bit flip, in 1/65536 (0: never).
    flips : ``Out(32)``
        Flits corrupted so far (counted when sent).
    """

    def __init__(self, width, latency=32, *, seed=1):
        _check_width(width)
        if latency < 2:
            raise ValueError(f"the wire latency is at least 2 cycles, not {latency}")
        if not 0 < seed < 1 << 32:
            raise ValueError(f"the seed is a non-zero 32-bit number, not {seed}")
        self.width, self.latency, self.seed = width, latency, seed
        super().__init__({
            "i": In(8 * width),
            "o": Out(8 * width),
            "up": In(1, init=1),
            "link_up": Out(1),
            "flip_rate": In(16),
            "flips": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        bits = 8 * self.width
        depth = self.latency - 1
        m.submodules.ring = ring = Memory(shape=bits + 1, depth=depth, init=[])
        write = ring.write_port()
        read = ring.read_port(transparent_for=())
        at = Signal(range(depth))
        m.d.sync += at.eq(Mux(at == depth - 1, 0, at + 1))

        state = Signal(32, init=self.seed)
        step1 = state ^ (state << 13)[:32]
        step2 = step1 ^ (step1 >> 17)
        m.d.sync += state.eq(step2 ^ (step2 << 5)[:32])
        flip = Signal()
        position = state[:(bits - 1).bit_length()]
        m.d.comb += flip.eq(self.up & (state[16:] < self.flip_rate))
        mask = Cat(*[flip & (position == k) for k in range(bits)])
        with m.If(flip):
            m.d.sync += self.flips.eq(self.flips + 1)

        m.d.comb += [
            write.addr.eq(at), write.en.eq(1),
            write.data.eq(Cat(Mux(self.up, self.i, 0) ^ mask, self.up)),
            read.addr.eq(at),
            self.o.eq(read.data[:bits]), self.link_up.eq(read.data[bits]),
        ]
        return m


class Phy(wiring.Component):
    """One end's physical layer: a :class:`Framer` for the outgoing wire and a
    :class:`Deframer` for the incoming one, with the data-link layer's two packet streams
    and the counters in one place.

    Members
    -------
    packets_tx : ``In(stream.Signature(link_packet(W)))``
        From the data-link layer (the framer's ``packets``).
    packets_rx : ``Out(stream.Signature(link_packet(W)))``
        To the data-link layer (the deframer's ``packets``; ``ready`` must stay 1).
    flit_tx : ``Out(8 * W)``
        To the outgoing wire's ``i``.
    flit_rx : ``In(8 * W)``
        From the incoming wire's ``o``.
    tx_up, rx_up : ``In(1)``, init 1
        The outgoing wire's ``up`` and the incoming wire's ``link_up``.
    underruns, framing_errors, overflows : ``Out(32)``
        The framer's and the deframer's counters.
    """

    def __init__(self, width, *, max_payload=256):
        _check_width(width)
        self.width, self.max_payload = width, max_payload
        super().__init__({
            "packets_tx": In(stream.Signature(link_packet(width))),
            "packets_rx": Out(stream.Signature(link_packet(width))),
            "flit_tx": Out(8 * width),
            "flit_rx": In(8 * width),
            "tx_up": In(1, init=1),
            "rx_up": In(1, init=1),
            "underruns": Out(32),
            "framing_errors": Out(32),
            "overflows": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.framer = framer = Framer(self.width)
        m.submodules.deframer = deframer = Deframer(self.width, max_payload=self.max_payload)
        wiring.connect(m, wiring.flipped(self.packets_tx), framer.packets)
        wiring.connect(m, deframer.packets, wiring.flipped(self.packets_rx))
        m.d.comb += [
            self.flit_tx.eq(framer.flit), framer.link_up.eq(self.tx_up),
            deframer.flit.eq(self.flit_rx), deframer.link_up.eq(self.rx_up),
            self.underruns.eq(framer.underruns),
            self.framing_errors.eq(deframer.framing_errors),
            self.overflows.eq(deframer.overflows),
        ]
        return m
