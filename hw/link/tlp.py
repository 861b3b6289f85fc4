"""TLP formats: the PCIe transaction-layer packets the link carries, defined once.

One table (:data:`FIELDS`) places every header field the link uses at its PCIe position
(byte, bits; bytes in wire order, multi-byte fields big-endian as in the PCIe base spec).
The pure-Python codec (:class:`Tlp`, :func:`decode`) and the Amaranth helpers
(:func:`hdr_get`, :func:`hdr_set`) both read it, so a header built in RTL and one built in a
testbench agree by construction, and any PCIe decoder reads our bytes
(``tests/hw/test_tlp.py`` checks that against cocotbext-pcie).

Inside the RTL a TLP travels as a stream of :func:`tlp_beat` beats, ``W`` bytes each:
byte ``k`` of the TLP (header first, then the payload) is byte ``k % W`` of beat ``k // W``,
at bits ``[8 * (k % W), 8 * (k % W) + 8)`` of ``data``; ``dws`` counts the beat's valid
dwords (``W / 4`` except in the last beat), ``last`` marks the TLP's final beat.

The kinds the link uses (``fmt``, ``type``):

======== ====== ======= ===============================================================
kind     fmt    type    use
======== ====== ======= ===============================================================
MRD32    000    00000   memory read, 32-bit address (below 4 GiB), 3DW header
MRD64    001    00000   memory read, 64-bit address, 4DW header
MWR32    010    00000   posted memory write, 3DW header
MWR64    011    00000   posted memory write, 4DW header
CFGRD0   000    00100   type-0 configuration read (BAR assignment), routed by ID
CFGWR0   010    00100   type-0 configuration write
CPL      000    01010   completion without data (a write's, or an error status)
CPLD     010    01010   completion with data
MSGD     011    10000   message with data routed to the root complex: interrupts
                        (vendor-defined type 1, code 0x7F, the 32-bit vector as payload)
======== ====== ======= ===============================================================
"""

import enum
from dataclasses import dataclass, field

from amaranth.hdl import Cat, Const
from amaranth.lib import data

__all__ = ["Kind", "KIND_FMT_TYPE", "CplStatus", "FIELDS", "VENDOR_ID", "MSG_VENDOR_TYPE1",
           "MalformedTlp", "Tlp", "decode", "header_dws", "fc_class", "FcClass", "to_beats",
           "hdr_get", "hdr_set", "tlp_beat", "link_packet", "data_credits", "CREDIT_BYTES",
           "MAX_PAYLOAD_BYTES",
           "make_id", "split_id"]

#: Vendor ID in our configuration spaces and interrupt messages (made up, not PCI-SIG's).
VENDOR_ID = 0x4E50
#: Message code of a vendor-defined type 1 message (receivers silently drop unknown ones).
MSG_VENDOR_TYPE1 = 0x7F
#: Bytes per flow-control data credit (PCIe: 4 dwords).
CREDIT_BYTES = 16
#: The largest payload a TLP's length field describes (1024 dwords).
MAX_PAYLOAD_BYTES = 4096


class Kind(enum.Enum):
    MRD32 = "MRd32"
    MRD64 = "MRd64"
    MWR32 = "MWr32"
    MWR64 = "MWr64"
    CFGRD0 = "CfgRd0"
    CFGWR0 = "CfgWr0"
    CPL = "Cpl"
    CPLD = "CplD"
    MSGD = "MsgD"


#: (fmt, type) of each kind.
KIND_FMT_TYPE = {
    Kind.MRD32: (0b000, 0b00000), Kind.MRD64: (0b001, 0b00000),
    Kind.MWR32: (0b010, 0b00000), Kind.MWR64: (0b011, 0b00000),
    Kind.CFGRD0: (0b000, 0b00100), Kind.CFGWR0: (0b010, 0b00100),
    Kind.CPL: (0b000, 0b01010), Kind.CPLD: (0b010, 0b01010),
    Kind.MSGD: (0b011, 0b10000),
}
_BY_FMT_TYPE = {v: k for k, v in KIND_FMT_TYPE.items()}


