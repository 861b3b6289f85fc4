"""The NE tile top: scratchpad, systolic matrix unit, vector unit and the sequencer that runs
compute commands on them.

:class:`NeTile` takes resolved compute commands (:data:`npusim.hw.isa.ComputeCommand`),
checks every operand exactly as the functional model does (:mod:`npusim.sw.fm.compute`:
same checks, same order, same error codes; a faulting command writes nothing), runs it, and
reports one ``done`` beat per command with its error code and its cycle count. Theory of
operation, ports and timing: ``docs/hw/ne_tile.md``.
"""

import operator
from functools import reduce
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ...sw.isa.enums import DType, VBMode, VectorOp
from ...sw.numerics import NEG_INF, OPERANDS
from ...sw.params import HwParams
from ..isa import ComputeCommand, ErrorShape, Opcode, amaranth_enum, resolved_layout
from ..refuse import refuse
from .operand_stream import OperandStream
from .scratchpad import Scratchpad, ScratchpadPort
from .systolic import SystolicArray
from .vector_alu import VectorOpShape
from .vector_unit import Mode, RedOpShape, VectorUnit

__all__ = ["ErrorShape", "NeTile", "done_layout"]

#: The Amaranth enum of :class:`~npusim.sw.isa.enums.ErrorCode` (8 bits; OK = 0).
_DType = amaranth_enum(DType)
_VBMode = amaranth_enum(VBMode)

#: Bit ``op`` set: VECTOR op ``op`` reads operand b.
_TWO_OPERAND_OPS = sum(1 << op for op in VectorOp if OPERANDS[op] > 1)

#: What the exactly-in-place rule compares of an operand slot.
_SLOT_SHAPE = data.StructLayout({"wide": 1, "rows": 16, "cols": 16, "ld": 16, "addr": 24})

#: Payload of :attr:`NeTile.done`.
done_layout = data.StructLayout({"error": ErrorShape, "cycles": 32})

_MATMUL = resolved_layout("MATMUL")


#: Vectors a panel being written must hold beyond the feed's position for its producer's
#: requests to stop being urgent (a request takes about this long to reach the panel).
_PANEL_RUNWAY = 4


def _log2(value):
    return value.bit_length() - 1


def _to_bf16(f):
    """fp32 bits -> bf16 bits, round to nearest even, NaN -> 0x7FC0 (``numerics.fp32_to_bf16``).
    Adding 0x7FFF plus the bf16 LSB rounds at bit 16; a carry moves into the exponent (the
    largest values become infinity); only NaNs could carry out of bit 31, and they are
    replaced."""
    is_nan = (f[23:31] == 0xFF) & (f[:23] != 0)
    rounded = (f + 0x7FFF + f[16])[16:32]
    return Mux(is_nan, 0x7FC0, rounded)


def _offer_together(m, name, offers, active, restart):
    """Offer one payload on each stream of ``offers`` (``{key: (stream, used)}``) per step
    while ``active``: a used stream's ``valid`` stays high until it is taken, and the step
    ends (the returned signal) in the cycle the last used one is taken. ``restart`` forgets
    what was taken. Outside ``active`` the streams are not driven here, so several callers
    may share a stream as long as one is active at a time."""
    step = Signal(name=f"{name}_step")
    sent, done = [], []
    for key, (port, used) in offers.items():
        was_sent = Signal(name=f"{name}_{key}_sent")
        is_done = Signal(name=f"{name}_{key}_done")
        with m.If(active):
            m.d.comb += port.valid.eq(used & ~was_sent)
        m.d.comb += is_done.eq(was_sent | ~used | (port.valid & port.ready))
        sent.append(was_sent)
        done.append(is_done)
    m.d.comb += step.eq(active & reduce(operator.and_, done))
    with m.If(restart | step):
        m.d.sync += [s.eq(0) for s in sent]
    with m.Else():
        m.d.sync += [s.eq(d) for s, d in zip(sent, done)]
    return step


class _Walker:
    """One position in the tile sequence of a MATMUL: an output tile ``(ti, tj)``, its place
    in its group and line, and, for the C reader and writer, a row of that tile.

    Tiles go line by line. With ``cfg.outer_b`` a line is a column of tiles (``ti`` moves
    fastest, B's panel is the one reused), otherwise a row of tiles (``tj`` fastest, A's panel
    reused). In group mode (``cfg.group``) B's vectors are ``G`` column tiles wide and serve a
    *group* of up to ``G`` tiles side by side: a column line then walks groups, ``tj`` moving
    within the group before ``ti`` moves (so the inner A segment serves the whole group),
    and a row line's groups are simply its consecutive tiles. Each consumer of the sequence
    (operand issue, feed, C reader, C writer) owns a walker, so each runs ahead of the others
    as far as its buffers allow.
    """

    def __init__(self, m, name, tile, *, aw, group_size):
        R, C, G = tile.rows, tile.cols, group_size
        cfg = tile.cfg
        self.rows_left = Signal(16, name=f"{name}_rows_left")   # M - i0
        self.cols_left = Signal(16, name=f"{name}_cols_left")   # N - j0
        self.a_base = Signal(aw, name=f"{name}_a_base")          # A[i0][0]
        self.b_base = Signal(aw, name=f"{name}_b_base")          # B[0][j0]
        self.c_base = Signal(aw, name=f"{name}_c_base")          # C[i0][j0]
        self.c_line = Signal(aw, name=f"{name}_c_line")          # C of the line's first tile
        self.c_group = Signal(aw, name=f"{name}_c_group")        # C of the group's first tile
        self.group_cols = Signal(16, name=f"{name}_group_cols")  # cols_left of the group's first
        self.group_b = Signal(aw, name=f"{name}_group_b")        # b_base of the group's first
        self.group_tile = Signal(range(G), name=f"{name}_group_tile")
        self.line_start = Signal(name=f"{name}_line_start")      # the line's first tile
        self.row = Signal(range(R), name=f"{name}_row")
        self.row_addr = Signal(aw, name=f"{name}_row_addr")      # C[i0 + row][j0]
        self.finished = Signal(name=f"{name}_finished")
        self.rows_valid = Signal(range(R + 1), name=f"{name}_rows_valid")
        self.cols_valid = Signal(range(C + 1), name=f"{name}_cols_valid")
        self.last_tile = Signal(name=f"{name}_last_tile")
        self.group_end = Signal(name=f"{name}_group_end")        # the group's last tile
        self.line_end = Signal(name=f"{name}_line_end")          # the line's last tile
        self.row_valid = Signal(name=f"{name}_row_valid")
        self.next_tile = Signal(name=f"{name}_next_tile")
        self.next_row = Signal(name=f"{name}_next_row")
        column_group = Signal(name=f"{name}_column_group")  # a column line walks groups
        m.d.comb += [
            self.rows_valid.eq(Mux(self.rows_left > R, R, self.rows_left)),
            self.cols_valid.eq(Mux(self.cols_left > C, C, self.cols_left)),
            self.last_tile.eq((self.rows_left <= R) & (self.cols_left <= C)),
            self.row_valid.eq(self.row < self.rows_valid),
            column_group.eq(cfg.outer_b & cfg.group),
            self.group_end.eq(~cfg.group | (self.group_tile == G - 1) | (self.cols_left <= C)),
            self.line_end.eq(Mux(cfg.outer_b, (self.rows_left <= R) & self.group_end,
                                 self.cols_left <= C)),
        ]
        new_c_base = Signal(aw, name=f"{name}_new_c_base")
        tile_step = Signal(name=f"{name}_tile_step")
        m.d.comb += tile_step.eq(self.next_tile | (self.next_row & (self.row == R - 1)))
        down = [self.rows_left.eq(self.rows_left - R),
                self.a_base.eq(self.a_base + cfg.a_tile_step)]
        right = [self.cols_left.eq(self.cols_left - C),
                 self.b_base.eq(self.b_base + cfg.b_tile_step)]
        with m.If(tile.start):
            m.d.sync += [
                self.rows_left.eq(cfg.m), self.cols_left.eq(cfg.n),
                self.a_base.eq(cfg.a), self.b_base.eq(cfg.b),
                self.c_base.eq(cfg.c), self.c_line.eq(cfg.c), self.c_group.eq(cfg.c),
                self.group_cols.eq(cfg.n), self.group_b.eq(cfg.b), self.row_addr.eq(cfg.c),
                self.row.eq(0), self.finished.eq(0), self.line_start.eq(1),
                self.group_tile.eq(0),
            ]
        with m.Elif(tile_step):
            with m.If(self.last_tile):
                m.d.sync += self.finished.eq(1)
            m.d.sync += [self.group_tile.eq(Mux(self.group_end, 0, self.group_tile + 1)),
                         self.line_start.eq(0)]
            with m.If(column_group & ~self.group_end):
                # the next tile of the group, to the right
                m.d.comb += new_c_base.eq(self.c_base + cfg.c_tj_step)
                m.d.sync += right
            with m.Elif(cfg.outer_b & (self.rows_left > R)):
                # down the column line, back to the group's first column
                m.d.comb += new_c_base.eq(self.c_group + cfg.c_ti_step)
                m.d.sync += [*down, self.c_group.eq(new_c_base),
                             self.cols_left.eq(self.group_cols), self.b_base.eq(self.group_b)]
            with m.Elif(cfg.outer_b):
                # the next column line: right of this tile, back to the top
                m.d.comb += new_c_base.eq(self.c_line + (self.c_base - self.c_group)
                                          + cfg.c_tj_step)
                m.d.sync += [*right, self.rows_left.eq(cfg.m), self.a_base.eq(cfg.a),
                             self.c_line.eq(new_c_base), self.c_group.eq(new_c_base),
                             self.group_cols.eq(self.cols_left - C),
                             self.group_b.eq(self.b_base + cfg.b_tile_step),
                             self.line_start.eq(1)]
            with m.Elif(self.cols_left > C):
                # along the row line
                m.d.comb += new_c_base.eq(self.c_base + cfg.c_tj_step)
                m.d.sync += right
            with m.Else():
                # the next row line
                m.d.comb += new_c_base.eq(self.c_line + cfg.c_ti_step)
                m.d.sync += [*down, self.cols_left.eq(cfg.n), self.b_base.eq(cfg.b),
                             self.c_line.eq(new_c_base), self.line_start.eq(1)]
            m.d.sync += [self.c_base.eq(new_c_base), self.row_addr.eq(new_c_base),
                         self.row.eq(0)]
        with m.Elif(self.next_row):
            m.d.sync += [self.row.eq(self.row + 1),
                         self.row_addr.eq(self.row_addr + cfg.c_row_stride)]


