# amaranth: UnusedElaboratable=no
"""The TLP formats (``hw/link/tlp.py``) against an independent PCIe implementation.

cocotbext-pcie's ``Tlp.unpack`` decodes the bytes our codec writes and must find the same
fields; our decoder reads back what it wrote; and the Amaranth helpers (``hdr_set`` /
``hdr_get``), which the RTL uses to build and parse headers, produce and read the same
bytes as the codec.
"""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from cocotbext.pcie.core.tlp import Tlp as OracleTlp, TlpType
from cocotbext.pcie.core.utils import PcieId

from npusim.hw.link.tlp import (FIELDS, CplStatus, Kind, MalformedTlp, Tlp, decode,
                                hdr_get, hdr_set, make_id)

ORACLE_TYPE = {
    Kind.MRD32: TlpType.MEM_READ, Kind.MRD64: TlpType.MEM_READ_64,
    Kind.MWR32: TlpType.MEM_WRITE, Kind.MWR64: TlpType.MEM_WRITE_64,
    Kind.CFGRD0: TlpType.CFG_READ_0, Kind.CFGWR0: TlpType.CFG_WRITE_0,
    Kind.CPL: TlpType.CPL, Kind.CPLD: TlpType.CPL_DATA, Kind.MSGD: TlpType.MSG_DATA_TO_RC,
}


def random_tlp(rng, kind):
    t = Tlp(kind, requester_id=rng.randrange(1 << 16), tag=rng.randrange(256),
            tc=rng.randrange(8), attr=rng.randrange(4))
    if kind in (Kind.MWR32, Kind.MWR64, Kind.CPLD, Kind.MSGD, Kind.CFGWR0):
        n = 1 if kind in (Kind.MSGD, Kind.CFGWR0) else rng.randint(1, 64)
        t.payload = rng.randbytes(4 * n)
    if kind in (Kind.MRD32, Kind.MRD64):
        t.length = rng.randint(1, 1024)
    if kind in (Kind.MRD32, Kind.MWR32):
        t.addr = rng.randrange(1 << 30) * 4
    elif kind in (Kind.MRD64, Kind.MWR64):
        t.addr = rng.randrange(1 << 32, 1 << 62) * 4 & ((1 << 64) - 4)
    n = len(t.payload) // 4 if t.payload else t.length
    if kind in (Kind.MRD32, Kind.MRD64, Kind.MWR32, Kind.MWR64):
        t.first_be = rng.randrange(1, 16)
        t.last_be = rng.randrange(1, 16) if n > 1 else 0
    if kind in (Kind.CFGRD0, Kind.CFGWR0):
        t.first_be = rng.randrange(1, 16)
        t.cfg_id = make_id(rng.randrange(256), rng.randrange(32), rng.randrange(8))
        t.cfg_reg = rng.randrange(1024)
    if kind in (Kind.CPL, Kind.CPLD):
        t.completer_id = rng.randrange(1 << 16)
        t.status = CplStatus.SC if kind == Kind.CPLD else rng.choice(list(CplStatus))
        t.byte_count = rng.randint(1, 4096)
        t.lower_addr = rng.randrange(128)
    return t


