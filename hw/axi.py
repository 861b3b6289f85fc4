"""AXI4-style memory ports: the five channels as ``lib.stream`` streams.

The device's memory traffic (command fetch, DMA, completion records) travels on these ports:
to the DRAM model, and to the link port, whose far side turns them into PCIe transactions.
It is AXI4 reduced to what the device uses, with AXI4's channel structure and rules:

* bursts are INCR only, every beat the full data width (``AxSIZE`` fixed), ``len`` is beats
  minus one (up to 256 beats), the address is aligned to the data width, and a burst does not
  cross a 4 KiB boundary;
* writes narrower than a beat use ``strb`` (one bit per byte);
* read data and write responses of one ``id`` come back in request order (a slave may
  return all of them in order, which is what the DRAM model does);
* a master may issue several requests before the first response (outstanding bursts);
* ``resp`` is :class:`Resp`: OKAY, or SLVERR/DECERR for an access the slave refuses (DECERR:
  no memory at that address). Every beat of a refused read still arrives, with zero data.

Directions are as seen by the master (``Out`` = master to slave).
"""

import enum

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Resp", "AxiParams", "AxiSignature", "MAX_BURST_BEATS", "BOUNDARY_BYTES",
           "address_layout", "write_layout", "response_layout"]

#: AXI4 INCR bursts: at most 256 beats ...
MAX_BURST_BEATS = 256
#: ... and never across a 4 KiB boundary.
BOUNDARY_BYTES = 4096


class Resp(enum.IntEnum):
    """``RRESP`` / ``BRESP`` codes (AXI4 encoding)."""
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


class AxiParams:
    """Widths of an AXI port: ``addr_width`` (byte address bits), ``data_bytes`` (bytes per
    beat, a power of two) and ``id_width`` (transaction ID bits, at least 1)."""

    def __init__(self, *, addr_width, data_bytes, id_width):
        if data_bytes < 1 or data_bytes & (data_bytes - 1):
            raise ValueError(f"data_bytes must be a power of two, not {data_bytes}")
        if id_width < 1:
            raise ValueError(f"id_width must be at least 1, not {id_width}")
        self.addr_width, self.data_bytes, self.id_width = addr_width, data_bytes, id_width

    @property
    def data_width(self):
        return 8 * self.data_bytes

    def with_id_width(self, id_width):
        return AxiParams(addr_width=self.addr_width, data_bytes=self.data_bytes,
                         id_width=id_width)

    def __eq__(self, other):
        return isinstance(other, AxiParams) and vars(self) == vars(other)

    def __hash__(self):
        return hash((self.addr_width, self.data_bytes, self.id_width))

    def __repr__(self):
        return (f"AxiParams(addr_width={self.addr_width}, data_bytes={self.data_bytes}, "
                f"id_width={self.id_width})")


def address_layout(params):
    """The payload of ``ar`` and ``aw``."""
    return data.StructLayout({"addr": params.addr_width, "len": 8, "id": params.id_width})


def write_layout(params):
    """The payload of ``w``."""
    return data.StructLayout({"data": params.data_width, "strb": params.data_bytes, "last": 1})


def response_layout(params):
    """The payload of ``b``."""
    return data.StructLayout({"resp": 2, "id": params.id_width})


class AxiSignature(wiring.Signature):
    """An AXI4-style master port (flip it for a slave).

    Members
    -------
    ar : ``Out(stream.Signature(addr, len, id))``
        Read address: byte ``addr`` (aligned to ``data_bytes``), ``len`` = beats - 1, ``id``.
    r : ``In(stream.Signature(data, resp, last, id))``
        Read data, ``len + 1`` beats per burst, ``last`` on the final one.
    aw : ``Out(stream.Signature(addr, len, id))``
        Write address, as ``ar``.
    w : ``Out(stream.Signature(data, strb, last))``
        Write data, in the order of the ``aw`` requests, ``last`` on each burst's final beat.
    b : ``In(stream.Signature(resp, id))``
        Write response, one per burst, after all its beats are written.
    """

    def __init__(self, params):
        self.params = p = params
        super().__init__({
            "ar": Out(stream.Signature(address_layout(p))),
            "r": In(stream.Signature(data.StructLayout({
                "data": p.data_width, "resp": 2, "last": 1, "id": p.id_width}))),
            "aw": Out(stream.Signature(address_layout(p))),
            "w": Out(stream.Signature(write_layout(p))),
            "b": In(stream.Signature(response_layout(p))),
        })

    def __eq__(self, other):
        return isinstance(other, AxiSignature) and self.params == other.params

    def __repr__(self):
        return f"AxiSignature({self.params!r})"
