"""The systolic matrix unit of the Neural Engine tile: an output-stationary array of
processing elements, each a bf16 multiplier feeding an fp32 accumulator.

Every processing element (PE) owns one fp32 accumulator ``C[i][j]`` and, per beat ``k``,
computes ``acc = fp32_add(acc, bf16_mul(a[i][k], b[k][j]))``: exactly the accumulation order
of the golden model, :func:`npusim.sw.numerics.matmul_bf16`. Operands flow systolically (``a``
to the right along the rows, ``b`` down the columns, skewed so that PE ``(i, j)`` sees
``a[i][k]`` and ``b[k][j]`` in the same cycle); results leave through a per-column result bus
and a de-skew line while the next tile computes. See ``docs/hw/systolic.md``.
"""

import operator
from functools import reduce

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..fpu.bf16_mul import Bf16Multiplier
from ..fpu.fp32_add import Fp32Adder
from ..refuse import refuse

__all__ = ["BeatControl", "ProcessingElement", "SystolicArray"]


class BeatControl(data.Struct):
    """The control bits that travel through the array with each operand beat.

    ``first``, ``last`` and ``load`` mean what they mean on :attr:`SystolicArray.feed`; inside
    the array they are zero for bubbles, and ``load`` is zero unless ``first`` is set.
    """
    valid: 1  # a beat: 0 is a bubble, which changes no accumulator
    first: 1  # k = 0 of a tile: the accumulator restarts (from +0, or from ``init``)
    last: 1   # k = K-1 of a tile: the finished accumulator leaves as a result
    load: 1   # with ``first``: restart from the ``init`` bus instead of +0


def _delay(m, value, cycles, shape, *, en, name, reset_less):
    """``value`` delayed by ``cycles`` registers that move when ``en`` is high.

    The registers are named ``<name>_d1``, ``<name>_d2``, ... (``d1`` is nearest the input), so a
    wave viewer lists a delay line in order. ``cycles == 0`` returns ``value`` itself.
    """
    for stage in range(1, cycles + 1):
        register = Signal(shape, name=f"{name}_d{stage}", reset_less=reset_less)
        with m.If(en):
            m.d.sync += register.eq(value)
        value = register
    return value


class ProcessingElement(wiring.Component):
    """One processing element of the output-stationary array: ``acc += a * b`` per beat.

    A PE registers the beat arriving from its west (``a_in``, ``ctl_in``) and north (``b_in``)
    neighbours, computes on it in the next cycle, and passes it on to its east and south
    neighbours (``a_out``, ``ctl_out``, ``b_out``) at the same time: one cycle per hop. For a
    beat with ``valid`` set it computes

    ``acc = fp32_add(base, bf16_mul(a, b))``, with ``base = init`` for a ``first`` beat with
    ``load``, ``+0`` (all bits zero) for another ``first`` beat, and the previous ``acc``
    otherwise,

    through the shared, combinational :class:`~npusim.hw.fpu.bf16_mul.Bf16Multiplier` and
    :class:`~npusim.hw.fpu.fp32_add.Fp32Adder`, so the result is bit-exact with
    :func:`npusim.sw.numerics.matmul_bf16`. A bubble (``valid`` clear) changes nothing. A beat
    with ``last`` set also copies the new accumulator to ``result`` for one cycle.

    Members
    -------
    en : ``In(1)``
        Advance. Every register of the PE holds its value while ``en`` is low (the whole array
        stalls together).
    a_in : ``In(16)``
        bf16 operand ``a[i][k]`` from the west neighbour (or the row's skew line).
    b_in : ``In(16)``
        bf16 operand ``b[k][j]`` from the north neighbour (or the column's skew line).
    ctl_in : ``In(BeatControl)``
        The beat's control bits, travelling with ``a_in``.
    init : ``In(32)``
        The column's initial-accumulator bus: read (combinationally) in the cycle the PE
        computes a ``first`` beat with ``load``; ignored otherwise.
    a_out, b_out, ctl_out : ``Out(16)``, ``Out(16)``, ``Out(BeatControl)``
        The beat the PE computes on in this cycle (its operand registers), for the east
        (``a_out``, ``ctl_out``) and south (``b_out``) neighbours.
    result : ``Out(32)``
        The finished accumulator, one cycle after the PE computed a ``last`` beat; zero in
        every other cycle, so a column of PEs can be combined with an OR.
    result_valid : ``Out(1)``
        High for the one cycle (of ``en``) in which ``result`` holds a finished accumulator.
    """

    en: In(1)
    a_in: In(16)
    b_in: In(16)
    ctl_in: In(BeatControl)
    init: In(32)
    a_out: Out(16)
    b_out: Out(16)
    ctl_out: Out(BeatControl)
    result: Out(32)
    result_valid: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = Bf16Multiplier()
        m.submodules.add = add = Fp32Adder()

        # -- Operand registers: the beat this PE computes on in this cycle --------------------
        a = Signal(16, reset_less=True)
        b = Signal(16, reset_less=True)
        ctl = Signal(BeatControl)
        with m.If(self.en):
            m.d.sync += [a.eq(self.a_in), b.eq(self.b_in), ctl.eq(self.ctl_in)]
        m.d.comb += [self.a_out.eq(a), self.b_out.eq(b), self.ctl_out.eq(ctl)]

        # -- Multiply-accumulate: acc = base + a * b ------------------------------------------
        acc = Signal(32, reset_less=True)
        base = Signal(32)
        with m.If(ctl.first):
            m.d.comb += base.eq(Mux(ctl.load, self.init, 0))
        with m.Else():
            m.d.comb += base.eq(acc)
        product = Signal(32)
        acc_next = Signal(32)
        m.d.comb += [
            mul.a.eq(a), mul.b.eq(b), product.eq(mul.p),
            add.a.eq(base), add.b.eq(product), acc_next.eq(add.s),
        ]

        done = Signal()  # this beat finishes the tile
        m.d.comb += done.eq(ctl.valid & ctl.last)
        with m.If(self.en):
            with m.If(ctl.valid):
                m.d.sync += acc.eq(acc_next)
            m.d.sync += [
                self.result.eq(Mux(done, acc_next, 0)),
                self.result_valid.eq(done),
            ]
        return m


