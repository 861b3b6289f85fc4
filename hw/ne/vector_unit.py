"""The fp32 vector unit of the NE tile: ``lanes`` vector ALUs, a microcode sequencer for the
transcendental ops and a row-reduction mode.

Elementwise commands compute one :class:`~npusim.sw.isa.enums.VectorOp` lane-wise on a stream
of input beats; the microcoded ops (EXP, RECIP, RSQRT, SILU) run their program from
:data:`npusim.firmware.microcode.PROGRAMS`, which this module turns into a ROM at elaboration
time. Reduce commands fold the columns of a tile into one value per row (lane). Theory of
operation, ports and timing: ``docs/hw/vector_unit.md``.
"""

from dataclasses import dataclass

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ...firmware.microcode import INPUT_REG, NUM_REGS, PROGRAMS, RESULT_REG, Imm, Reg
from ...sw.isa.enums import RedOp
from ...sw.numerics import REDUCE_IDENTITY
from ..isa import amaranth_enum
from ..refuse import refuse
from .vector_alu import VectorAlu, VectorOpShape

__all__ = [
    "Mode", "RedOpShape", "VectorUnitCommand", "MicroOperand", "MicroOp", "MicrocodeRom",
    "microcode_rom", "beat_layout", "VectorUnit",
]

#: The Amaranth enum of :class:`~npusim.sw.isa.enums.RedOp` (1 bit).
RedOpShape = amaranth_enum(RedOp)


class Mode(enum.Enum, shape=1):
    """What a vector-unit command does with its input beats."""

    #: ``o = op(a, b, c)`` lane-wise, one output beat per input beat.
    ELEMENTWISE = 0
    #: Lane ``l`` folds ``a[l]`` of every beat with the reduction; one output beat at the end.
    REDUCE = 1


class VectorUnitCommand(data.Struct):
    """Payload of the vector unit's ``cmd`` stream: the configuration of one command.

    A command covers the input beats up to and including the first one with ``last`` set.
    """

    #: The elementwise operation (ignored by REDUCE).
    op: VectorOpShape
    #: Elementwise or reduce.
    mode: Mode
    #: The reduction (ignored by ELEMENTWISE).
    red_op: RedOpShape


def beat_layout(lanes):
    """Payload of the input stream ``i``: operands ``a``, ``b``, ``c`` (``lanes`` x 32 bits
    each, lane 0 in the low bits) and ``last``, set on the final beat of a command."""
    return data.StructLayout({
        "a": data.ArrayLayout(32, lanes),
        "b": data.ArrayLayout(32, lanes),
        "c": data.ArrayLayout(32, lanes),
        "last": 1,
    })


# -- Microcode ROM --------------------------------------------------------------------------------

class MicroOperand(data.Struct):
    """One operand field of a ROM word: register ``t<index>``, or the word's immediate."""

    index: range(NUM_REGS)
    imm: 1


class MicroOp(data.Struct):
    """One word of the microcode ROM: ``t<dst> = op(a[, b[, c]])``.

    ``last`` marks the final micro-op of a program. An unused operand reads ``t0`` (the ALU
    ignores it); at most one operand per word is an immediate, so one ``imm`` field suffices.
    """

    op: VectorOpShape
    dst: range(NUM_REGS)
    a: MicroOperand
    b: MicroOperand
    c: MicroOperand
    last: 1
    imm: 32


@dataclass(frozen=True)
class MicrocodeRom:
    """The microcode ROM contents, generated from the programs.

    Attributes
    ----------
    words : tuple of dict
        One :class:`MicroOp` initialiser per ROM address; the programs back to back.
    entry : dict
        ``{VectorOp: address}`` of each program's first micro-op.
    length : dict
        ``{VectorOp: micro-ops}``, which is also its cycles per element.
    """

    words: tuple
    entry: dict
    length: dict


