"""One end of a link (data-link layer + physical layer), and a link (two wires).

Every place a link ends -- a device's endpoint, each switch port, the root complex -- has a
:class:`LinkPort`: TLPs in and out on one side, flits on the other. A :class:`Link` joins two
ports with a :class:`~npusim.hw.link.phy.Wire` each way, taken down (``up``) and corrupted
(``flip_rate``) as one.
"""

from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from .dll import DataLinkLayer
from .phy import Phy, Wire
from .tlp import MAX_PAYLOAD_BYTES, tlp_beat

__all__ = ["LinkPort", "Link", "LINK_STATS"]

#: Error counters of one link end (each 32 bits): TLPs replayed, bad TLPs (LCRC, sequence),
#: bad DLLPs, Naks sent, duplicate TLPs dropped, framing errors.
LINK_STATS = data.StructLayout({name: 32 for name in (
    "replays", "bad_tlps", "bad_dllps", "naks_sent", "duplicates", "framing_errors")})


class LinkPort(wiring.Component):
    """Data-link layer and physical layer of one link end.

    Members
    -------
    tlp_tx : ``In(stream.Signature(tlp_beat(W)))``
        TLPs to send (from the transaction layer).
    tlp_rx : ``Out(stream.Signature(tlp_beat(W)))``
        TLPs received: each good one once, in order.
    flit_tx : ``Out(8 * W)``, flit_rx : ``In(8 * W)``
        To the outgoing wire, from the incoming one.
    tx_up, rx_up : ``In(1)``
        The outgoing wire is up; the incoming wire's ``link_up``. The data-link layer is up
        only while both are.
    dl_up : ``Out(1)``
        Data link active: TLPs flow.
    stats : ``Out(LINK_STATS)``
    """

    def __init__(self, params):
        self.params = params
        W = params.link_bytes_per_cycle
        super().__init__({
            "tlp_tx": In(stream.Signature(tlp_beat(W))),
            "tlp_rx": Out(stream.Signature(tlp_beat(W))),
            "flit_tx": Out(8 * W),
            "flit_rx": In(8 * W),
            "tx_up": In(1, init=1),
            "rx_up": In(1, init=1),
            "dl_up": Out(1),
            "stats": Out(LINK_STATS),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.dll = dll = DataLinkLayer(p)
        # The physical layer frames any TLP a length field can describe; a payload over
        # link_max_payload is the transaction layer's to refuse (malformed, at the switch or
        # the completer), as in PCIe. Were it a framing error, the sender, never Acked, would
        # replay it forever.
        m.submodules.phy = phy = Phy(p.link_bytes_per_cycle, max_payload=MAX_PAYLOAD_BYTES)
        connect(m, wiring.flipped(self.tlp_tx), dll.tlp_tx)
        connect(m, dll.tlp_rx, wiring.flipped(self.tlp_rx))
        connect(m, dll.phy_tx, phy.packets_tx)
        connect(m, phy.packets_rx, dll.phy_rx)
        m.d.comb += [
            self.flit_tx.eq(phy.flit_tx), phy.flit_rx.eq(self.flit_rx),
            phy.tx_up.eq(self.tx_up), phy.rx_up.eq(self.rx_up),
            dll.link_up.eq(self.tx_up & self.rx_up),
            self.dl_up.eq(dll.dl_up),
            self.stats.replays.eq(dll.replays), self.stats.bad_tlps.eq(dll.bad_tlps),
            self.stats.bad_dllps.eq(dll.bad_dllps), self.stats.naks_sent.eq(dll.naks_sent),
            self.stats.duplicates.eq(dll.duplicates),
            self.stats.framing_errors.eq(phy.framing_errors),
        ]
        return m


class Link(wiring.Component):
    """Two wires between link ends ``a`` and ``b``, ``params.link_wire_latency`` cycles each.

    Members
    -------
    a_tx, b_tx : ``In(8 * W)``
        The ends' outgoing flits.
    a_rx, b_rx : ``Out(8 * W)``
        Their incoming flits.
    a_rx_up, b_rx_up : ``Out(1)``
        The incoming wire's ``link_up`` at each end.
    up : ``In(1)``, init 1
        Both directions carry traffic; 0 takes the link down.
    flip_rate : ``In(16)``
        Per flit and direction, the chance (/ 65536) of one flipped bit.
    flips : ``Out(32)``
        Flits corrupted, both directions.
    """

    def __init__(self, params, *, seed=1):
        self.params, self.seed = params, seed
        W = params.link_bytes_per_cycle
        super().__init__({
            "a_tx": In(8 * W), "b_tx": In(8 * W),
            "a_rx": Out(8 * W), "b_rx": Out(8 * W),
            "a_rx_up": Out(1), "b_rx_up": Out(1),
            "up": In(1, init=1),
            "flip_rate": In(16),
            "flips": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        W, latency = p.link_bytes_per_cycle, p.link_wire_latency
        m.submodules.a_to_b = a_to_b = Wire(W, latency, seed=2 * self.seed + 1)
        m.submodules.b_to_a = b_to_a = Wire(W, latency, seed=2 * self.seed + 2)
        for wire, src, dst, dst_up in ((a_to_b, self.a_tx, self.b_rx, self.b_rx_up),
                                       (b_to_a, self.b_tx, self.a_rx, self.a_rx_up)):
            m.d.comb += [wire.i.eq(src), dst.eq(wire.o), dst_up.eq(wire.link_up),
                         wire.up.eq(self.up), wire.flip_rate.eq(self.flip_rate)]
        m.d.comb += self.flips.eq(a_to_b.flips + b_to_a.flips)
        return m