class SystolicArray(wiring.Component):
    """An output-stationary ``rows`` x ``cols`` systolic array of bf16 x bf16 -> fp32
    multiply-accumulate processing elements: the matrix unit of the Neural Engine tile.

    A *tile* is ``C = acc + A @ B`` for ``A`` bf16 ``[rows, K]``, ``B`` bf16 ``[K, cols]`` and an
    fp32 ``[rows, cols]`` accumulator that starts at +0 (all bits zero) or at given values. It
    enters as ``K`` beats on :attr:`feed` (beat ``k`` carries column ``k`` of ``A`` and row ``k``
    of ``B``) and leaves as ``rows`` beats on :attr:`result`. Each PE computes
    ``acc = fp32_add(acc, bf16_mul(a[i][k], b[k][j]))`` for ``k = 0 .. K-1`` in order, so every
    result is bit-exact with :func:`npusim.sw.numerics.matmul_bf16`.

    Throughput: with :attr:`feed` always valid, :attr:`init` always valid and :attr:`result`
    always ready, the array accepts one feed beat every cycle across back-to-back tiles of
    ``K >= rows``: a tile's ``rows`` result beats leave while the next tile computes. Shorter
    tiles are correct too, but a tile's ``last`` beat enters the array only ``rows`` cycles
    after the previous tile's ``last`` beat (the result port carries one row per cycle), so
    tiles of ``K < rows`` run at ``K / rows`` of the peak rate.

    Latency: the first result beat of a tile is valid :attr:`latency` (``cols + 3``) cycles
    after the cycle in which its ``last`` feed beat is accepted, if nothing stalls; its other
    rows follow one per cycle.

    Every ``ready`` and ``valid`` output is driven from registers: there is no combinational
    path from any input of the array to any output.

    Parameters
    ----------
    rows : int
        ``R``: rows of the array (of ``A`` and of a result tile), at least 1.
    cols : int
        ``C``: columns of the array (of ``B`` and of a result tile), at least 1.

    Members
    -------
    feed : ``In(stream.Signature(SystolicArray.feed_layout(rows, cols)))``
        One beat ``k`` of a tile per transfer:

        * ``a``: ``ArrayLayout(16, rows)``, ``a[i] = A[i][k]`` (bf16 bit patterns);
        * ``b``: ``ArrayLayout(16, cols)``, ``b[j] = B[k][j]``;
        * ``first``: this is beat ``k = 0`` of a tile: every accumulator restarts, from +0 or,
          with ``load``, from the tile's initial values on :attr:`init`. A beat without
          ``first`` accumulates onto the accumulators as they are, also after a ``last`` beat
          (a tile may continue one whose results already left);
        * ``last``: this is beat ``k = K-1``: the tile's results leave on :attr:`result`. A
          beat may be both ``first`` and ``last`` (``K = 1``);
        * ``load``: read only with ``first``: the accumulators start from the next ``rows``
          rows of :attr:`init` instead of +0.

        Beats are buffered (two deep) before they enter the array; ``ready`` is low only while
        that buffer is full, which happens when the array stalls (``result`` back-pressure, or
        a loaded tile's initial row not there when due), when a ``last`` beat waits for the
        result port (``K < rows``) or when a ``first`` beat with ``load`` waits for its first
        initial row on :attr:`init`. ``valid`` may drop between
        any two beats: the gap passes through the array as a bubble.
    init : ``In(stream.Signature(ArrayLayout(32, cols)))``
        Initial accumulator rows for tiles whose first beat has ``load``: exactly ``rows``
        beats per such tile, row 0 first, in tile order; ``init[j]`` is the fp32 bit pattern
        of ``acc[i][j]``. Rows are queued (:attr:`init_depth` deep, at least one whole tile),
        independently of :attr:`feed`: they may arrive before, with or after the tile's first
        beat. A ``first`` beat with ``load`` enters the array once its row 0 is queued (it
        waits at the head of the feed buffer meanwhile; tiles behind it wait too, tiles ahead
        of it finish and drain); row ``i`` is taken ``i`` cycles of advance later, and the
        whole array stalls while it is not queued, so the rows may stream in one per cycle
        with the tile's first beats.
    result : ``Out(stream.Signature(ArrayLayout(32, cols)))``
        Each finished tile as ``rows`` beats, row 0 first, in tile order: ``result[j]`` is
        the fp32 bit pattern of ``C[i][j]``. While ``ready`` is low and the two-deep result
        buffer is full, the whole array stalls: nothing is lost or changed.
    """

    #: Depth of the feed buffer, in beats.
    FEED_DEPTH = 2
    #: Depth of the result buffer, in rows: enough for full rate while ``result`` is ready.
    RESULT_DEPTH = 2

    def __init__(self, rows=8, cols=8):
        for name, value in (("rows", rows), ("cols", cols)):
            error = None
            if not isinstance(value, int) or isinstance(value, bool):
                error = TypeError(f"{name} must be an integer, not {value!r}")
            elif value < 1:
                error = ValueError(f"{name} must be at least 1, not {value}")
            if error is not None:
                refuse(self, error)
        self.rows = rows
        self.cols = cols
        super().__init__({
            "feed": In(stream.Signature(self.feed_layout(rows, cols))),
            "init": In(stream.Signature(self.row_layout(cols))),
            "result": Out(stream.Signature(self.row_layout(cols))),
        })

    @staticmethod
    def feed_layout(rows, cols):
        """The payload of :attr:`feed`: ``a``, ``b``, ``first``, ``last``, ``load``, LSB first."""
        return data.StructLayout({
            "a": data.ArrayLayout(16, rows),
            "b": data.ArrayLayout(16, cols),
            "first": 1,
            "last": 1,
            "load": 1,
        })

    @staticmethod
    def row_layout(cols):
        """The payload of :attr:`init` and :attr:`result`: one row of fp32 accumulators."""
        return data.ArrayLayout(32, cols)

    @property
    def latency(self):
        """Cycles from the cycle a tile's ``last`` beat is accepted on :attr:`feed` to the
        cycle its first result beat is valid, when nothing stalls: the feed buffer 1, the
        skew of the last column and the PE's operand register ``cols``, the PE's result
        register 1, the result buffer 1."""
        return self.cols + 3

    @property
    def init_depth(self):
        """Depth of the :attr:`init` queue, in rows: one tile's rows while the previous
        tile's last row is still being read, plus one for the queue's registered ``ready``,
        which keeps back-to-back loaded tiles of ``K >= rows`` at full rate."""
        return self.rows + 2

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols
        feed_layout = self.feed_layout(rows, cols)
        row_layout = self.row_layout(cols)

        # -- Buffers on the three ports ---------------------------------------------------------
        m.submodules.feed_queue = feed_queue = SyncFIFO(width=feed_layout.size,
                                                        depth=self.FEED_DEPTH)
        m.submodules.init_queue = init_queue = SyncFIFO(width=row_layout.size,
                                                        depth=self.init_depth)
        m.submodules.result_queue = result_queue = SyncFIFO(width=row_layout.size,
                                                            depth=self.RESULT_DEPTH)
        m.d.comb += [
            feed_queue.w_data.eq(self.feed.payload),
            feed_queue.w_en.eq(self.feed.valid),
            self.feed.ready.eq(feed_queue.w_rdy),
            init_queue.w_data.eq(self.init.payload),
            init_queue.w_en.eq(self.init.valid),
            self.init.ready.eq(init_queue.w_rdy),
            self.result.payload.eq(result_queue.r_data),
            self.result.valid.eq(result_queue.r_rdy),
            result_queue.r_en.eq(self.result.ready),
        ]

        # The whole array moves in lock-step; it stalls while the result buffer is full or an
        # initial row is due and not queued.
        advance = Signal()

        # -- Admission: which beat enters the array in this cycle -------------------------------
        head = feed_layout(feed_queue.r_data)
        # Cycles of advance until the next tile's last beat may enter: its rows must reach the
        # result bus after this tile's (one row per cycle).
        result_gap = Signal(range(rows), name="result_gap")
        # Initial rows the array will still take from the init queue (one per cycle of advance).
        init_pending = Signal(range(rows + 1), name="init_pending")
        last_ok = Signal()
        load_ok = Signal()
        take = Signal()
        m.d.comb += [
            last_ok.eq(result_gap == 0),
            load_ok.eq((init_pending <= 1) & (init_queue.level >= 1 + init_pending)),
            advance.eq(result_queue.w_rdy & ((init_pending == 0) | init_queue.r_rdy)),
            take.eq(advance & feed_queue.r_rdy
                    & (~head.last | last_ok)
                    & (~(head.first & head.load) | load_ok)),
            feed_queue.r_en.eq(take),
        ]
        with m.If(advance):
            with m.If(take & head.last):
                m.d.sync += result_gap.eq(rows - 1)
            with m.Elif(result_gap != 0):
                m.d.sync += result_gap.eq(result_gap - 1)
            with m.If(take & head.first & head.load):
                m.d.sync += init_pending.eq(rows)
            with m.Elif(init_pending != 0):
                m.d.sync += init_pending.eq(init_pending - 1)

        beat_ctl = Signal(BeatControl)  # zero for a bubble
        m.d.comb += [
            beat_ctl.valid.eq(take),
            beat_ctl.first.eq(take & head.first),
            beat_ctl.last.eq(take & head.last),
            beat_ctl.load.eq(take & head.first & head.load),
        ]

        # -- Skew: row i starts i cycles late, column j starts j cycles late --------------------
        row_ctl = [beat_ctl]  # one chain for the control bits, tapped per row
        for i in range(1, rows):
            row_ctl.append(_delay(m, row_ctl[-1], 1, BeatControl, en=advance,
                                  name=f"ctl_skew_row{i}", reset_less=False))
        row_a = [_delay(m, head.a[i], i, 16, en=advance, name=f"a_skew_row{i}",
                        reset_less=True) for i in range(rows)]
        col_b = [_delay(m, head.b[j], j, 16, en=advance, name=f"b_skew_col{j}",
                        reset_less=True) for j in range(cols)]

        # Initial row i is taken from the queue in the cycle PE (i, 0) computes the loaded
        # tile's first beat; column j sees it j cycles later, when PE (i, j) does.
        init_take = Signal()
        m.d.comb += [init_take.eq(advance & (init_pending != 0)),
                     init_queue.r_en.eq(init_take)]
        init_row = row_layout(init_queue.r_data)
        col_init = [_delay(m, init_row[j], j, 32, en=advance, name=f"init_skew_col{j}",
                           reset_less=True) for j in range(cols)]

        # -- The processing elements ------------------------------------------------------------
        pe = [[ProcessingElement() for _ in range(cols)] for _ in range(rows)]
        for i in range(rows):
            for j in range(cols):
                m.submodules[f"pe_{i}_{j}"] = pe[i][j]
                m.d.comb += [
                    pe[i][j].en.eq(advance),
                    pe[i][j].a_in.eq(row_a[i] if j == 0 else pe[i][j - 1].a_out),
                    pe[i][j].ctl_in.eq(row_ctl[i] if j == 0 else pe[i][j - 1].ctl_out),
                    pe[i][j].b_in.eq(col_b[j] if i == 0 else pe[i - 1][j].b_out),
                    pe[i][j].init.eq(col_init[j]),
                ]

        # -- Drain: per-column result bus, then de-skew --------------------------------------------
        # Row i of a tile finishes in column j at a fixed offset i + j from its last beat, and
        # last beats are at least `rows` cycles apart, so at most one PE of a column holds a
        # result in any cycle: the column bus is the OR of its PEs' results.
        col_result = []
        col_valid = []
        for j in range(cols):
            result = Signal(32, name=f"col_result{j}")
            valid = Signal(name=f"col_valid{j}")
            result_terms = [pe[i][j].result for i in range(rows)]
            valid_terms = [pe[i][j].result_valid for i in range(rows)]
            m.d.comb += [result.eq(reduce(operator.or_, result_terms)), valid.eq(reduce(operator.or_, valid_terms))]
            col_result.append(result)
            col_valid.append(valid)
        # Column j is j cycles ahead of the last column: delay it by cols - 1 - j.
        row_out = Signal(row_layout)
        for j in range(cols):
            m.d.comb += row_out[j].eq(_delay(m, col_result[j], cols - 1 - j, 32, en=advance,
                                             name=f"result_deskew_col{j}", reset_less=True))
        row_out_valid = Signal()
        m.d.comb += [
            row_out_valid.eq(col_valid[cols - 1]),
            result_queue.w_data.eq(row_out),
            result_queue.w_en.eq(advance & row_out_valid),
        ]
        return m
