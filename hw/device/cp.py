"""The command processor: fetch, check, resolve, run control commands, dispatch the rest.

Commands come from the fetcher (:mod:`.fetch`) in stream order. Each is checked and resolved
by the decoder (:mod:`.decode`) against the run-time registers as they are at that point of the
stream, then either run here (the CONTROL class) or queued, resolved, on its engine's queue
(the engine heads behind the queues run DMA, compute and semaphore commands and report
faults). A command takes two cycles at best (decode, dispatch), the functional model's
``cp_dispatch``.

The first fault stops the device: STATUS reads FAULT with the code, ERROR_OFFSET the faulting
command's DRAM address; queued commands are dropped and nothing is fetched until the host
writes CONTROL bit 0 (which also clears a HALT and sets the head to the tail). Commands an
engine is already running finish. See ``docs/hw/command_processor.md``.
"""

from amaranth.hdl import C, Cat, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ...sw import regmap
from ...sw.isa.enums import BranchCond, Engine, ErrorCode, RegOp, Space
from ...sw.isa.table import (COMMANDS, COMMAND_BYTES, HEADER_BYTES, ISA_VERSION, NUM_REGS,
                             NUM_SEMAPHORES, SEM_BITS, STREAM_MAGIC)
from ...sw.params import DEFAULT
from ..axi import AxiParams, AxiSignature
from ..isa import ErrorShape, Opcode, resolved_layout
from .decode import CommandDecoder, ResolvedCommand
from .fetch import INDEX_BITS, CommandFetcher, FetchMode
from .posted_write import PostedWriter
from .link_error import link_error
from .windows import window_hit

__all__ = ["QueueEntry", "Mmio", "EngineReport", "CommandProcessor"]

State = 2   # a DeviceState

#: What an engine queue holds: the resolved command and its DRAM address (for faults).
QueueEntry = data.StructLayout({"cmd": ResolvedCommand, "addr": 64})
#: A host register access: byte offset in the BAR, write or read, the value written.
Mmio = data.StructLayout({"addr": 12, "write": 1, "data": 64})
#: An engine's report of a command that failed: its code and the command's address.
EngineReport = data.StructLayout({"error": ErrorShape, "addr": 64})

_ENGINES = len(Engine)
#: A host write to SEM_VALUE (set) or SEM_INC (add).
_SEM_WRITE = stream.Signature(data.StructLayout({"index": SEM_BITS, "value": 64}),
                              always_ready=True)
#: Opcodes that always run on the compute engine; the others name their engine in a field.
_COMPUTE_OPCODES = tuple(c.opcode for c in COMMANDS if c.engine == Engine.COMPUTE)
assert all(next(iter(resolved_layout(c.name))) == ("engine", resolved_layout(c.name)["engine"])
           and resolved_layout(c.name)["engine"].offset == 0
           for c in COMMANDS if c.engine is None and c.engines), \
    "the dispatcher reads every engine field at offset 0 of its command's resolved layout"


class _Step(enum.Enum, shape=4):
    DECODE = 0      # take the next fetched command
    DISPATCH = 1    # queue it, or run a control command
    WAIT_IDLE = 2   # FENCE, HALT, COMPLETE: engines draining
    HEADER_AR = 3   # CALL: read the called stream's header
    HEADER_R = 4
    RECORD_AW = 5   # COMPLETE: write the 16-byte record
    RECORD_B = 6
    MSI_AW = 7      # COMPLETE with irq: a posted 4-byte write to MSI_ADDR
    MSI_B = 8


