"""Operand streams of the NE tile: vectors gathered from the scratchpad, one per k-step.

An :class:`OperandStream` turns strided tensor operands into the per-beat vectors the
systolic array consumes (a column of ``A`` or a row of ``B`` per k-step), whatever the layout:
``lanes`` independent lanes each walk their own element address sequence, fetch only the
scratchpad words their sequence moves into, and a request for a word serves every lane that
wants the same word. See ``docs/hw/ne_tile.md`` ("Operand streams").
"""

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..refuse import refuse

__all__ = ["OperandStream"]


def _log2(value, what):
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two, not {value}")
    return value.bit_length() - 1


class OperandStream(wiring.Component):
    """Gathers vectors of ``lanes`` elements from the scratchpad, one vector per k-step.

    A *segment* (one :attr:`config` transfer) is ``count`` vectors; element ``l`` of vector
    ``k`` is the ``elem_bytes``-byte element at byte address

    ``base + l * lane_stride + k * k_stride`` (mod ``2**addr_width``)

    for the lanes ``l < lanes`` of the configuration; the other lanes read as 0 and fetch
    nothing. So a column of a row-major ``A`` is ``lane_stride = row bytes, k_stride =
    elem_bytes``, a row of a row-major ``B`` is ``lane_stride = elem_bytes, k_stride = row
    bytes``, and the transposed layouts swap the two. Addresses must be multiples of
    ``elem_bytes``.

    Each lane has a scanner and a queue of ``depth`` fetched words. The scanner knows the
    words its addresses pass through without stepping through k: with ``k_stride <
    word_bytes`` they are the consecutive words from the first address's to the last's
    (each used by at least one k-step), otherwise one new word per k-step. It requests them
    in order while its queue has room. The stream offers one request per cycle on
    :attr:`req`: that of the lowest lane whose queue is empty (so every lane gets its next
    word before any lane runs further ahead), else that of the lowest lane with one pending;
    a granted request fills every lane waiting for the same word. Vectors leave in order on
    :attr:`o` when every active lane holds its word; a lane pops a word after the last k-step
    that uses it. So a contiguous vector costs one request (two if it straddles a word
    boundary), and a strided vector with ``k_stride = elem_bytes`` one request per lane every
    ``word_bytes / elem_bytes`` k-steps.

    Parameters
    ----------
    lanes : int
        Elements per vector.
    addr_width : int
        Width of a scratchpad byte address.
    word_bytes : int
        Bytes per scratchpad word (a power of two).
    elem_bytes : int
        Bytes per element (a power of two, at most ``word_bytes``).
    count_width : int
        Width of ``count``.
    depth : int
        Fetched words queued per lane (3 sustain one request per cycle).
    narrow : bool
        Segments may hold elements of half the size (a ``narrow`` flag in :attr:`config`):
        each then sits at any multiple of ``elem_bytes / 2`` and leaves zero-extended (a bf16
        operand of the fp32 vector unit).

    Members
    -------
    config : ``In(stream.Signature(config_layout))``
        Segments: ``base``, ``lane_stride``, ``k_stride`` (bytes, ``addr_width`` bits each),
        ``count`` (vectors, at least 1), ``last_offset`` (``(count - 1) * k_stride``, mod
        ``2**addr_width``: the sender computes it, once per command rather than once per
        segment) and ``lanes`` (active lanes, ``0 .. lanes``).
        Accepted in the cycle the scanners request the previous segment's last words; up to
        two segments wait for their vectors, so fetching runs ahead across segments.
    req : ``Out(stream.Signature(word_addr_width))``
        Read request: a scratchpad word address. ``ready`` is the grant.
    rd_data : ``In(8 * word_bytes)``
        The scratchpad's read data; it must hold the word of a granted request exactly in the
        cycle after the grant.
    o : ``Out(stream.Signature(vector_layout))``
        Vectors: ``data`` (``lanes`` elements, lane 0 in the low bits), ``first`` (``k = 0`` of
        a segment) and ``last`` (``k = count - 1``).
    urgent : ``Out(1)``
        The request on :attr:`req` is for a lane that has no word queued or on its way (the
        vectors stop until it is served): an arbiter serves such requests first.
    busy : ``Out(1)``
        A segment is being scanned or emitted.

    ``req.valid`` does not depend on ``req.ready``, nor ``o.valid`` on ``o.ready``;
    ``config.ready`` does depend on ``req.ready`` (a segment is taken in the cycle the last
    words of the previous one are granted).
    """

    def __init__(self, lanes, *, addr_width, word_bytes, elem_bytes=2, count_width=16,
                 depth=4, narrow=False):
        try:
            if not isinstance(lanes, int) or lanes < 1:
                raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
            self._word_shift = _log2(word_bytes, "word_bytes")
            self._elem_shift = _log2(elem_bytes, "elem_bytes")
            if elem_bytes > word_bytes:
                raise ValueError(f"elem_bytes {elem_bytes} > word_bytes {word_bytes}")
            if addr_width <= self._word_shift:
                raise ValueError(f"addr_width {addr_width} does not exceed a word")
            if depth < 2:
                raise ValueError(f"depth must be at least 2, not {depth}")
            if narrow and elem_bytes < 2:
                raise ValueError("narrow elements need elem_bytes of at least 2")
        except ValueError as error:
            refuse(self, error)
        self.narrow = narrow
        self.lanes, self.addr_width, self.word_bytes = lanes, addr_width, word_bytes
        self.elem_bytes, self.count_width, self.depth = elem_bytes, count_width, depth
        self.word_addr_width = addr_width - self._word_shift
        super().__init__({
            "config": In(stream.Signature(self.config_layout(lanes, addr_width, count_width,
                                                             narrow))),
            "req": Out(stream.Signature(self.word_addr_width)),
            "rd_data": In(8 * word_bytes),
            "o": Out(stream.Signature(self.vector_layout(lanes, elem_bytes))),
            "urgent": Out(1),
            "busy": Out(1),
        })

    @staticmethod
    def config_layout(lanes, addr_width, count_width=16, narrow=False):
        """The payload of :attr:`config` (``narrow``: with the ``narrow`` flag)."""
        members = {
            "base": addr_width,
            "lane_stride": addr_width,
            "k_stride": addr_width,
            "count": count_width,
            "last_offset": addr_width,
            "lanes": range(lanes + 1),
        }
        if narrow:
            members["narrow"] = 1
        return data.StructLayout(members)

    @staticmethod
    def vector_layout(lanes, elem_bytes=2):
        return data.StructLayout({
            "data": data.ArrayLayout(8 * elem_bytes, lanes),
            "first": 1,
            "last": 1,
        })

    def elaborate(self, platform):
        m = Module()
        lanes, aw, ws, es = self.lanes, self.addr_width, self._word_shift, self._elem_shift
        layout = self.config_layout(lanes, aw, self.count_width, self.narrow)

        # Segments travel from the scanners to the emitter through a two-deep queue.
        m.submodules.segments = segments = SyncFIFO(width=layout.size, depth=2)

        # -- Scanners ------------------------------------------------------------------------
        scan_active = Signal()
        scan = Signal(layout)
        all_scanned = Signal()
        load_scan = Signal()
        m.d.comb += [
            self.config.ready.eq(segments.w_rdy & (~scan_active | all_scanned)),
            load_scan.eq(self.config.valid & self.config.ready),
            segments.w_en.eq(load_scan),
            segments.w_data.eq(self.config.payload),
        ]
        with m.If(load_scan):
            m.d.sync += [scan_active.eq(1), scan.eq(self.config.payload)]
        with m.Elif(all_scanned):
            m.d.sync += scan_active.eq(0)

        # A lane's words: with k_stride < word_bytes its addresses move through consecutive
        # words (each one used by at least one step), so it requests the words from the
        # first to the last in turn; with a larger stride every step is in a new word, so
        # it requests one word per step. Either way one request per grant, no stepping
        # through k.
        dense = Signal()
        m.d.comb += dense.eq(scan.k_stride < self.word_bytes)
        cfg = self.config.payload
        left_width = max(self.count_width, self.word_addr_width) + 1
        queues, pending, hungry, words, done = [], [], [], [], []
        granted = [Signal(name=f"lane{l}_granted") for l in range(lanes)]
        for l in range(lanes):
            queue = SyncFIFO(width=8 * self.word_bytes, depth=self.depth)
            m.submodules[f"lane{l}_words"] = queue
            queues.append(queue)
            addr = Signal(aw, name=f"lane{l}_scan_addr")        # in the next word to fetch
            left = Signal(left_width, name=f"lane{l}_words_left")
            inflight = Signal(name=f"lane{l}_inflight")    # a granted word arrives now
            word = Signal(self.word_addr_width, name=f"lane{l}_word")
            room = Signal(name=f"lane{l}_room")
            want = Signal(name=f"lane{l}_want")
            m.d.comb += [
                word.eq(addr[ws:]),
                room.eq(queue.level + inflight < self.depth),
                want.eq(scan_active & (left != 0) & room),
                queue.w_en.eq(inflight),
                queue.w_data.eq(self.rd_data),
            ]
            m.d.sync += inflight.eq(granted[l])
            first = Signal(aw, name=f"lane{l}_first")
            final = Signal(aw, name=f"lane{l}_final")
            m.d.comb += [first.eq(cfg.base + l * cfg.lane_stride),
                         final.eq(first + cfg.last_offset)]
            with m.If(load_scan):
                m.d.sync += addr.eq(first)
                with m.If(cfg.lanes <= l):
                    m.d.sync += left.eq(0)
                with m.Elif(cfg.k_stride < self.word_bytes):
                    m.d.sync += left.eq(final[ws:] - first[ws:] + 1)
                with m.Else():
                    m.d.sync += left.eq(cfg.count)
            with m.Elif(granted[l]):
                m.d.sync += [left.eq(left - 1),
                             addr.eq(addr + Mux(dense, self.word_bytes, scan.k_stride))]
            starving = Signal(name=f"lane{l}_starving")   # nothing queued or on its way
            m.d.comb += starving.eq(want & (queue.level == 0) & ~inflight)
            pending.append(want)
            hungry.append(starving)
            words.append(word)
            done.append((left == 0) | ((left == 1) & granted[l]))
        m.d.comb += all_scanned.eq(reduce(operator.and_, done))

        # One request per cycle: the lowest lane whose queue is empty (so that every lane gets
        # its first word before any gets a second), else the lowest lane with one pending. The
        # granted word fills every lane that wants the same word.
        chosen = Signal(self.word_addr_width)
        for l in reversed(range(lanes)):
            with m.If(pending[l]):
                m.d.comb += chosen.eq(words[l])
        any_hungry = Signal()
        m.d.comb += any_hungry.eq(reduce(operator.or_, hungry))
        with m.If(any_hungry):
            for l in reversed(range(lanes)):
                with m.If(hungry[l]):
                    m.d.comb += chosen.eq(words[l])
        m.d.comb += [self.req.valid.eq(reduce(operator.or_, pending)), self.req.payload.eq(chosen),
                     self.urgent.eq(any_hungry)]
        for l in range(lanes):
            m.d.comb += granted[l].eq(pending[l] & self.req.ready & (words[l] == chosen))

        # -- Emitter -------------------------------------------------------------------------
        active = Signal()
        seg = Signal(layout)
        k = Signal(self.count_width, name="emit_k")
        last = Signal()
        emit = Signal()
        load = Signal()
        m.d.comb += [
            last.eq(k == seg.count - 1),
            emit.eq(self.o.valid & self.o.ready),
            load.eq(segments.r_rdy & (~active | (emit & last))),
            segments.r_en.eq(load),
            self.o.payload.first.eq(k == 0),
            self.o.payload.last.eq(last),
        ]
        with m.If(load):
            m.d.sync += [active.eq(1), seg.eq(segments.r_data), k.eq(0)]
        with m.Elif(emit):
            m.d.sync += k.eq(k + 1)
            with m.If(last):
                m.d.sync += active.eq(0)
        next_seg = layout(segments.r_data)

        have = []
        for l in range(lanes):
            queue = queues[l]
            addr = Signal(aw, name=f"lane{l}_emit_addr")
            addr_next = Signal(aw, name=f"lane{l}_emit_addr_next")
            on = Signal(name=f"lane{l}_emit_on")
            element = Signal(8 << es, name=f"lane{l}_element")
            if self.narrow:
                # Elements of half the width at any multiple of their size: shift the word
                # by the byte offset (zeros past its end) and keep the low half if narrow.
                shifted = Cat(queue.r_data, Const(0, 8 << es)) >> (addr[:ws] * 8)
                half = 4 << es
                m.d.comb += element.eq(Cat(shifted[:half],
                                           Mux(seg.narrow, 0, shifted[half:2 * half])))
            else:
                m.d.comb += element.eq(queue.r_data.word_select(addr[es:ws], 8 << es))
            m.d.comb += [
                on.eq(seg.lanes > l),
                addr_next.eq(addr + seg.k_stride),
                # Pop a word after the last step that uses it.
                queue.r_en.eq(emit & on & (last | (addr_next[ws:] != addr[ws:]))),
                self.o.payload.data[l].eq(Mux(on, element, 0)),
            ]
            with m.If(load):
                m.d.sync += addr.eq(next_seg.base + l * next_seg.lane_stride)
            with m.Elif(emit):
                m.d.sync += addr.eq(addr_next)
            have.append(~on | queue.r_rdy)
        m.d.comb += [
            self.o.valid.eq(active & reduce(operator.and_, have)),
            self.busy.eq(scan_active | active | segments.r_rdy),
        ]
        return m
