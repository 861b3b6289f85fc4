"""The functional model of a whole system: host memory, N devices and the bus between them.

Bus addresses (what a ``LINK``-space DMA address means) follow the BAR windows the host assigns,
as a root complex would: host memory at 0, each device's MMIO registers (BAR0) and DRAM (BAR2)
in windows of their own, and an MSI doorbell page. A posted write (remote semaphore signal, MSI)
arrives ``link_latency`` cycles after it leaves, and never before the data of a DMA the same
device wrote over the link earlier (``timing.link_write_arrival`` after that DMA was answered):
posted writes stay in order per source.
"""

import random
from dataclasses import dataclass

from ..isa import COMMAND_BYTES, Command, Space
from ..isa.enums import Engine, ErrorCode
from .. import regmap
from ..params import DEFAULT
from .device import Device
from .fault import DeviceFault
from .kernel import Kernel
from .memory import SparseMemory
from .timing import link_write_arrival

__all__ = ["System", "BusMap", "DeviceError", "LostWrites", "RING_BYTES"]

#: Size of the command ring the host sets up in each device's DRAM (at its top).
RING_BYTES = 64 * 1024


@dataclass(frozen=True)
class BusMap:
    """Where the host put everything on the bus."""
    host_bytes: int = 256 * 1024 * 1024
    msi_base: int = 0xFEE0_0000
    mmio_base: int = 0x10_0000_0000
    dram_base: int = 0x20_0000_0000
    device_stride: int = 0x1_0000_0000

    def mmio(self, d):
        return self.mmio_base + d * self.device_stride

    def dram(self, d):
        return self.dram_base + d * self.device_stride

    def completion(self, d):
        """Host-memory address of device ``d``'s completion record."""
        return self.host_bytes - 4096 + 16 * d


class DeviceError(RuntimeError):
    """A device stopped on a fault: ``code`` (ErrorCode), ``offset`` (DRAM address of the
    faulting command) and ``device`` (its index)."""

    def __init__(self, device, code, offset, message):
        self.device, self.code, self.offset = device, ErrorCode(code), offset
        super().__init__(f"device {device}: {self.code.name} at command {offset:#x}: {message}")


class LostWrites:
    """Where lost posted writes go: counts them and their bytes."""

    def __init__(self):
        self.count, self.bytes = 0, 0

    def write(self, addr, data):
        self.count += 1
        self.bytes += len(bytes(data))


