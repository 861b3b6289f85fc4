"""Devices as a host driver sees them: memory, streams, launches, completions, errors.

A :class:`Cluster` is ``n`` devices behind one switch on a backend:

- ``"functional"``: the functional model (``npusim.sw.fm``), fast, with a cycle estimate;
- ``"rtl"``: the Verilated system RTL, driven over the link by the cosim host
  (``npusim.cosim.rtl_backend``, imported by name only for this backend: ``cosim`` depends
  on ``sw``, never the other way).

Both backends offer the same few primitives -- device memory reads and writes, register reads
and writes on a device's BAR0, host memory reads, and "run until these interrupts have come"
-- and everything here is built on them, so a launch is the same on both: the run-time
registers are written, ``CALL <stream>`` and ``COMPLETE`` (a record to host memory and an MSI
with the device's index as vector) go into the device's command ring, and the doorbell
(``RING_TAIL``) is rung. Waiting reads each device's ``STATUS``; a fault is raised as a
:class:`~npusim.sw.fm.system.DeviceError` with the device's error code and the DRAM address of
the faulting command.
"""

import importlib
from dataclasses import dataclass, field

import numpy as np

from npusim.sw import regmap
from npusim.sw.fm.system import RING_BYTES, BusMap, DeviceError
from npusim.sw.isa import COMMAND_BYTES, Command, encode_stream
from npusim.sw.isa.enums import ErrorCode, Space
from npusim.sw.params import DEFAULT, HwParams
from npusim.sw.regmap import DeviceState

__all__ = ["Cluster", "Buffer", "Event", "DeviceError", "OutOfDeviceMemory"]

_ALIGN = 64
R = regmap.OFFSET


class OutOfDeviceMemory(MemoryError):
    """An allocation that does not fit the device's free DRAM."""


@dataclass(frozen=True)
class Buffer:
    """``nbytes`` of device ``device``'s DRAM at ``addr``."""
    device: int
    addr: int
    nbytes: int


@dataclass
class Event:
    """A launch on some devices: each device's completion sequence number and the cycle the
    launch started at; ``cycles`` per device once waited for."""
    seqs: dict
    start: int
    cycles: dict = field(default_factory=dict)

    @property
    def done(self):
        return bool(self.cycles)