class _Panel:
    """A double-buffered panel: two banks of up to ``depth`` vectors. A producer writes a
    panel's vectors in order (``write_valid``/``write_data``/``write_last``; ``write`` says
    it is taken); the feed reads vector ``read_k`` of the oldest panel (``ready``, ``data``,
    combinational) as soon as it is written, as often as it likes, and ``release`` frees the
    bank. A bank is written again only once released."""

    def __init__(self, m, name, width, depth, start):
        self.write_valid = Signal(name=f"{name}_write_valid")
        self.write_data = Signal(width, name=f"{name}_write_data")
        self.write_last = Signal(name=f"{name}_write_last")
        self.write = Signal(name=f"{name}_write")
        self.read_k = Signal(range(depth), name=f"{name}_read_k")
        self.ready = Signal(name=f"{name}_ready")
        self.data = Signal(width, name=f"{name}_data")
        self.release = Signal(name=f"{name}_release")
        # Reads the producer needs before its next vector beyond the first (a panel whose
        # vectors gather from one word per lane gets them in batches): a driven input.
        self.refill = Signal(8, name=f"{name}_refill")
        # Vectors ahead of the feed, less `refill`; the feed is about to wait while short.
        self.margin = Signal(signed(max(_log2(depth), 8) + 3), name=f"{name}_margin")
        self.short = Signal(name=f"{name}_short")
        m.submodules[f"{name}_panel"] = mem = memory.Memory(shape=width, depth=2 * depth,
                                                            init=[])
        wr = mem.write_port()
        rd = mem.read_port(domain="comb")
        write_bank = Signal(name=f"{name}_write_bank")
        write_k = Signal(range(depth + 1), name=f"{name}_write_k")
        read_bank = Signal(name=f"{name}_read_bank")
        ahead = Signal(range(3), name=f"{name}_ahead")   # complete, unreleased panels
        m.d.comb += [
            self.write.eq(self.write_valid & (ahead < 2)),
            wr.addr.eq(Cat(write_k[:_log2(depth)], write_bank)),
            wr.data.eq(self.write_data),
            wr.en.eq(self.write),
            rd.addr.eq(Cat(self.read_k, read_bank)),
            self.data.eq(rd.data),
            self.ready.eq((ahead != 0) | (self.read_k < write_k)),
            self.margin.eq(Mux(ahead == 0, write_k - self.read_k - self.refill, depth)),
            self.short.eq(self.margin < _PANEL_RUNWAY),
        ]
        with m.If(start):
            m.d.sync += [write_k.eq(0), write_bank.eq(0), read_bank.eq(0), ahead.eq(0)]
        with m.Else():
            with m.If(self.write):
                with m.If(self.write_last):
                    m.d.sync += [write_k.eq(0), write_bank.eq(~write_bank)]
                with m.Else():
                    m.d.sync += write_k.eq(write_k + 1)
            with m.If(self.release):
                m.d.sync += read_bank.eq(~read_bank)
            m.d.sync += ahead.eq(ahead + (self.write & self.write_last) - self.release)


