"""A single device in the simulator, with its DRAM and a host behind its link port.

``DeviceTestTop`` is what the cocotb testbenches of the device drive: the device
(:class:`npusim.hw.device.top.Device`), its DRAM (the Verilog model, with a backdoor), and on
the link port a stand-in for the host: host memory (a second DRAM model at bus address 0) and
the MSI page, whose writes become :attr:`irq_count` / :attr:`irq_vector` instead of memory
writes. Python only touches the MMIO port, the backdoors and the interrupt counter: the
per-cycle traffic stays in the simulated design. The multi-device system with a real link
replaces the stand-in later.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out, connect

from ..hw.axi import AxiSignature, Resp
from ..hw.device.cp import Mmio
from ..hw.device.top import Device
from ..hw.dram import DramBackdoorSignature, DramModel
from ..sw.fm.system import BusMap
from ..sw.params import HwParams

__all__ = ["MsiCatcher", "DeviceTestTop", "MSI_PAGE", "DEVICE_PARAMS", "DEVICE_BUS",
           "build_device"]

#: Bytes of the MSI doorbell page at ``BusMap.msi_base``.
MSI_PAGE = 4096

#: The device the tests, the timing calibration and the device benchmarks simulate (one
#: build, cached once): a 4x4 array, a 64 KiB scratchpad, a 4 MiB DRAM, 16 MiB of host memory.
DEVICE_PARAMS = HwParams(array_rows=4, array_cols=4, vector_lanes=4, sram_bytes=64 * 1024,
                         dram_bytes=1 << 22)
DEVICE_BUS = BusMap(host_bytes=1 << 24)


class MsiCatcher(wiring.Component):
    """Passes AXI traffic through, except writes to the MSI page, which it answers itself
    (OKAY) and reports as interrupts: ``irq_count`` counts them, ``irq_vector`` holds the
    last one's 32-bit data."""

    def __init__(self, params, msi_base):
        self.params, self.msi_base = params, msi_base
        super().__init__({
            "upstream": In(AxiSignature(params)),
            "downstream": Out(AxiSignature(params)),
            "irq_count": Out(32),
            "irq_vector": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        up, down, p = self.upstream, self.downstream, self.params
        m.d.comb += [down.ar.valid.eq(up.ar.valid), down.ar.payload.eq(up.ar.payload),
                     up.ar.ready.eq(down.ar.ready),
                     up.r.valid.eq(down.r.valid), up.r.payload.eq(down.r.payload),
                     down.r.ready.eq(up.r.ready)]

        # which accepted write bursts are interrupts, in order, for W and for B
        m.submodules.order = order = SyncFIFO(width=1 + p.id_width, depth=8)
        is_msi = Signal()
        m.d.comb += is_msi.eq((up.aw.payload.addr >= self.msi_base)
                              & (up.aw.payload.addr < self.msi_base + MSI_PAGE))
        with m.If(is_msi):
            m.d.comb += up.aw.ready.eq(order.w_rdy)
        with m.Else():
            m.d.comb += [down.aw.valid.eq(up.aw.valid & order.w_rdy),
                         down.aw.payload.eq(up.aw.payload),
                         up.aw.ready.eq(down.aw.ready & order.w_rdy)]
        m.d.comb += [order.w_en.eq(up.aw.valid & up.aw.ready),
                     order.w_data.eq(Cat(is_msi, up.aw.payload.id))]

        head_msi = order.r_rdy & order.r_data[0]
        b_pending = Signal()
        b_id = Signal(p.id_width)
        with m.If(head_msi):
            m.d.comb += up.w.ready.eq(~b_pending)
            with m.If(up.w.valid & ~b_pending):
                lane = Signal(range(p.data_bytes // 4))
                for i in reversed(range(p.data_bytes // 4)):
                    with m.If(up.w.payload.strb[4 * i]):
                        m.d.comb += lane.eq(i)
                m.d.sync += [self.irq_vector.eq(up.w.payload.data.word_select(lane, 32)),
                             self.irq_count.eq(self.irq_count + 1)]
                with m.If(up.w.payload.last):
                    m.d.comb += order.r_en.eq(1)
                    m.d.sync += [b_pending.eq(1), b_id.eq(order.r_data[1:])]
        with m.Elif(order.r_rdy):
            m.d.comb += [down.w.valid.eq(up.w.valid), down.w.payload.eq(up.w.payload),
                         up.w.ready.eq(down.w.ready),
                         order.r_en.eq(up.w.valid & down.w.ready & up.w.payload.last)]
        # B: the interrupt's own response first, then the memory's
        with m.If(b_pending):
            m.d.comb += [up.b.valid.eq(1), up.b.payload.resp.eq(Resp.OKAY),
                         up.b.payload.id.eq(b_id)]
            with m.If(up.b.ready):
                m.d.sync += b_pending.eq(0)
        with m.Else():
            m.d.comb += [up.b.valid.eq(down.b.valid), up.b.payload.eq(down.b.payload),
                         down.b.ready.eq(up.b.ready)]
        return m


class DeviceTestTop(wiring.Component):
    """Device + DRAM + host memory + MSI page, for cocotb.

    Members
    -------
    mmio, mmio_rdata
        The device's BAR0 accesses.
    dram_backdoor, host_backdoor : ``In(DramBackdoorSignature())``
        Image loads and dumps (hex files ``dram.hex`` and ``host.hex``).
    irq_count, irq_vector : ``Out(32)``
        MSIs the device sent, and the last vector.
    stopped : ``Out(1)``
    """

    def __init__(self, params=HwParams(), bus=BusMap()):
        self.params, self.bus = params, bus
        self._device = Device(params)
        super().__init__({
            "mmio": In(stream.Signature(Mmio)),
            "mmio_rdata": Out(stream.Signature(64)),
            "dram_backdoor": In(DramBackdoorSignature()),
            "host_backdoor": In(DramBackdoorSignature()),
            "irq_count": Out(32),
            "irq_vector": Out(32),
            "stopped": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, device = self.params, self._device
        m.submodules.device = device
        dram_params = device.signature.members["dram"].signature.params
        link_params = device.signature.members["link"].signature.params
        m.submodules.dram = dram = DramModel(p, hexfile="dram.hex",
                                             id_width=dram_params.id_width,
                                             outstanding=p.dram_outstanding,
                                             addr_width=dram_params.addr_width)
        host_params = p.replace(dram_bytes=self.bus.host_bytes)
        m.submodules.host = host = DramModel(host_params, hexfile="host.hex",
                                             id_width=link_params.id_width,
                                             outstanding=p.dram_outstanding,
                                             addr_width=link_params.addr_width)
        m.submodules.msi = msi = MsiCatcher(link_params, self.bus.msi_base)
        connect(m, device.dram, dram.axi)
        connect(m, device.link, msi.upstream)
        connect(m, msi.downstream, host.axi)
        connect(m, wiring.flipped(self.mmio), device.mmio)
        connect(m, device.mmio_rdata, wiring.flipped(self.mmio_rdata))
        connect(m, wiring.flipped(self.dram_backdoor), dram.backdoor)
        connect(m, wiring.flipped(self.host_backdoor), host.backdoor)
        m.d.comb += [self.irq_count.eq(msi.irq_count), self.irq_vector.eq(msi.irq_vector),
                     self.stopped.eq(device.stopped)]
        return m


def build_device(params=DEVICE_PARAMS, bus=DEVICE_BUS, name="device_4x4", **kwargs):
    """The Verilator build of ``DeviceTestTop(params, bus)`` (``verilator_flow.build``'s
    ``kwargs``); while the sources are unchanged a cached build is found without converting
    the design."""
    from .verilator_flow import build
    return build(lambda: DeviceTestTop(params, bus), name,
                 identity=f"DeviceTestTop({params!r}, {bus!r})", **kwargs)