class CplStatus(enum.IntEnum):
    SC = 0b000   #: successful completion
    UR = 0b001   #: unsupported request (no BAR there, or a kind the completer does not serve)
    CA = 0b100   #: completer abort (the memory behind the BAR refused the access)


class FcClass(enum.IntEnum):
    """Flow-control class of a TLP: which receive credits it consumes."""
    P = 0     #: posted: memory writes, messages
    NP = 1    #: non-posted: memory and configuration reads, configuration writes
    CPL = 2   #: completions


#: Header fields: name -> [(byte, msb, lsb), ...], most significant part first.
FIELDS = {
    # DW0, every TLP
    "fmt": [(0, 7, 5)], "type": [(0, 4, 0)], "tc": [(1, 6, 4)], "td": [(2, 7, 7)],
    "ep": [(2, 6, 6)], "attr": [(2, 5, 4)], "length": [(2, 1, 0), (3, 7, 0)],
    # DW1 of requests (memory, configuration, message)
    "requester_id": [(4, 7, 0), (5, 7, 0)], "tag": [(6, 7, 0)],
    "last_be": [(7, 7, 4)], "first_be": [(7, 3, 0)], "msg_code": [(7, 7, 0)],
    # DW2 (and DW3) of memory requests: address[31:2], or address[63:32] then address[31:2]
    "addr32": [(8, 7, 0), (9, 7, 0), (10, 7, 0), (11, 7, 2)],
    "addr_hi": [(8, 7, 0), (9, 7, 0), (10, 7, 0), (11, 7, 0)],
    "addr_lo": [(12, 7, 0), (13, 7, 0), (14, 7, 0), (15, 7, 2)],
    # DW2 of configuration requests: the target's ID and the register (dword) number
    "cfg_id": [(8, 7, 0), (9, 7, 0)], "cfg_reg": [(10, 3, 0), (11, 7, 2)],
    # DW2-3 of vendor-defined messages
    "msg_vendor": [(10, 7, 0), (11, 7, 0)],
    # DW1-2 of completions
    "completer_id": [(4, 7, 0), (5, 7, 0)], "status": [(6, 7, 5)],
    "byte_count": [(6, 3, 0), (7, 7, 0)],
    "cpl_requester_id": [(8, 7, 0), (9, 7, 0)], "cpl_tag": [(10, 7, 0)],
    "lower_addr": [(11, 6, 0)],
}


def _width(name):
    return sum(msb - lsb + 1 for _, msb, lsb in FIELDS[name])


def make_id(bus, device=0, function=0):
    """A 16-bit PCIe ID (requester, completer, configuration target)."""
    return bus << 8 | device << 3 | function


def split_id(rid):
    """(bus, device, function) of a 16-bit PCIe ID."""
    return rid >> 8, rid >> 3 & 0x1F, rid & 7


def header_dws(fmt):
    """Header dwords (3 or 4) of a TLP with this ``fmt``."""
    return 4 if fmt & 1 else 3


def fc_class(kind):
    if kind in (Kind.MWR32, Kind.MWR64, Kind.MSGD):
        return FcClass.P
    if kind in (Kind.CPL, Kind.CPLD):
        return FcClass.CPL
    return FcClass.NP