class NeTile(wiring.Component):
    """The Neural Engine tile: a banked scratchpad, an ``R x C`` systolic matrix unit, a
    ``C``-lane vector unit and the command sequencer between them.

    Commands arrive resolved (register operands already added by the command processor) on
    :attr:`cmd`, one at a time. Each is checked first, exactly as
    :mod:`npusim.sw.fm.compute` checks it (the same checks in the same order, the same error
    code for the same input); a faulting command writes nothing to SRAM. Each command, good
    or bad, ends with one beat on :attr:`done`; the next command is accepted after that beat
    is taken.

    Implemented: MATMUL, VECTOR, REDUCE and MASK, every option (see ``docs/hw/ne_tile.md``).
    Enumerated fields (``op``, ``b_mode``, dtypes) are trusted: the command processor's decoder
    has already rejected values outside their enums (``BAD_FIELD``).

    Parameters
    ----------
    params : :class:`~npusim.sw.params.HwParams`
        ``array_rows`` (R), ``array_cols`` (C), ``vector_lanes`` (must equal C),
        ``sram_bytes``, ``sram_banks``, ``sram_bytes_per_cycle`` (the scratchpad word). A row
        of ``C`` fp32 values must fit in 8 words.
        ``params.panel_depth`` is the vectors per panel buffer (a power of two): MATMULs with
        ``K <= panel_depth`` reuse an operand's panel across a line of tiles; longer ones
        stream both operands per tile.

    Members
    -------
    cmd : ``In(stream.Signature(ComputeCommand))``
        Resolved compute commands: ``opcode`` and ``args`` (one union member per command).
        Accepted only while the tile is idle.
    done : ``Out(stream.Signature(done_layout))``
        One beat per command: ``error`` (:data:`ErrorShape`, ``OK`` = 0) and ``cycles``, the
        clock cycles from the edge that accepted the command to the first cycle ``done`` is
        valid. Held until taken.
    dma : ``In(ScratchpadPort)``
        The scratchpad's DMA port, passed through (the device's DMA engines connect here). It
        loses bank conflicts to the tile's own accesses.
    """

    def __init__(self, params=None):
        params = HwParams() if params is None else params
        panel_depth = params.panel_depth
        try:
            if panel_depth < 1 or panel_depth & (panel_depth - 1):
                raise ValueError(f"panel_depth must be a power of two, not {panel_depth}")
            if params.vector_lanes != params.array_cols:
                raise ValueError(f"the vector unit has one lane per array column: vector_lanes "
                                 f"{params.vector_lanes} != array_cols {params.array_cols}")
            if 4 * params.array_cols > 8 * params.sram_bytes_per_cycle:
                raise ValueError("a row of C fp32 values must fit in 8 scratchpad words")
            # Built here so that a bad geometry fails at construction.
            self._scratchpad = Scratchpad(params.sram_bytes, params.sram_banks,
                                          params.sram_bytes_per_cycle)
        except ValueError as error:
            refuse(self, error)
        self.params, self.panel_depth = params, panel_depth
        self.rows, self.cols = params.array_rows, params.array_cols
        self.word_bytes = params.sram_bytes_per_cycle
        self.addr_width = _log2(params.sram_bytes)
        self._port = ScratchpadPort(self._scratchpad.words.bit_length() - 1, self.word_bytes)
        super().__init__({
            "cmd": In(stream.Signature(ComputeCommand)),
            "done": Out(stream.Signature(done_layout)),
            "dma": In(self._port),
        })

    @property
    def dma_port_signature(self):
        """The :class:`ScratchpadPort` the DMA side connects to :attr:`dma` (requester view)."""
        return self._port

    def elaborate(self, platform):
        m = Module()
        R, C, WB = self.rows, self.cols, self.word_bytes
        aw, ws = self.addr_width, _log2(WB)
        size = self.params.sram_bytes
        # Words a row of C values (at most 4 C bytes, at any byte offset) can touch.
        nw = (4 * C + 2 * WB - 2) // WB

        m.submodules.scratchpad = sp = self._scratchpad
        m.submodules.array = array = SystolicArray(R, C)
        self._array = array  # lets an Amaranth-simulator testbench probe the array
        m.submodules.a_stream = a_stream = OperandStream(R, addr_width=aw, word_bytes=WB)
        # B's stream is a group of G column tiles wide (as many columns as a word holds): in
        # group mode one segment serves G tiles; otherwise only its first C lanes are used.
        G = self.params.group_tiles
        GB = G * C
        m.submodules.b_stream = b_stream = OperandStream(GB, addr_width=aw, word_bytes=WB)
        m.submodules.vector_unit = vu = VectorUnit(self.params.vector_lanes)
        m.submodules.v_stream = v_stream = OperandStream(C, addr_width=aw, word_bytes=WB,
                                                         elem_bytes=4, narrow=True)
        # VECTOR's operands b and c (fp32).
        m.submodules.vb_stream = vb_stream = OperandStream(C, addr_width=aw, word_bytes=WB,
                                                           elem_bytes=4)
        m.submodules.vc_stream = vc_stream = OperandStream(C, addr_width=aw, word_bytes=WB,
                                                           elem_bytes=4)
        wiring.connect(m, wiring.flipped(self.dma), sp.dma)
        port = sp.compute

        # -- The command -----------------------------------------------------------------------
        latched = Signal(ComputeCommand)
        opcode = latched.opcode
        cmd = latched.args.matmul      # the command's fields, seen as each opcode's layout
        red = latched.args.reduce
        error = Signal(ErrorShape)
        cycles = Signal(32)

        # Values derived from the command for the run (set during the checks).
        cfg = SimpleNamespace()
        for name, width in (("m", 16), ("n", 16), ("a", aw), ("b", aw), ("c", aw),
                            ("a_tile_step", aw), ("a_lane_stride", aw), ("a_k_stride", aw),
                            ("b_tile_step", aw), ("b_lane_stride", aw), ("b_k_stride", aw),
                            ("c_row_stride", aw), ("c_ti_step", aw), ("c_tj_step", aw),
                            ("a_last_offset", aw), ("b_last_offset", aw), ("k_count", 16)):
            setattr(cfg, name, Signal(width, name=f"cfg_{name}"))
        cfg.zero_k = Signal(name="cfg_zero_k")    # K = 0: one beat of -0 products per tile
        cfg.acc = Signal(name="cfg_acc")
        cfg.outer_b = Signal(name="cfg_outer_b")  # B's panel is reused (tiles go by columns)
        cfg.panel = Signal(name="cfg_panel")      # K fits the panel buffer: reuse it
        cfg.group = Signal(name="cfg_group")      # ... and B (inner, rows contiguous) too
        cfg.bf16 = Signal(name="cfg_bf16")        # C is stored as bf16
        # REDUCE
        for name, width in (("red_rows", 16), ("red_a", aw), ("red_dst", aw),
                            ("red_block_step", aw), ("red_lane_stride", aw),
                            ("red_k_stride", aw), ("red_last_offset", aw), ("red_count", 16)):
            setattr(cfg, name, Signal(width, name=f"cfg_{name}"))
        cfg.red_zero = Signal(name="cfg_red_zero")   # no columns: one identity beat per block
        cfg.red_bf16 = Signal(name="cfg_red_bf16")   # a is bf16
        cfg.red_op = Signal(RedOpShape, name="cfg_red_op")
        # VECTOR and MASK (MASK runs as a SELECT of -inf and a, on a mask made here)
        for name, width in (("v_rows", 16), ("v_cols", 16), ("v_a", aw), ("v_b", aw),
                            ("v_c", aw), ("v_dst", aw), ("v_a_step", aw), ("v_a_k", aw),
                            ("v_a_last", aw), ("v_b_lane", aw), ("v_b_k", aw),
                            ("v_b_last", aw), ("v_b_step", aw), ("v_c_k", aw),
                            ("v_c_last", aw), ("v_d_row", aw), ("v_d_step", aw), ("v_imm", 32),
                            ("q0", 20), ("k0", 20), ("klen", 20), ("window", 20),
                            ("q_shift", 5)):
            setattr(cfg, name, Signal(width, name=f"cfg_{name}"))
        for name in ("v_a_bf16", "v_d_bf16", "v_b_on", "v_c_on", "v_mask", "causal"):
            setattr(cfg, name, Signal(name=f"cfg_{name}"))
        cfg.v_op = Signal(VectorOpShape, name="cfg_v_op")
        cfg.rows, cfg.cols = R, C

        tile = SimpleNamespace(rows=R, cols=C, cfg=cfg, start=Signal(name="tile_start"))

        # -- Operand checks: sw/fm/compute.py's _Tile, per operand slot ----------------------
        # Each command's operands fill up to three slots in the order the model constructs
        # their _Tile (each checked for alignment, then, if written, for its row stride, then
        # for bounds); the overlap checks come last. An empty operand (a zero dimension) is
        # not checked and its extent is [addr, addr).
        slot_names = ("s0", "s1", "s2", "s3")
        slots = {}
        for name in slot_names:
            slots[name] = dict(
                en=Signal(name=f"{name}_en"), rows=Signal(16, name=f"{name}_rows"),
                cols=Signal(16, name=f"{name}_cols"), ld=Signal(16, name=f"{name}_ld"),
                addr=Signal(24, name=f"{name}_addr"), wide=Signal(name=f"{name}_wide"),
                write=Signal(name=f"{name}_write"))
        pre_error = Signal(name="pre_error")   # MATMUL: accumulate into a bf16 C
        overlap_20 = Signal()                  # check s2 against s0 and s1 (MATMUL)
        overlap_10 = Signal()                  # check s1 against s0 (REDUCE)
        in_place_1 = Signal()                  # s1 against s0, s2, s3 unless in place
        vec = latched.args.vector
        msk = latched.args.mask
        reads_b = Signal()                     # VECTOR's op reads b from SRAM
        m.d.comb += reads_b.eq((Const(_TWO_OPERAND_OPS, 64).bit_select(vec.op, 1))
                               & (vec.b_mode != _VBMode.IMM))
        v_empty = Signal()
        m.d.comb += v_empty.eq((vec.rows == 0) | (vec.cols == 0))

        def fill(name, rows, cols, ld, addr, wide, write=0):
            slot = slots[name]
            m.d.comb += [slot["en"].eq(1), slot["rows"].eq(rows), slot["cols"].eq(cols),
                         slot["ld"].eq(ld), slot["addr"].eq(addr), slot["wide"].eq(wide),
                         slot["write"].eq(write)]

        with m.Switch(opcode):
            with m.Case(Opcode.MATMUL):
                fill("s0", Mux(cmd.a_trans, cmd.k, cmd.m), Mux(cmd.a_trans, cmd.m, cmd.k),
                     cmd.lda, cmd.a, 0)
                fill("s1", Mux(cmd.b_trans, cmd.n, cmd.k), Mux(cmd.b_trans, cmd.k, cmd.n),
                     cmd.ldb, cmd.b, 0)
                fill("s2", cmd.m, cmd.n, cmd.ldc, cmd.c, cmd.c_dtype == _DType.FP32, write=1)
                m.d.comb += [pre_error.eq(cmd.acc & (cmd.c_dtype != _DType.FP32)),
                             overlap_20.eq(1)]
            with m.Case(Opcode.REDUCE):
                fill("s0", red.rows, red.cols, red.lda, red.a, red.a_dtype == _DType.FP32)
                fill("s1", 1, red.rows, red.rows, red.dst, 1, write=1)
                m.d.comb += overlap_10.eq(1)
            with m.Case(Opcode.VECTOR):
                fill("s0", vec.rows, vec.cols, vec.lda, vec.a, vec.a_dtype == _DType.FP32)
                fill("s1", vec.rows, vec.cols, vec.ldd, vec.dst, vec.d_dtype == _DType.FP32,
                     write=1)
                with m.If(reads_b):
                    # b's shape per mode, as the model builds it (empty with the command)
                    with m.Switch(vec.b_mode):
                        for mode, shape in ((_VBMode.TILE, (vec.rows, vec.cols, vec.ldb)),
                                            (_VBMode.ROW, (vec.rows, 1, 1)),
                                            (_VBMode.COL, (1, vec.cols, vec.cols)),
                                            (_VBMode.SCALAR, (1, 1, vec.cols))):
                            with m.Case(mode):
                                rows_, cols_, ld_ = shape
                                fill("s2", Mux(v_empty, 0, rows_), Mux(v_empty, 0, cols_), ld_,
                                     vec.b, 1)
                with m.If(vec.op == VectorOpShape.SELECT):
                    fill("s3", vec.rows, vec.cols, vec.lda, vec.c, 1)
                m.d.comb += in_place_1.eq(1)
            with m.Case(Opcode.MASK):
                fill("s0", msk.rows, msk.cols, msk.ld, msk.a, 1)
                fill("s1", msk.rows, msk.cols, msk.ld, msk.dst, 1, write=1)
                m.d.comb += in_place_1.eq(1)
        check = {}
        same = {}
        for name, slot in slots.items():
            nonempty = Signal(name=f"{name}_nonempty")
            misaligned = Signal(name=f"{name}_misaligned")
            bad_stride = Signal(name=f"{name}_bad_stride")
            end = Signal(37, name=f"{name}_end")   # one past the last byte, when nonempty
            span = Signal(33, name=f"{name}_span")  # (rows - 1) * ld + cols, in elements
            rows, cols, ld, addr, wide = (slot[f] for f in ("rows", "cols", "ld", "addr",
                                                             "wide"))
            m.d.comb += span.eq((rows - 1) * ld + cols)
            m.d.sync += [
                nonempty.eq(slot["en"] & (rows != 0) & (cols != 0)),
                misaligned.eq(Mux(wide, addr[:2] != 0, addr[0])),
                bad_stride.eq(slot["write"] & (rows > 1) & (ld < cols)),
                end.eq(addr + Mux(wide, span << 2, span << 1)),
            ]
            lo = Signal(37, name=f"{name}_lo")
            hi = Signal(37, name=f"{name}_hi")
            a_reg = Signal(24, name=f"{name}_addr_q")
            m.d.sync += a_reg.eq(addr)
            m.d.comb += [lo.eq(a_reg), hi.eq(Mux(nonempty, end, a_reg))]
            check[name] = (nonempty, misaligned, bad_stride, end, lo, hi)
            # What "exactly in place" compares (sw/fm/compute.py, _Tile.same_elements).
            shape = Signal(_SLOT_SHAPE, name=f"{name}_shape_q")
            m.d.sync += [shape.wide.eq(wide), shape.rows.eq(rows), shape.cols.eq(cols),
                         shape.ld.eq(ld), shape.addr.eq(addr)]
            en_q = Signal(name=f"{name}_en_q")
            m.d.sync += en_q.eq(slot["en"])
            same[name] = (en_q, shape)
        pre_error_q = Signal()
        overlap_20_q = Signal()
        overlap_10_q = Signal()
        in_place_1_q = Signal()
        m.d.sync += [pre_error_q.eq(pre_error), overlap_20_q.eq(overlap_20),
                     overlap_10_q.eq(overlap_10), in_place_1_q.eq(in_place_1)]

        def overlaps(x, y):
            return (check[x][4] < check[y][5]) & (check[y][4] < check[x][5])

        def clobbers(x, y):
            """Slot ``x`` (written) overlaps slot ``y`` without being exactly it."""
            (_, sx), (en_y, sy) = same[x], same[y]
            exact = ((sx.wide == sy.wide) & (sx.rows == sy.rows) & (sx.cols == sy.cols)
                     & (sx.addr == sy.addr) & ((sx.rows <= 1) | (sx.ld == sy.ld)))
            return en_y & overlaps(x, y) & ~exact

        rules = [(pre_error_q, ErrorShape.BAD_SHAPE)]
        for name in slot_names:
            nonempty, misaligned, bad_stride, end, _, _ = check[name]
            rules += [(nonempty & misaligned, ErrorShape.ALIGNMENT),
                      (nonempty & bad_stride, ErrorShape.BAD_SHAPE),
                      (nonempty & (end > size), ErrorShape.SRAM_BOUNDS)]
        rules += [(overlap_20_q & (overlaps("s2", "s0") | overlaps("s2", "s1")),
                   ErrorShape.OPERAND_OVERLAP),
                  (overlap_10_q & overlaps("s1", "s0"), ErrorShape.OPERAND_OVERLAP),
                  (in_place_1_q & (clobbers("s1", "s0") | clobbers("s1", "s2")
                                   | clobbers("s1", "s3")), ErrorShape.OPERAND_OVERLAP)]
        first_error = Signal(ErrorShape)
        m.d.comb += first_error.eq(ErrorShape.OK)
        for n, (condition, code) in enumerate(rules):
            with (m.If if n == 0 else m.Elif)(condition):
                m.d.comb += first_error.eq(code)

        # -- Walkers -----------------------------------------------------------------------------
        issue = _Walker(m, "issue", tile, aw=aw, group_size=G)
        init = _Walker(m, "init", tile, aw=aw, group_size=G)
        write = _Walker(m, "write", tile, aw=aw, group_size=G)
        feeder = _Walker(m, "feed", tile, aw=aw, group_size=G)
        running = Signal()

        # -- Operand issue ---------------------------------------------------------------------
        # The outer operand gets one segment per line of tiles in panel mode (its vectors are
        # kept in the outer panel and replayed for every tile of the line), else one per
        # tile; the inner one one per group in group mode (kept in the inner panel and
        # replayed for the group's tiles), else one per tile.
        issuing = Signal()
        a_needed = Signal()
        b_needed = Signal()
        outer_needed = Signal()
        inner_needed = Signal()
        m.d.comb += [
            issuing.eq(running & ~issue.finished),
            outer_needed.eq(~cfg.panel | issue.line_start),
            inner_needed.eq(~cfg.group | (issue.group_tile == 0)),
            a_needed.eq(Mux(cfg.outer_b, inner_needed, outer_needed)),
            b_needed.eq(Mux(cfg.outer_b, outer_needed, inner_needed)),
        ]
        a_cfg, b_cfg = a_stream.config, b_stream.config
        m.d.comb += [
            a_cfg.payload.base.eq(issue.a_base),
            a_cfg.payload.lane_stride.eq(cfg.a_lane_stride),
            a_cfg.payload.k_stride.eq(cfg.a_k_stride),
            a_cfg.payload.count.eq(cfg.k_count),
            a_cfg.payload.last_offset.eq(cfg.a_last_offset),
            a_cfg.payload.lanes.eq(Mux(cfg.zero_k, 0, issue.rows_valid)),
            b_cfg.payload.base.eq(issue.b_base),
            b_cfg.payload.lane_stride.eq(cfg.b_lane_stride),
            b_cfg.payload.k_stride.eq(cfg.b_k_stride),
            b_cfg.payload.count.eq(cfg.k_count),
            b_cfg.payload.last_offset.eq(cfg.b_last_offset),
            b_cfg.payload.lanes.eq(Mux(cfg.zero_k, 0,
                                       Mux(cfg.group,
                                           Mux(issue.cols_left > GB, GB, issue.cols_left),
                                           issue.cols_valid))),
        ]
        m.d.comb += issue.next_tile.eq(_offer_together(
            m, "issue", {"a": (a_cfg, a_needed), "b": (b_cfg, b_needed)}, issuing, tile.start))

        # -- Panel buffers ---------------------------------------------------------------------
        # The outer panel holds the outer operand's vectors for a line (B's group-wide ones
        # in group mode), the inner panel (group mode) the inner operand's for a group; the
        # feed replays them with the k counter below.
        width = 16 * max(R, GB)
        outer = _Panel(m, "outer", width, self.panel_depth, tile.start)
        inner = _Panel(m, "inner", width, self.panel_depth, tile.start)

        def fill(panel, enable, from_b):
            """``panel`` takes B's vectors when ``from_b``, else A's, while ``enable``."""
            for is_b, source in ((True, b_stream.o), (False, a_stream.o)):
                with m.If(from_b if is_b else ~from_b):
                    m.d.comb += [panel.write_valid.eq(running & enable & source.valid),
                                 panel.write_data.eq(source.payload.data),
                                 panel.write_last.eq(source.payload.last)]
                    with m.If(enable):
                        m.d.comb += source.ready.eq(panel.write)

        fill(outer, cfg.panel, cfg.outer_b)
        fill(inner, cfg.group, ~cfg.outer_b)

        # -- Feed: an A vector and a B vector per beat ---------------------------------------
        feed = array.feed
        feed_go = Signal()
        feed_a = Signal(16 * R)
        feed_b = Signal(16 * C)
        feed_k = Signal(16)            # k-step of the beat being fed
        m.d.comb += [feed_go.eq(feed.valid & feed.ready),
                     outer.read_k.eq(feed_k), inner.read_k.eq(feed_k)]
        with m.If(cfg.panel):
            inner_ok = Signal()
            tile_end = Signal()
            b_vector = Signal(16 * GB)   # B's group-wide (or C-wide) vector
            m.d.comb += [
                feed.payload.first.eq(feed_k == 0),
                feed.payload.last.eq(feed_k == cfg.k_count - 1),
                feed.valid.eq(outer.ready & inner_ok),
                tile_end.eq(feed_go & feed.payload.last),
                feeder.next_tile.eq(tile_end),
                outer.release.eq(tile_end & feeder.line_end),
                inner.release.eq(tile_end & cfg.group & feeder.group_end),
                feed_b.eq(b_vector.word_select(feeder.group_tile, 16 * C)),
            ]
            with m.If(cfg.group):
                m.d.comb += inner_ok.eq(inner.ready)
                with m.If(cfg.outer_b):
                    m.d.comb += [feed_a.eq(inner.data), b_vector.eq(outer.data)]
                with m.Else():
                    m.d.comb += [feed_a.eq(outer.data), b_vector.eq(inner.data)]
            with m.Elif(cfg.outer_b):
                m.d.comb += [inner_ok.eq(a_stream.o.valid), feed_a.eq(a_stream.o.payload.data),
                             b_vector.eq(outer.data),
                             a_stream.o.ready.eq(feed.ready & outer.ready)]
            with m.Else():
                m.d.comb += [inner_ok.eq(b_stream.o.valid), feed_a.eq(outer.data),
                             b_vector.eq(b_stream.o.payload.data),
                             b_stream.o.ready.eq(feed.ready & outer.ready)]
        with m.Else():
            m.d.comb += [
                feed.valid.eq(a_stream.o.valid & b_stream.o.valid),
                feed_a.eq(a_stream.o.payload.data),
                feed_b.eq(b_stream.o.payload.data[:16 * C]),
                feed.payload.first.eq(a_stream.o.payload.first),
                feed.payload.last.eq(a_stream.o.payload.last),
                a_stream.o.ready.eq(feed.ready & b_stream.o.valid),
                b_stream.o.ready.eq(feed.ready & a_stream.o.valid),
            ]
        with m.If(feed_go):
            m.d.sync += feed_k.eq(Mux(feed.payload.last, 0, feed_k + 1))
        with m.If(tile.start):
            m.d.sync += feed_k.eq(0)
        m.d.comb += [
            # K = 0: one beat of products -0 (a = -0, b = +0) per tile, which leaves every
            # accumulator as it starts (+0, or C with NaNs made canonical, as the model does).
            feed.payload.a.eq(Mux(cfg.zero_k, Cat(*([Const(0x8000, 16)] * R)), feed_a)),
            feed.payload.b.eq(feed_b),
            feed.payload.load.eq(cfg.acc),
        ]

        # -- C reader (acc): each tile's R initial rows, fp32, into the array's init queue ----
        # Pipelined: the words of a row are requested back to back, the next row's right
        # after; a row is assembled in the window as its last word arrives and queued in
        # `init_rows`. A row starts only when the queue will have room for it. Padded rows
        # (past M) are queued as zeros, without reads. Three rows in flight (requested,
        # arriving, queued) keep it at a row per cycle.
        window_bits = nw * WB * 8
        m.submodules.init_rows = init_rows = SyncFIFO(width=32 * C, depth=3)
        r_window = Signal(window_bits)
        r_word = Signal(range(nw + 1))   # next word of the row to request
        r_resp = Signal()                # a requested word arrives in this cycle ...
        r_resp_slot = Signal(range(nw))  # ... for this slot of the window
        r_resp_row = Signal()            # ... and completes a row (or a padded row is due)
        r_resp_zero = Signal()           # the row is padding
        r_resp_off = Signal(ws)          # its byte offset in the window
        r_resp_cols = Signal(range(C + 1))
        r_rows_out = Signal(range(4))    # rows started, not queued yet
        r_on = Signal()
        r_start_ok = Signal()            # a new row may start
        r_req_valid = Signal()
        r_grant = Signal()
        r_row_done = Signal()            # the walker's row is fully requested in this cycle
        r_off = Signal(ws)
        r_words = Signal(range(nw + 1))  # words the row's valid columns touch
        m.d.comb += [
            r_on.eq(running & cfg.acc & ~init.finished),
            r_off.eq(init.row_addr[:ws]),
            r_words.eq(((r_off + 4 * init.cols_valid - 1) >> ws) + 1),
            r_start_ok.eq((r_word != 0) | (init_rows.level + r_rows_out < 3)),
            r_req_valid.eq(r_on & init.row_valid & r_start_ok),
            r_row_done.eq(Mux(init.row_valid, r_grant & (r_word == r_words - 1),
                              r_on & r_start_ok)),
            init.next_row.eq(r_row_done),
        ]
        m.d.sync += [r_resp.eq(r_grant), r_resp_slot.eq(r_word), r_resp_row.eq(r_row_done),
                     r_resp_zero.eq(~init.row_valid), r_resp_off.eq(r_off),
                     r_resp_cols.eq(init.cols_valid)]
        with m.If(r_grant):
            m.d.sync += r_word.eq(Mux(r_row_done, 0, r_word + 1))
        r_started = Signal()
        m.d.comb += r_started.eq(Mux(init.row_valid, r_grant & (r_word == 0), r_row_done))
        m.d.sync += r_rows_out.eq(r_rows_out + r_started - init_rows.w_en)
        merged = Signal(window_bits)     # the window with the word arriving now
        m.d.comb += merged.eq(r_window)
        with m.If(r_resp):
            m.d.comb += merged.word_select(r_resp_slot, WB * 8).eq(port.rd_data.payload)
        m.d.sync += r_window.eq(merged)
        r_row = Signal(32 * C)
        m.d.comb += r_row.eq(merged >> (r_resp_off * 8))
        for j in range(C):
            m.d.comb += init_rows.w_data[32 * j:32 * (j + 1)].eq(
                Mux(r_resp_zero | (j >= r_resp_cols), 0, r_row[32 * j:32 * (j + 1)]))
        m.d.comb += [
            init_rows.w_en.eq(r_resp_row),
            array.init.valid.eq(init_rows.r_rdy),
            array.init.payload.eq(init_rows.r_data),
            init_rows.r_en.eq(array.init.ready),
        ]
        # The array takes row i of a tile's initial rows with the tile's beat i (and stalls
        # when it is missing), so the C reader is urgent when the row it reads is due fewer
        # than _PANEL_RUNWAY beats after the beat being fed.
        r_tiles = Signal(16)             # tiles whose rows are all requested
        fed_tiles = Signal(16)           # tiles whose last beat was fed
        r_due = Signal(signed(18))       # beats from the beat being fed to the row's
        r_urgent = Signal()
        m.d.comb += [
            r_due.eq(Mux(r_tiles == fed_tiles, 0, cfg.k_count) + init.row - feed_k),
            r_urgent.eq(r_req_valid & ((r_tiles == fed_tiles) | (r_tiles == fed_tiles + 1))
                        & (r_due < _PANEL_RUNWAY)),
        ]
        with m.If(r_row_done & (init.row == R - 1)):
            m.d.sync += r_tiles.eq(r_tiles + 1)
        with m.If(feed.valid & feed.ready & feed.payload.last):
            m.d.sync += fed_tiles.eq(fed_tiles + 1)
        with m.If(tile.start):
            m.d.sync += [r_word.eq(0), r_rows_out.eq(0), r_tiles.eq(0), fed_tiles.eq(0)]

        # -- Read port arbiter -----------------------------------------------------------------
        # First a request the feed is about to wait for (urgent: a streamed lane with nothing
        # queued, or a panel producer less than _PANEL_RUNWAY vectors ahead of the feed),
        # then the C reader, then any stream request; A and B in turn at each level. The
        # urgent ones cannot shut the others out: they stop being urgent once the feed waits.
        prefer_b = Signal()
        a_grant = Signal()
        b_grant = Signal()
        a_urgent = Signal()
        b_urgent = Signal()
        # Row-major A and column-major B gather each lane's vectors from their own words: a
        # lane with none queued holds up the next vectors for a read per lane.
        a_refill = Mux(a_stream.urgent & (cfg.a_lane_stride >= WB), R, 0)
        b_refill = Mux(b_stream.urgent & (cfg.b_lane_stride >= WB), Mux(cfg.group, GB, C), 0)
        m.d.comb += [outer.refill.eq(Mux(cfg.outer_b, b_refill, a_refill)),
                     inner.refill.eq(Mux(cfg.outer_b, a_refill, b_refill))]
        a_margin = Signal.like(outer.margin)
        b_margin = Signal.like(outer.margin)
        m.d.comb += [
            a_urgent.eq(a_stream.req.valid & Mux(
                cfg.panel & ~cfg.outer_b, outer.short,
                Mux(cfg.group & cfg.outer_b, inner.short, a_stream.urgent))),
            b_urgent.eq(b_stream.req.valid & Mux(
                cfg.panel & cfg.outer_b, outer.short,
                Mux(cfg.group & ~cfg.outer_b, inner.short, b_stream.urgent))),
            a_margin.eq(Mux(cfg.panel & ~cfg.outer_b, outer.margin,
                            Mux(cfg.group & cfg.outer_b, inner.margin, 0))),
            b_margin.eq(Mux(cfg.panel & cfg.outer_b, outer.margin,
                            Mux(cfg.group & ~cfg.outer_b, inner.margin, 0))),
        ]
        # Both urgent: the one with the smaller margin first, in turn on a tie.
        urgent_a_first = Signal()
        m.d.comb += urgent_a_first.eq((a_margin < b_margin)
                                      | ((a_margin == b_margin) & ~prefer_b))
        rd = port.rd_addr
        r_request = (init.row_addr >> ws) + r_word
        # (request, word address, grant) in priority order; the first request wins
        requesters = [
            (r_urgent, r_request, r_grant),
            (a_urgent & (~b_urgent | urgent_a_first), a_stream.req.payload, a_grant),
            (b_urgent, b_stream.req.payload, b_grant),
            (r_req_valid, r_request, r_grant),
            (a_stream.req.valid & (~b_stream.req.valid | ~prefer_b), a_stream.req.payload,
             a_grant),
            (b_stream.req.valid, b_stream.req.payload, b_grant),
        ] + [(s.req.valid, s.req.payload, s.req.ready) for s in (v_stream, vb_stream, vc_stream)]
        for n, (request, address, grant) in enumerate(requesters):
            with (m.If if n == 0 else m.Elif)(request):
                m.d.comb += [rd.valid.eq(1), rd.payload.eq(address), grant.eq(rd.ready)]
        with m.If(a_grant):
            m.d.sync += prefer_b.eq(1)
        with m.Elif(b_grant):
            m.d.sync += prefer_b.eq(0)
        m.d.comb += [
            a_stream.req.ready.eq(a_grant), b_stream.req.ready.eq(b_grant),
            a_stream.rd_data.eq(port.rd_data.payload), b_stream.rd_data.eq(port.rd_data.payload),
            v_stream.rd_data.eq(port.rd_data.payload),
            vb_stream.rd_data.eq(port.rd_data.payload),
            vc_stream.rd_data.eq(port.rd_data.payload),
        ]

        # -- REDUCE: blocks of C rows through the vector unit ------------------------------------
        # Block b is rows [b C, b C + C): lane l folds row b C + l, one beat per column (the
        # stream's k-step), and the vector unit's one output beat per block holds the C
        # results, written to dst[b C ..] like a row of C.
        reducing = Signal()
        red_start = Signal()

        red_in = SimpleNamespace()        # the block being issued
        red_out = SimpleNamespace()       # the block being written
        for pos, name in ((red_in, "red_in"), (red_out, "red_out")):
            pos.rows_left = Signal(16, name=f"{name}_rows_left")
            pos.addr = Signal(aw, name=f"{name}_addr")
            pos.valid = Signal(range(C + 1), name=f"{name}_valid")
            pos.finished = Signal(name=f"{name}_finished")
            pos.next = Signal(name=f"{name}_next")
            m.d.comb += pos.valid.eq(Mux(pos.rows_left > C, C, pos.rows_left))
            with m.If(red_start):
                m.d.sync += [pos.rows_left.eq(cfg.red_rows), pos.finished.eq(0),
                             pos.addr.eq(cfg.red_a if pos is red_in else cfg.red_dst)]
            with m.Elif(pos.next):
                m.d.sync += [pos.rows_left.eq(pos.rows_left - C),
                             pos.addr.eq(pos.addr + (cfg.red_block_step if pos is red_in
                                                     else 4 * C))]
                with m.If(pos.rows_left <= C):
                    m.d.sync += pos.finished.eq(1)
        red_issuing = Signal()
        v_cfg = v_stream.config
        m.d.comb += [
            red_issuing.eq(reducing & ~red_in.finished),
            red_in.next.eq(_offer_together(m, "red_in", {"seg": (v_cfg, 1), "cmd": (vu.cmd, 1)},
                                           red_issuing, red_start)),
            v_cfg.payload.base.eq(red_in.addr),
            v_cfg.payload.lane_stride.eq(cfg.red_lane_stride),
            v_cfg.payload.k_stride.eq(cfg.red_k_stride),
            v_cfg.payload.count.eq(cfg.red_count),
            v_cfg.payload.last_offset.eq(cfg.red_last_offset),
            v_cfg.payload.lanes.eq(Mux(cfg.red_zero, 0, red_in.valid)),
            v_cfg.payload.narrow.eq(cfg.red_bf16),
            vu.cmd.payload.mode.eq(Mode.REDUCE),
            vu.cmd.payload.red_op.eq(cfg.red_op),
        ]
        # Beats: column j of the block; bf16 widened exactly; with no columns one beat that
        # leaves the identity as it is (SUM: +0 + -0 = +0; MAX: max(-inf, -inf) = -inf).
        filler = Mux(cfg.red_op == RedOpShape.MAX, 0xFF80_0000, 0x8000_0000)
        for lane in range(C):
            value = v_stream.o.payload.data[lane]
            m.d.comb += vu.i.payload.a[lane].eq(
                Mux(cfg.red_zero, filler, Mux(cfg.red_bf16, value << 16, value)))
        m.d.comb += [
            vu.i.payload.last.eq(v_stream.o.payload.last),
            vu.i.valid.eq(reducing & v_stream.o.valid),
            v_stream.o.ready.eq(reducing & vu.i.ready),
        ]

        # -- VECTOR and MASK: column blocks of C lanes through the vector unit --------------
        # Block b is columns [b C, b C + C) of every row: lane l carries column b C + l, one
        # beat per row (the streams' k-step), one vector-unit command per block; each output
        # beat is a row of the block, written to dst like a row of C. MASK is a SELECT of
        # -inf (a) and the scores (b) on a mask (c) computed here per beat.
        vectoring = Signal()
        vec_start = Signal()
        vin = SimpleNamespace()           # the block being issued
        vout = SimpleNamespace()          # the row being written
        for pos, name in ((vin, "vin"), (vout, "vout")):
            pos.cols_left = Signal(16, name=f"{name}_cols_left")
            pos.valid = Signal(range(C + 1), name=f"{name}_valid")
            pos.finished = Signal(name=f"{name}_finished")
            pos.next = Signal(name=f"{name}_next")
            m.d.comb += pos.valid.eq(Mux(pos.cols_left > C, C, pos.cols_left))
        vin.a = Signal(aw, name="vin_a")
        vin.b = Signal(aw, name="vin_b")
        vin.c = Signal(aw, name="vin_c")
        with m.If(vec_start):
            m.d.sync += [vin.cols_left.eq(cfg.v_cols), vin.finished.eq(0), vin.a.eq(cfg.v_a),
                         vin.b.eq(cfg.v_b), vin.c.eq(cfg.v_c)]
        with m.Elif(vin.next):
            m.d.sync += [vin.cols_left.eq(vin.cols_left - C), vin.a.eq(vin.a + cfg.v_a_step),
                         vin.b.eq(vin.b + cfg.v_b_step), vin.c.eq(vin.c + 4 * C)]
            with m.If(vin.cols_left <= C):
                m.d.sync += vin.finished.eq(1)
        vout.row = Signal(16, name="vout_row")
        vout.addr = Signal(aw, name="vout_addr")          # dst[row][block]
        vout.block = Signal(aw, name="vout_block")        # dst[0][block]
        with m.If(vec_start):
            m.d.sync += [vout.cols_left.eq(cfg.v_cols), vout.finished.eq(0), vout.row.eq(0),
                         vout.addr.eq(cfg.v_dst), vout.block.eq(cfg.v_dst)]
        with m.Elif(vout.next):
            with m.If(vout.row == cfg.v_rows - 1):
                m.d.sync += [vout.row.eq(0), vout.cols_left.eq(vout.cols_left - C),
                             vout.addr.eq(vout.block + cfg.v_d_step),
                             vout.block.eq(vout.block + cfg.v_d_step)]
                with m.If(vout.cols_left <= C):
                    m.d.sync += vout.finished.eq(1)
            with m.Else():
                m.d.sync += [vout.row.eq(vout.row + 1), vout.addr.eq(vout.addr + cfg.v_d_row)]

        # Issue: per block a segment to each stream in use and a command to the vector unit.
        vb_cfg, vc_cfg = vb_stream.config, vc_stream.config
        v_issuing = Signal()
        m.d.comb += [
            v_issuing.eq(vectoring & ~vin.finished),
            vin.next.eq(_offer_together(
                m, "vin", {"a": (v_cfg, 1), "b": (vb_cfg, cfg.v_b_on), "c": (vc_cfg, cfg.v_c_on),
                           "cmd": (vu.cmd, 1)}, v_issuing, vec_start)),
        ]
        with m.If(vectoring):
            for port_, base, lane_stride, k_stride, last_offset in (
                    (v_cfg, vin.a, Mux(cfg.v_a_bf16, 2, 4), cfg.v_a_k, cfg.v_a_last),
                    (vb_cfg, vin.b, cfg.v_b_lane, cfg.v_b_k, cfg.v_b_last),
                    (vc_cfg, vin.c, 4, cfg.v_c_k, cfg.v_c_last)):
                m.d.comb += [port_.payload.base.eq(base),
                             port_.payload.lane_stride.eq(lane_stride),
                             port_.payload.k_stride.eq(k_stride),
                             port_.payload.count.eq(cfg.v_rows),
                             port_.payload.last_offset.eq(last_offset),
                             port_.payload.lanes.eq(vin.valid)]
            m.d.comb += [v_cfg.payload.narrow.eq(cfg.v_a_bf16),
                         vu.cmd.payload.mode.eq(Mode.ELEMENTWISE),
                         vu.cmd.payload.op.eq(cfg.v_op)]

        # Beats: row i of the block; a bf16 widened exactly; MASK's mask per lane.
        beat_row = Signal(16)             # row and first column of the beat going in
        beat_col = Signal(16)
        beat_in = Signal()
        m.d.comb += beat_in.eq(vu.i.valid & vu.i.ready)
        with m.If(vec_start):
            m.d.sync += [beat_row.eq(0), beat_col.eq(0)]
        with m.Elif(beat_in & vectoring):
            with m.If(vu.i.payload.last):
                m.d.sync += [beat_row.eq(0), beat_col.eq(beat_col + C)]
            with m.Else():
                m.d.sync += beat_row.eq(beat_row + 1)
        query = Signal(21)
        m.d.comb += query.eq(cfg.q0 + (beat_row >> cfg.q_shift))
        with m.If(vectoring):
            for lane in range(C):
                a_value = v_stream.o.payload.data[lane]
                a_fp32 = Mux(cfg.v_a_bf16, a_value << 16, a_value)
                key = Signal(22, name=f"mask_key{lane}")
                masked = Signal(name=f"mask_lane{lane}")
                m.d.comb += [
                    key.eq(cfg.k0 + beat_col + lane),
                    masked.eq((key >= cfg.klen) | (cfg.causal & (key > query))
                              | ((cfg.window != 0) & (key + cfg.window <= query))),
                ]
                with m.If(cfg.v_mask):
                    m.d.comb += [vu.i.payload.a[lane].eq(NEG_INF),
                                 vu.i.payload.b[lane].eq(a_value),
                                 vu.i.payload.c[lane].eq(masked.replicate(32))]
                with m.Else():
                    m.d.comb += [vu.i.payload.a[lane].eq(a_fp32),
                                 vu.i.payload.b[lane].eq(Mux(cfg.v_b_on,
                                                             vb_stream.o.payload.data[lane],
                                                             cfg.v_imm)),
                                 vu.i.payload.c[lane].eq(vc_stream.o.payload.data[lane])]
            operands_in = Signal()
            m.d.comb += [
                operands_in.eq(v_stream.o.valid & (~cfg.v_b_on | vb_stream.o.valid)
                               & (~cfg.v_c_on | vc_stream.o.valid)),
                vu.i.payload.last.eq(v_stream.o.payload.last),
                vu.i.valid.eq(operands_in),
                v_stream.o.ready.eq(beat_in),
                vb_stream.o.ready.eq(beat_in & cfg.v_b_on),
                vc_stream.o.ready.eq(beat_in & cfg.v_c_on),
            ]

        # -- C writer: result rows -> (bf16) -> masked word writes ----------------------------
        m.submodules.results = results = SyncFIFO(width=32 * C, depth=R)
        m.d.comb += [
            results.w_data.eq(array.result.payload),
            results.w_en.eq(array.result.valid),
            array.result.ready.eq(results.w_rdy),
        ]
        # The writer takes rows from the array's results (MATMUL) or from the vector unit
        # (REDUCE), each with where it goes and how many of its values are valid.
        src_valid = Signal()
        src_data = Signal(32 * C)
        src_addr = Signal(aw)
        src_cols = Signal(range(C + 1))
        src_keep = Signal()            # a row to write (not a padded row to drop)
        src_bf16 = Signal()
        src_more = Signal()            # rows left to take
        w_busy = Signal()
        w_data = Signal(window_bits)
        w_mask = Signal(nw * WB)
        w_addr = Signal(aw - ws)
        w_final = Signal()   # this cycle's write is the row's last
        w_room = Signal()    # the writer can take a row this cycle
        w_take = Signal()
        wr = port.wr
        m.d.comb += [
            wr.valid.eq(w_busy),
            wr.payload.addr.eq(w_addr),
            wr.payload.data.eq(w_data[:WB * 8]),
            wr.payload.mask.eq(w_mask[:WB]),
            w_final.eq(w_busy & wr.ready & (w_mask[WB:] == 0)),
            w_room.eq(src_more & (~w_busy | w_final)),
            w_take.eq(w_room & src_valid),
        ]
        with m.If(running):
            m.d.comb += [
                src_valid.eq(results.r_rdy), src_data.eq(results.r_data),
                src_addr.eq(write.row_addr), src_cols.eq(write.cols_valid),
                src_keep.eq(write.row_valid), src_bf16.eq(cfg.bf16),
                src_more.eq(~write.finished),
                results.r_en.eq(w_take), write.next_row.eq(w_take),
            ]
        with m.If(reducing):
            m.d.comb += [
                src_valid.eq(vu.o.valid), src_data.eq(vu.o.payload),
                src_addr.eq(red_out.addr), src_cols.eq(red_out.valid),
                src_keep.eq(1), src_bf16.eq(0), src_more.eq(~red_out.finished),
                vu.o.ready.eq(w_room), red_out.next.eq(w_take),
            ]
        with m.If(vectoring):
            m.d.comb += [
                src_valid.eq(vu.o.valid), src_data.eq(vu.o.payload),
                src_addr.eq(vout.addr), src_cols.eq(vout.valid),
                src_keep.eq(1), src_bf16.eq(cfg.v_d_bf16), src_more.eq(~vout.finished),
                vu.o.ready.eq(w_room), vout.next.eq(w_take),
            ]
        row = data.ArrayLayout(32, C)(src_data)
        row_bytes = Signal(32 * C)
        row_mask = Signal(4 * C)
        col_on = [Signal(name=f"w_col{j}_on") for j in range(C)]
        for j in range(C):
            m.d.comb += col_on[j].eq(j < src_cols)
        with m.If(src_bf16):
            m.d.comb += [row_bytes.eq(Cat(*(_to_bf16(row[j]) for j in range(C)))),
                         row_mask.eq(Cat(*(col_on[j].replicate(2) for j in range(C))))]
        with m.Else():
            m.d.comb += [row_bytes.eq(src_data),
                         row_mask.eq(Cat(*(col_on[j].replicate(4) for j in range(C))))]
        w_off = Signal(ws)
        m.d.comb += w_off.eq(src_addr[:ws])
        with m.If(w_take & src_keep):
            m.d.sync += [
                w_busy.eq(1),
                w_data.eq(row_bytes << (w_off * 8)),
                w_mask.eq(row_mask << w_off),
                w_addr.eq(src_addr[ws:]),
            ]
        with m.Elif(w_busy & wr.ready):
            m.d.sync += [w_data.eq(w_data >> (WB * 8)), w_mask.eq(w_mask >> WB),
                         w_addr.eq(w_addr + 1)]
            with m.If(w_final):
                m.d.sync += w_busy.eq(0)
        with m.If(tile.start | red_start | vec_start):
            m.d.sync += w_busy.eq(0)

        # -- Command sequencer -----------------------------------------------------------------
        m.d.comb += [self.done.payload.error.eq(error), self.done.payload.cycles.eq(cycles)]
        k = cmd.k
        with m.FSM(name="sequencer"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [latched.eq(self.cmd.payload), cycles.eq(0)]
                    with m.Switch(self.cmd.payload.opcode):
                        with m.Case(Opcode.MATMUL, Opcode.VECTOR, Opcode.REDUCE, Opcode.MASK):
                            m.next = "CHECK"
                        with m.Default():
                            m.d.sync += error.eq(ErrorShape.BAD_OPCODE)
                            m.next = "FAULT"
            with m.State("FAULT"):
                m.d.sync += cycles.eq(cycles + 1)
                m.next = "DONE"
            with m.State("CHECK"):
                # The operand extents are registered in this cycle; the run's strides too.
                es_c_bytes = Mux(cmd.c_dtype == _DType.BF16, 2, 4)
                k_steps = Mux(k == 0, 0, k - 1)   # the last k-step of a segment
                m.d.sync += [
                    cycles.eq(cycles + 1),
                    cfg.m.eq(cmd.m), cfg.n.eq(cmd.n),
                    cfg.a.eq(cmd.a), cfg.b.eq(cmd.b), cfg.c.eq(cmd.c),
                    cfg.a_tile_step.eq(Mux(cmd.a_trans, 2 * R, 2 * R * cmd.lda)),
                    cfg.a_lane_stride.eq(Mux(cmd.a_trans, 2, 2 * cmd.lda)),
                    cfg.a_k_stride.eq(Mux(cmd.a_trans, 2 * cmd.lda, 2)),
                    cfg.b_tile_step.eq(Mux(cmd.b_trans, 2 * C * cmd.ldb, 2 * C)),
                    cfg.b_lane_stride.eq(Mux(cmd.b_trans, 2 * cmd.ldb, 2)),
                    cfg.b_k_stride.eq(Mux(cmd.b_trans, 2, 2 * cmd.ldb)),
                    cfg.c_row_stride.eq(es_c_bytes * cmd.ldc),
                    cfg.c_ti_step.eq(es_c_bytes * R * cmd.ldc),
                    cfg.c_tj_step.eq(es_c_bytes * C),
                    cfg.k_count.eq(Mux(k == 0, 1, k)),
                    cfg.a_last_offset.eq(k_steps * Mux(cmd.a_trans, 2 * cmd.lda, 2)),
                    cfg.b_last_offset.eq(k_steps * Mux(cmd.b_trans, 2, 2 * cmd.ldb)),
                    cfg.zero_k.eq(k == 0),
                    cfg.acc.eq(cmd.acc),
                    # Stream the operand whose k-steps are contiguous (cheap: a word serves
                    # many k-steps) and reuse the other's panel: A normal -> B outer.
                    cfg.outer_b.eq(~cmd.a_trans),
                    cfg.panel.eq(k <= self.panel_depth),
                    # Both contiguous along the vector (A transposed, B normal): B's words
                    # serve G column tiles, so B's group-wide vectors are kept for G tiles.
                    cfg.group.eq((k <= self.panel_depth) & ~cmd.b_trans & (G > 1)),
                    cfg.bf16.eq(cmd.c_dtype == _DType.BF16),
                ]
                red_es = Mux(red.a_dtype == _DType.BF16, 2, 4)
                red_count = Mux(red.cols == 0, 1, red.cols)
                m.d.sync += [
                    cfg.red_rows.eq(red.rows), cfg.red_a.eq(red.a), cfg.red_dst.eq(red.dst),
                    cfg.red_block_step.eq(red_es * C * red.lda),
                    cfg.red_lane_stride.eq(red_es * red.lda),
                    cfg.red_k_stride.eq(red_es),
                    cfg.red_count.eq(red_count),
                    cfg.red_last_offset.eq((red_count - 1) * red_es),
                    cfg.red_zero.eq(red.cols == 0),
                    cfg.red_bf16.eq(red.a_dtype == _DType.BF16),
                    cfg.red_op.eq(red.op),
                ]
                is_mask = opcode == Opcode.MASK
                v_rows = Mux(is_mask, msk.rows, vec.rows)
                a_es = Mux(~is_mask & (vec.a_dtype == _DType.BF16), 2, 4)
                d_es = Mux(~is_mask & (vec.d_dtype == _DType.BF16), 2, 4)
                lda = Mux(is_mask, msk.ld, vec.lda)
                b_lane = Mux((vec.b_mode == _VBMode.TILE) | (vec.b_mode == _VBMode.COL), 4, 0)
                b_k = Mux(vec.b_mode == _VBMode.TILE, 4 * vec.ldb,
                          Mux(vec.b_mode == _VBMode.ROW, 4, 0))
                m.d.sync += [
                    cfg.v_rows.eq(v_rows), cfg.v_cols.eq(Mux(is_mask, msk.cols, vec.cols)),
                    cfg.v_a.eq(Mux(is_mask, msk.a, vec.a)), cfg.v_b.eq(vec.b),
                    cfg.v_c.eq(vec.c), cfg.v_dst.eq(Mux(is_mask, msk.dst, vec.dst)),
                    cfg.v_a_step.eq(C * a_es), cfg.v_a_k.eq(lda * a_es),
                    cfg.v_a_last.eq((v_rows - 1) * lda * a_es),
                    cfg.v_b_lane.eq(b_lane), cfg.v_b_k.eq(b_k),
                    cfg.v_b_last.eq((v_rows - 1) * b_k), cfg.v_b_step.eq(b_lane * C),
                    cfg.v_c_k.eq(4 * lda), cfg.v_c_last.eq((v_rows - 1) * 4 * lda),
                    cfg.v_d_row.eq(Mux(is_mask, msk.ld, vec.ldd) * d_es),
                    cfg.v_d_step.eq(C * d_es), cfg.v_imm.eq(vec.imm),
                    cfg.v_op.eq(Mux(is_mask, VectorOpShape.SELECT, vec.op)),
                    cfg.v_a_bf16.eq(a_es == 2), cfg.v_d_bf16.eq(d_es == 2),
                    cfg.v_b_on.eq(~is_mask & reads_b),
                    cfg.v_c_on.eq(~is_mask & (vec.op == VectorOpShape.SELECT)),
                    cfg.v_mask.eq(is_mask), cfg.causal.eq(msk.causal),
                    cfg.q_shift.eq(msk.q_shift), cfg.q0.eq(msk.q0), cfg.k0.eq(msk.k0),
                    cfg.klen.eq(msk.klen), cfg.window.eq(msk.window),
                ]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += [cycles.eq(cycles + 1), error.eq(first_error)]
                with m.If(first_error != ErrorShape.OK):
                    m.next = "DONE"
                with m.Elif(opcode == Opcode.REDUCE):
                    with m.If(red.rows == 0):
                        m.next = "DONE"   # nothing to write
                    with m.Else():
                        m.d.comb += red_start.eq(1)
                        m.next = "REDUCE"
                with m.Elif((opcode == Opcode.VECTOR) | (opcode == Opcode.MASK)):
                    with m.If((cfg.v_rows == 0) | (cfg.v_cols == 0)):
                        m.next = "DONE"   # nothing to write
                    with m.Else():
                        m.d.comb += vec_start.eq(1)
                        m.next = "VECTOR"
                with m.Elif((cmd.m == 0) | (cmd.n == 0)):
                    m.next = "DONE"   # nothing to write
                with m.Else():
                    m.d.comb += tile.start.eq(1)
                    m.next = "MATMUL"
            with m.State("MATMUL"):
                m.d.comb += running.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(write.finished & (~w_busy | w_final)):
                    m.next = "DONE"
            with m.State("REDUCE"):
                m.d.comb += reducing.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(red_out.finished & (~w_busy | w_final)):
                    m.next = "DONE"
            with m.State("VECTOR"):
                m.d.comb += vectoring.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(vout.finished & (~w_busy | w_final)):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.valid.eq(1)
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m
