"""The device: command processor, engine heads, three DMA engines, the NE tile, and the
arbiters that give them one DRAM port and one link port.

```
 host MMIO ──> CommandProcessor ──queues──> EngineHeads ──jobs──> DmaEngine x 3 (DMA_IN,
                 │ fetch, records            │ remote signals       DMA_OUT, LINK)
                 │                           │                      │ sram        │
                 │                           │                      v             │
                 │                           │                 SramArbiter ──> NeTile (COMPUTE)
  dram <── AxiArbiter <── CP, bus_in,        │                                    │
                          DMA x 3 via WriteBuffers                                │
  link <── AxiArbiter <── CP, DMA x 3, heads x 4 ──────────────────────────────────┘
```

Every DMA-capable queue (DMA_IN, DMA_OUT, LINK) has its own DMA engine, so the three run
concurrently, as the functional model's engine queues do; the COMPUTE queue feeds the NE tile.
A DMA engine issues a DRAM write burst before it has the data (which may still be on its way
over the link), so each reaches the DRAM arbiter through a :class:`~..axi_write_buffer.WriteBuffer`
that holds the address until the burst's data is in: otherwise the arbiter's write channel
would wait for the link, and a peer's write into this DRAM (``bus_in``) queued ahead of that
link data would wait for the arbiter -- a deadlock. See ``docs/hw/device.md``.
"""

from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ...sw.isa.enums import Engine
from ...sw.isa.table import DMA_ENGINES
from ...sw.params import DEFAULT
from ..axi import AxiSignature
from ..axi_arbiter import AxiArbiter
from ..axi_write_buffer import WriteBuffer
from ..ne.tile import NeTile
from .cp import CommandProcessor, Mmio, QueueEntry
from .dma import BURST_BEATS, DmaEngine
from .windows import WindowLayout
from .heads import EngineHeads
from .sram_arbiter import SramArbiter

__all__ = ["Device"]



class Device(wiring.Component):
    """One device.

    Members
    -------
    mmio : ``In(stream.Signature(Mmio))``, mmio_rdata : ``Out(stream.Signature(64))``
        The host's register accesses (BAR0, ``sw/regmap.py``).
    dram : ``Out(AxiSignature)``
        To the device DRAM.
    link : ``Out(AxiSignature)``
        To the link: bus addresses (host memory, peers, MSIs).
    bus_in : ``In(AxiSignature)``
        From the link: the host's and peers' accesses to this device's DRAM (its BAR2),
        addresses relative to the DRAM; one more master on the DRAM arbiter.
    stopped : ``Out(1)``
        The device is FAULT or HALTED.
    busy : ``Out(4)``, running : ``Out(ArrayLayout(QueueEntry, 4))``
        Bit ``e``: engine ``e``'s head holds a command, and that command (its resolved form
        and DRAM address) -- for monitors: the cosim traces the engines from these.
    """

    def __init__(self, params=DEFAULT):
        self.params = params
        self._cp = CommandProcessor(params, window_layout=WindowLayout)
        self._tile = NeTile(params)
        self._dmas = [DmaEngine(params) for _ in DMA_ENGINES]
        # room for two bursts: one fills while the other drains
        self._write_buffers = [WriteBuffer(self._cp.dram_axi, beats=2 * BURST_BEATS)
                               for _ in DMA_ENGINES]
        self._heads = EngineHeads(params, window_layout=WindowLayout,
                                  link_axi=self._cp.link_axi)
        self._dram_arbiter = AxiArbiter(self._cp.dram_axi, 2 + len(DMA_ENGINES))
        self._link_arbiter = AxiArbiter(self._cp.link_axi, 1 + len(DMA_ENGINES) + len(Engine))
        self._sram_arbiter = SramArbiter(self._tile.dma_port_signature, len(DMA_ENGINES))
        super().__init__({
            "mmio": In(stream.Signature(Mmio)),
            "mmio_rdata": Out(stream.Signature(64)),
            "dram": Out(AxiSignature(self._dram_arbiter.slave_params)),
            "link": Out(AxiSignature(self._link_arbiter.slave_params)),
            "bus_in": In(AxiSignature(self._cp.dram_axi)),
            "stopped": Out(1),
            "busy": Out(len(Engine)),
            "running": Out(data.ArrayLayout(QueueEntry, len(Engine))),
        })

    def elaborate(self, platform):
        m = Module()
        cp, tile, heads, dmas = self._cp, self._tile, self._heads, self._dmas
        m.submodules.cp = cp
        m.submodules.heads = heads
        m.submodules.tile = tile
        for e, dma in zip(DMA_ENGINES, dmas):
            m.submodules[f"dma_{e.name.lower()}"] = dma
        m.submodules.dram_arbiter = dram_arbiter = self._dram_arbiter
        m.submodules.link_arbiter = link_arbiter = self._link_arbiter
        m.submodules.sram_arbiter = sram_arbiter = self._sram_arbiter

        # host side
        connect(m, wiring.flipped(self.mmio), cp.mmio)
        connect(m, cp.mmio_rdata, wiring.flipped(self.mmio_rdata))
        m.d.comb += [self.stopped.eq(cp.stopped), self.busy.eq(~heads.idle),
                     self.running.eq(heads.held)]

        # command processor <-> heads
        for e in Engine:
            connect(m, cp.queue(e), heads.port("queue", e))
            connect(m, heads.port("fault", e), cp.fault_port(e))
        m.d.comb += [
            cp.engine_idle.eq(heads.idle),
            heads.stopped.eq(cp.stopped),
            heads.watchdog.eq(cp.watchdog),
            heads.windows.eq(cp.windows),
            cp.sem_values.eq(heads.sem_values),
        ]
        for source, sink in ((cp.sem_set, heads.sem_host_set), (cp.sem_add, heads.sem_host_add)):
            m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload)]

        # heads -> engines
        for e, dma in zip(DMA_ENGINES, dmas):
            connect(m, heads.port("job", e), dma.cmd)
            m.d.comb += [heads.port("done", e).valid.eq(dma.done.valid),
                         heads.port("done", e).payload.error.eq(dma.done.payload.error),
                         dma.done.ready.eq(heads.port("done", e).ready),
                         dma.windows.eq(cp.windows)]
        connect(m, heads.port("job", Engine.COMPUTE), tile.cmd)
        done = heads.port("done", Engine.COMPUTE)
        m.d.comb += [done.valid.eq(tile.done.valid),
                     done.payload.error.eq(tile.done.payload.error),
                     tile.done.ready.eq(done.ready)]

        # memory ports
        for i, dma in enumerate(dmas):
            connect(m, dma.sram, sram_arbiter.masters[i])
        connect(m, sram_arbiter.port, tile.dma)
        connect(m, cp.dram, dram_arbiter.masters[0])
        for i, (dma, buffer) in enumerate(zip(dmas, self._write_buffers)):
            m.submodules[f"write_buffer_{DMA_ENGINES[i].name.lower()}"] = buffer
            connect(m, dma.dram, buffer.master)
            connect(m, buffer.slave, dram_arbiter.masters[1 + i])
        connect(m, wiring.flipped(self.bus_in), dram_arbiter.masters[1 + len(dmas)])
        connect(m, dram_arbiter.slave, wiring.flipped(self.dram))
        link_masters = [cp.link] + [dma.link for dma in dmas] + \
            [heads.port("link", e) for e in Engine]
        for i, master in enumerate(link_masters):
            connect(m, master, link_arbiter.masters[i])
        connect(m, link_arbiter.slave, wiring.flipped(self.link))
        return m

