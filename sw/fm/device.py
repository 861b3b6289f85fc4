"""One device of the functional model: command processor, engine queues, DMA, NE tile.

The command processor fetches 32-byte commands from the ring (or from a called stream),
resolves their register operands in stream order and dispatches them to four engine queues
(DMA_IN, DMA_OUT, COMPUTE, LINK) that run concurrently; control commands run in the command
processor itself. A command's effect is applied when its modelled duration has passed, after
every operand was checked, so a faulting command writes nothing. The first fault stops the
device: STATUS says FAULT with the error code and the faulting command's DRAM address, queued
commands are dropped, and nothing runs until the host resets the queue.
"""

import struct
from collections import deque
from dataclasses import dataclass, field

from ..isa import COMMAND_BYTES, HEADER_BYTES, IsaError, decode_command, parse_header
from ..isa.enums import BranchCond, CommandClass, Engine, ErrorCode, RegOp, Space
from ..isa.table import NUM_REGS, NUM_SEMAPHORES
from .. import regmap
from ..regmap import DeviceState
from . import compute, dma, timing
from .fault import DeviceFault
from .kernel import Until
from .memory import DenseMemory, OutOfBounds, SparseMemory

__all__ = ["Device", "EngineStats", "TraceEvent"]

MASK64 = (1 << 64) - 1
_COMPUTE = {"MATMUL": compute.matmul, "VECTOR": compute.vector, "REDUCE": compute.reduce,
            "MASK": compute.mask}


@dataclass
class EngineStats:
    """What one engine queue did: commands, busy and waiting cycles, bytes moved, MACs."""
    commands: int = 0
    busy_cycles: int = 0
    wait_cycles: int = 0
    bytes: int = 0
    macs: int = 0


@dataclass(frozen=True)
class TraceEvent:
    """One command an engine ran: ``start`` and ``end`` cycles (a SEM_WAIT's span is its
    wait), its stream ``offset`` (DRAM address), bytes it moved and MACs it did."""
    engine: Engine
    name: str
    start: int
    end: int
    offset: int
    bytes: int = 0
    macs: int = 0


@dataclass
class _Frame:
    """A called stream being executed: DRAM address of its header, length, next index."""
    base: int
    n: int
    pc: int = 0


@dataclass
class _Copy:
    src: object
    src_addr: int
    dst: object
    dst_addr: int
    n: int


@dataclass
class _DmaPlan:
    copies: list = field(default_factory=list)
    cycles: int = 0
    bytes: int = 0
    link_write: bool = False     # it writes over the link

    def execute(self):
        for c in self.copies:
            c.dst.write(c.dst_addr, c.src.read(c.src_addr, c.n))


