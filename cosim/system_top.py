"""The co-simulated system: a root complex and N devices behind one switch, over real links.

```
 Python host driver (cosim/system.py)
   │ req/resp, irq counters, backdoors
 RootComplex ── LinkPort ══ Link ══ LinkPort ── Switch ── LinkPort ══ Link ══ LinkPort ── Endpoint ── Device 0 ── DRAM 0
 (host memory)                                    │                                                    (Device 1 ...)
                                                  └── port 1 ... N-1
```

Every link end is a :class:`~npusim.hw.link.port.LinkPort` (data-link and physical layers),
every link two wires with its own fault controls: link ``d`` joins device ``d`` to switch
port ``d``, link ``N`` joins the root complex to the switch's upstream port. Python only
issues host requests, moves memory images through the backdoors and sleeps on the
interrupt counters; all traffic runs inside the simulated design.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ..hw.device.cp import QueueEntry
from ..hw.device.top import Device
from ..hw.dram import DramBackdoorSignature, DramModel
from ..hw.link.endpoint import Endpoint
from ..hw.link.port import LINK_STATS, Link, LinkPort
from ..hw.link.switch import Switch
from ..hw.link.tlp import tlp_beat
from ..hw.link.tlp_stream import TlpMerge
from ..sw.isa.enums import Engine
from .device_top import DEVICE_BUS, DEVICE_PARAMS
from .root_complex import HOST_REQUEST, HOST_RESPONSE, RootComplex

__all__ = ["SystemTop", "SYSTEM_PARAMS", "SYSTEM_BUS", "build_system"]

#: The system the tests and benchmarks simulate: the single-device tests' device (4x4 array,
#: 64 KiB scratchpad, 4 MiB DRAM) and bus map (16 MiB of host memory).
SYSTEM_PARAMS, SYSTEM_BUS = DEVICE_PARAMS, DEVICE_BUS


class SystemTop(wiring.Component):
    """Root complex + switch + ``n`` devices, for cocotb.

    Members
    -------
    req : ``In(stream.Signature(HOST_REQUEST))``, resp : ``Out(stream.Signature(HOST_RESPONSE))``
        Host requests (configuration, register reads and writes) and their answers.
    host_backdoor : ``In(DramBackdoorSignature())``
        Host memory images (``host.hex``).
    dram_backdoor : ``In(DramBackdoorSignature()).array(n)``
        Device DRAM images (``dram<d>.hex``).
    irq_count : ``Out(32)``, irq_per_vector : ``Out(ArrayLayout(32, n))``
        Interrupt messages the root complex received, in all and per vector.
    stopped : ``Out(n)``
        Device ``d`` is FAULT or HALTED.
    busy : ``Out(4 * n)``, running : ``Out(QueueEntry).array(4 * n)``
        Bit ``4d + e``: engine ``e`` of device ``d`` holds a command, and that command (its
        resolved form and DRAM address): the engine trace's source (``cluster_server.py``).
    links_up : ``In(n + 1)``
        Bit ``k`` keeps link ``k`` up (0 takes it down).
    flip_rate : ``In(16).array(n + 1)``
        Bit-flip rate per link (per flit and direction, / 65536).
    flips : ``Out(32).array(n + 1)``
        Flits corrupted per link.
    link_stats : ``Out(LINK_STATS).array(2 * (n + 1))``
        Error counters of every link end: ``2k`` the device's (or root complex's) end of
        link ``k``, ``2k + 1`` the switch's end.
    malformed, unsupported : ``Out(32)``
        TLPs the switch dropped as malformed, and requests nobody claimed.
    inject : ``In(stream.Signature(tlp_beat(W)))``
        Raw TLPs sent from the root complex's side as they are (merged whole with its own):
        the data-link layer frames them correctly, so malformed ones reach the switch, which
        must drop them.
    """

    def __init__(self, n, params=SYSTEM_PARAMS, bus=SYSTEM_BUS):
        self.n, self.params, self.bus = n, params, bus
        self._devices = [Device(params) for _ in range(n)]
        super().__init__({
            "req": In(stream.Signature(HOST_REQUEST)),
            "resp": Out(stream.Signature(HOST_RESPONSE)),
            "host_backdoor": In(DramBackdoorSignature()),
            "dram_backdoor": In(DramBackdoorSignature()).array(n),
            "irq_count": Out(32),
            "irq_per_vector": Out(data.ArrayLayout(32, n)),
            "stopped": Out(n),
            "busy": Out(len(Engine) * n),
            "running": Out(QueueEntry).array(len(Engine) * n),
            "links_up": In(n + 1, init=(1 << (n + 1)) - 1),
            "flip_rate": In(16).array(n + 1),
            "flips": Out(32).array(n + 1),
            "link_stats": Out(LINK_STATS).array(2 * (n + 1)),
            "malformed": Out(32),
            "unsupported": Out(32),
            "inject": In(stream.Signature(tlp_beat(params.link_bytes_per_cycle))),
        })

    def elaborate(self, platform):
        m = Module()
        p, n = self.params, self.n
        m.submodules.switch = switch = Switch(p, n)
        m.d.comb += [self.malformed.eq(switch.malformed),
                     self.unsupported.eq(switch.unsupported)]

        def link(k, near, far):
            """Link ``k`` between ports ``near`` (device or host side) and ``far`` (switch)."""
            m.submodules[f"link{k}"] = wires = Link(p, seed=k)
            up = self.links_up[k]
            m.d.comb += [wires.a_tx.eq(near.flit_tx), near.flit_rx.eq(wires.a_rx),
                         wires.b_tx.eq(far.flit_tx), far.flit_rx.eq(wires.b_rx),
                         near.rx_up.eq(wires.a_rx_up), far.rx_up.eq(wires.b_rx_up),
                         near.tx_up.eq(up), far.tx_up.eq(up), wires.up.eq(up),
                         wires.flip_rate.eq(self.flip_rate[k]), self.flips[k].eq(wires.flips),
                         self.link_stats[2 * k].eq(near.stats),
                         self.link_stats[2 * k + 1].eq(far.stats)]

        # the host: root complex, its memory, its link to the switch's upstream port
        m.submodules.rc = rc = RootComplex(p, self.bus, vectors=n)
        m.submodules.host = host = DramModel(
            p.replace(dram_bytes=self.bus.host_bytes), hexfile="host.hex",
            id_width=rc.mem_params.id_width, outstanding=p.dram_outstanding,
            addr_width=rc.mem_params.addr_width)
        m.submodules.rc_port = rc_port = LinkPort(p)
        m.submodules.up_port = up_port = LinkPort(p)
        connect(m, rc.mem, host.axi)
        connect(m, wiring.flipped(self.host_backdoor), host.backdoor)
        connect(m, wiring.flipped(self.req), rc.req)
        connect(m, rc.resp, wiring.flipped(self.resp))
        m.submodules.rc_merge = rc_merge = TlpMerge(p.link_bytes_per_cycle, 2)
        connect(m, rc.tlp_tx, rc_merge.i0)
        connect(m, wiring.flipped(self.inject), rc_merge.i1)
        connect(m, rc_merge.o, rc_port.tlp_tx)
        connect(m, rc_port.tlp_rx, rc.tlp_rx)
        connect(m, up_port.tlp_rx, switch.up_rx)
        connect(m, switch.up_tx, up_port.tlp_tx)
        m.d.comb += [rc.dl_up.eq(rc_port.dl_up), self.irq_count.eq(rc.irq_count),
                     self.irq_per_vector.eq(rc.irq_per_vector)]
        link(n, rc_port, up_port)

        # the devices
        stopped = Signal(n)
        for d, device in enumerate(self._devices):
            m.submodules[f"device{d}"] = device
            m.submodules[f"endpoint{d}"] = ep = Endpoint(p, msi_base=self.bus.msi_base)
            m.submodules[f"ep_port{d}"] = ep_port = LinkPort(p)
            m.submodules[f"sw_port{d}"] = sw_port = LinkPort(p)
            dram_params = device.signature.members["dram"].signature.params
            m.submodules[f"dram{d}"] = dram = DramModel(
                p, hexfile=f"dram{d}.hex", id_width=dram_params.id_width,
                outstanding=p.dram_outstanding, addr_width=dram_params.addr_width)
            connect(m, device.dram, dram.axi)
            connect(m, wiring.flipped(self.dram_backdoor[d]), dram.backdoor)
            connect(m, device.link, ep.axi)
            connect(m, ep.mem, device.bus_in)
            connect(m, ep.mmio, device.mmio)
            connect(m, device.mmio_rdata, ep.mmio_rdata)
            connect(m, ep.tlp_tx, ep_port.tlp_tx)
            connect(m, ep_port.tlp_rx, ep.tlp_rx)
            connect(m, sw_port.tlp_rx, switch.down_rx[d])
            connect(m, switch.down_tx[d], sw_port.tlp_tx)
            m.d.comb += [ep.dl_up.eq(ep_port.dl_up), stopped[d].eq(device.stopped)]
            for e in Engine:
                k = len(Engine) * d + e
                m.d.comb += [self.busy[k].eq(device.busy[e]),
                             self.running[k].eq(device.running[e])]
            link(d, ep_port, sw_port)
        m.d.comb += self.stopped.eq(stopped)
        return m


def build_system(n, params=SYSTEM_PARAMS, bus=SYSTEM_BUS, **kwargs):
    """The Verilator build of ``SystemTop(n, params, bus)`` (``verilator_flow.build``'s
    ``kwargs``), named ``system_<n>x<rows>x<cols>``; while the sources are unchanged a cached
    build is found without converting the design (a minute for two devices)."""
    from .verilator_flow import build
    return build(lambda: SystemTop(n, params, bus),
                 f"system_{n}x{params.array_rows}x{params.array_cols}",
                 identity=f"SystemTop({n!r}, {params!r}, {bus!r})", **kwargs)