class System:
    """``n_devices`` devices with ``params`` behind one switch, and the host.

    Every device gets a command ring at the top of its DRAM, its MSI address, and DMA windows
    for host memory and for the other devices' BARs (window 0 keeps all of its own DRAM).

    ``jitter`` (a seed) makes every DMA and compute command take a random quarter to four
    times its modelled cycles: a stream whose results change under jitter depends on its
    timing -- a race between engines or devices that one timing hides and another (the
    RTL's) shows. Tests run a schedule under several seeds and require the same bits.
    """

    def __init__(self, n_devices=1, params=DEFAULT, bus=BusMap(), jitter=None):
        self.params, self.bus = params, bus
        #: the random source of ``jitter`` (None: the modelled timing)
        self.jitter = None if jitter is None else random.Random(jitter)
        self.kernel = Kernel()
        self.host = SparseMemory(bus.host_bytes)
        self.interrupts = []  #: (cycle, device, vector) in arrival order
        self.lost_writes = LostWrites()  #: posted writes nobody received
        self.devices = [Device(self, i, params) for i in range(n_devices)]
        self._seq = 0
        self._posted_data = [0] * n_devices   # when each device's last link DMA data lands
        rw = regmap.WINDOW_READ | regmap.WINDOW_WRITE | regmap.WINDOW_LINK
        for d in self.devices:
            d.mmio_write(regmap.OFFSET["RING_BASE"], params.dram_bytes - RING_BYTES)
            d.mmio_write(regmap.OFFSET["RING_SIZE"], RING_BYTES)
            d.mmio_write(regmap.OFFSET["MSI_ADDR"], bus.msi_base)
            self.grant(d.index, 1, 0, bus.host_bytes, rw)
            self.grant(d.index, 2, bus.mmio_base, n_devices * bus.device_stride, rw)
            self.grant(d.index, 3, bus.dram_base, n_devices * bus.device_stride, rw)

    def grant(self, device, window, base, size, flags):
        """Program DMA window ``window`` of ``device`` over MMIO."""
        off = regmap.WINDOW + regmap.WINDOW_STRIDE * window
        dev = self.devices[device]
        for i, v in enumerate((base, size, flags)):
            dev.mmio_write(off + 8 * i, v)

    # -- the bus ---------------------------------------------------------------------------------

    def _decode(self, addr, n):
        """(kind, device index or None, local address) of a bus range, or None."""
        b = self.bus
        if addr + n <= b.host_bytes:
            return "host", None, addr
        if b.msi_base <= addr and addr + n <= b.msi_base + 4096:
            return "msi", None, addr - b.msi_base
        for base, kind in ((b.mmio_base, "mmio"), (b.dram_base, "dram")):
            d, local = divmod(addr - base, b.device_stride)
            if addr >= base and 0 <= d < len(self.devices):
                size = regmap.MMIO_BYTES if kind == "mmio" else self.params.dram_bytes
                if local + n <= size:
                    return kind, d, local
        return None

    def _lost(self, hit):
        """A write to ``hit`` is lost on the way, as PCIe loses posted writes: nobody claims
        the address, or the target device's link is down."""
        return hit is None or (hit[1] is not None and not self.devices[hit[1]].link_up)

    def bus_target(self, requester, addr, n, write=False):
        """Memory object and local address of a DMA's link-space range.

        Reads fail: LINK_TIMEOUT when either end's link is down (no completion ever comes),
        LINK_UNSUPPORTED when nothing claims the address. Writes are posted: only the
        requester's own link being down is an error; a write nobody claims, or one to a
        device whose link is down, is lost (counted in :attr:`lost_writes`), never reported.
        """
        hit = self._decode(addr, n)
        if not requester.link_up:
            raise DeviceFault(ErrorCode.LINK_TIMEOUT, f"link down on the way to {addr:#x}")
        if write and (self._lost(hit) or hit[0] not in ("host", "dram")):
            return self.lost_writes, 0
        if hit is not None and hit[1] is not None and not self.devices[hit[1]].link_up:
            raise DeviceFault(ErrorCode.LINK_TIMEOUT, f"link down on the way to {addr:#x}")
        if hit is None or hit[0] not in ("host", "dram"):
            raise DeviceFault(ErrorCode.LINK_UNSUPPORTED,
                              f"no memory at bus [{addr:#x}, {addr + n:#x})")
        kind, d, local = hit
        return (self.host if kind == "host" else self.devices[d].dram), local

    def post_write(self, requester, addr, data):
        """A posted write (remote semaphore increment, MSI) arriving after the link latency;
        lost as :meth:`bus_target` says."""
        hit = self._decode(addr, len(data))
        if not requester.link_up:
            raise DeviceFault(ErrorCode.LINK_TIMEOUT, f"link down on the way to {addr:#x}")
        if self._lost(hit):
            self.lost_writes.write(0, data)
            return
        kind, d, local = hit
        value = int.from_bytes(data, "little")

        def deliver():
            if kind == "msi":
                self.interrupts.append((self.kernel.now, requester.index, value))
            elif kind == "mmio":
                self.devices[d].mmio_write(local, value)
            else:
                (self.host if kind == "host" else self.devices[d].dram).write(local, data)
        arrival = max(self.kernel.now + self.params.link_latency,
                      self._posted_data[requester.index] + 1)
        self.kernel.call_at(arrival, deliver)

    def link_dma_answered(self, requester):
        """``requester``'s DMA wrote over the link and was answered now: its data lands
        :func:`~.timing.link_write_arrival` later (posted writes after it wait for that)."""
        self._posted_data[requester.index] = self.kernel.now + link_write_arrival(self.params)

    # -- host-side helpers -----------------------------------------------------------------------

    def submit(self, device, commands):
        """Write raw commands into a device's ring and ring its doorbell."""
        dev = self.devices[device]
        raw = b"".join(c.encode() for c in commands)
        used = (dev.tail - dev.head) % dev.ring_size
        if used + len(raw) >= dev.ring_size:
            raise RuntimeError(f"device {device}: command ring full")
        pos = dev.tail
        for i in range(0, len(raw), COMMAND_BYTES):
            dev.dram.write(dev.ring_base + pos, raw[i:i + COMMAND_BYTES])
            pos = (pos + COMMAND_BYTES) % dev.ring_size
        dev.mmio_write(regmap.OFFSET["RING_TAIL"], pos)

    def launch(self, device, stream, addr, regs=None):
        """Load ``stream`` (bytes with header) at DRAM ``addr``, set run-time registers, and
        submit ``CALL`` + ``COMPLETE`` (record to host memory, MSI vector = device index).
        Returns the completion sequence number."""
        if not 0 <= addr < 1 << 31:
            raise ValueError(f"stream address {addr:#x} must be below 2 GiB")
        dev = self.devices[device]
        dev.dram.write(addr, stream)
        for i, v in (regs or {}).items():
            dev.mmio_write(regmap.RUNTIME_REG + 8 * i, v)
        self._seq += 1
        self.submit(device, [
            Command("CALL", addr_off=addr),
            Command("COMPLETE", dst_space=Space.LINK, dst_off=self.bus.completion(device),
                    seq=self._seq, irq=True, vector=device),
        ])
        return self._seq

    def trace(self, on=True):
        """Record every engine's commands from now on (``device.trace``, a list of
        :class:`~.device.TraceEvent`), or stop recording (``on=False``, the lists dropped)."""
        for d in self.devices:
            d.trace = [] if on else None

    def run(self, max_cycles=None):
        """Simulate until nothing is left to do (or ``max_cycles``); returns the cycle count."""
        return self.kernel.run(max_cycles)

    def check(self):
        """Raise :class:`DeviceError` for the first device that stopped on a fault."""
        for d in self.devices:
            if d.error_code != ErrorCode.OK:
                raise DeviceError(d.index, d.error_code, d.error_offset, d.error_message)

    def report(self):
        """Per device: cycles and, per engine, commands, busy/wait cycles, bytes, MACs and
        utilisation (busy cycles / device cycles; MAC utilisation for COMPUTE)."""
        out = []
        for d in self.devices:
            cycles = max(d.last_activity, 1)
            engines = {}
            for e, st in d.stats.items():
                engines[e.name] = {
                    "commands": st.commands, "busy_cycles": st.busy_cycles,
                    "wait_cycles": st.wait_cycles, "bytes": st.bytes, "macs": st.macs,
                    "utilisation": st.busy_cycles / cycles,
                }
            engines["COMPUTE"]["mac_utilisation"] = \
                d.stats[Engine.COMPUTE].macs / (cycles * self.params.macs_per_cycle)
            out.append({"device": d.index, "cycles": d.last_activity, "state": d.state.name,
                        "error": d.error_code.name, "engines": engines})
        return out
