"""Engine heads: what runs the front command of each engine queue.

Each of the four engine queues has a head that takes one command at a time, in order:

* ``SEM_WAIT``: waits until the semaphore is >= ``value`` (then subtracts it with
  ``consume``); a wait longer than the WATCHDOG register says is SEM_TIMEOUT;
* ``SEM_SIGNAL``: adds ``amount`` to a local semaphore, or (``remote``) sends it as a posted
  8-byte write to the peer's SEM_INC register on its link port, after checking the link
  window (DMA_WINDOW); an error response is reported as `link_error` says;
* anything else goes to the head's engine (a DMA engine, or the NE tile for COMPUTE) and the
  head waits for its completion; a failed command is reported with its code and address.

A head starts a command only after the previous one finished, which is what orders a signal
after the engine's earlier work. The heads share the semaphore bank; when two heads would
consume the same semaphore in one cycle, the lower engine goes first.
"""

from amaranth.hdl import C, Cat, Module, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ...sw import regmap
from ...sw.isa.enums import Engine, ErrorCode, Space
from ...sw.isa.table import NUM_SEMAPHORES, SEM_BITS
from ..axi import AxiSignature
from ..isa import ComputeCommand, DmaCommand, Opcode
from .cp import EngineReport, QueueEntry
from .dma import DoneLayout
from .posted_write import PostedWriter
from .semaphores import SemaphoreBank
from .link_error import link_error
from .windows import window_hit

__all__ = ["EngineHeads"]

_ENGINES = len(Engine)


class _State(enum.Enum, shape=3):
    IDLE = 0
    WAIT = 1       # SEM_WAIT
    SIGNAL_AW = 2  # remote SEM_SIGNAL: the posted write
    SIGNAL_B = 3
    JOB = 4        # handing the command to the engine
    DONE = 5       # waiting for the engine to finish it


