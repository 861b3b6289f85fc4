"""The device error a failed link access reports, from the link port's AXI response.

The link endpoint answers DECERR when the link refused the request (an Unsupported Request:
nothing claims the address) and SLVERR when it never got an answer (the link is down, or a
read's completion timed out) -- LINK_UNSUPPORTED and LINK_TIMEOUT, for every master on the
link port (DMA engines, completion records, MSIs, remote semaphore signals).
"""

from amaranth.hdl import Mux

from ...sw.isa.enums import ErrorCode
from ..axi import Resp

__all__ = ["link_error"]


def link_error(resp):
    """The ErrorCode value for a non-OKAY link response ``resp``."""
    return Mux(resp == Resp.DECERR, ErrorCode.LINK_UNSUPPORTED, ErrorCode.LINK_TIMEOUT)
