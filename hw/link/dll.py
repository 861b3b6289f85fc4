"""The data-link layer: one end of a link, between the transaction layer's TLP streams and the
physical layer's link packets (``docs/hw/link.md``, "Data-link layer").

It makes the link reliable and flow-controlled, the PCIe way:

- **Transmit**: each TLP gets the 12-bit sequence number ``NEXT_TRANSMIT_SEQ`` and an LCRC
  (:mod:`.crc`) and stays in the replay buffer until the other end acknowledges it; a Nak or
  the replay timer sends every unacknowledged TLP again, oldest first.
- **Receive**: only a TLP with a good LCRC and the expected sequence number is kept, and it
  is delivered only after its LCRC was checked (store and forward). Good TLPs are Acked
  (coalesced), duplicates dropped and Acked, bad or out-of-sequence ones dropped and Naked.
- **Flow control**: each end advertises its receive buffer as credits per class (posted,
  non-posted, completion; headers and 16-byte data units) with InitFC DLLPs, returns them
  with UpdateFC DLLPs as the transaction layer takes TLPs, and transmits a TLP only when the
  other end's credits allow.

:class:`DataLinkLayer` is the component; :class:`_Transmitter` and :class:`_Receiver` are its
two directions, and the component itself holds the flow-control state and builds DLLPs.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .crc import DLLP_CRC, LCRC
from .tlp import CREDIT_BYTES, FcClass, hdr_get, link_packet, tlp_beat

__all__ = ["DataLinkLayer", "tlp_credits", "DLLP_ACK", "DLLP_NAK", "DLLP_INIT_FC1",
           "DLLP_INIT_FC2", "DLLP_UPDATE_FC", "FC_INIT_PERIOD", "FC_REFRESH_PERIOD",
           "FC_UPDATE_WAIT", "ACK_BATCH", "rx_buffer_words"]

#: DLLP type bytes (VC0; add ``class << 4`` to the flow-control ones).
DLLP_ACK, DLLP_NAK = 0x00, 0x10
DLLP_INIT_FC1, DLLP_INIT_FC2, DLLP_UPDATE_FC = 0x40, 0xC0, 0x80
#: Cycles between repeats of the InitFC1 (and InitFC2) DLLPs while initialising.
FC_INIT_PERIOD = 64
#: Cycles between UpdateFC refreshes of all three classes once active (a lost UpdateFC
#: would otherwise leave the other end short of credits for good).
FC_REFRESH_PERIOD = 512
#: Cycles an UpdateFC may wait after the first credit of its class came free (unless a
#: quarter of the class's credits came free first), so several TLPs share one UpdateFC.
FC_UPDATE_WAIT = 128
#: Good TLPs received that make an Ack go out at once, without waiting for the coalescing
#: time.
ACK_BATCH = 4

_SEQ = 12
_SEQ_MASK = (1 << _SEQ) - 1
_MAX_PACKET = (1 << 13) - 1  # link_packet.length is 13 bits


def _log2(value):
    return value.bit_length() - 1


def tlp_credits(header):
    """(class, data credits) of a TLP from its first dword (a Value, bytes in wire order).

    Class by fmt/type, as PCIe: completions (type 0101x) CPL, messages (type 10xxx) and memory
    writes (memory type with data) P, everything else NP. Data credits ``ceil(length / 4)``
    (length 0 meaning 1024 dwords) when fmt says the TLP has data. Both ends compute it from
    the same header bytes, so a TLP's credits are consumed and returned alike even if the
    header is nonsense."""
    fmt, typ, length = hdr_get(header, "fmt"), hdr_get(header, "type"), hdr_get(header, "length")
    has_data = fmt[1]
    completion = typ[1:5] == 0b0101
    posted = (typ[3:5] == 0b10) | (has_data & (typ[1:5] == 0))
    cls = Mux(completion, int(FcClass.CPL), Mux(posted, int(FcClass.P), int(FcClass.NP)))
    dwords = Mux(length == 0, 1024, length)
    return cls, Mux(has_data, (dwords + 3) >> 2, 0)


def rx_buffer_words(params, width):
    """Receive-buffer words (``width`` bytes each) for the credits ``params`` advertises,
    rounded up to a power of two: every TLP the credits allow (header at most 16 bytes, one
    header credit; payload at most 16 bytes per data credit), each starting on a word."""
    headers = params.link_ph_credits + params.link_nph_credits + params.link_cplh_credits
    datas = params.link_pd_credits + params.link_npd_credits + params.link_cpld_credits
    words = -(-CREDIT_BYTES * (headers + datas) // width) + (headers if width > 16 else 0)
    return 1 << (words - 1).bit_length()


class _Transmitter(Elaboratable):
    """TLPs in, TLP packets out: sequence numbers, LCRC, replay buffer and timer, transmit
    credits.

    Ingest (``tlp``): a TLP is written into the replay buffer (a ring of ``W``-byte words, one
    beat per word) while its LCRC is computed; with its last beat, its descriptor (first and
    end word, dwords, LCRC) is written at ``seq mod descs`` and ``next_tx`` advances, and the
    credits it needs are consumed. Its first beat waits until the credits checked on it, a
    free descriptor and a free word are there; later beats wait only for free words.

    Send (``out``): a two-stage pipeline reads TLPs from the buffer from ``send_seq`` on:
    stage A holds the packet being read (its words go to the buffer's read port), stage B the
    word read (the memory holds it while ``out`` waits). A packet's wire beat ``k`` is bytes
    ``W-2..W-1`` of word ``k-1`` (the sequence bytes for ``k = 0``) followed by bytes
    ``0..W-3`` of word ``k``, with the LCRC dword laid over the word after the TLP's last
    dword. Stage A loads the next packet in the cycle it reads the previous one's last word,
    so packets leave back to back.
    """

    def __init__(self, width, replay_bytes, replay_timeout):
        self.width = width
        self.words = replay_bytes // width
        self.descs = min(self.words, 2048)
        self.max_unacked = min(self.descs, 2047)
        self.max_words = min(self.words, (_MAX_PACKET - 6) // width)
        self.replay_timeout = replay_timeout

        self.tlp = stream.Signature(tlp_beat(width)).flip().create()
        self.out = stream.Signature(link_packet(width)).create()
        self.down = Signal()      # link down: drop TLPs, forget everything
        self.active = Signal()    # DL_Active: TLPs may be taken
        self.limit_h = [Signal(8, name=f"limit_h{c}") for c in range(3)]
        self.limit_d = [Signal(12, name=f"limit_d{c}") for c in range(3)]
        self.inf_h = Signal(3)
        self.inf_d = Signal(3)
        self.cap_d = [Signal(12, name=f"cap_d{c}") for c in range(3)]  # advertised at init
        self.acknak_valid = Signal()
        self.acknak_nak = Signal()
        self.acknak_seq = Signal(_SEQ)
        self.started = Signal()   # a packet's first beat left on `out`, its last not yet
        self.replays = Signal(32)

    def elaborate(self, platform):
        m = Module()
        W, DW = self.width, self.width // 4
        AW = _log2(self.words)
        beat = self.tlp.payload
        max_dwords = self.max_words * DW

        m.submodules.buf = buf = Memory(shape=8 * W, depth=self.words, init=[])
        buf_w = buf.write_port()
        buf_r = buf.read_port(transparent_for=())
        desc_layout = data.StructLayout({"start": AW + 1, "end": AW + 1,
                                         "dwords": range(max_dwords + 1), "lcrc": 32})
        m.submodules.desc = desc = Memory(shape=desc_layout, depth=self.descs, init=[])
        desc_w = desc.write_port()
        desc_send = desc.read_port(transparent_for=(desc_w,))
        desc_ack = desc.read_port(transparent_for=())
        DAW = _log2(self.descs)

        # Sequence numbers: ackd < send_seq <= sent_hwm <= next_tx (modulo 4096).
        next_tx = Signal(_SEQ)              # the next TLP taken gets this
        ackd = Signal(_SEQ, init=_SEQ_MASK)  # the last TLP acknowledged
        send_seq = Signal(_SEQ)             # the next TLP to send (or resend)
        sent_hwm = Signal(_SEQ)             # the first TLP never sent
        unacked = Signal(_SEQ)              # taken and not acknowledged
        unacked_sent = Signal(_SEQ)         # sent and not acknowledged
        m.d.comb += [unacked.eq(next_tx - ackd - 1), unacked_sent.eq(sent_hwm - ackd - 1)]

        wptr = Signal(AW + 1)      # next word written
        free_ptr = Signal(AW + 1)  # first word of the oldest unacknowledged TLP
        a_active = Signal()
        a_addr = Signal(AW + 1)    # next word stage A reads

        # Free words: the words from the oldest unacknowledged TLP, or from the word stage A
        # reads next if that is older (a TLP acknowledged while being resent).
        held = Signal(AW + 1)
        by_ack = (wptr - free_ptr)[:AW + 1]
        by_send = (wptr - a_addr)[:AW + 1]
        m.d.comb += held.eq(Mux(a_active & (by_send > by_ack), by_send, by_ack))
        space = held != self.words

        # -- ingest --------------------------------------------------------------------
        in_tlp = Signal()    # between a TLP's first and last beat
        dropping = Signal()  # the rest of a TLP is discarded
        tlp_start = Signal(AW + 1)
        tlp_words = Signal(range(self.max_words + 1))
        tlp_dws = Signal(range(max_dwords + 1))
        crc = Signal(32)
        cls_r = Signal(2)
        need_r = Signal(12)
        consumed_h = [Signal(8, name=f"consumed_h{c}") for c in range(3)]
        consumed_d = [Signal(12, name=f"consumed_d{c}") for c in range(3)]

        first = ~in_tlp
        head_cls, head_data = tlp_credits(beat.data[:32])
        # A TLP never needs more data credits than the other end advertised in all (a
        # nonsense length field must not wait forever); its receiver caps them alike.
        head_need = Signal(12)
        credit_ok = Signal()
        with m.Switch(head_cls):
            for c in range(3):
                with m.Case(c):
                    m.d.comb += head_need.eq(Mux(~self.inf_d[c] & (head_data > self.cap_d[c]),
                                                 self.cap_d[c], head_data))
                    h_ok = (self.inf_h[c]
                            | ((self.limit_h[c] - consumed_h[c] - 1)[:8] <= 128))
                    d_ok = (self.inf_d[c] | (head_need == 0)
                            | ((self.limit_d[c] - consumed_d[c] - head_need)[:12] <= 2048))
                    m.d.comb += credit_ok.eq(h_ok & d_ok)
        dws_in = Signal(range(DW + 1))
        m.d.comb += dws_in.eq(Mux(beat.last & (beat.dws < DW), beat.dws, DW))
        total = Mux(first, 0, tlp_dws) + dws_in
        seq_bytes = Cat(next_tx[8:12], Const(0, 4), next_tx[:8])
        crc_in = Mux(first, LCRC.absorb(m, LCRC.init, seq_bytes, 2), crc)
        crc_next = LCRC.absorb_count(m, crc_in, beat.data, Cat(Const(0, 2), dws_in),
                                     [4 * k for k in range(DW + 1)])
        start = Mux(first, wptr, tlp_start)

        take = self.tlp.valid & self.tlp.ready
        m.d.comb += [buf_w.addr.eq(wptr[:AW]), buf_w.data.eq(beat.data),
                     desc_w.addr.eq(next_tx[:DAW]),
                     desc_w.data.start.eq(start), desc_w.data.end.eq(wptr + 1),
                     desc_w.data.dwords.eq(total), desc_w.data.lcrc.eq(~crc_next)]
        with m.If(self.down):
            m.d.comb += self.tlp.ready.eq(1)
            m.d.sync += in_tlp.eq(0)
            with m.If(self.tlp.valid):
                m.d.sync += dropping.eq(~beat.last)
            with m.Elif(in_tlp):
                m.d.sync += dropping.eq(1)
        with m.Elif(dropping):
            m.d.comb += self.tlp.ready.eq(1)
            with m.If(self.tlp.valid & beat.last):
                m.d.sync += dropping.eq(0)
        with m.Elif(in_tlp & (tlp_words == self.max_words)):
            # Longer than the replay buffer could ever hold: discard it (nothing consumed).
            m.d.comb += self.tlp.ready.eq(1)
            with m.If(self.tlp.valid):
                m.d.sync += [in_tlp.eq(0), wptr.eq(tlp_start), dropping.eq(~beat.last)]
        with m.Else():
            m.d.comb += self.tlp.ready.eq(space & (in_tlp | (
                self.active & credit_ok & (unacked < self.max_unacked))))
            with m.If(take):
                m.d.comb += buf_w.en.eq(1)
                m.d.sync += [wptr.eq(wptr + 1), crc.eq(crc_next), tlp_dws.eq(total),
                             tlp_words.eq(Mux(first, 1, tlp_words + 1)), in_tlp.eq(~beat.last)]
                with m.If(first):
                    m.d.sync += [tlp_start.eq(wptr), cls_r.eq(head_cls), need_r.eq(head_need)]
                with m.If(beat.last):
                    with m.If(total == 0):
                        m.d.sync += wptr.eq(wptr)  # an empty TLP: nothing to send
                    with m.Else():
                        m.d.comb += desc_w.en.eq(1)
                        m.d.sync += next_tx.eq(next_tx + 1)
                        cls = Mux(first, head_cls, cls_r)
                        need = Mux(first, head_need, need_r)
                        with m.Switch(cls):
                            for c in range(3):
                                with m.Case(c):
                                    m.d.sync += [consumed_h[c].eq(consumed_h[c] + 1),
                                                 consumed_d[c].eq(consumed_d[c] + need)]

        replay_pending = Signal()  # resend everything unacknowledged, oldest first
        replay_start = Signal()    # ... from now on

        # -- send: stage A (packet being read), stage B (word read) ------------------------
        a_j = Signal(range(self.max_words + 2))       # beat index
        a_last_j = Signal.like(a_j)
        a_seq = Signal(_SEQ)
        a_lcrc = Signal(32)
        a_crc_j = Signal.like(a_j)                     # the word holding the LCRC dword
        a_slot = Signal(range(DW))                     # its dword in that word
        a_len = Signal(13)
        a_last_n = Signal(range(W + 1))
        b_valid, b_first, b_last, b_crc_here = Signal(), Signal(), Signal(), Signal()
        b_seq, b_lcrc, b_slot = Signal(_SEQ), Signal(32), Signal(range(DW))
        b_len, b_nbytes = Signal(13), Signal(range(W + 1))
        prev_hi = Signal(16)

        out = self.out
        abort = self.down & ~self.started
        advance = ~b_valid | out.ready
        at_last = a_j == a_last_j
        m.d.comb += [buf_r.addr.eq(a_addr[:AW]), buf_r.en.eq(advance & a_active)]
        with m.If(advance):
            m.d.sync += b_valid.eq(a_active)
            with m.If(a_active):
                m.d.sync += [b_first.eq(a_j == 0), b_last.eq(at_last), b_seq.eq(a_seq),
                             b_lcrc.eq(a_lcrc), b_crc_here.eq(a_j == a_crc_j),
                             b_slot.eq(a_slot), b_len.eq(a_len),
                             b_nbytes.eq(Mux(at_last, a_last_n, W)),
                             a_addr.eq(a_addr + 1), a_j.eq(a_j + 1)]
                with m.If(at_last):
                    m.d.sync += a_active.eq(0)
        a_free = ~a_active | (advance & at_last)

        position = (send_seq - ackd - 1)[:_SEQ]
        behind = position > unacked       # acknowledged while waiting to be resent
        sendable = position < unacked
        load = Signal()
        send_seq_next = Signal(_SEQ)
        m.d.comb += send_seq_next.eq(send_seq)
        with m.If(replay_pending | behind):
            m.d.comb += send_seq_next.eq(ackd + 1)
            m.d.comb += replay_start.eq(replay_pending)
            m.d.sync += replay_pending.eq(0)
        with m.Elif(a_free & sendable & ~self.down):
            m.d.comb += [load.eq(1), send_seq_next.eq(send_seq + 1)]
        with m.If(self.down):
            m.d.comb += send_seq_next.eq(0)
        m.d.comb += desc_send.addr.eq(send_seq_next[:DAW])
        m.d.sync += send_seq.eq(send_seq_next)

        length = Signal(13)
        m.d.comb += length.eq(Cat(Const(0, 2), desc_send.data.dwords) + 6)
        with m.If(load):
            m.d.sync += [a_active.eq(1), a_addr.eq(desc_send.data.start), a_j.eq(0),
                         a_last_j.eq((length - 1) >> _log2(W)), a_seq.eq(send_seq),
                         a_lcrc.eq(desc_send.data.lcrc),
                         a_crc_j.eq(desc_send.data.dwords >> _log2(DW)),
                         a_slot.eq(desc_send.data.dwords[:_log2(DW)]), a_len.eq(length),
                         a_last_n.eq((length - 1)[:_log2(W)] + 1)]
            with m.If(send_seq == sent_hwm):
                m.d.sync += sent_hwm.eq(sent_hwm + 1)
            with m.Else():
                m.d.sync += self.replays.eq(self.replays + 1)

        # Stage B -> out: the word with the LCRC laid over, shifted by the two sequence bytes.
        word = Signal(8 * W)
        for k in range(DW):
            lane = buf_r.data[32 * k:32 * k + 32]
            m.d.comb += word[32 * k:32 * k + 32].eq(
                Mux(b_crc_here & (b_slot == k), b_lcrc, lane))
        m.d.comb += [
            out.valid.eq(b_valid & ~abort),
            out.payload.data.eq(Cat(Mux(b_first, Cat(b_seq[8:12], Const(0, 4), b_seq[:8]),
                                        prev_hi), word[:8 * (W - 2)])),
            out.payload.nbytes.eq(b_nbytes), out.payload.last.eq(b_last),
            out.payload.dllp.eq(0), out.payload.length.eq(b_len),
        ]
        with m.If(out.valid & out.ready):
            m.d.sync += [prev_hi.eq(word[8 * (W - 2):]), self.started.eq(~b_last)]

        # -- Ack / Nak: stage 1 reads the acknowledged TLP's descriptor, stage 2 purges -----
        p_valid, p_nak, p_seq = Signal(), Signal(), Signal(_SEQ)
        m.d.comb += desc_ack.addr.eq(self.acknak_seq[:DAW])
        m.d.sync += [p_valid.eq(self.acknak_valid & ~self.down), p_nak.eq(self.acknak_nak),
                     p_seq.eq(self.acknak_seq)]
        distance = (p_seq - ackd)[:_SEQ]
        known = p_valid & (distance <= unacked_sent)  # acknowledges a TLP sent, or ackd again
        progress = known & (distance != 0)
        with m.If(progress):
            m.d.sync += [ackd.eq(p_seq), free_ptr.eq(desc_ack.data.end)]
        with m.If(known & p_nak):
            m.d.sync += replay_pending.eq(1)

        # -- replay timer ----------------------------------------------------------------
        timer = Signal(range(self.replay_timeout))
        with m.If((unacked_sent == 0) | progress | replay_start):
            m.d.sync += timer.eq(0)
        with m.Elif(timer == self.replay_timeout - 1):
            m.d.sync += [timer.eq(0), replay_pending.eq(1)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)

        # -- link down: forget every TLP; a packet already started on `out` is finished -----
        with m.If(self.down):
            m.d.sync += [next_tx.eq(0), ackd.eq(_SEQ_MASK), sent_hwm.eq(0),
                         free_ptr.eq(wptr), replay_pending.eq(0), timer.eq(0)]
            m.d.sync += [c.eq(0) for c in consumed_h + consumed_d]
        with m.If(abort):
            m.d.sync += [a_active.eq(0), b_valid.eq(0)]
        return m


class _Receiver(Elaboratable):
    """TLP and DLLP packets in, TLPs out: LCRC and CRC-16 checks, sequence numbers, Ack/Nak
    requests, the receive buffer and the credits it frees.

    ``packets.ready`` is always 1 (the deframer cannot wait). A TLP packet's bytes from its
    third on are written into the receive buffer realigned to TLP beats (word ``k`` = bytes
    ``2..W-1`` of beat ``k`` and bytes ``0..1`` of beat ``k+1``, written when beat ``k+1``
    arrives; a word left after the last beat is written in the next cycle, when no other
    write can happen, since the next packet's first beat writes nothing). Each word carries
    its ``last`` and ``dws``. The CRC runs over the raw packet bytes, LCRC included, and must
    end at the LCRC residue. One cycle after the last beat the packet is judged: a good,
    in-sequence TLP is committed (``cwp`` moves past it), anything else is forgotten
    (``twp`` back to ``cwp``). ``tlp`` delivers committed words only.
    """

    def __init__(self, width, words, ack_latency):
        self.width = width
        self.words = words
        self.ack_wait = max(1, ack_latency // 2)

        self.packets = stream.Signature(link_packet(width)).flip().create()
        self.tlp = stream.Signature(tlp_beat(width)).create()
        self.down = Signal()
        self.dllp_valid = Signal()        # a DLLP with a good CRC-16 (registered pulse)
        self.dllp = Signal(32)            # its four bytes
        self.ack_req = Signal()
        self.nak_req = Signal()
        self.acknak_seq = Signal(_SEQ)    # NEXT_RCV_SEQ - 1
        self.ack_sent = Signal()
        self.nak_sent = Signal()
        self.free_valid = Signal()        # a TLP left on `tlp` (registered pulse)
        self.free_cls = Signal(2)
        self.free_data = Signal(9)
        self.tlp_seen = Signal()          # a TLP with a good LCRC arrived (registered pulse)
        self.drained = Signal()           # nothing committed is waiting on `tlp`
        self.bad_tlps = Signal(32)
        self.bad_dllps = Signal(32)
        self.duplicates = Signal(32)
        self.overflows = Signal(32)

    def elaborate(self, platform):
        m = Module()
        W, DW = self.width, self.width // 4
        RAW = _log2(self.words)
        beat = self.packets.payload
        n = beat.nbytes

        word_layout = data.StructLayout({"data": 8 * W, "last": 1, "dws": range(DW + 1)})
        m.submodules.buf = buf = Memory(shape=word_layout, depth=self.words, init=[])
        buf_w = buf.write_port()
        buf_r = buf.read_port(transparent_for=())

        twp = Signal(RAW + 1)  # next word written (tentative)
        cwp = Signal(RAW + 1)  # end of the committed words
        rp = Signal(RAW + 1)   # next word read
        full = (twp - rp)[:RAW + 1] == self.words

        in_pkt = Signal()      # between a packet's first and last beat
        pkt_dllp = Signal()    # the packet is a DLLP (more than one beat: bad)
        pkt_bad = Signal()     # a beat before the last was not full
        pkt_ovf = Signal()     # a word did not fit
        crc = Signal(32)
        seq = Signal(_SEQ)
        prev = Signal(8 * (W - 2))
        fin = Signal()         # judge the packet whose last beat came in the previous cycle
        fin_good, fin_flush, fin_ovf = Signal(), Signal(), Signal()
        fin_seq = Signal(_SEQ)
        fin_dws = Signal(range(DW + 1))

        first = ~in_pkt
        beat_seq = Cat(beat.data[8:16], beat.data[:4])
        crc_next = LCRC.absorb_count(m, Mux(first, LCRC.init, crc), beat.data, n,
                                     [W] + list(range(2, W, 4)))
        dllp_crc = DLLP_CRC.absorb(m, DLLP_CRC.init, beat.data, 4) ^ DLLP_CRC.xorout
        m.d.comb += self.packets.ready.eq(1)

        # Word k of the TLP, written as beat k + 1 comes.
        tag_last = beat.last & (n <= 6)
        m.d.comb += [buf_w.addr.eq(twp[:RAW]),
                     buf_w.data.data.eq(Cat(prev, beat.data[:16])),
                     buf_w.data.last.eq(tag_last),
                     buf_w.data.dws.eq(Mux(tag_last, (W + n - 6) >> 2, DW))]
        m.d.sync += [self.dllp_valid.eq(0), self.tlp_seen.eq(0), fin.eq(0)]

        with m.If(self.down):
            m.d.sync += in_pkt.eq(0)
        with m.Elif(self.packets.valid):
            m.d.sync += in_pkt.eq(~beat.last)
            with m.If(first):
                m.d.sync += [pkt_dllp.eq(beat.dllp), pkt_bad.eq(0), pkt_ovf.eq(0)]
            with m.If(first & beat.dllp):
                with m.If(beat.last & (n == 6) & (dllp_crc == beat.data[32:48])):
                    m.d.sync += [self.dllp_valid.eq(1), self.dllp.eq(beat.data[:32])]
                with m.Else():
                    m.d.sync += self.bad_dllps.eq(self.bad_dllps + 1)
            with m.Elif(first | ~pkt_dllp):
                bad_so_far = Mux(first, 0, pkt_bad) | (~beat.last & (n != W))
                wrote = ~first & ~pkt_ovf & ~full
                m.d.sync += [crc.eq(crc_next), prev.eq(beat.data[16:]), pkt_bad.eq(bad_so_far)]
                with m.If(first):
                    m.d.sync += seq.eq(beat_seq)
                with m.Else():
                    m.d.comb += buf_w.en.eq(wrote)
                    with m.If(wrote):
                        m.d.sync += twp.eq(twp + 1)
                    with m.Else():
                        m.d.sync += pkt_ovf.eq(1)
                with m.If(beat.last):
                    malformed = (bad_so_far | (n[:2] != 2) | (n > W) | (first & (n < 10)))
                    m.d.sync += [fin.eq(1), fin_good.eq(~malformed & (crc_next == LCRC.residue)),
                                 fin_seq.eq(Mux(first, beat_seq, seq)), fin_flush.eq(n > 6),
                                 fin_dws.eq((n - 6) >> 2),
                                 fin_ovf.eq(Mux(first, 0, pkt_ovf | ~wrote))]

        # -- judge a TLP packet ------------------------------------------------------------
        next_rcv = Signal(_SEQ)
        nak_scheduled = Signal()
        ack_pending, ack_force = Signal(), Signal()
        ack_count = Signal(range(ACK_BATCH + 1))
        ack_timer = Signal(range(self.ack_wait + 1))
        m.d.comb += [self.acknak_seq.eq(next_rcv - 1),
                     self.ack_req.eq(ack_pending & (ack_force | (ack_count == ACK_BATCH)
                                                    | (ack_timer == self.ack_wait)))]
        with m.If(ack_pending & (ack_timer != self.ack_wait)):
            m.d.sync += ack_timer.eq(ack_timer + 1)
        with m.If(self.ack_sent | self.nak_sent):
            m.d.sync += [ack_pending.eq(0), ack_force.eq(0), ack_count.eq(0), ack_timer.eq(0)]
        with m.If(self.nak_sent):
            m.d.sync += self.nak_req.eq(0)

        overflow = fin_ovf | (fin_flush & full)
        expected = fin_seq == next_rcv
        duplicate = (next_rcv - 1 - fin_seq)[:_SEQ] < 2048
        end = twp + (fin_flush & ~full)
        with m.If(fin & ~self.down):
            m.d.sync += self.tlp_seen.eq(fin_good)
            m.d.comb += [buf_w.data.data.eq(Cat(prev, Const(0, 16))), buf_w.data.last.eq(1),
                         buf_w.data.dws.eq(fin_dws), buf_w.en.eq(fin_flush & ~full)]
            with m.If(fin_good & expected & ~overflow):
                m.d.sync += [twp.eq(end), cwp.eq(end), next_rcv.eq(next_rcv + 1),
                             nak_scheduled.eq(0), ack_pending.eq(1),
                             ack_count.eq(Mux(self.ack_sent | self.nak_sent, 1,
                                              Mux(ack_count == ACK_BATCH, ACK_BATCH,
                                                  ack_count + 1)))]
            with m.Else():
                m.d.sync += twp.eq(cwp)
                with m.If(fin_good & duplicate):
                    m.d.sync += [self.duplicates.eq(self.duplicates + 1), ack_pending.eq(1),
                                 ack_force.eq(1)]
                with m.Else():
                    with m.If(fin_good & expected):
                        m.d.sync += self.overflows.eq(self.overflows + 1)
                    with m.Else():
                        m.d.sync += self.bad_tlps.eq(self.bad_tlps + 1)
                    with m.If(~nak_scheduled):
                        m.d.sync += [nak_scheduled.eq(1), self.nak_req.eq(1)]

        # -- deliver committed TLPs -------------------------------------------------------
        o_valid = Signal()
        o_first = Signal(init=1)
        cls_r, need_r = Signal(2), Signal(9)
        advance = ~o_valid | self.tlp.ready
        m.d.comb += [buf_r.addr.eq(rp[:RAW]), buf_r.en.eq(advance),
                     self.tlp.valid.eq(o_valid),
                     self.tlp.payload.data.eq(buf_r.data.data),
                     self.tlp.payload.dws.eq(buf_r.data.dws),
                     self.tlp.payload.last.eq(buf_r.data.last),
                     self.drained.eq((rp == cwp) & ~o_valid)]
        with m.If(advance):
            m.d.sync += o_valid.eq(rp != cwp)
            with m.If(rp != cwp):
                m.d.sync += rp.eq(rp + 1)
        head_cls, head_need = tlp_credits(buf_r.data.data[:32])
        m.d.sync += self.free_valid.eq(0)
        with m.If(self.tlp.valid & self.tlp.ready):
            m.d.sync += o_first.eq(buf_r.data.last)
            with m.If(o_first):
                m.d.sync += [cls_r.eq(head_cls), need_r.eq(head_need)]
            with m.If(buf_r.data.last):
                m.d.sync += [self.free_valid.eq(1),
                             self.free_cls.eq(Mux(o_first, head_cls, cls_r)),
                             self.free_data.eq(Mux(o_first, head_need, need_r))]

        # -- link down: forget the partial packet and the sequence state; TLPs already
        # committed are still delivered ---------------------------------------------------
        with m.If(self.down):
            m.d.sync += [twp.eq(cwp), next_rcv.eq(0), nak_scheduled.eq(0),
                         self.nak_req.eq(0), ack_pending.eq(0), ack_force.eq(0),
                         ack_count.eq(0), ack_timer.eq(0)]
        return m


class DataLinkLayer(wiring.Component):
    """One end of a link's data-link layer (device endpoint, switch port or root complex).

    Parameters
    ----------
    params : HwParams
        ``link_replay_bytes`` (a power of two, at least 4 beats), ``link_replay_timeout``,
        ``link_ack_latency`` and the six ``link_*_credits`` this end advertises (headers
        1..127, data 1..2047).
    width : int
        ``W``, beat bytes (a power of two, at least 8); ``params.link_bytes_per_cycle`` by
        default.

    Members
    -------
    tlp_tx : ``In(stream.Signature(tlp_beat(W)))``
        TLPs to send, from the transaction layer. A TLP is framed by ``last``; beats before the
        last count as full, the last carries ``dws`` dwords. Its first beat waits for DL_Active,
        the other end's credits for its class (by fmt/type, from the first beat) and replay
        buffer room; while ``link_up`` is low every beat is taken and dropped (and the rest of
        a TLP it cut). A TLP longer than the replay buffer is dropped.
    tlp_rx : ``Out(stream.Signature(tlp_beat(W)))``
        Received TLPs: each good one exactly once, in order, after its LCRC was checked.
        Taking a TLP's last beat returns its credits to the other end.
    phy_tx : ``Out(stream.Signature(link_packet(W)))``
        Packets to the physical layer's framer. Priority at packet boundaries: Nak/Ack, then
        flow-control DLLPs, then TLPs; a TLP packet's beats come back to back once its first
        beat is taken (the framer needs that), ``length`` on every beat.
    phy_rx : ``In(stream.Signature(link_packet(W)))``
        Packets from the deframer. ``ready`` is always 1: the wire cannot wait.
    link_up : ``In(1)``
        From the physical layer. Low: DL_Down -- the replay buffer, a partly received packet,
        sequence numbers, Ack/Nak state and credits are forgotten (TLPs already received and
        checked are still delivered on ``tlp_rx``). Rising: flow control initialises again.
    dl_up : ``Out(1)``
        DL_Active: link up and flow control initialised; TLPs flow.
    replays, naks_sent, bad_tlps, bad_dllps, duplicates, rx_overflows : ``Out(32)``
        TLPs sent again; Naks sent; TLP packets dropped for a bad LCRC, a malformed packet or
        a sequence number ahead of the expected; DLLPs dropped for a bad CRC-16 (or shape);
        TLPs received again and dropped; in-sequence TLPs dropped for want of receive-buffer
        room (only if the other end overran its credits).

    Timing: a TLP's first beat is on ``phy_tx`` three cycles after its last beat was taken on
    ``tlp_tx``, at the earliest; back-to-back TLPs leave one beat per cycle. A received TLP is on
    ``tlp_rx`` three cycles after its last beat arrived.
    """

    def __init__(self, params, width=None):
        width = params.link_bytes_per_cycle if width is None else width
        if width < 8 or width & (width - 1):
            raise ValueError(f"the beat width is a power of two of at least 8, not {width}")
        replay = params.link_replay_bytes
        if replay & (replay - 1) or replay < 4 * width:
            raise ValueError(f"link_replay_bytes must be a power of two of at least 4 beats "
                             f"({4 * width} bytes), not {replay}")
        if params.link_replay_timeout < 2 or params.link_ack_latency < 1:
            raise ValueError("link_replay_timeout must be at least 2 and link_ack_latency 1")
        self.init_credits = [
            (params.link_ph_credits, params.link_pd_credits),
            (params.link_nph_credits, params.link_npd_credits),
            (params.link_cplh_credits, params.link_cpld_credits),
        ]
        for h, d in self.init_credits:
            if not (1 <= h <= 127 and 1 <= d <= 2047):
                raise ValueError(f"credits (headers {h}, data {d}) out of 1..127 / 1..2047")
        self.params = params
        self.width = width
        self.rx_words = rx_buffer_words(params, width)
        super().__init__({
            "tlp_tx": In(stream.Signature(tlp_beat(width))),
            "tlp_rx": Out(stream.Signature(tlp_beat(width))),
            "phy_tx": Out(stream.Signature(link_packet(width))),
            "phy_rx": In(stream.Signature(link_packet(width))),
            "link_up": In(1),
            "dl_up": Out(1),
            "replays": Out(32),
            "naks_sent": Out(32),
            "bad_tlps": Out(32),
            "bad_dllps": Out(32),
            "duplicates": Out(32),
            "rx_overflows": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.tx = tx = _Transmitter(self.width, p.link_replay_bytes,
                                            p.link_replay_timeout)
        m.submodules.rx = rx = _Receiver(self.width, self.rx_words, p.link_ack_latency)
        down = ~self.link_up

        wiring.connect(m, wiring.flipped(self.tlp_tx), tx.tlp)
        wiring.connect(m, rx.tlp, wiring.flipped(self.tlp_rx))
        wiring.connect(m, wiring.flipped(self.phy_rx), rx.packets)
        m.d.comb += [tx.down.eq(down), rx.down.eq(down),
                     self.replays.eq(tx.replays), self.bad_tlps.eq(rx.bad_tlps),
                     self.bad_dllps.eq(rx.bad_dllps), self.duplicates.eq(rx.duplicates),
                     self.rx_overflows.eq(rx.overflows)]

        # -- received DLLPs ------------------------------------------------------------------
        dllp = rx.dllp
        typ, b1, b2, b3 = dllp[0:8], dllp[8:16], dllp[16:24], dllp[24:32]
        got_acknak = rx.dllp_valid & ((typ == DLLP_ACK) | (typ == DLLP_NAK))
        m.d.comb += [tx.acknak_valid.eq(got_acknak), tx.acknak_nak.eq(typ == DLLP_NAK),
                     tx.acknak_seq.eq(Cat(b3, b2[:4]))]
        fc_kind, fc_cls = typ[6:8], typ[4:6]
        got_fc = rx.dllp_valid & (typ[:4] == 0) & (fc_cls != 3) & (fc_kind != 0)
        got_init = got_fc & fc_kind[0]                     # InitFC1 (01) or InitFC2 (11)
        got_init2 = got_fc & (fc_kind == 0b11)
        got_update = got_fc & (fc_kind == 0b10)
        fc_hdr = Cat(b2[6:8], b1[:6])
        fc_data = Cat(b3, b2[:4])

        # -- flow control: initialisation and the other end's limits ------------------------
        DOWN, INIT1, INIT2, ACTIVE = range(4)
        state = Signal(2)
        alloc_h = [Signal(8, name=f"alloc_h{c}") for c in range(3)]   # credits advertised
        alloc_d = [Signal(12, name=f"alloc_d{c}") for c in range(3)]
        fi1 = Signal(3)        # the other end's InitFC values recorded, per class
        fc_send = Signal(3)    # flow-control DLLPs to send, per class
        fc_timer = Signal(range(FC_REFRESH_PERIOD))
        m.d.comb += self.dl_up.eq((state == ACTIVE) & self.link_up)
        m.d.comb += tx.active.eq(self.dl_up)

        with m.If(fc_timer == Mux(state == ACTIVE, FC_REFRESH_PERIOD, FC_INIT_PERIOD) - 1):
            m.d.sync += [fc_timer.eq(0), fc_send.eq(0b111)]
        with m.Else():
            m.d.sync += fc_timer.eq(fc_timer + 1)

        def record(c):
            return [tx.limit_h[c].eq(fc_hdr), tx.limit_d[c].eq(fc_data),
                    tx.cap_d[c].eq(fc_data),
                    tx.inf_h[c].eq(fc_hdr == 0), tx.inf_d[c].eq(fc_data == 0)]

        with m.Switch(state):
            with m.Case(DOWN):
                with m.If(rx.drained):
                    m.d.sync += [state.eq(INIT1), fi1.eq(0), fc_send.eq(0b111), fc_timer.eq(0)]
                    for c, (h, d) in enumerate(self.init_credits):
                        m.d.sync += [alloc_h[c].eq(h), alloc_d[c].eq(d)]
            with m.Case(INIT1):
                fi1_next = Signal(3)
                m.d.comb += fi1_next.eq(fi1)
                with m.If(got_init):
                    with m.Switch(fc_cls):
                        for c in range(3):
                            with m.Case(c):
                                m.d.comb += fi1_next[c].eq(1)
                                with m.If(~fi1[c]):
                                    m.d.sync += record(c)
                m.d.sync += fi1.eq(fi1_next)
                with m.If(fi1_next == 0b111):
                    m.d.sync += [state.eq(INIT2), fc_send.eq(0b111), fc_timer.eq(0)]
            with m.Case(INIT2, ACTIVE):
                with m.If((state == INIT2) & (got_init2 | got_update | rx.tlp_seen)):
                    m.d.sync += [state.eq(ACTIVE), fc_timer.eq(0)]
                with m.If(got_update):
                    with m.Switch(fc_cls):
                        for c in range(3):
                            with m.Case(c):
                                with m.If(~tx.inf_h[c]):
                                    m.d.sync += tx.limit_h[c].eq(fc_hdr)
                                with m.If(~tx.inf_d[c]):
                                    m.d.sync += tx.limit_d[c].eq(fc_data)

        # -- DLLPs to send: Nak, Ack, then flow control ---------------------------------------
        fc_pick = Signal(2)
        for c in reversed(range(3)):
            with m.If(fc_send[c]):
                m.d.comb += fc_pick.eq(c)
        fc_type = Signal(8)
        with m.Switch(state):
            with m.Case(INIT1):
                m.d.comb += fc_type.eq(DLLP_INIT_FC1)
            with m.Case(INIT2):
                m.d.comb += fc_type.eq(DLLP_INIT_FC2)
            with m.Default():
                m.d.comb += fc_type.eq(DLLP_UPDATE_FC)
        pick_h = Signal(8)
        pick_d = Signal(12)
        with m.Switch(fc_pick):
            for c in range(3):
                with m.Case(c):
                    m.d.comb += [pick_h.eq(alloc_h[c]), pick_d.eq(alloc_d[c])]
        send_fc = fc_send.any() & (state != DOWN)
        dllp_valid = ~down & (rx.nak_req | rx.ack_req | send_fc)
        body = Signal(32)
        ack_seq = rx.acknak_seq
        with m.If(rx.nak_req | rx.ack_req):
            m.d.comb += body.eq(Cat(Mux(rx.nak_req, Const(DLLP_NAK, 8), Const(DLLP_ACK, 8)),
                                    Const(0, 8),
                                    ack_seq[8:12], Const(0, 4), ack_seq[:8]))
        with m.Else():
            m.d.comb += body.eq(Cat(fc_type | Cat(Const(0, 4), fc_pick), pick_h[2:8], Const(0, 2),
                                    pick_d[8:12], Const(0, 2), pick_h[:2], pick_d[:8]))
        check = DLLP_CRC.absorb(m, DLLP_CRC.init, body, 4) ^ DLLP_CRC.xorout

        # -- phy_tx: a DLLP goes between packets, never inside one ---------------------------
        use_tlp = tx.started | ~dllp_valid
        with m.If(use_tlp):
            m.d.comb += [self.phy_tx.valid.eq(tx.out.valid),
                         self.phy_tx.payload.eq(tx.out.payload),
                         tx.out.ready.eq(self.phy_tx.ready)]
        with m.Else():
            m.d.comb += [self.phy_tx.valid.eq(1),
                         self.phy_tx.payload.data.eq(Cat(body, check)),
                         self.phy_tx.payload.nbytes.eq(6), self.phy_tx.payload.last.eq(1),
                         self.phy_tx.payload.dllp.eq(1), self.phy_tx.payload.length.eq(6)]
        dllp_taken = ~use_tlp & self.phy_tx.ready
        m.d.comb += [rx.nak_sent.eq(dllp_taken & rx.nak_req),
                     rx.ack_sent.eq(dllp_taken & ~rx.nak_req & rx.ack_req)]
        with m.If(rx.nak_sent):
            m.d.sync += self.naks_sent.eq(self.naks_sent + 1)
        with m.If(dllp_taken & ~rx.nak_req & ~rx.ack_req):
            with m.Switch(fc_pick):
                for c in range(3):
                    with m.Case(c):
                        m.d.sync += fc_send[c].eq(0)

        # -- credits returned: the transaction layer took a TLP. An UpdateFC goes out once a
        # quarter of the class's credits came free, or FC_UPDATE_WAIT cycles after the first
        # credit came free, whichever is first (coalescing; the refresh covers lost ones) ---
        fc_sent = Signal(3)    # an UpdateFC of the class is taken this cycle
        with m.If(dllp_taken & ~rx.nak_req & ~rx.ack_req & (state == ACTIVE)):
            m.d.comb += fc_sent.eq(1 << fc_pick)
        pend_h = [Signal(8, name=f"pend_h{c}") for c in range(3)]   # freed, not advertised
        pend_d = [Signal(12, name=f"pend_d{c}") for c in range(3)]
        wait = Signal(range(FC_UPDATE_WAIT + 1))
        waited = wait == FC_UPDATE_WAIT
        pending = Cat(pend_h[c] != 0 for c in range(3)).any()
        m.d.sync += wait.eq(Mux(pending & ~waited, wait + 1, 0))
        for c, (h_adv, d_adv) in enumerate(self.init_credits):
            free = rx.free_valid & (state == ACTIVE) & (rx.free_cls == c)
            freed = Mux(free, Mux(rx.free_data > d_adv, d_adv, rx.free_data), 0)
            m.d.sync += [pend_h[c].eq(Mux(fc_sent[c], 0, pend_h[c]) + free),
                         pend_d[c].eq(Mux(fc_sent[c], 0, pend_d[c]) + freed)]
            with m.If(free):
                m.d.sync += [alloc_h[c].eq(alloc_h[c] + 1), alloc_d[c].eq(alloc_d[c] + freed)]
            due = ((pend_h[c] >= max(1, h_adv // 4)) | (pend_d[c] >= max(1, d_adv // 4))
                   | (waited & (pend_h[c] != 0)))
            with m.If(due & ~fc_sent[c]):
                m.d.sync += fc_send[c].eq(1)

        with m.If(down):
            m.d.sync += [state.eq(DOWN), fc_send.eq(0), fi1.eq(0)]
            m.d.sync += [c.eq(0) for c in pend_h + pend_d]
        return m