def microcode_rom(programs=PROGRAMS):
    """Lay out ``programs`` (``{VectorOp: (UOp, ...)}``) as ROM words, in op-encoding order."""
    words, entry, length = [], {}, {}
    for op in sorted(programs):
        program = programs[op]
        if not program:
            raise ValueError(f"the program of {op.name} is empty")
        entry[op], length[op] = len(words), len(program)
        for position, uop in enumerate(program):
            operands = {}
            imm = 0
            for name in ("a", "b", "c"):
                operand = getattr(uop, name)
                if isinstance(operand, Imm):
                    operands[name] = {"index": 0, "imm": 1}
                    imm = operand.bits
                elif isinstance(operand, Reg):
                    operands[name] = {"index": operand.index, "imm": 0}
                else:  # unused
                    operands[name] = {"index": 0, "imm": 0}
            words.append({
                "op": VectorOpShape(int(uop.op)), "dst": uop.dst, **operands,
                "last": int(position == len(program) - 1), "imm": imm,
            })
    return MicrocodeRom(words=tuple(words), entry=entry, length=length)


# -- The unit -------------------------------------------------------------------------------------

class VectorUnit(wiring.Component):
    """The NE tile's fp32 vector unit: ``lanes`` lanes in lockstep.

    A command (``cmd``) configures what the following input beats (``i``) mean; it ends with
    the beat that has ``last`` set, after which the next command is taken (in the same cycle,
    so back-to-back commands lose no cycle). Beats arriving while no command is active wait.

    * **ELEMENTWISE, primitive op** (``ADD`` .. ``MOV``): ``o[l] = op(a[l], b[l], c[l])`` for
      every lane ``l``; one beat per cycle, one cycle of latency (the output register).
    * **ELEMENTWISE, microcoded op** (``EXP``, ``RECIP``, ``RSQRT``, ``SILU``): each lane runs
      the op's program from :data:`~npusim.firmware.microcode.PROGRAMS` on ``a[l]``, one
      micro-op per cycle on its own ``NUM_REGS`` temporaries, so a beat takes
      ``microcode_length(op)`` cycles; ``b`` and ``c`` are ignored.
    * **REDUCE**: lane ``l`` folds ``a[l]`` of each beat into a running value, in beat order
      from the identity (``+0`` for SUM with fp32 add, ``-inf`` for MAX with fp32 max), one
      beat per cycle; the beat with ``last`` produces one output beat, the reductions of all
      lanes. With beat ``j`` carrying column ``j`` of a tile (lane ``l`` = row ``l``) this is
      exactly the golden ``acc = op(acc, a[:, j])`` for ``j = 0 .. cols - 1``.

    Every result is bit-exact with :func:`npusim.sw.numerics.vector_op` (elementwise) and the
    sequential golden reductions. An ``op`` that is neither a primitive nor microcoded gives 0.

    Parameters
    ----------
    lanes : int
        Number of lanes (the NE tile's array width C), at least 1.

    Members
    -------
    cmd : ``In(stream.Signature(VectorUnitCommand))``
        Commands. Accepted when no command is active, or in the cycle the active one ends.
    i : ``In(stream.Signature(beat_layout(lanes)))``
        Input beats: operands ``a``, ``b``, ``c`` per lane and ``last``. ``ready`` may depend
        combinationally on ``o.ready`` and, in REDUCE, on ``last``.
    o : ``Out(stream.Signature(data.ArrayLayout(32, lanes)))``
        Results, one fp32 (or int32) bit pattern per lane. Driven from a register; when
        ``o.ready`` is low the unit holds the beat and stalls (no result is lost).
    busy : ``Out(1)``
        A command is active or a result is waiting in ``o``: the unit has not drained.
    """

    def __init__(self, lanes=8):
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            refuse(self, TypeError(f"lanes must be an int, not {lanes!r}"))
        if lanes < 1:
            refuse(self, ValueError(f"lanes must be at least 1, not {lanes}"))
        self._lanes = lanes
        self._rom = microcode_rom()
        super().__init__({
            "cmd": In(stream.Signature(VectorUnitCommand)),
            "i": In(stream.Signature(beat_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(32, lanes))),
            "busy": Out(1),
        })

    @property
    def lanes(self):
        """Number of lanes."""
        return self._lanes

    @property
    def rom(self):
        """The :class:`MicrocodeRom` this unit is built with."""
        return self._rom

    def elaborate(self, platform):
        m = Module()
        rom = self._rom

        # -- The active command ------------------------------------------------------------------
        active = Signal()                        # a command is configured and not finished
        cmd_op = Signal(VectorOpShape)
        cmd_mode = Signal(Mode)
        cmd_red_op = Signal(RedOpShape)
        cmd_microcoded = Signal()                # ELEMENTWISE with an op that has a program
        cmd_entry = Signal(range(len(rom.words)))  # ... starting at this ROM address
        finishing = Signal()                     # the command's final beat completes this cycle

        # Decode an incoming command's op: microcoded or not, and where its program starts.
        next_microcoded = Signal()
        next_entry = Signal(range(len(rom.words)))
        with m.Switch(self.cmd.p.op):
            for op, address in rom.entry.items():
                with m.Case(VectorOpShape(int(op))):
                    m.d.comb += [next_microcoded.eq(1), next_entry.eq(address)]

        # -- Output register ---------------------------------------------------------------------
        out_free = Signal()                      # o can take a new beat at the next edge
        load_output = Signal()                   # o takes the lanes' results at the next edge
        m.d.comb += [
            out_free.eq(~self.o.valid | self.o.ready),
            self.busy.eq(active | self.o.valid),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(load_output):
            m.d.sync += self.o.valid.eq(1)

        # -- Microcode sequencer -----------------------------------------------------------------
        m.submodules.microcode_rom = microcode = memory.Memory(
            shape=MicroOp, depth=len(rom.words), init=rom.words)
        rom_port = microcode.read_port(domain="comb")
        upc = Signal(range(len(rom.words)))      # address of the micro-op to execute
        uop = Signal(MicroOp)
        m.d.comb += [rom_port.addr.eq(upc), uop.eq(rom_port.data)]

        running = Signal()                       # an element is past its first micro-op
        element_last = Signal()                  # ... and it is the command's final beat
        first_step = Signal()                    # this micro-op reads the input beat's a
        uop_execute = Signal()                   # a micro-op executes this cycle ...
        uop_advance = Signal()                   # ... and completes (writes its result)
        m.d.comb += [
            first_step.eq(~running),
            uop_execute.eq(active & cmd_microcoded & (running | self.i.valid)),
            # The final micro-op writes the output register: it waits for room there.
            uop_advance.eq(uop_execute & (~uop.last | out_free)),
        ]
        with m.If(uop_advance):
            with m.If(uop.last):
                m.d.sync += [upc.eq(cmd_entry), running.eq(0)]
            with m.Else():
                m.d.sync += [upc.eq(upc + 1), running.eq(1)]
            with m.If(first_step):
                m.d.sync += element_last.eq(self.i.p.last)

        # -- Reduction state ---------------------------------------------------------------------
        reduce_first = Signal()                  # the next REDUCE beat starts a reduction

        # -- Input handshake, per mode -----------------------------------------------------------
        elementwise_fire = Signal()              # a primitive elementwise beat is consumed
        reduce_fire = Signal()                   # a REDUCE beat is consumed
        with m.If(active):
            with m.If(cmd_mode == Mode.REDUCE):
                m.d.comb += [
                    self.i.ready.eq(out_free | ~self.i.p.last),
                    reduce_fire.eq(self.i.valid & self.i.ready),
                    load_output.eq(reduce_fire & self.i.p.last),
                    finishing.eq(reduce_fire & self.i.p.last),
                ]
            with m.Elif(cmd_microcoded):
                m.d.comb += [
                    self.i.ready.eq(first_step & (~uop.last | out_free)),
                    load_output.eq(uop_advance & uop.last),
                    finishing.eq(uop_advance & uop.last
                                 & Mux(first_step, self.i.p.last, element_last)),
                ]
            with m.Else():
                m.d.comb += [
                    self.i.ready.eq(out_free),
                    elementwise_fire.eq(self.i.valid & self.i.ready),
                    load_output.eq(elementwise_fire),
                    finishing.eq(elementwise_fire & self.i.p.last),
                ]
        with m.If(reduce_fire):
            m.d.sync += reduce_first.eq(self.i.p.last)

        # -- Command handshake -------------------------------------------------------------------
        m.d.comb += self.cmd.ready.eq(~active | finishing)
        with m.If(finishing):
            m.d.sync += active.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [
                active.eq(1),
                cmd_op.eq(self.cmd.p.op),
                cmd_mode.eq(self.cmd.p.mode),
                cmd_red_op.eq(self.cmd.p.red_op),
                cmd_microcoded.eq(next_microcoded & (self.cmd.p.mode == Mode.ELEMENTWISE)),
                cmd_entry.eq(next_entry),
                upc.eq(next_entry),
                reduce_first.eq(1),
            ]

        # -- Lanes -------------------------------------------------------------------------------
        reduce_alu_op = Signal(VectorOpShape)
        reduce_identity = Signal(32)
        with m.If(cmd_red_op == RedOpShape.MAX):
            m.d.comb += [reduce_alu_op.eq(VectorOpShape.MAX),
                         reduce_identity.eq(REDUCE_IDENTITY[RedOp.MAX])]
        with m.Else():
            m.d.comb += [reduce_alu_op.eq(VectorOpShape.ADD),
                         reduce_identity.eq(REDUCE_IDENTITY[RedOp.SUM])]

        for lane in range(self._lanes):
            m.submodules[f"alu{lane}"] = alu = VectorAlu()
            in_a = self.i.p.a[lane]

            # Temporaries t0..t7; the input beat's a stands in for t<INPUT_REG> on the first
            # micro-op (the beat is consumed by that micro-op, not by a separate load cycle).
            temps = [Signal(32, name=f"lane{lane}_t{r}") for r in range(NUM_REGS)]
            temps_read = list(temps)
            temps_read[INPUT_REG] = Signal(32, name=f"lane{lane}_t{INPUT_REG}_read")
            m.d.comb += temps_read[INPUT_REG].eq(Mux(first_step, in_a, temps[INPUT_REG]))
            temps_read = Array(temps_read)

            def fetch(operand, _temps=temps_read):
                return Mux(operand.imm, uop.imm, _temps[operand.index])

            accumulator = Signal(32, name=f"lane{lane}_acc")

            with m.If(cmd_mode == Mode.REDUCE):
                m.d.comb += [
                    alu.op.eq(reduce_alu_op),
                    alu.a.eq(Mux(reduce_first, reduce_identity, accumulator)),
                    alu.b.eq(in_a),
                ]
            with m.Elif(cmd_microcoded):
                m.d.comb += [
                    alu.op.eq(uop.op),
                    alu.a.eq(fetch(uop.a)),
                    alu.b.eq(fetch(uop.b)),
                    alu.c.eq(fetch(uop.c)),
                ]
            with m.Else():
                m.d.comb += [
                    alu.op.eq(cmd_op),
                    alu.a.eq(in_a),
                    alu.b.eq(self.i.p.b[lane]),
                    alu.c.eq(self.i.p.c[lane]),
                ]

            with m.If(uop_advance):
                with m.If(first_step):
                    m.d.sync += temps[INPUT_REG].eq(in_a)
                m.d.sync += Array(temps)[uop.dst].eq(alu.y)  # after: the micro-op's write wins
            with m.If(reduce_fire):
                m.d.sync += accumulator.eq(alu.y)

            # The output takes the ALU result, except after a program whose last micro-op does
            # not write the result register: then that register's (current) value.
            result = Signal(32, name=f"lane{lane}_result")
            with m.If(cmd_microcoded & (uop.dst != RESULT_REG)):
                m.d.comb += result.eq(temps_read[RESULT_REG])
            with m.Else():
                m.d.comb += result.eq(alu.y)
            with m.If(load_output):
                m.d.sync += self.o.p[lane].eq(result)

        return m
