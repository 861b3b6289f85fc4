"""The data-link layer's CRCs: the LCRC of TLPs and the CRC-16 of DLLPs.

Both are PCIe's: reflected CRCs (the register shifts right, each byte enters at bit 0, bytes
in wire order), seeded with all ones, the result complemented and transmitted least
significant byte first.

- :func:`lcrc`: CRC-32, polynomial 0x04C11DB7 -- the same function as ``zlib.crc32``. It
  covers a TLP packet's two sequence-number bytes and the TLP.
- :func:`dllp_crc`: CRC-16, polynomial 0x100B (0xD008 reflected), over a DLLP's four bytes.

The RTL absorbs a whole beat per cycle. A CRC register is linear over GF(2) in its previous
state and the data, so the state after ``n`` bytes is the XOR of one 256-entry table lookup
per byte (slicing-by-n, tables computed here in Python) and what is left of the state:
:meth:`Crc.absorb` builds it, and :meth:`Crc.absorb_count` picks among the results for the
byte counts a beat may carry (a partial last beat). Lookups rather than the equivalent XOR
network of each result bit: Amaranth folds a constant mask into a concatenation of the
selected bits, which a simulator evaluates bit by bit (the link's CRCs were most of the
system's simulation time). A receiver need not locate the transmitted CRC: running the register
over the data *and* its CRC bytes leaves the constant :attr:`Crc.residue`.
"""

from amaranth.hdl import Const, Signal
from amaranth.lib.memory import Memory

__all__ = ["Crc", "LCRC", "DLLP_CRC", "lcrc", "dllp_crc"]


def _reflect(value, bits):
    return int(f"{value:0{bits}b}"[::-1], 2)


class Crc:
    """A reflected CRC of ``width`` bits with generator ``poly`` (normal form, the x^width
    term implied), register seeded with ``init`` and the result XORed with ``xorout``."""

    def __init__(self, width, poly, *, init, xorout):
        self.width = width
        self.poly = poly
        self.init = init
        self.xorout = xorout
        self._reflected = _reflect(poly, width)
        self._tables = {}

    # -- Python reference ------------------------------------------------------------------

    def update(self, state, data):
        """The raw register (no final XOR) after ``data`` bytes from ``state``."""
        for byte in bytes(data):
            state ^= byte
            for _ in range(8):
                state = state >> 1 ^ (self._reflected if state & 1 else 0)
        return state

    def __call__(self, data):
        """The CRC of ``data`` as transmitted (complemented)."""
        return self.update(self.init, data) ^ self.xorout

    def append(self, data):
        """``data`` followed by its CRC, least significant byte first."""
        return bytes(data) + self(data).to_bytes(self.width // 8, "little")

    @property
    def residue(self):
        """The raw register after any data followed by its own CRC (the receiver's check)."""
        return self.update(self.init, self.append(b""))

    def table(self, k):
        """The register after absorbing byte ``v`` and then ``k`` zero bytes, from 0, for
        ``v`` in 0..255: the lookup table of a byte with ``k`` bytes after it in a beat."""
        if k not in self._tables:
            self._tables[k] = [self.update(0, bytes([v]) + bytes(k)) for v in range(256)]
        return self._tables[k]

    # -- Amaranth --------------------------------------------------------------------------

    def absorb(self, m, state, data, nbytes, *, roms=None):
        """The register (a Value of ``width`` bits) after absorbing the low ``nbytes`` bytes
        of ``data`` (byte ``i`` at bits ``8i..8i+7``, in that order) from ``state`` (a Value,
        or an int for the seed), built in ``m``. By linearity the result is ``state`` shifted
        out by ``8 * nbytes`` bits, XORed with one table entry per byte: byte ``i``, XORed
        with state byte ``i`` while the state has one, looked up in
        :meth:`table` ``(nbytes - 1 - i)`` (slicing-by-n, one ROM read per byte). ``roms``
        (``{k: Memory}``) shares the tables among calls."""
        if nbytes == 0:
            return Const(state, self.width) if isinstance(state, int) else state
        state_bytes = self.width // 8
        if isinstance(state, int):
            state = Const(state, self.width)
        roms = {} if roms is None else roms
        result = state >> (8 * nbytes) if nbytes < state_bytes else Const(0, self.width)
        for i in range(nbytes):
            index = data[8 * i:8 * i + 8]
            if i < state_bytes:
                index = index ^ state[8 * i:8 * i + 8]
            k = nbytes - 1 - i
            if k not in roms:
                roms[k] = Memory(shape=self.width, depth=256, init=self.table(k))
                m.submodules += roms[k]
            port = roms[k].read_port(domain="comb")
            m.d.comb += port.addr.eq(index)
            result = result ^ port.data
        return result

    def absorb_count(self, m, state, data, count, counts):
        """A Signal: the register after absorbing the low ``count`` bytes of ``data``, where
        ``count`` (a Value) is one of ``counts``; any other count absorbs nothing. One lookup
        set per listed count, selected by ``count`` (combinational, in ``m``)."""
        start = Signal(self.width)  # `state` once, for every lookup to read
        result = Signal(self.width)
        m.d.comb += start.eq(state)
        state, roms = start, {}
        with m.Switch(count):
            for n in sorted(set(counts)):
                with m.Case(n):
                    m.d.comb += result.eq(self.absorb(m, state, data, n, roms=roms))
            with m.Default():
                m.d.comb += result.eq(state)
        return result


#: The LCRC of TLP packets (``zlib.crc32``).
LCRC = Crc(32, 0x04C11DB7, init=0xFFFF_FFFF, xorout=0xFFFF_FFFF)
#: The CRC-16 of DLLPs.
DLLP_CRC = Crc(16, 0x100B, init=0xFFFF, xorout=0xFFFF)


def lcrc(data):
    """PCIe LCRC of ``data`` (sequence bytes + TLP), as transmitted LSB first."""
    return LCRC(data)


def dllp_crc(data):
    """PCIe DLLP CRC-16 of ``data`` (the DLLP's 4 bytes), as transmitted LSB first."""
    return DLLP_CRC(data)
