"""The data-link layer's CRCs: the LCRC of TLPs and the CRC-16 of DLLPs.

Both are PCIe's: reflected CRCs (the register shifts right, each byte enters at bit 0, bytes
in wire order), seeded with all ones, the result complemented and transmitted least
significant byte first.

- :func:`lcrc`: CRC-32, polynomial 0x04C11DB7 -- the same function as ``zlib.crc32``. It
  covers a TLP packet's two sequence-number bytes and the TLP.
- :func:`dllp_crc`: CRC-16, polynomial 0x100B (0xD008 reflected), over a DLLP's four bytes.

The RTL absorbs a whole beat per cycle. A CRC register is linear over GF(2) in its previous
state and the data, so the state after ``n`` bytes is a fixed XOR network of both:
:meth:`Crc.absorb` builds it from a matrix computed here in Python, and
:meth:`Crc.absorb_count` picks among the networks for the byte counts a beat may carry (a
partial last beat). A receiver need not locate the transmitted CRC: running the register
over the data *and* its CRC bytes leaves the constant :attr:`Crc.residue`.
"""

from amaranth.hdl import Cat, Const, Signal

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
        self._matrices = {}

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

    def matrix(self, nbytes):
        """The update over ``nbytes`` bytes as GF(2) masks: for each result bit ``k``, the
        state bits and the data bits (byte ``i`` at bits ``8i..8i+7``) whose XOR it is."""
        if nbytes not in self._matrices:
            state_cols = [self.update(1 << i, bytes(nbytes)) for i in range(self.width)]
            data_cols = [self.update(0, (1 << j).to_bytes(nbytes, "little"))
                         for j in range(8 * nbytes)]
            self._matrices[nbytes] = [
                (sum(1 << i for i, col in enumerate(state_cols) if col >> k & 1),
                 sum(1 << j for j, col in enumerate(data_cols) if col >> k & 1))
                for k in range(self.width)]
        return self._matrices[nbytes]

    # -- Amaranth --------------------------------------------------------------------------

    def absorb(self, state, data, nbytes):
        """The register (a Value of ``width`` bits) after absorbing the low ``nbytes`` bytes
        of ``data`` (byte ``i`` at bits ``8i..8i+7``, in that order) from ``state``: each
        result bit is the parity of the state and data ANDed with a constant mask. ``state``
        may be an int (the seed): its part of each bit is then a constant. Pass Signals, not
        expressions: every result bit reads all of ``state`` and ``data``."""
        bits = []
        if isinstance(state, int):
            for state_mask, data_mask in self.matrix(nbytes):
                seeded = (state & state_mask).bit_count() & 1
                bits.append((data[:8 * nbytes] & data_mask).xor() ^ seeded if data_mask
                            else Const(seeded, 1))
        else:
            both = Cat(state, data[:8 * nbytes])
            for state_mask, data_mask in self.matrix(nbytes):
                bits.append((both & (state_mask | data_mask << self.width)).xor())
        return Cat(*bits)

    def absorb_count(self, m, state, data, count, counts):
        """A Signal: the register after absorbing the low ``count`` bytes of ``data``, where
        ``count`` (a Value) is one of ``counts``; any other count absorbs nothing. One network
        per listed count, selected by ``count`` (combinational, in ``m``)."""
        start = Signal(self.width)  # `state` once, for every network to read
        result = Signal(self.width)
        m.d.comb += start.eq(state)
        state = start
        with m.Switch(count):
            for n in sorted(set(counts)):
                with m.Case(n):
                    m.d.comb += result.eq(self.absorb(state, data, n) if n else state)
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
