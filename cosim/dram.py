"""Putting images into the DRAM model and taking them out, from a cocotb testbench.

The model (``cosim/dram_model.sv``, instantiated by :class:`npusim.hw.dram.DramModel`) has a
backdoor: a pulse on ``load`` runs ``$readmemh`` on its hex file, a pulse on ``dump``
``$writememh``, over a range of beats, inside the simulator. :class:`DramBackdoor` writes or
reads that file with numpy and pulses the port, so a whole image moves in one simulator call
and one file, not one Python call per beat.

Hex file format (what ``$readmemh``/``$writememh`` use): one beat per line, ``2 * data_bytes``
hex digits, most significant first. Beat ``i`` of a file for byte address ``a`` (a multiple of
``data_bytes``) holds image bytes ``[i * data_bytes, (i + 1) * data_bytes)`` at addresses
``a + i * data_bytes ...``, little-endian: the byte at the lowest address is the least
significant (the last two digits of the line), as on the AXI data bus.

Unaligned ranges work: :meth:`DramBackdoor.load` first dumps the partly covered edge beats
and merges. Do not use the backdoor on addresses that AXI traffic is writing in the same
cycles: which one wins is not defined.
"""

import os
from pathlib import Path

import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, with_timeout

from ..hw.dram import DEFAULT_HEXFILE

__all__ = ["DramBackdoor", "to_hex", "from_hex"]


def to_hex(image, data_bytes):
    """``image`` (bytes, a whole number of beats) as hex-file text, one beat per line."""
    beats = np.frombuffer(bytes(image), np.uint8).reshape(-1, data_bytes)
    digits = np.frombuffer(beats[:, ::-1].tobytes().hex().encode(), np.uint8)
    lines = np.empty((len(beats), 2 * data_bytes + 1), np.uint8)
    lines[:, :-1] = digits.reshape(len(beats), 2 * data_bytes)
    lines[:, -1] = ord("\n")
    return lines.tobytes()


def from_hex(text, data_bytes):
    """The bytes of hex-file text (as :func:`to_hex` or ``$writememh`` write it): comment
    lines and blank lines ignored, short lines zero-extended."""
    width = 2 * data_bytes
    lines = [line for line in (raw.strip() for raw in text.splitlines())
             if line and not line.startswith("//")]
    if any(line.startswith("@") for line in lines):
        raise ValueError("address directives (@...) are not supported")
    if all(len(line) == width for line in lines):  # the usual case: one hex decode for all
        beats = np.frombuffer(bytes.fromhex("".join(lines)), np.uint8).reshape(-1, data_bytes)
        return beats[:, ::-1].tobytes()
    return b"".join(int(line, 16).to_bytes(data_bytes, "little") for line in lines)


class DramBackdoor:
    """The backdoor of one DRAM model in the design under test.

    Parameters
    ----------
    dut :
        The cocotb handle of the top level.
    data_bytes : int
        Bytes per beat (``params.dram_bytes_per_cycle``).
    prefix : str
        Names of the backdoor ports: ``<prefix>load``, ``<prefix>dump``, ``<prefix>addr``,
        ``<prefix>words``, ``<prefix>count`` (a top-level ``backdoor`` port of
        :class:`~npusim.hw.dram.DramBackdoorSignature` gives ``backdoor__``).
    hexfile : str
        The model's ``hexfile`` (relative names are relative to the simulator's working
        directory, which is also the testbench's).
    clock :
        The model's clock (``dut.clk`` by default); it must be running.
    timeout_ns : float
        Bound on each wait for a clock edge.
    """

    def __init__(self, dut, *, data_bytes, prefix="backdoor__", hexfile=DEFAULT_HEXFILE,
                 clock=None, timeout_ns=100_000):
        self.data_bytes = data_bytes
        self.load_port = getattr(dut, f"{prefix}load")
        self.dump_port = getattr(dut, f"{prefix}dump")
        self.addr_port = getattr(dut, f"{prefix}addr")
        self.words_port = getattr(dut, f"{prefix}words")
        self.count_port = getattr(dut, f"{prefix}count")
        self.clock = clock if clock is not None else dut.clk
        self.path = Path(hexfile) if os.path.isabs(hexfile) else Path.cwd() / hexfile
        self.timeout_ns = timeout_ns

    def idle(self):
        """Hold both pulses low (before the first clock edge of a reset)."""
        self.load_port.value = 0
        self.dump_port.value = 0

    def _beats(self, addr, length):
        """The beats covering bytes ``[addr, addr + length)``: (first, count)."""
        if addr < 0 or length < 0:
            raise ValueError(f"bad range: {length} bytes at {addr}")
        first = addr // self.data_bytes
        end = -(-(addr + length) // self.data_bytes)
        return first, end - first

    async def _pulse(self, port, first, words):
        """Pulse ``port`` for one cycle with the range set; return once the model ran it."""
        timeout = self.timeout_ns, "ns"
        await with_timeout(FallingEdge(self.clock), *timeout)
        before = self.count_port.value.to_unsigned()
        self.addr_port.value = first
        self.words_port.value = words
        port.value = 1
        await with_timeout(RisingEdge(self.clock), *timeout)
        await ReadOnly()
        done = self.count_port.value.to_unsigned()
        if done != (before + 1) % 256:
            raise RuntimeError(f"DRAM backdoor: count went {before} -> {done} (is the model "
                               f"held in reset?)")
        await with_timeout(FallingEdge(self.clock), *timeout)
        port.value = 0

    async def load(self, addr, data):
        """Write ``data`` (bytes-like) to DRAM from byte address ``addr`` on."""
        data = bytes(data)
        first, words = self._beats(addr, len(data))
        if not words:
            return
        offset = addr - first * self.data_bytes
        if offset or len(data) % self.data_bytes:  # keep the bytes of partly covered beats
            image = bytearray(words * self.data_bytes)
            image[:self.data_bytes] = await self._dump_beats(first, 1)
            image[-self.data_bytes:] = await self._dump_beats(first + words - 1, 1)
            image[offset:offset + len(data)] = data
            data = bytes(image)
        self.path.write_bytes(to_hex(data, self.data_bytes))
        await self._pulse(self.load_port, first, words)

    async def dump(self, addr, length):
        """Read ``length`` bytes of DRAM from byte address ``addr`` on."""
        first, words = self._beats(addr, length)
        if not words:
            return b""
        offset = addr - first * self.data_bytes
        return (await self._dump_beats(first, words))[offset:offset + length]

    async def _dump_beats(self, first, words):
        self.path.unlink(missing_ok=True)
        await self._pulse(self.dump_port, first, words)
        data = from_hex(self.path.read_text(), self.data_bytes)
        if len(data) != words * self.data_bytes:
            raise RuntimeError(f"DRAM backdoor: dumped {len(data)} bytes, expected "
                               f"{words * self.data_bytes} ({words} beats at beat {first})")
        return data