@pytest.mark.parametrize("kind", list(Kind))
def test_oracle_decodes_our_bytes(kind):
    rng = random.Random(kind.value)
    for _ in range(200):
        t = random_tlp(rng, kind)
        raw = t.encode()
        assert decode(raw).encode() == raw
        fmt_type = OracleTlp.unpack_header(raw).fmt_type if kind != Kind.MSGD else None
        if kind == Kind.MSGD:
            # cocotbext-pcie does not decode message headers; check the type it names
            assert TlpType((raw[0] >> 5, raw[0] & 0x1F)) == ORACLE_TYPE[kind]
            assert raw[7] == t.msg_code and raw[10:12] == t.msg_vendor.to_bytes(2, "big")
            assert raw[16:] == t.payload
            continue
        x = OracleTlp.unpack(raw)
        assert fmt_type == ORACLE_TYPE[kind]
        assert int(x.tc) == t.tc and int(x.attr) == t.attr
        if kind in (Kind.CPL, Kind.CPLD):
            assert (int(x.completer_id), int(x.requester_id), x.tag) == \
                (t.completer_id, t.requester_id, t.tag)
            assert (x.status, x.byte_count, x.lower_address) == \
                (t.status, t.byte_count, t.lower_addr)
        else:
            assert (int(x.requester_id), x.tag, x.first_be, x.last_be) == \
                (t.requester_id, t.tag, t.first_be, t.last_be)
            if kind in (Kind.CFGRD0, Kind.CFGWR0):
                assert int(x.completer_id) == t.cfg_id and x.address == 4 * t.cfg_reg
            else:
                assert x.address == t.addr
        length = len(t.payload) // 4 if t.has_data else t.length
        assert x.length == length
        assert bytes(x.data) == t.payload


def test_oracle_encodes_what_we_decode():
    """The other direction: TLPs packed by cocotbext-pcie decode to the same fields here."""
    rng = random.Random(7)
    for _ in range(200):
        x = OracleTlp()
        x.fmt_type = TlpType.MEM_WRITE_64
        x.requester_id = PcieId.from_int(rng.randrange(1 << 16))
        x.tag = rng.randrange(256)
        x.set_addr_be_data(rng.randrange(1 << 34, 1 << 40), rng.randbytes(rng.randint(1, 256)))
        t = decode(x.pack())
        assert (t.kind, t.requester_id, t.tag, t.addr, t.first_be, t.last_be) == \
            (Kind.MWR64, int(x.requester_id), x.tag, x.address, x.first_be, x.last_be)
        assert t.payload == bytes(x.data)


@pytest.mark.parametrize("raw, message", [
    (bytes(8), "shorter than a header"),
    (bytes([0b011_11111]) + bytes(15), "unknown fmt/type"),
    (Tlp(Kind.MWR64, addr=1 << 40, payload=bytes(8)).encode()[:-4], "needs 24 bytes"),
])
def test_malformed(raw, message):
    with pytest.raises(MalformedTlp, match=message):
        decode(raw)


def test_amaranth_helpers_agree_with_the_codec():
    """``hdr_set`` builds, and ``hdr_get`` reads, exactly the codec's header bytes."""
    rng = random.Random(3)
    cases = [random_tlp(rng, kind) for kind in Kind for _ in range(4)]
    names = ["fmt", "type", "length", "requester_id", "tag", "first_be", "last_be",
             "addr_hi", "addr_lo", "completer_id", "status", "byte_count", "lower_addr"]
    for t in cases:
        raw = t.encode()[:16].ljust(16, b"\0")
        wanted = {n: _field(raw, n) for n in names}
        m = Module()
        built, given = Signal(128), Signal(128)
        for n in names:
            m.d.comb += hdr_set(built, n, wanted[n])
        got = {n: Signal(len(hdr_get(given, n)), name=n) for n in names}
        m.d.comb += [got[n].eq(hdr_get(given, n)) for n in names]
        sim = Simulator(m)

        async def bench(ctx):
            ctx.set(given, int.from_bytes(raw, "little"))
            assert {n: ctx.get(got[n]) for n in names} == wanted
            assert ctx.get(built).to_bytes(16, "little") == _masked(raw, names)
        sim.add_testbench(bench)
        sim.run()


def _field(raw, name):
    value = 0
    for byte, msb, lsb in FIELDS[name]:
        value = value << (msb - lsb + 1) | raw[byte] >> lsb & ((1 << (msb - lsb + 1)) - 1)
    return value


def _masked(raw, names):
    """``raw`` with only the bits of ``names`` kept."""
    out = bytearray(16)
    for n in names:
        for byte, msb, lsb in FIELDS[n]:
            mask = ((1 << (msb - lsb + 1)) - 1) << lsb
            out[byte] |= raw[byte] & mask
    return bytes(out)