class EngineHeads(wiring.Component):
    """The four engine heads and the semaphore bank.

    Members
    -------
    queue_<engine> : ``In(stream.Signature(QueueEntry))``
        From the command processor's queues.
    fault_<engine> : ``Out(stream.Signature(EngineReport))``
        To the command processor.
    idle : ``Out(4)``
        Bit ``e``: head ``e`` holds no command.
    held : ``Out(ArrayLayout(QueueEntry, 4))``
        The command each head holds (meaningful while its ``idle`` bit is 0): what a monitor
        reads to trace the engines (``cosim/cluster_server.py``).
    stopped : ``In(1)``
        The device stopped: waits are abandoned (engine jobs still finish).
    watchdog : ``In(32)``
        Cycles a SEM_WAIT may wait (the WATCHDOG register).
    job_<engine> : ``Out(stream.Signature(DmaCommand or ComputeCommand))``
        The command for the engine (COMPUTE: the NE tile; the others: a DMA engine).
    done_<engine> : ``In(stream.Signature({error}))``
        The engine's completion, one per job.
    link_<engine> : ``Out(AxiSignature)``
        Remote signals (write channels only).
    windows : ``In(ArrayLayout(window_layout, NUM_WINDOWS))``
    sem_values : ``Out(ArrayLayout(64, NUM_SEMAPHORES))``
    sem_host_set, sem_host_add : ``In(stream.Signature({index, value}))``
        The host's SEM_VALUE and SEM_INC writes (remote signals arrive as SEM_INC); always
        taken.
    """

    def __init__(self, params, *, window_layout, link_axi):
        self.params, self.link_axi = params, link_axi
        host = stream.Signature(data.StructLayout({"index": SEM_BITS, "value": 64}))
        members = {
            "idle": Out(_ENGINES),
            "held": Out(data.ArrayLayout(QueueEntry, _ENGINES)),
            "stopped": In(1),
            "watchdog": In(32),
            "windows": In(data.ArrayLayout(window_layout, regmap.NUM_WINDOWS)),
            "sem_values": Out(data.ArrayLayout(64, NUM_SEMAPHORES)),
            "sem_host_set": In(host),
            "sem_host_add": In(host),
        }
        for e in Engine:
            name = e.name.lower()
            job = ComputeCommand if e == Engine.COMPUTE else DmaCommand
            members[f"queue_{name}"] = In(stream.Signature(QueueEntry))
            members[f"fault_{name}"] = Out(stream.Signature(EngineReport))
            members[f"job_{name}"] = Out(stream.Signature(job))
            members[f"done_{name}"] = In(stream.Signature(DoneLayout))
            members[f"link_{name}"] = Out(AxiSignature(link_axi))
        super().__init__(members)

    def port(self, kind, engine):
        return getattr(self, f"{kind}_{Engine(engine).name.lower()}")

    def elaborate(self, platform):
        m = Module()
        m.submodules.sems = sems = SemaphoreBank(_ENGINES + 1)
        m.d.comb += [
            self.sem_values.eq(sems.values),
            self.sem_host_set.ready.eq(1),
            self.sem_host_add.ready.eq(1),
            sems.host_set.valid.eq(self.sem_host_set.valid),
            sems.host_set.payload.eq(self.sem_host_set.payload),
        ]
        host_add = sems.update(_ENGINES)
        m.d.comb += [host_add.valid.eq(self.sem_host_add.valid),
                     host_add.payload.index.eq(self.sem_host_add.payload.index),
                     host_add.payload.value.eq(self.sem_host_add.payload.value)]

        consumed = []   # (valid, index) of lower heads' consumes this cycle
        for e in Engine:
            consumed.append(self._head(m, e, sems.update(e), sems.values, consumed))
        return m

    def _head(self, m, e, update, values, lower):
        name = e.name.lower()
        queue, fault = self.port("queue", e), self.port("fault", e)
        job, done, link = self.port("job", e), self.port("done", e), self.port("link", e)
        beat = self.link_axi.data_bytes

        # remote signals: one posted write at a time on the head's link port (reads unused)
        m.submodules[f"{name}_writer"] = writer = PostedWriter(self.link_axi)
        writer.connect_port(m, link)
        m.d.comb += [link.ar.valid.eq(0), link.r.ready.eq(1)]
        state = Signal(_State, name=f"{name}_state")
        entry = Signal(QueueEntry, name=f"{name}_entry")
        waited = Signal(32, name=f"{name}_waited")
        m.d.comb += [self.idle[e].eq(state == _State.IDLE), self.held[e].eq(entry)]
        cmd = entry.cmd
        wait, signal = cmd.args.sem_wait, cmd.args.sem_signal

        def report(code):
            m.d.comb += [fault.valid.eq(1), fault.payload.error.eq(code),
                         fault.payload.addr.eq(entry.addr)]
            m.d.sync += state.eq(_State.IDLE)

        consume_valid = Signal(name=f"{name}_consume")
        consume_index = Signal(SEM_BITS, name=f"{name}_consume_index")
        # a lower head consuming the same semaphore, or the host setting it, goes first
        blocked = Cat(*(v & (i == consume_index) for v, i in lower),
                      self.sem_host_set.valid
                      & (self.sem_host_set.payload.index == consume_index)).any()

        with m.Switch(state):
            with m.Case(_State.IDLE):
                m.d.comb += queue.ready.eq(1)
                with m.If(queue.valid & ~self.stopped):
                    m.d.sync += entry.eq(queue.payload)
                    op = queue.payload.cmd.opcode
                    with m.If(op == Opcode.SEM_WAIT):
                        m.d.sync += [state.eq(_State.WAIT), waited.eq(0)]
                    with m.Elif(op == Opcode.SEM_SIGNAL):
                        m.d.sync += state.eq(_State.SIGNAL_AW)
                    with m.Else():
                        m.d.sync += state.eq(_State.JOB)

            with m.Case(_State.WAIT):
                value = values[wait.sem]
                with m.If(self.stopped):
                    m.d.sync += state.eq(_State.IDLE)
                with m.Elif(value >= wait.value):
                    with m.If(wait.consume):
                        m.d.comb += [consume_valid.eq(~blocked),
                                     consume_index.eq(wait.sem)]
                        with m.If(~blocked):
                            m.d.comb += [update.valid.eq(1), update.payload.index.eq(wait.sem),
                                         update.payload.sub.eq(1),
                                         update.payload.value.eq(wait.value)]
                            m.d.sync += state.eq(_State.IDLE)
                    with m.Else():
                        m.d.sync += state.eq(_State.IDLE)
                with m.Elif(waited >= self.watchdog):
                    report(ErrorCode.SEM_TIMEOUT)
                with m.Else():
                    m.d.sync += waited.eq(waited + 1)

            with m.Case(_State.SIGNAL_AW):
                target = Signal(64, name=f"{name}_signal_target")
                m.d.comb += target.eq(signal.peer + regmap.SEM_INC + 8 * signal.sem)
                with m.If(self.stopped):
                    m.d.sync += state.eq(_State.IDLE)
                with m.Elif(~signal.remote):
                    m.d.comb += [update.valid.eq(1), update.payload.index.eq(signal.sem),
                                 update.payload.value.eq(signal.amount)]
                    m.d.sync += state.eq(_State.IDLE)
                with m.Elif(~window_hit(self.windows, Space.LINK, target, 8, write=True)):
                    report(ErrorCode.DMA_WINDOW)
                with m.Else():
                    lane = target[3:(beat - 1).bit_length()] if beat > 8 else 0
                    m.d.comb += [writer.start.valid.eq(1),
                                 writer.start.payload.addr.eq(target & ~(beat - 1)),
                                 writer.start.payload.data.eq(
                                     Cat(signal.amount, C(0, 48)).replicate(beat // 8)),
                                 writer.start.payload.strb.eq(0xFF << (8 * lane))]
                    with m.If(writer.start.ready):
                        m.d.sync += state.eq(_State.SIGNAL_B)
            with m.Case(_State.SIGNAL_B):
                with m.If(~writer.busy):
                    with m.If(writer.resp != 0):
                        report(link_error(writer.resp))
                    with m.Else():
                        m.d.sync += state.eq(_State.IDLE)

            with m.Case(_State.JOB):
                with m.If(self.stopped):   # not handed over yet: dropped with the queue
                    m.d.sync += state.eq(_State.IDLE)
                m.d.comb += [job.valid.eq(~self.stopped),
                             job.payload.eq(cmd.as_value()[:job.payload.shape().size])]
                with m.If(job.ready):
                    m.d.sync += state.eq(_State.DONE)
            with m.Case(_State.DONE):
                m.d.comb += done.ready.eq(1)
                with m.If(done.valid):
                    with m.If(done.payload.error.as_value() != 0):
                        report(done.payload.error)
                    with m.Else():
                        m.d.sync += state.eq(_State.IDLE)
        return consume_valid, consume_index