class _Allocator:
    """First-fit allocation of one device's DRAM below its command ring."""

    def __init__(self, size):
        self.size = size
        self.used = {}          # addr -> bytes

    def alloc(self, nbytes, align, at=None):
        nbytes = max(1, nbytes)
        spans = sorted(self.used.items())
        if at is not None:
            if at % align or at < 0 or at + nbytes > self.size or \
                    any(a < at + nbytes and at < a + n for a, n in spans):
                raise OutOfDeviceMemory(f"[{at:#x}, {at + nbytes:#x}) is taken or outside "
                                        f"the {self.size:#x} bytes below the ring")
            self.used[at] = nbytes
            return at
        addr = 0
        for a, n in spans:
            if addr + nbytes <= a:
                break
            addr = -(-(a + n) // align) * align
        if addr + nbytes > self.size:
            free = self.size - sum(self.used.values())
            raise OutOfDeviceMemory(f"{nbytes} bytes do not fit ({free} of {self.size} free, "
                                    f"fragmented)")
        self.used[addr] = nbytes
        return addr

    def free(self, addr):
        if self.used.pop(addr, None) is None:
            raise ValueError(f"{addr:#x} is not an allocated buffer")


class Cluster:
    """``n_devices`` devices on ``backend`` (``"functional"`` or ``"rtl"``); hardware
    parameters from ``params`` (an :class:`~npusim.sw.params.HwParams`) and/or keyword
    overrides (``Cluster(2, sram_bytes=128 * 1024)``); ``backend_options`` go to the
    backend (the functional model's: ``jitter``, a seed that randomises every command's
    cycles; the RTL's: ``waves``, ``results_dir``). Use as a context manager, or call
    :meth:`close` (the RTL backend's simulator is a process)."""

    def __init__(self, n_devices=1, backend="functional", *, params=None, bus=None,
                 backend_options=None, **hw_params):
        if backend not in ("functional", "rtl"):
            raise ValueError(f"backend {backend!r}: 'functional' or 'rtl'")
        if n_devices < 1:
            raise ValueError(f"{n_devices} devices")
        if backend == "rtl":     # npusim.cosim depends on npusim.sw, not the other way
            rtl = importlib.import_module("npusim.cosim.rtl_backend")
            params = params or rtl.RTL_PARAMS
            bus = bus or rtl.RTL_BUS
        params = (params or DEFAULT).replace(**hw_params) if hw_params else (params or DEFAULT)
        if not isinstance(params, HwParams):
            raise TypeError("params must be an HwParams")
        self.n_devices, self.params, self.bus = n_devices, params, bus or BusMap()
        self.backend_name = backend
        if backend == "functional":
            self.backend = FunctionalBackend(n_devices, self.params, self.bus,
                                             **(backend_options or {}))
        else:
            self.backend = rtl.RtlBackend(n_devices, self.params, self.bus,
                                          **(backend_options or {}))
        self._memory = [_Allocator(params.dram_bytes - RING_BYTES) for _ in range(n_devices)]
        self._tail = [0] * n_devices
        self._seq = [0] * n_devices
        self._irqs = [0] * n_devices
        self._ring = params.dram_bytes - RING_BYTES
        for d in range(n_devices):
            self._setup(d)

    def _setup(self, d):
        """The ring, the MSI address and the DMA windows, as a driver sets them at probe:
        window 0 the device's own DRAM, 1 host memory, 2 and 3 every device's BARs."""
        b, be = self.bus, self.backend
        be.mmio_write(d, R["RING_BASE"], self._ring)
        be.mmio_write(d, R["RING_SIZE"], RING_BYTES)
        self._tail[d] = be.mmio_read(d, R["RING_TAIL"])
        be.mmio_write(d, R["MSI_ADDR"], b.msi_base)
        rw = regmap.WINDOW_READ | regmap.WINDOW_WRITE
        windows = [(0, self.params.dram_bytes, rw),
                   (0, b.host_bytes, rw | regmap.WINDOW_LINK),
                   (b.mmio_base, self.n_devices * b.device_stride, rw | regmap.WINDOW_LINK),
                   (b.dram_base, self.n_devices * b.device_stride, rw | regmap.WINDOW_LINK)]
        for i, values in enumerate(windows):
            for k, v in enumerate(values):
                be.mmio_write(d, regmap.WINDOW + regmap.WINDOW_STRIDE * i + 8 * k, v)

    # -- memory ------------------------------------------------------------------------------

    def alloc(self, device, nbytes, *, align=_ALIGN, at=None):
        """A :class:`Buffer` of ``nbytes`` in ``device``'s DRAM (first fit, ``align``-ed), or
        exactly at ``at``. :class:`OutOfDeviceMemory` when it does not fit."""
        self._check_device(device)
        return Buffer(device, self._memory[device].alloc(nbytes, align, at), nbytes)

    def free(self, buffer):
        self._memory[buffer.device].free(buffer.addr)

    def upload(self, buffer, data, offset=0):
        """Copy ``data`` (a numpy array, a torch tensor, or bytes) into ``buffer`` at
        ``offset``."""
        raw = _as_bytes(data)
        if offset < 0 or offset + len(raw) > buffer.nbytes:
            raise ValueError(f"{len(raw)} bytes at offset {offset} overflow a buffer of "
                             f"{buffer.nbytes}")
        self.backend.write(buffer.device, buffer.addr + offset, raw)

    def download(self, buffer, dtype=np.uint8, shape=None, offset=0, nbytes=None):
        """``buffer``'s bytes (from ``offset``, ``nbytes`` of them: default the rest) as a
        numpy array of ``dtype``, reshaped to ``shape``."""
        nbytes = buffer.nbytes - offset if nbytes is None else nbytes
        if offset < 0 or offset + nbytes > buffer.nbytes:
            raise ValueError(f"{nbytes} bytes at offset {offset} overflow a buffer of "
                             f"{buffer.nbytes}")
        raw = self.backend.read(buffer.device, buffer.addr + offset, nbytes)
        out = np.frombuffer(raw, dtype=dtype).copy()
        return out.reshape(shape) if shape is not None else out

    def write(self, device, addr, data):
        """Raw write of device DRAM (for regions a compiled layout fixed)."""
        self._check_device(device)
        self.backend.write(device, addr, _as_bytes(data))

    def read(self, device, addr, nbytes):
        self._check_device(device)
        return self.backend.read(device, addr, nbytes)

    def load_stream(self, device, commands):
        """A stream (commands, or encoded bytes with its header) in a new buffer."""
        raw = commands if isinstance(commands, (bytes, bytearray)) else encode_stream(commands)
        buf = self.alloc(device, len(raw))
        self.backend.write(device, buf.addr, bytes(raw))
        return buf

    # -- launches ------------------------------------------------------------------------------

    def launch(self, streams, regs=None):
        """Start ``streams`` (``{device: Buffer of a loaded stream}``) at once, with run-time
        registers ``regs`` (``{device: {register: value}}``). Returns an :class:`Event`."""
        regs = regs or {}
        start = self.backend.now()
        seqs = {}
        for d, buf in streams.items():
            self._check_device(d)
            if buf.device != d:
                raise ValueError(f"device {d}'s stream is in device {buf.device}'s memory")
            for r, v in regs.get(d, {}).items():
                self.backend.mmio_write(d, regmap.RUNTIME_REG + 8 * r, v)
            self._seq[d] += 1
            seqs[d] = self._seq[d]
            self._submit(d, [Command("CALL", addr_off=buf.addr),
                             Command("COMPLETE", dst_space=Space.LINK,
                                     dst_off=self.bus.completion(d), seq=self._seq[d], irq=True,
                                     vector=d)])
            self._irqs[d] += 1
        return Event(seqs, start)

    def _submit(self, d, commands):
        raw = b"".join(c.encode() for c in commands)
        head = self.backend.mmio_read(d, R["RING_HEAD"])
        if (self._tail[d] - head) % RING_BYTES + len(raw) >= RING_BYTES:
            raise RuntimeError(f"device {d}: command ring full")
        for i in range(0, len(raw), COMMAND_BYTES):
            self.backend.write(d, self._ring + self._tail[d], raw[i:i + COMMAND_BYTES])
            self._tail[d] = (self._tail[d] + COMMAND_BYTES) % RING_BYTES
        self.backend.mmio_write(d, R["RING_TAIL"], self._tail[d])

    def wait(self, event, timeout_cycles=None):
        """Run until ``event``'s devices have completed; ``{device: cycles}`` each took.
        Raises :class:`DeviceError` for the first device that stopped on a fault (reset it
        with :meth:`reset` to go on)."""
        if event.done:
            return event.cycles
        timeout = timeout_cycles or 4 * self.params.watchdog_cycles
        self.backend.run_until({d: self._irqs[d] for d in event.seqs}, timeout)
        faults = []
        for d in event.seqs:
            state, code = self.status(d)
            if state == DeviceState.FAULT:
                self._irqs[d] -= 1        # the stopped queue dropped the launch's COMPLETE
                offset = self.backend.mmio_read(d, R["ERROR_OFFSET"])
                faults.append(DeviceError(d, ErrorCode(code), offset,
                                          self.backend.error_message(d)))
        if faults:
            raise faults[0]
        for d, seq in event.seqs.items():
            record = self.backend.read_host(self.bus.completion(d), 16)
            got, _, when = np.frombuffer(record, "<u4", 2).tolist() + \
                [int.from_bytes(record[8:], "little")]
            if got != seq:
                raise RuntimeError(f"device {d}: completion record {got}, expected {seq} "
                                   f"(no fault reported: a lost interrupt?)")
            event.cycles[d] = when - event.start
        return event.cycles

    def run(self, streams, regs=None):
        """:meth:`launch` then :meth:`wait`: the cycles of the slowest device."""
        return max(self.wait(self.launch(streams, regs)).values())

    def status(self, device):
        """``(DeviceState, error code)`` from the device's STATUS register."""
        value = self.backend.mmio_read(device, R["STATUS"])
        return DeviceState(value & 3), value >> 8 & 0xFF

    def reset(self, device):
        """Clear a fault or halt: the queue restarts empty (head = tail)."""
        self.backend.mmio_write(device, R["CONTROL"], 1)

    @property
    def cycles(self):
        """The cluster's clock: cycles simulated so far."""
        return self.backend.now()

    def trace(self, on=True):
        """Record every engine's commands (either backend), see :mod:`.profile`."""
        self.backend.trace(on)

    def events(self, device):
        """The recorded :class:`~npusim.sw.fm.device.TraceEvent` s of ``device``."""
        return self.backend.events(device)

    def close(self):
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_device(self, d):
        if not 0 <= d < self.n_devices:
            raise ValueError(f"device {d}: the cluster has devices 0 .. {self.n_devices - 1}")


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if type(data).__module__.startswith("torch"):
        data = data.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(data).tobytes()


class FunctionalBackend:
    """The primitives on the functional model (``npusim.sw.fm.system.System``)."""

    def __init__(self, n, params, bus, jitter=None):
        from npusim.sw.fm.system import System
        self.system = System(n, params, bus, jitter=jitter)

    def write(self, d, addr, data):
        self.system.devices[d].dram.write(addr, np.frombuffer(data, np.uint8))

    def read(self, d, addr, n):
        return self.system.devices[d].dram.read(addr, n).tobytes()

    def mmio_write(self, d, off, value):
        self.system.devices[d].mmio_write(off, value)

    def mmio_read(self, d, off):
        return self.system.devices[d].mmio_read(off)

    def read_host(self, addr, n):
        return self.system.host.read(addr, n).tobytes()

    def run_until(self, irqs, timeout_cycles):
        """Simulate until every device ``d`` has raised ``irqs[d]`` interrupts, or nothing is
        left to do (a device stopped), or ``timeout_cycles`` passed."""
        self.system.run(self.system.kernel.now + timeout_cycles)

    def now(self):
        return self.system.kernel.now

    def error_message(self, d):
        return self.system.devices[d].error_message

    def trace(self, on):
        self.system.trace(on)

    def events(self, d):
        return self.system.devices[d].trace or []

    def close(self):
        pass
