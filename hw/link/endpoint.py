"""A device's link endpoint: the transaction layer between the device and its data-link layer.

:class:`Endpoint` joins a :class:`~.requester.Requester` (the device's AXI link port as MRd,
MWr and MsgD; completions back as AXI R) and a :class:`~.completer.Completer` (configuration
space, BAR0 to the register block, BAR2 to the device DRAM) with a small mux/demux: incoming
TLPs go by their first beat -- completions to the requester, everything else to the
completer -- and outgoing TLPs of both merge round robin, a whole TLP at a time. The
completer's configuration space gives the requester its ID (``make_id(bus)``) and the bus
master enable: with bus mastering off the requester behaves as if the link were down.
See ``docs/hw/link.md``, "Endpoint".
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ...sw.fm.system import BusMap
from ...sw.params import DEFAULT
from ..axi import AxiParams, AxiSignature
from ..device.cp import Mmio
from ..refuse import refuse
from .completer import Completer
from .requester import Requester, link_axi_params
from .tlp import KIND_FMT_TYPE, Kind, tlp_beat
from .tlp_stream import TlpMerge, TlpSplit

__all__ = ["Endpoint", "dram_axi_params"]

_COUNTERS = {"requester": ("timeouts", "dropped_completions", "discarded"),
             "completer": ("dropped_writes", "unsupported", "mem_errors", "dropped")}


def dram_axi_params(params, id_width=1):
    """The endpoint's DRAM port: BAR2 offsets (``dram_bytes``), DRAM-wide beats."""
    return AxiParams(addr_width=(params.dram_bytes - 1).bit_length(),
                     data_bytes=params.dram_bytes_per_cycle, id_width=id_width)


def _is_completion(m, beat):
    """Route of a TLP by its first beat: 0 (the requester) for Cpl/CplD, else 1."""
    return beat.data[:5] != KIND_FMT_TYPE[Kind.CPL][1]


class Endpoint(wiring.Component):
    """The transaction layer of a device's link port.

    Parameters
    ----------
    params : HwParams
    axi_params : AxiParams
        Of ``axi`` (default: :func:`~.requester.link_axi_params`, the device's link port).
    mem_axi : AxiParams
        Of ``mem`` (default: :func:`dram_axi_params`).
    msi_base : int
        The MSI page's bus address (writes there leave as MsgD).

    Members
    -------
    axi : ``In(AxiSignature(axi_params))``
        From the device's link port (see :class:`~.requester.Requester`).
    mem : ``Out(AxiSignature(mem_axi))``
        To the device's DRAM arbiter: BAR2 accesses, addresses relative to BAR2.
    mmio : ``Out(stream.Signature(Mmio))``, mmio_rdata : ``In(stream.Signature(64))``
        To the command processor's register block: BAR0 accesses.
    tlp_tx : ``Out(stream.Signature(tlp_beat(W)))``
        To the data-link layer: requests and completions, whole TLPs round robin.
    tlp_rx : ``In(stream.Signature(tlp_beat(W)))``
        From the data-link layer; a request waits here (and the TLPs behind it) while the
        completer cannot take it; completions are always taken.
    dl_up : ``In(1)``
        The data-link layer is up.
    id : ``Out(16)``
        Requester and completer ID, ``make_id(bus)`` from the last CfgWr0.
    memory_enable, bus_master : ``Out(1)``
        Command register bits.
    timeouts, dropped_completions, discarded : ``Out(32)``
        The requester's counters.
    dropped_writes, unsupported, mem_errors, dropped : ``Out(32)``
        The completer's counters.
    """

    def __init__(self, params=DEFAULT, *, axi_params=None, mem_axi=None,
                 msi_base=BusMap().msi_base):
        self.params = params
        W = params.link_bytes_per_cycle
        self.axi_params = axi_params or link_axi_params(params)
        self.mem_axi = mem_axi or dram_axi_params(params)
        # built here so that bad parameters are refused by the constructor
        self._requester = Requester(params, axi_params=self.axi_params, msi_base=msi_base)
        try:
            self._completer = Completer(params, mem_axi=self.mem_axi, mmio=True, config=True)
        except ValueError as error:
            self._requester._MustUse__silence = True
            refuse(self, error)
        members = {
            "axi": In(AxiSignature(self.axi_params)),
            "mem": Out(AxiSignature(self.mem_axi)),
            "mmio": Out(stream.Signature(Mmio)),
            "mmio_rdata": In(stream.Signature(64)),
            "tlp_tx": Out(stream.Signature(tlp_beat(W))),
            "tlp_rx": In(stream.Signature(tlp_beat(W))),
            "dl_up": In(1),
            "id": Out(16),
            "memory_enable": Out(1),
            "bus_master": Out(1),
        }
        for names in _COUNTERS.values():
            members.update({name: Out(32) for name in names})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        W = self.params.link_bytes_per_cycle
        m.submodules.requester = req = self._requester
        m.submodules.completer = cpl = self._completer
        m.submodules.split = split = TlpSplit(W, 2, _is_completion)
        m.submodules.merge = merge = TlpMerge(W, 2)

        wiring.connect(m, wiring.flipped(self.axi), req.axi)
        wiring.connect(m, wiring.flipped(self.mem), cpl.mem)
        wiring.connect(m, wiring.flipped(self.mmio), cpl.mmio)
        wiring.connect(m, wiring.flipped(self.mmio_rdata), cpl.mmio_rdata)
        wiring.connect(m, wiring.flipped(self.tlp_rx), split.i)
        wiring.connect(m, split.o0, req.cpl_rx)
        wiring.connect(m, split.o1, cpl.tlp_rx)
        wiring.connect(m, req.tlp_tx, merge.i0)
        wiring.connect(m, cpl.tlp_tx, merge.i1)
        wiring.connect(m, merge.o, wiring.flipped(self.tlp_tx))
        m.d.comb += [req.requester_id.eq(cpl.id), req.dl_up.eq(self.dl_up & cpl.bus_master),
                     self.id.eq(cpl.id), self.memory_enable.eq(cpl.memory_enable),
                     self.bus_master.eq(cpl.bus_master)]
        for part, names in (("requester", _COUNTERS["requester"]),
                            ("completer", _COUNTERS["completer"])):
            block = req if part == "requester" else cpl
            for name in names:
                m.d.comb += getattr(self, name).eq(getattr(block, name))
        return m