class Device:
    """A device: DRAM, SRAM, run-time registers, semaphores, DMA windows and a command queue.

    Host-side access goes through :meth:`mmio_read`/:meth:`mmio_write` (the register map of
    :mod:`npusim.sw.regmap`) and the DRAM backdoor (``dram.read``/``dram.write``).
    """

    def __init__(self, system, index, params):
        self.system, self.index, self.params = system, index, params
        self.kernel = system.kernel
        self.dram = SparseMemory(params.dram_bytes)
        self.sram = DenseMemory(params.sram_bytes)
        self.regs = [0] * NUM_REGS
        self.sems = [0] * NUM_SEMAPHORES
        self.windows = [[0, 0, 0] for _ in range(regmap.NUM_WINDOWS)]
        self.windows[0] = [0, params.dram_bytes, regmap.WINDOW_READ | regmap.WINDOW_WRITE]
        self.ring_base = self.ring_size = self.head = self.tail = 0
        self.msi_addr = 0
        self.watchdog = params.watchdog_cycles
        self.link_up = True
        self.frames = []
        self.queues = {e: deque() for e in Engine}
        self.stats = {e: EngineStats() for e in Engine}
        #: the engines' :class:`TraceEvent` s when tracing (``System.trace``), else None
        self.trace = None
        self.stopped_state = None  # DeviceState.HALTED or FAULT once stopped
        self.error_code, self.error_offset, self.error_message, self.halt_code = ErrorCode.OK, 0, "", 0
        self.last_activity = 0
        # the command fetcher (timing only): DRAM address of the next command it reads, the
        # arrival cycles of the commands read ahead, the completion cycles of its last reads
        self._fetch_addr = None
        self._fetched = deque()
        self._fetch_reads = deque(maxlen=params.dram_outstanding)
        self.kernel.spawn(self._command_processor())
        for e in Engine:
            self.kernel.spawn(self._engine(e))

    # -- status -------------------------------------------------------------------------------

    @property
    def stopped(self):
        return self.stopped_state is not None

    @property
    def state(self):
        if self.stopped_state is not None:
            return self.stopped_state
        if self.frames or self.head != self.tail or any(self.queues.values()):
            return DeviceState.RUNNING
        return DeviceState.IDLE

    def fault(self, code, addr, message=""):
        """Stop the device with ``code``; the first fault wins."""
        if self.stopped:
            return
        self.stopped_state = DeviceState.FAULT
        self.error_code, self.error_offset, self.error_message = ErrorCode(code), addr, message
        for q in self.queues.values():
            q.clear()
        self.frames.clear()
        self.last_activity = self.kernel.now

    def _engines_idle(self, mask=0):
        return all(not q for e, q in self.queues.items() if not mask or mask >> e & 1)

    # -- MMIO -----------------------------------------------------------------------------------

    def mmio_read(self, off):
        R = regmap.OFFSET
        if off == R["ID"]:
            return int.from_bytes(b"NPU1", "little")
        if off == R["STATUS"]:
            return int(self.state) | int(self.error_code) << 8
        if off == R["ERROR_OFFSET"]:
            return self.error_offset
        if off == R["RING_BASE"]:
            return self.ring_base
        if off == R["RING_SIZE"]:
            return self.ring_size
        if off == R["RING_HEAD"]:
            return self.head
        if off == R["RING_TAIL"]:
            return self.tail
        if off == R["MSI_ADDR"]:
            return self.msi_addr
        if off == R["CYCLES"]:
            return self.kernel.now
        if off == R["WATCHDOG"]:
            return self.watchdog
        i, kind = self._array_register(off)
        if kind == "RUNTIME_REG":
            return self.regs[i]
        if kind == "SEM_VALUE":
            return self.sems[i]
        if kind == "WINDOW":
            return self.windows[i // 4][i % 4]
        raise ValueError(f"device {self.index}: no readable register at {off:#x}")

    def mmio_write(self, off, value):
        R = regmap.OFFSET
        value &= MASK64
        if off == R["CONTROL"]:
            if value & 1:
                self._reset_queue()
            return
        if off == R["RING_BASE"]:   # commands are 32-byte aligned: the low bits read as 0
            self.ring_base = value & ~(COMMAND_BYTES - 1)
        elif off == R["RING_SIZE"]:
            self.ring_size = value & ~(COMMAND_BYTES - 1)
        elif off == R["RING_TAIL"]:
            self.tail = value
        elif off == R["MSI_ADDR"]:
            self.msi_addr = value
        elif off == R["WATCHDOG"]:
            self.watchdog = value & 0xFFFF_FFFF
        else:
            i, kind = self._array_register(off)
            if kind == "RUNTIME_REG":
                if i:
                    self.regs[i] = value
            elif kind == "SEM_VALUE":
                self.sems[i] = value
            elif kind == "SEM_INC":
                self.sems[i] += value
            elif kind == "WINDOW" and i % 4 < 3:
                self.windows[i // 4][i % 4] = value
            else:
                raise ValueError(f"device {self.index}: no writable register at {off:#x}")

    @staticmethod
    def _array_register(off):
        for r in regmap.REGISTERS:
            if r.count > 1 and r.offset <= off < r.offset + r.count * r.stride and off % 8 == 0:
                idx = (off - r.offset) // 8
                return idx, r.name
        return None, None

    def _reset_queue(self):
        self.stopped_state = None
        self.error_code, self.error_offset, self.error_message = ErrorCode.OK, 0, ""
        self.head = self.tail
        self._fetch_addr = None
        self.frames.clear()
        for q in self.queues.values():
            q.clear()

    # -- command processor ----------------------------------------------------------------------

    def _has_work(self):
        return not self.stopped and (bool(self.frames) or self.head != self.tail)

    def _next(self):
        """DRAM address and index-in-buffer of the next command; advances the fetch pointer."""
        if self.frames:
            f = self.frames[-1]
            f.pc += 1
            return f.base + HEADER_BYTES + (f.pc - 1) * COMMAND_BYTES, f.pc - 1
        addr = self.ring_base + self.head
        self.head = (self.head + COMMAND_BYTES) % self.ring_size
        return addr, None

    def _fetch_read(self):
        """Issue one single-beat command read: at most ``dram_outstanding`` in flight."""
        p, reads = self.params, self._fetch_reads
        issue = max(self.kernel.now, reads[0] if len(reads) == reads.maxlen else 0)
        done = issue + p.dram_latency + 1
        reads.append(done)
        self._fetched.append(done)

    def _fetch_wait(self, addr):
        """Cycles until the command at ``addr`` (the next in stream order) has been fetched.

        The fetcher reads up to ``cp_prefetch`` commands ahead, one single-beat DRAM read
        each, at most ``dram_outstanding`` in flight; it restarts (dropping what it read
        ahead) when the stream does not continue at the next address (a call, a return, a
        taken branch) and waits for the doorbell at the end of the ring."""
        if addr != self._fetch_addr or not self._fetched:
            self._fetched.clear()
            self._fetch_read()
        arrival = self._fetched.popleft()
        self._fetch_addr = addr + COMMAND_BYTES
        if self.frames:
            f = self.frames[-1]
            ahead = f.n - f.pc
        else:
            ahead = (self.tail - self.head) % self.ring_size // COMMAND_BYTES if self.ring_size else 0
            if self.ring_size and addr + COMMAND_BYTES == self.ring_base + self.ring_size:
                self._fetch_addr = self.ring_base
        for _ in range(min(ahead, self.params.cp_prefetch - 1) - len(self._fetched)):
            self._fetch_read()
        return max(0, arrival - self.kernel.now)

    def _command_processor(self):
        p = self.params
        while True:
            yield Until(self._has_work)
            if self.frames and self.frames[-1].pc >= self.frames[-1].n:
                self.frames.pop()
                continue
            if not self.frames and self.ring_size == 0:
                self.fault(ErrorCode.TRUNCATED_STREAM, self.ring_base, "doorbell with no ring")
                continue
            addr, index = self._next()
            yield self._fetch_wait(addr) + p.cp_dispatch
            if self.stopped:
                continue
            self.last_activity = self.kernel.now
            try:
                try:
                    cmd = decode_command(self.dram.read(addr, COMMAND_BYTES))
                except OutOfBounds:
                    raise DeviceFault(ErrorCode.TRUNCATED_STREAM, f"fetch at {addr:#x} past DRAM")
                except IsaError as e:
                    raise DeviceFault(e.code, str(e))
                if cmd.spec.cls == CommandClass.CONTROL:
                    yield from self._control(cmd, index)
                    continue
                resolved = self._resolve(cmd)
                queue = self.queues[cmd.engine]
                yield Until(lambda: len(queue) < p.engine_queue_depth or self.stopped)
                if not self.stopped:
                    queue.append((cmd, resolved, addr))
            except DeviceFault as f:
                self.fault(f.code, addr, str(f))

    def _resolve(self, cmd):
        """Field values with every ``*_reg`` operand folded in: ``R[reg] + imm``.

        An address is taken mod 2**64. Any other operand (a length, count or position) must fit
        its immediate field, as the engines carry resolved values at that width: BAD_SHAPE
        otherwise."""
        out = dict(cmd.fields)
        for f in cmd.spec.fields:
            if f.kind != "reg" or f.group is None:
                continue
            if f.group in cmd.fields:  # register + immediate operand
                value = self.regs[out[f.name]] + out[f.group]
                width = cmd.spec.field(f.group).width
                if value >> width:
                    raise DeviceFault(ErrorCode.BAD_SHAPE,
                                      f"{cmd.name}.{f.group} = {value} (r{out[f.name]} + "
                                      f"{out[f.group]}) does not fit {width} bits")
                out[f.group] = value
            else:  # address operand
                out[f.group] = (self.regs[out[f.name]] + out[f"{f.group}_off"]) & MASK64
        return out

    def _control(self, cmd, index):
        name, c = cmd.name, cmd.fields
        if name == "NOP":
            return
        if name == "HALT":
            yield Until(lambda: self._engines_idle() or self.stopped)
            if not self.stopped:
                self.stopped_state, self.halt_code = DeviceState.HALTED, c["code"]
        elif name == "REG_SET":
            if c["rd"]:
                self.regs[c["rd"]] = c["imm"]
        elif name == "REG_OP":
            x, y = self.regs[c["rs1"]], (self.regs[c["rs2"]] + c["imm"]) & MASK64
            if c["rd"]:
                self.regs[c["rd"]] = _reg_op(c["op"], x, y)
        elif name == "BRANCH":
            if not self.frames:
                raise DeviceFault(ErrorCode.BAD_BRANCH, "BRANCH is allowed in called streams only")
            f = self.frames[-1]
            target = index + c["target"]
            if not 0 <= target <= f.n:
                raise DeviceFault(ErrorCode.BAD_BRANCH, f"target {target} outside [0, {f.n}]")
            if _branch_taken(c["cond"], self.regs[c["ra"]], self.regs[c["rb"]]):
                f.pc = target
        elif name == "CALL":
            if self.frames:
                raise DeviceFault(ErrorCode.CALL_DEPTH, "CALL inside a called stream")
            base = self._resolve(cmd)["addr"]
            if base % COMMAND_BYTES:
                raise DeviceFault(ErrorCode.ALIGNMENT, f"called stream at {base:#x} is not "
                                  f"{COMMAND_BYTES}-byte aligned")
            self._check_window(Space.DRAM, base, HEADER_BYTES, write=False)
            if base + HEADER_BYTES > self.params.dram_bytes:
                raise DeviceFault(ErrorCode.TRUNCATED_STREAM, f"header at {base:#x} past DRAM")
            try:
                header = parse_header(self.dram.read(base, HEADER_BYTES))
            except IsaError as e:
                raise DeviceFault(e.code, str(e))
            end = base + HEADER_BYTES + header.n_commands * COMMAND_BYTES
            if end > self.params.dram_bytes:
                raise DeviceFault(ErrorCode.TRUNCATED_STREAM,
                                  f"stream of {header.n_commands} commands runs past DRAM")
            self.frames.append(_Frame(base, header.n_commands))
        elif name == "FENCE":
            yield Until(lambda: self._engines_idle(c["engines"]) or self.stopped)
        elif name == "COMPLETE":
            yield Until(lambda: self._engines_idle() or self.stopped)
            if self.stopped:
                return
            r = self._resolve(cmd)
            if r["dst_space"] == Space.SRAM:
                raise DeviceFault(ErrorCode.BAD_FIELD, "a completion record goes to DRAM or "
                                  "over the link, not to SRAM")
            if r["dst"] % 16:
                raise DeviceFault(ErrorCode.ALIGNMENT, f"completion record at {r['dst']:#x} is "
                                  "not 16-byte aligned")
            # the status of a running device: it is executing this command
            record = struct.pack("<IIQ", c["seq"], int(DeviceState.RUNNING), self.kernel.now)
            mem, local = self._target(r["dst_space"], r["dst"], len(record), write=True)
            mem.write(local, record)
            # the command processor waits for the record's write response
            p = self.params
            yield (p.dram_latency if r["dst_space"] == Space.DRAM else p.link_post_latency) \
                + p.cp_record_overhead
            if c["irq"]:
                self.system.post_write(self, self.msi_addr, c["vector"].to_bytes(4, "little"))
        else:  # pragma: no cover - the table and this dispatcher are kept in step by tests
            raise AssertionError(name)

    # -- engines --------------------------------------------------------------------------------

    def _engine(self, engine):
        p, queue, st = self.params, self.queues[engine], self.stats[engine]
        while True:
            yield Until(lambda: bool(queue) and not self.stopped)
            entry = queue[0]
            cmd, c, addr = entry
            start = self.kernel.now
            moved = macs = 0
            try:
                if cmd.name == "SEM_WAIT":
                    sem, value = c["sem"], c["value"]
                    ok = yield Until(lambda: self.sems[sem] >= value or self.stopped,
                                     timeout=self.watchdog)
                    if self.stopped:
                        continue
                    if not ok:
                        raise DeviceFault(ErrorCode.SEM_TIMEOUT,
                                          f"semaphore {sem} stayed at {self.sems[sem]} < {value}")
                    if c["consume"]:
                        self.sems[sem] -= value
                    st.wait_cycles += self.kernel.now - start
                elif cmd.name == "SEM_SIGNAL":
                    if c["remote"]:
                        target = c["peer"] + regmap.SEM_INC + 8 * c["sem"]
                        self._check_window(Space.LINK, target, 8, write=True)
                        self.system.post_write(self, target, c["amount"].to_bytes(8, "little"))
                    else:
                        self.sems[c["sem"]] += c["amount"]
                elif cmd.spec.cls == CommandClass.DMA:
                    # a command an engine has started finishes even if the device stops
                    # meanwhile (as in the hardware); only queued ones are dropped
                    plan = self._plan_dma(cmd.name, c)
                    yield self._jittered(plan.cycles)
                    plan.execute()
                    if plan.link_write:
                        self.system.link_dma_answered(self)
                    moved = plan.bytes
                    st.bytes += moved
                else:
                    yield self._jittered(timing.compute_cycles(p, cmd.name, c))
                    _COMPUTE[cmd.name](self.sram, c)
                    macs = compute.macs(cmd.name, c)
                    st.macs += macs
            except DeviceFault as f:
                if f.code == ErrorCode.LINK_TIMEOUT:  # nothing answers: wait out the timeout
                    yield p.link_completion_timeout
                self.fault(f.code, addr, str(f))
                continue
            if queue and queue[0] is entry:
                queue.popleft()
            st.commands += 1
            st.busy_cycles += self.kernel.now - start
            self.last_activity = self.kernel.now
            if self.trace is not None:
                self.trace.append(TraceEvent(engine, cmd.name, start, self.kernel.now, addr,
                                             moved, macs))

    def _jittered(self, cycles):
        """``cycles``, or under the system's ``jitter`` a quarter to four times as many."""
        rng = self.system.jitter
        return cycles if rng is None else max(1, round(cycles * 4 ** rng.uniform(-1, 1)))

    # -- DMA ------------------------------------------------------------------------------------

    def _check_window(self, space, addr, n, write):
        if n == 0:
            return
        need = regmap.WINDOW_WRITE if write else regmap.WINDOW_READ
        link = regmap.WINDOW_LINK if space == Space.LINK else 0
        for base, size, flags in self.windows:
            if flags & regmap.WINDOW_LINK == link and flags & need and \
                    base <= addr and addr + n <= base + size:
                return
        raise DeviceFault(ErrorCode.DMA_WINDOW,
                          f"{'write' if write else 'read'} of {space.name.lower()}"
                          f"[{addr:#x}, {addr + n:#x}) is outside every granted window")

    def _target(self, space, addr, n, write):
        """The memory object and local address a DMA access lands on, after every check."""
        space = Space(space)
        if space == Space.SRAM:
            if addr + n > self.sram.size:
                raise DeviceFault(ErrorCode.SRAM_BOUNDS,
                                  f"sram[{addr:#x}, {addr + n:#x}) runs past SRAM")
            return self.sram, addr
        self._check_window(space, addr, n, write)
        if space == Space.DRAM:
            if addr + n > self.dram.size:
                raise DeviceFault(ErrorCode.DMA_WINDOW, f"dram[{addr:#x}, {addr + n:#x}) past DRAM")
            return self.dram, addr
        return self.system.bus_target(self, addr, n, write)

    def _plan_dma(self, name, c):
        """Check a DMA completely (:mod:`.dma` says what, in which order) and list its rows
        with the memory each lands on (nothing is moved yet)."""
        p = self.params
        dma.check_aligned(name, c, p.dma_align)
        dma.check_shape(name, c)
        for e in dma.extents(name, c):
            self._target(e.space, e.lo, e.n, write=e.write)
        entries = ()
        if name in ("DMA_GATHER", "DMA_SCATTER"):
            first, count = dma.table_span(name, c)
            table = c["table"] if name == "DMA_GATHER" else c["slots"]
            if count:
                mem, local = self._target(Space.DRAM, table + 4 * first, 4 * count, write=False)
                entries = [int(x) for x in mem.read_u32(local, count)]
        plan = _DmaPlan()
        _, row_bytes = dma.rows(name, c)
        spaces = (Space.DRAM, Space.DRAM)
        rows = dma.copies(name, c, entries)
        for row in rows:
            spaces = (row.src_space, row.dst_space)
            if row.n:
                smem, sa = self._memory(row.src_space, row.src, row.n, write=False)
                dmem, da = self._memory(row.dst_space, row.dst, row.n, write=True)
                plan.copies.append(_Copy(smem, sa, dmem, da, row.n))
        plan.bytes = dma.moved(name, c)
        plan.link_write = bool(plan.copies) and spaces[1] == Space.LINK
        plan.cycles = timing.dma_cycles(
            p, spaces[0], spaces[1], len(plan.copies), row_bytes,
            segments=timing.dma_segments(name, c, rows),
            table_entries=len(entries) if name in ("DMA_GATHER", "DMA_SCATTER") else None)
        return plan

    def _memory(self, space, addr, n, write):
        """The memory object and local address of a row inside an extent already checked."""
        if space == Space.SRAM:
            return self.sram, addr
        if space == Space.DRAM:
            return self.dram, addr
        return self.system.bus_target(self, addr, n, write)


def _reg_op(op, x, y):
    op = RegOp(op)
    if op == RegOp.ADD:
        return (x + y) & MASK64
    if op == RegOp.SUB:
        return (x - y) & MASK64
    if op == RegOp.MUL:
        return (x * y) & MASK64
    if op == RegOp.AND:
        return x & y
    if op == RegOp.OR:
        return x | y
    if op == RegOp.XOR:
        return x ^ y
    if op == RegOp.SHL:
        return (x << (y & 63)) & MASK64
    if op == RegOp.SHR:
        return x >> (y & 63)
    if op == RegOp.MIN:
        return min(x, y)
    return max(x, y)


def _branch_taken(cond, a, b):
    return {BranchCond.EQ: a == b, BranchCond.NE: a != b,
            BranchCond.LTU: a < b, BranchCond.GEU: a >= b}[BranchCond(cond)]