def data_credits(length_dw):
    """Data credits a payload of ``length_dw`` dwords consumes."""
    return -(-length_dw * 4 // CREDIT_BYTES)


# -- pure-Python codec -------------------------------------------------------------------------

class MalformedTlp(ValueError):
    """Bytes that are not a TLP the link carries (unknown kind, length disagreeing with the
    bytes, truncated header)."""


def _put(buf, name, value):
    shift = _width(name)
    if not 0 <= value < 1 << shift:
        raise ValueError(f"{name} = {value:#x} does not fit in {shift} bits")
    for byte, msb, lsb in FIELDS[name]:
        n = msb - lsb + 1
        shift -= n
        part = value >> shift & ((1 << n) - 1)
        mask = ((1 << n) - 1) << lsb
        buf[byte] = buf[byte] & ~mask | part << lsb


def _get(buf, name):
    value = 0
    for byte, msb, lsb in FIELDS[name]:
        n = msb - lsb + 1
        value = value << n | buf[byte] >> lsb & ((1 << n) - 1)
    return value


@dataclass
class Tlp:
    """One TLP. ``length`` (dwords) follows from ``payload`` when it has one; memory requests
    carry ``addr`` (dword aligned; bits [1:0] come from ``first_be``) and byte enables."""
    kind: Kind
    requester_id: int = 0
    tag: int = 0
    addr: int = 0
    length: int = 1
    first_be: int = 0xF
    last_be: int = 0
    payload: bytes = b""
    completer_id: int = 0
    status: CplStatus = CplStatus.SC
    byte_count: int = 0
    lower_addr: int = 0
    cfg_id: int = 0
    cfg_reg: int = 0
    msg_code: int = MSG_VENDOR_TYPE1
    msg_vendor: int = VENDOR_ID
    tc: int = 0
    attr: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def fmt(self):
        return KIND_FMT_TYPE[self.kind][0]

    @property
    def has_data(self):
        return bool(self.fmt & 0b010)

    def encode(self):
        """Header and payload in wire order."""
        fmt, typ = KIND_FMT_TYPE[self.kind]
        hdr = bytearray(4 * header_dws(fmt))
        length = len(self.payload) // 4 if self.has_data else self.length
        if self.has_data and (len(self.payload) % 4 or not self.payload):
            raise ValueError("a payload is a non-empty whole number of dwords")
        _put(hdr, "fmt", fmt)
        _put(hdr, "type", typ)
        _put(hdr, "tc", self.tc)
        _put(hdr, "attr", self.attr)
        _put(hdr, "length", length & 0x3FF)  # 1024 dwords encode as 0
        k = self.kind
        if k in (Kind.CPL, Kind.CPLD):
            _put(hdr, "completer_id", self.completer_id)
            _put(hdr, "status", int(self.status))
            _put(hdr, "byte_count", self.byte_count & 0xFFF)
            _put(hdr, "cpl_requester_id", self.requester_id)
            _put(hdr, "cpl_tag", self.tag)
            _put(hdr, "lower_addr", self.lower_addr)
        else:
            _put(hdr, "requester_id", self.requester_id)
            _put(hdr, "tag", self.tag)
            if k == Kind.MSGD:
                _put(hdr, "msg_code", self.msg_code)
                _put(hdr, "msg_vendor", self.msg_vendor)
            else:
                _put(hdr, "last_be", self.last_be)
                _put(hdr, "first_be", self.first_be)
            if k in (Kind.CFGRD0, Kind.CFGWR0):
                _put(hdr, "cfg_id", self.cfg_id)
                _put(hdr, "cfg_reg", self.cfg_reg)
            elif k in (Kind.MRD32, Kind.MWR32):
                _put(hdr, "addr32", self.addr >> 2)
            elif k in (Kind.MRD64, Kind.MWR64):
                _put(hdr, "addr_hi", self.addr >> 32)
                _put(hdr, "addr_lo", self.addr >> 2 & 0x3FFF_FFFF)
        return bytes(hdr) + (self.payload if self.has_data else b"")


def decode(raw):
    """The :class:`Tlp` in ``raw`` (header and payload, no framing); :class:`MalformedTlp` if
    it is not one the link carries."""
    raw = bytes(raw)
    if len(raw) < 12:
        raise MalformedTlp(f"{len(raw)} bytes is shorter than a header")
    fmt, typ = _get(raw, "fmt"), _get(raw, "type")
    kind = _BY_FMT_TYPE.get((fmt, typ))
    if kind is None:
        raise MalformedTlp(f"unknown fmt/type {fmt:03b}/{typ:05b}")
    hlen = 4 * header_dws(fmt)
    length = _get(raw, "length") or 1024
    has_data = bool(fmt & 0b010)
    want = hlen + (4 * length if has_data else 0)
    if len(raw) != want:
        raise MalformedTlp(f"{kind.value}: length {length} dw needs {want} bytes, got {len(raw)}")
    t = Tlp(kind, length=length, tc=_get(raw, "tc"), attr=_get(raw, "attr"),
            payload=raw[hlen:] if has_data else b"")
    if kind in (Kind.CPL, Kind.CPLD):
        t.completer_id = _get(raw, "completer_id")
        t.status = CplStatus(_get(raw, "status"))
        t.byte_count = _get(raw, "byte_count") or 4096
        t.requester_id = _get(raw, "cpl_requester_id")
        t.tag = _get(raw, "cpl_tag")
        t.lower_addr = _get(raw, "lower_addr")
        return t
    t.requester_id, t.tag = _get(raw, "requester_id"), _get(raw, "tag")
    if kind == Kind.MSGD:
        t.msg_code, t.msg_vendor = _get(raw, "msg_code"), _get(raw, "msg_vendor")
        return t
    t.first_be, t.last_be = _get(raw, "first_be"), _get(raw, "last_be")
    if kind in (Kind.CFGRD0, Kind.CFGWR0):
        t.cfg_id, t.cfg_reg = _get(raw, "cfg_id"), _get(raw, "cfg_reg")
    elif kind in (Kind.MRD32, Kind.MWR32):
        t.addr = _get(raw, "addr32") << 2
    else:
        t.addr = _get(raw, "addr_hi") << 32 | _get(raw, "addr_lo") << 2
    return t


# -- Amaranth helpers ----------------------------------------------------------------------------

def hdr_get(hdr, name):
    """Field ``name`` of a header held in a Value (byte ``i`` at bits ``[8i, 8i + 8)``; at
    least as many bytes as the field reaches)."""
    parts = [hdr[8 * byte + lsb: 8 * byte + msb + 1] for byte, msb, lsb in FIELDS[name]]
    return Cat(*reversed(parts))


def hdr_set(hdr, name, value):
    """Statements that write ``value`` into field ``name`` of the header Signal ``hdr``."""
    value = Const.cast(value) if isinstance(value, int) else value
    stmts, shift = [], _width(name)
    for byte, msb, lsb in FIELDS[name]:
        n = msb - lsb + 1
        shift -= n
        stmts.append(hdr[8 * byte + lsb: 8 * byte + msb + 1].eq(value[shift: shift + n]))
    return stmts


def tlp_beat(width_bytes):
    """One beat of a TLP stream ``width_bytes`` wide (see the module docstring)."""
    return data.StructLayout({"data": 8 * width_bytes,
                              "dws": range(width_bytes // 4 + 1), "last": 1})


def to_beats(raw, width_bytes):
    """``(data, dws, last)`` of each :func:`tlp_beat` carrying the TLP bytes ``raw`` (a whole
    number of dwords), for drivers in Python."""
    return [(int.from_bytes(raw[k:k + width_bytes], "little"),
             len(raw[k:k + width_bytes]) // 4, k + width_bytes >= len(raw))
            for k in range(0, len(raw), width_bytes)]


def link_packet(width_bytes):
    """One beat of a packet between the data-link layer and the physical layer.

    A TLP packet is ``[seq (2 bytes: 4 reserved zero bits, 12-bit sequence number,
    big-endian)] + TLP + [LCRC (4 bytes, least significant byte first)]``; a DLLP packet is
    its 6 bytes (type, 3 bytes of fields, CRC-16 least significant byte first) with ``dllp``
    set. Bytes as in :func:`tlp_beat`; ``nbytes`` counts the beat's valid bytes (``W``
    except in the last beat); ``length`` is the packet's total bytes, valid on its first beat.
    """
    return data.StructLayout({"data": 8 * width_bytes, "nbytes": range(width_bytes + 1),
                              "last": 1, "dllp": 1, "length": 13})