class CommandProcessor(wiring.Component):
    """Fetch, decode, control commands, dispatch; the host's register block.

    Parameters
    ----------
    params : HwParams
    window_layout : Layout
        One DMA window as the engines read it (``base``, ``size``, ``flags``).

    Members
    -------
    mmio : ``In(stream.Signature(Mmio))``
        Host register accesses (``sw/regmap.py``; semaphores through ``sem_*``).
    mmio_rdata : ``Out(stream.Signature(64))``
        One beat per read, in order.
    dram : ``Out(AxiSignature)``
        Command fetch, called-stream headers, completion records in DRAM.
    link : ``Out(AxiSignature)``
        Posted writes to bus addresses: completion records in host memory, MSIs.
    queue_<engine> : ``Out(stream.Signature(QueueEntry))``
        The four engine queues (``engine_queue_depth`` deep each), in :class:`Engine` order.
    engine_idle : ``In(4)``
        Bit ``e``: engine ``e``'s head runs nothing.
    fault_<engine> : ``In(stream.Signature(EngineReport))``
        A command that failed on that engine; the device stops.
    windows : ``Out(ArrayLayout(window_layout, NUM_WINDOWS))``
        The DMA windows, for the engines' checks.
    stopped : ``Out(1)``
        FAULT or HALTED.
    watchdog : ``Out(32)``
        The WATCHDOG register, for the engine heads.
    sem_values : ``In(ArrayLayout(64, NUM_SEMAPHORES))``; sem_set, sem_add : ``Out(stream)``
        The semaphores (held by the engine heads): SEM_VALUE reads, SEM_VALUE and SEM_INC
        writes.
    """

    def __init__(self, params=DEFAULT, *, window_layout):
        self.params = params
        dram_aw = (params.dram_bytes - 1).bit_length()
        self.dram_axi = AxiParams(addr_width=dram_aw, data_bytes=params.dram_bytes_per_cycle,
                                  id_width=1)
        self.link_axi = AxiParams(addr_width=64, data_bytes=params.dram_bytes_per_cycle,
                                  id_width=1)
        self.window_layout = window_layout
        members = {
            "mmio": In(stream.Signature(Mmio)),
            "mmio_rdata": Out(stream.Signature(64)),
            "dram": Out(AxiSignature(self.dram_axi)),
            "link": Out(AxiSignature(self.link_axi)),
            "engine_idle": In(_ENGINES),
            "windows": Out(data.ArrayLayout(window_layout, regmap.NUM_WINDOWS)),
            "stopped": Out(1),
            "watchdog": Out(32),
            # the semaphores live with the engine heads: MMIO reaches them through these
            "sem_values": In(data.ArrayLayout(64, NUM_SEMAPHORES)),
            "sem_set": Out(_SEM_WRITE),
            "sem_add": Out(_SEM_WRITE),
        }
        for e in Engine:
            members[f"queue_{e.name.lower()}"] = Out(stream.Signature(QueueEntry))
            members[f"fault_{e.name.lower()}"] = In(stream.Signature(EngineReport))
        super().__init__(members)

    def queue(self, engine):
        return getattr(self, f"queue_{Engine(engine).name.lower()}")

    def fault_port(self, engine):
        return getattr(self, f"fault_{Engine(engine).name.lower()}")

    def elaborate(self, platform):
        m = Module()
        p = self.params
        beat = p.dram_bytes_per_cycle

        # -- state the host sees ------------------------------------------------------------
        regs = Signal(data.ArrayLayout(64, NUM_REGS))
        ring_base, ring_size, head, tail, msi_addr, cycles, error_offset = (
            Signal(64, name=n) for n in ("ring_base", "ring_size", "ring_head", "ring_tail",
                                         "msi_addr", "cycles", "error_offset"))
        stop = Signal(State)          # IDLE while it may run, else HALTED or FAULT
        error = Signal(ErrorShape)
        windows = Signal(data.ArrayLayout(self.window_layout, regmap.NUM_WINDOWS),
                         init=[{"base": 0, "size": p.dram_bytes,
                                "flags": regmap.WINDOW_READ | regmap.WINDOW_WRITE}])
        watchdog = Signal(32, init=p.watchdog_cycles)
        m.d.comb += [self.windows.eq(windows), self.stopped.eq(stop != 0),
                     self.watchdog.eq(watchdog)]
        m.d.sync += cycles.eq(cycles + 1)
        running = Signal()
        m.d.comb += running.eq(stop == regmap.DeviceState.IDLE)

        # -- fetch, decode, queues ------------------------------------------------------------
        m.submodules.fetcher = fetcher = CommandFetcher(self.dram_axi, p.dram_bytes)
        m.submodules.decoder = decoder = CommandDecoder()
        m.d.comb += [fetcher.ring_size.eq(ring_size), fetcher.ring_tail.eq(tail),
                     decoder.regs.eq(regs), decoder.raw.eq(fetcher.out.payload.raw)]
        # DRAM reads: the fetcher's, except for a CALL's header read (taken while it is
        # quiet); a header read once issued owns the read channels until its beat is back.
        header_read = Signal()
        header_owed = Signal()
        with m.If(~header_read):
            m.d.comb += [self.dram.ar.valid.eq(fetcher.mem.ar.valid),
                         self.dram.ar.payload.eq(fetcher.mem.ar.payload),
                         fetcher.mem.ar.ready.eq(self.dram.ar.ready),
                         fetcher.mem.r.valid.eq(self.dram.r.valid),
                         fetcher.mem.r.payload.eq(self.dram.r.payload),
                         self.dram.r.ready.eq(fetcher.mem.r.ready)]
        flush = Signal()    # a fault or a queue reset drops everything queued
        queues = []
        for e in Engine:
            q = SyncFIFOBuffered(width=QueueEntry.size, depth=p.engine_queue_depth)
            m.submodules[f"queue_{e.name.lower()}"] = ResetInserter(flush)(q)
            out = self.queue(e)
            m.d.comb += [out.valid.eq(q.r_rdy & running), out.payload.eq(q.r_data),
                         q.r_en.eq(out.ready & running)]
            queues.append(q)
        idle = Signal(_ENGINES)
        m.d.comb += idle.eq(Cat(~q.r_rdy & self.engine_idle[i] for i, q in enumerate(queues)))

        # completion records and MSIs: one write at a time per port, always carried through
        m.submodules.dram_writer = dram_writer = PostedWriter(self.dram_axi)
        m.submodules.link_writer = link_writer = PostedWriter(self.link_axi)
        dram_writer.connect_port(m, self.dram)
        link_writer.connect_port(m, self.link)

        # -- faults: the first one wins -------------------------------------------------------
        fault = Signal()
        fault_code = Signal(ErrorShape)
        fault_addr = Signal(64)
        cp_fault = Signal()
        cp_code = Signal(ErrorShape)
        cp_addr = Signal(64)
        with m.If(cp_fault):
            m.d.comb += [fault.eq(1), fault_code.eq(cp_code), fault_addr.eq(cp_addr)]
        for e in reversed(Engine):
            port = self.fault_port(e)
            m.d.comb += port.ready.eq(1)
            with m.If(port.valid):
                m.d.comb += [fault.eq(1), fault_code.eq(port.payload.error),
                             fault_addr.eq(port.payload.addr)]
        with m.If(fault & running):
            m.d.sync += [stop.eq(regmap.DeviceState.FAULT), error.eq(fault_code),
                         error_offset.eq(fault_addr)]
            m.d.comb += flush.eq(1)

        # -- where commands come from -----------------------------------------------------------
        fetching = Signal()          # the fetcher was started at the current place
        in_frame = Signal()
        frame_base = Signal(64)
        frame_n = Signal(INDEX_BITS)
        frame_pc = Signal(INDEX_BITS + 1)   # next index to consume
        restart = fetcher.restart

        def restart_at(mode, base=0, pos=0, n=0):
            m.d.comb += [restart.valid.eq(1), restart.payload.mode.eq(mode),
                         restart.payload.base.eq(base), restart.payload.pos.eq(pos),
                         restart.payload.n.eq(n)]

        step = Signal(_Step)
        cur = Signal(ResolvedCommand)
        cur_addr = Signal(64)
        cur_index = Signal(INDEX_BITS)
        cur_error = Signal(ErrorShape)

        def fail(code, addr=None):
            m.d.comb += [cp_fault.eq(1), cp_code.eq(code),
                         cp_addr.eq(cur_addr if addr is None else addr)]
            m.d.sync += step.eq(_Step.DECODE)

        with m.If(~running):
            m.d.sync += [fetching.eq(0), in_frame.eq(0), step.eq(_Step.DECODE)]
            with m.If(fetching):
                restart_at(FetchMode.IDLE)
        with m.Elif(~fetching & ~in_frame & (head != tail)):
            with m.If(ring_size == 0):
                fail(ErrorCode.TRUNCATED_STREAM, ring_base)
            with m.Else():
                restart_at(FetchMode.RING, ring_base, head)
                m.d.sync += fetching.eq(1)

        # -- the steps --------------------------------------------------------------------------
        args = cur.args
        with m.Switch(step):
            with m.Case(_Step.DECODE):
                with m.If(running & in_frame & (frame_pc >= frame_n)):
                    # the called stream is done: back to the ring, from the head
                    m.d.sync += [in_frame.eq(0), fetching.eq(0)]
                    restart_at(FetchMode.IDLE)
                with m.Elif(running & fetching):
                    m.d.comb += fetcher.out.ready.eq(1)
                    with m.If(fetcher.out.valid):
                        f = fetcher.out.payload
                        m.d.sync += [cur.eq(decoder.resolved), cur_addr.eq(f.addr),
                                     cur_index.eq(f.index),
                                     cur_error.eq(Mux(f.error.as_value() != 0, f.error, decoder.error)),
                                     step.eq(_Step.DISPATCH)]
                        with m.If(in_frame):
                            m.d.sync += frame_pc.eq(f.index + 1)
                        with m.Else():
                            m.d.sync += head.eq(Mux(head + COMMAND_BYTES >= ring_size, 0,
                                                    head + COMMAND_BYTES))

            with m.Case(_Step.DISPATCH):
                with m.If(~running):
                    pass
                with m.Elif(cur_error.as_value() != 0):
                    fail(cur_error)
                with m.Else():
                    m.d.sync += step.eq(_Step.DECODE)
                    with m.Switch(cur.opcode):
                        with m.Case(Opcode.NOP):
                            pass
                        with m.Case(Opcode.HALT, Opcode.FENCE, Opcode.COMPLETE):
                            m.d.sync += step.eq(_Step.WAIT_IDLE)
                        with m.Case(Opcode.REG_SET):
                            with m.If(args.reg_set.rd != 0):
                                m.d.sync += regs[args.reg_set.rd].eq(args.reg_set.imm)
                        with m.Case(Opcode.REG_OP):
                            a = args.reg_op
                            value = Signal(64)
                            y = Signal(64)
                            m.d.comb += y.eq(regs[a.rs2] + a.imm)
                            _reg_op(m, a.op.as_value(), regs[a.rs1], y, value)
                            with m.If(a.rd != 0):
                                m.d.sync += regs[a.rd].eq(value)
                        with m.Case(Opcode.BRANCH):
                            a = args.branch
                            target = Signal(signed(INDEX_BITS + 2))
                            m.d.comb += target.eq(cur_index + a.target)
                            with m.If(~in_frame):
                                fail(ErrorCode.BAD_BRANCH)
                            with m.Elif((target < 0) | (target > frame_n)):
                                fail(ErrorCode.BAD_BRANCH)
                            with m.Elif(_branch(a.cond.as_value(), regs[a.ra], regs[a.rb])):
                                m.d.sync += frame_pc.eq(target)
                                restart_at(FetchMode.FRAME, frame_base, target, frame_n)
                        with m.Case(Opcode.CALL):
                            with m.If(in_frame):
                                fail(ErrorCode.CALL_DEPTH)
                            with m.Elif(args.call.addr[:5] != 0):
                                fail(ErrorCode.ALIGNMENT)
                            with m.Elif(~window_hit(windows, Space.DRAM, args.call.addr,
                                                    HEADER_BYTES, write=False)):
                                fail(ErrorCode.DMA_WINDOW)
                            with m.Else():
                                m.d.sync += step.eq(_Step.HEADER_AR)
                                restart_at(FetchMode.IDLE)   # the ring resumes after the call
                        with m.Default():   # an engine command
                            engine = Signal(range(_ENGINES))
                            compute = Cat(cur.opcode.as_value() == op
                                          for op in _COMPUTE_OPCODES).any()
                            # every other engine command has its `engine` field first
                            m.d.comb += engine.eq(Mux(compute, Engine.COMPUTE,
                                                      cur.args.dma_copy.engine.as_value()))
                            entry = Signal(QueueEntry)
                            m.d.comb += [entry.cmd.eq(cur), entry.addr.eq(cur_addr)]
                            for i, q in enumerate(queues):
                                m.d.comb += q.w_data.eq(entry)
                                with m.If(engine == i):
                                    m.d.comb += q.w_en.eq(1)
                                    with m.If(~q.w_rdy):
                                        m.d.sync += step.eq(_Step.DISPATCH)   # wait for room

            with m.Case(_Step.WAIT_IDLE):
                mask = Signal(_ENGINES)
                m.d.comb += mask.eq(Mux((cur.opcode == Opcode.FENCE)
                                        & (args.fence.engines != 0), args.fence.engines,
                                        (1 << _ENGINES) - 1))
                with m.If(running & ((idle & mask) == mask)):
                    with m.Switch(cur.opcode):
                        with m.Case(Opcode.HALT):
                            m.d.sync += [stop.eq(regmap.DeviceState.HALTED),
                                         step.eq(_Step.DECODE)]
                        with m.Case(Opcode.FENCE):
                            m.d.sync += step.eq(_Step.DECODE)
                        with m.Case(Opcode.COMPLETE):
                            self._complete_checks(m, args.complete, windows, fail, step)

            with m.Case(_Step.HEADER_AR):
                ar = self.dram.ar
                addr = args.call.addr
                with m.If(addr + HEADER_BYTES > p.dram_bytes):
                    fail(ErrorCode.TRUNCATED_STREAM)
                with m.Elif(fetcher.quiet & ~header_owed):
                    m.d.comb += [header_read.eq(1), ar.valid.eq(1),
                                 ar.payload.addr.eq(addr & ~(beat - 1))]
                    with m.If(ar.ready):
                        m.d.sync += [step.eq(_Step.HEADER_R), header_owed.eq(1)]

        # The header's beat is taken whenever it comes; it is parsed only if the CALL is still
        # waiting for it (a fault or a queue reset meanwhile leaves it unused).
        r = self.dram.r
        with m.If(header_owed):
            m.d.comb += [header_read.eq(1), r.ready.eq(1)]
            with m.If(r.valid):
                m.d.sync += header_owed.eq(0)
        addr = args.call.addr
        header = Signal(8 * HEADER_BYTES)
        if beat > HEADER_BYTES:
            m.d.comb += header.eq(r.payload.data.word_select(
                addr[5:(beat - 1).bit_length()], 8 * HEADER_BYTES))
        else:
            m.d.comb += header.eq(r.payload.data)
        magic, major, minor = header[0:32], header[32:40], header[40:48]
        reserved = Cat(header[48:64], header[128:256])
        n = header[64:96]
        with m.If(header_owed & r.valid & running & (step == _Step.HEADER_R)):
            with m.If(r.payload.resp != 0):
                fail(ErrorCode.TRUNCATED_STREAM)
            with m.Elif(magic != STREAM_MAGIC):
                fail(ErrorCode.BAD_MAGIC)
            with m.Elif((major != ISA_VERSION[0]) | (minor > ISA_VERSION[1])):
                fail(ErrorCode.BAD_VERSION)
            with m.Elif(reserved != 0):
                fail(ErrorCode.RESERVED_BITS)
            with m.Elif(addr + HEADER_BYTES + n * COMMAND_BYTES > p.dram_bytes):
                fail(ErrorCode.TRUNCATED_STREAM)
            with m.Else():
                m.d.sync += [in_frame.eq(1), frame_base.eq(addr), frame_n.eq(n),
                             frame_pc.eq(0), step.eq(_Step.DECODE)]
                restart_at(FetchMode.FRAME, addr, 0, n)

        self._complete_steps(m, step, args.complete, cycles, msi_addr, fail,
                             {Space.DRAM: dram_writer, Space.LINK: link_writer})

        # -- MMIO ---------------------------------------------------------------------------------
        self._mmio(m, regs=regs, idle=idle, watchdog=watchdog, ring_base=ring_base,
                   ring_size=ring_size, head=head,
                   tail=tail, msi_addr=msi_addr, cycles=cycles, stop=stop, error=error,
                   error_offset=error_offset, windows=windows, flush=flush,
                   fetching=fetching, in_frame=in_frame, step=step, restart_at=restart_at)
        return m

    # -- COMPLETE -------------------------------------------------------------------------------

    def _complete_checks(self, m, c, windows, fail, step):
        """The record's destination: DRAM or link, 16-byte aligned, inside a window."""
        with m.If(c.dst_space.as_value() == Space.SRAM):
            fail(ErrorCode.BAD_FIELD)
        with m.Elif(c.dst[:4] != 0):
            fail(ErrorCode.ALIGNMENT)
        with m.Elif(~window_hit(windows, c.dst_space.as_value(), c.dst, 16, write=True)
                    | ((c.dst_space.as_value() == Space.DRAM) & (c.dst + 16 > self.params.dram_bytes))):
            fail(ErrorCode.DMA_WINDOW)
        with m.Else():
            m.d.sync += step.eq(_Step.RECORD_AW)

    def _complete_steps(self, m, step, c, cycles, msi_addr, fail, writers):
        """The record (stamped with the cycle it is sent), then the MSI, each one posted write
        whose response decides: DMA_WINDOW (DRAM) or :func:`link_error` (link) on an error."""
        beat = self.params.dram_bytes_per_cycle
        lanes = beat // 16
        status = C(int(regmap.DeviceState.RUNNING), 32)   # it is running this very command
        record = Signal(128)
        m.d.comb += record.eq(Cat(c.seq, status, cycles))
        lane = c.dst[4:(beat - 1).bit_length()] if lanes > 1 else 0
        for space, writer in writers.items():
            selected = c.dst_space.as_value() == space
            with m.If((step == _Step.RECORD_AW) & selected):
                m.d.comb += [writer.start.valid.eq(1),
                             writer.start.payload.addr.eq(c.dst & ~(beat - 1)),
                             writer.start.payload.data.eq(record.replicate(lanes)),
                             writer.start.payload.strb.eq(0xFFFF << (16 * lane))]
                with m.If(writer.start.ready):
                    m.d.sync += step.eq(_Step.RECORD_B)
            with m.If((step == _Step.RECORD_B) & selected & ~writer.busy):
                with m.If(writer.resp != 0):
                    fail(ErrorCode.DMA_WINDOW if space == Space.DRAM
                         else link_error(writer.resp))
                with m.Elif(c.irq):
                    m.d.sync += step.eq(_Step.MSI_AW)
                with m.Else():
                    m.d.sync += step.eq(_Step.DECODE)
        link = writers[Space.LINK]
        msi_lane = msi_addr[2:(beat - 1).bit_length()]
        with m.If(step == _Step.MSI_AW):
            m.d.comb += [link.start.valid.eq(1),
                         link.start.payload.addr.eq(msi_addr & ~(beat - 1)),
                         link.start.payload.data.eq(Cat(c.vector, C(0, 27)).replicate(beat // 4)),
                         link.start.payload.strb.eq(0xF << (4 * msi_lane))]
            with m.If(link.start.ready):
                m.d.sync += step.eq(_Step.MSI_B)
        with m.If((step == _Step.MSI_B) & ~link.busy):
            with m.If(link.resp != 0):
                fail(link_error(link.resp))
            with m.Else():
                m.d.sync += step.eq(_Step.DECODE)

    # -- host registers ---------------------------------------------------------------------------

    def _mmio(self, m, *, regs, idle, watchdog, ring_base, ring_size, head, tail, msi_addr, cycles, stop,
              error, error_offset, windows, flush, fetching, in_frame, step, restart_at):
        R = regmap.OFFSET
        req, rdata = self.mmio, self.mmio_rdata
        addr, value = req.payload.addr, req.payload.data
        # one access per cycle; a read answers the next cycle (held until taken)
        m.d.comb += req.ready.eq(~rdata.valid | rdata.ready)
        with m.If(rdata.ready):
            m.d.sync += rdata.valid.eq(0)
        take = req.valid & req.ready
        state = Signal(8)
        m.d.comb += state.eq(Mux(stop != 0, stop, Mux(
            in_frame | (head != tail) | (step != _Step.DECODE) | (idle != (1 << _ENGINES) - 1),
            regmap.DeviceState.RUNNING, regmap.DeviceState.IDLE)))
        simple = {R["ID"]: int.from_bytes(b"NPU1", "little"),
                  R["STATUS"]: Cat(state, error),
                  R["ERROR_OFFSET"]: error_offset, R["RING_BASE"]: ring_base,
                  R["RING_SIZE"]: ring_size, R["RING_HEAD"]: head, R["RING_TAIL"]: tail,
                  R["MSI_ADDR"]: msi_addr, R["CYCLES"]: cycles, R["WATCHDOG"]: watchdog}
        with m.If(take & ~req.payload.write):
            m.d.sync += [rdata.valid.eq(1), rdata.payload.eq(0)]
            with m.Switch(addr):
                for off, v in simple.items():
                    with m.Case(off):
                        m.d.sync += rdata.payload.eq(v)
                for i in range(NUM_REGS):
                    with m.Case(regmap.RUNTIME_REG + 8 * i):
                        m.d.sync += rdata.payload.eq(regs[i])
                for w in range(regmap.NUM_WINDOWS):
                    base = regmap.WINDOW + regmap.WINDOW_STRIDE * w
                    for k, field in enumerate(("base", "size", "flags")):
                        with m.Case(base + 8 * k):
                            m.d.sync += rdata.payload.eq(getattr(windows[w], field))
                for i in range(NUM_SEMAPHORES):
                    with m.Case(regmap.SEM_VALUE + 8 * i):
                        m.d.sync += rdata.payload.eq(self.sem_values[i])
        with m.If(take & req.payload.write):
            with m.Switch(addr):
                with m.Case(R["CONTROL"]):
                    with m.If(value[0]):
                        # reset the queue: clear a fault or halt, drop everything, head = tail
                        m.d.sync += [stop.eq(regmap.DeviceState.IDLE), error.eq(0),
                                     error_offset.eq(0), head.eq(tail), fetching.eq(0),
                                     in_frame.eq(0), step.eq(_Step.DECODE)]
                        m.d.comb += flush.eq(1)
                        restart_at(FetchMode.IDLE)
                with m.Case(R["RING_BASE"]):   # commands are 32-byte aligned
                    m.d.sync += ring_base.eq(value & ~(COMMAND_BYTES - 1))
                with m.Case(R["RING_SIZE"]):
                    m.d.sync += ring_size.eq(value & ~(COMMAND_BYTES - 1))
                with m.Case(R["RING_TAIL"]):
                    m.d.sync += tail.eq(value)
                with m.Case(R["MSI_ADDR"]):
                    m.d.sync += msi_addr.eq(value)
                with m.Case(R["WATCHDOG"]):
                    m.d.sync += watchdog.eq(value)
                for i in range(1, NUM_REGS):
                    with m.Case(regmap.RUNTIME_REG + 8 * i):
                        m.d.sync += regs[i].eq(value)
                for i in range(NUM_SEMAPHORES):
                    for kind, port in (("SEM_VALUE", self.sem_set), ("SEM_INC", self.sem_add)):
                        with m.Case(regmap.OFFSET[kind] + 8 * i):
                            m.d.comb += [port.valid.eq(1), port.payload.index.eq(i),
                                         port.payload.value.eq(value)]
                for w in range(regmap.NUM_WINDOWS):
                    base = regmap.WINDOW + regmap.WINDOW_STRIDE * w
                    for k, field in enumerate(("base", "size", "flags")):
                        with m.Case(base + 8 * k):
                            m.d.sync += getattr(windows[w], field).eq(value)


def _reg_op(m, op, x, y, out):
    """``out = x <op> y`` over 64 bits, as ``RegOp`` defines it."""
    with m.Switch(op):
        for member, value in ((RegOp.ADD, x + y), (RegOp.SUB, x - y), (RegOp.MUL, x * y),
                              (RegOp.AND, x & y), (RegOp.OR, x | y), (RegOp.XOR, x ^ y),
                              (RegOp.SHL, x << y[:6]), (RegOp.SHR, x >> y[:6]),
                              (RegOp.MIN, Mux(x < y, x, y)), (RegOp.MAX, Mux(x < y, y, x))):
            with m.Case(member):
                m.d.comb += out.eq(value[:64])


def _branch(cond, a, b):
    """The ``BranchCond`` comparison of two registers (unsigned)."""
    return Mux(cond == BranchCond.EQ, a == b,
               Mux(cond == BranchCond.NE, a != b,
                   Mux(cond == BranchCond.LTU, a < b, a >= b)))
