"""Byte stores of the functional model: a sparse, bounds-checked DRAM and a dense SRAM."""

import numpy as np

__all__ = ["OutOfBounds", "SparseMemory", "DenseMemory"]


class OutOfBounds(Exception):
    """An access runs past the end of a memory. The caller turns it into a device error code."""


class SparseMemory:
    """A byte-addressed store of ``size`` bytes that allocates 64 KiB pages on first write;
    unwritten bytes read as zero. Model of device DRAM and host memory."""

    PAGE = 1 << 16

    def __init__(self, size):
        self.size = size
        self._pages = {}

    def check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise OutOfBounds(f"[{addr:#x}, {addr + n:#x}) outside [0, {self.size:#x})")

    def read(self, addr, n):
        """``n`` bytes at ``addr`` as a new ``uint8`` array."""
        self.check(addr, n)
        out = np.zeros(n, np.uint8)
        pos = 0
        while pos < n:
            page, off = divmod(addr + pos, self.PAGE)
            take = min(n - pos, self.PAGE - off)
            data = self._pages.get(page)
            if data is not None:
                out[pos:pos + take] = data[off:off + take]
            pos += take
        return out

    def write(self, addr, data):
        data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) \
            else data.reshape(-1).view(np.uint8)
        n = data.size
        self.check(addr, n)
        pos = 0
        while pos < n:
            page, off = divmod(addr + pos, self.PAGE)
            take = min(n - pos, self.PAGE - off)
            buf = self._pages.get(page)
            if buf is None:
                buf = self._pages[page] = np.zeros(self.PAGE, np.uint8)
            buf[off:off + take] = data[pos:pos + take]
            pos += take

    def read_u32(self, addr, count):
        return self.read(addr, 4 * count).view("<u4")

    @property
    def bytes_allocated(self):
        return len(self._pages) * self.PAGE


class DenseMemory:
    """A byte-addressed store backed by one array: the NE tile's scratchpad."""

    def __init__(self, size):
        self.size = size
        self.data = np.zeros(size, np.uint8)

    def check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise OutOfBounds(f"[{addr:#x}, {addr + n:#x}) outside [0, {self.size:#x})")

    def read(self, addr, n):
        self.check(addr, n)
        return self.data[addr:addr + n].copy()

    def write(self, addr, data):
        data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) \
            else data.reshape(-1).view(np.uint8)
        self.check(addr, data.size)
        self.data[addr:addr + data.size] = data
