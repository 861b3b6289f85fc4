"""The host side of a co-simulated device (cocotb): MMIO, memory images, launches, interrupts.

:class:`DeviceHost` drives a :class:`~npusim.cosim.device_top.DeviceTestTop` the way a driver
drives a card: it writes registers over MMIO, loads and reads memory images through the DRAM
models' backdoors (one file per image, not a Python call per beat), rings the doorbell and
sleeps until the interrupt or a stop, with a timeout. Python wakes only for these events: the
per-cycle work stays in the simulated design.

:func:`model_launch` runs the same launch on the functional model, so a test can hand the
device exactly the image and registers the model started from.
"""

from dataclasses import dataclass, field

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, Timer

from ..hw.device.cp import Mmio
from ..sw import regmap
from .dram import DramBackdoor

__all__ = ["DeviceHost", "Launch", "model_launch"]

_ADDR = Mmio["addr"]
_WRITE = Mmio["write"]
_DATA = Mmio["data"]


@dataclass
class Launch:
    """What the host did to start a stream on the model: memory regions written (address,
    bytes), the register writes (offset, value) in order, the last being the doorbell."""
    regions: list = field(default_factory=list)
    writes: list = field(default_factory=list)


def model_launch(system, device, stream, addr, regs=None, extra_regions=()):
    """``system.launch`` on the functional model, recorded as a :class:`Launch` for the RTL:
    the stream and the ring entries it wrote, the registers the model's ``System`` set up
    (ring, MSI address, windows) and the run-time registers."""
    d = system.devices[device]
    tail_before = d.tail
    system.launch(device, stream, addr, regs=regs)
    out = Launch()
    out.regions.append((addr, bytes(stream)))
    for start, data in extra_regions:
        out.regions.append((start, bytes(data)))
    used = (d.tail - tail_before) % d.ring_size
    for off in range(0, used, 32):
        pos = (tail_before + off) % d.ring_size
        out.regions.append((d.ring_base + pos, d.dram.read(d.ring_base + pos, 32).tobytes()))
    R = regmap.OFFSET
    out.writes += [(R["RING_BASE"], d.ring_base), (R["RING_SIZE"], d.ring_size),
                   (R["MSI_ADDR"], d.msi_addr), (R["WATCHDOG"], d.watchdog)]
    for i, (base, size, flags) in enumerate(d.windows):
        w = regmap.WINDOW + regmap.WINDOW_STRIDE * i
        out.writes += [(w, base), (w + 8, size), (w + 16, flags)]
    for i, v in (regs or {}).items():
        out.writes.append((regmap.RUNTIME_REG + 8 * i, v))
    out.writes.append((R["RING_TAIL"], d.tail))
    return out


class DeviceHost:
    """cocotb coroutines for one ``DeviceTestTop``; every wait is bounded."""

    def __init__(self, dut, params, *, clock_ns=10):
        self.dut, self.params, self.clock_ns = dut, params, clock_ns
        self._clock_started = False
        self.dram = DramBackdoor(dut, data_bytes=params.dram_bytes_per_cycle,
                                 prefix="dram_backdoor__", hexfile="dram.hex")
        self.host = DramBackdoor(dut, data_bytes=params.dram_bytes_per_cycle,
                                 prefix="host_backdoor__", hexfile="host.hex")

    async def reset(self):
        dut = self.dut
        if not self._clock_started:     # once: a later reset keeps the same clock
            Clock(dut.clk, self.clock_ns, unit="ns").start()
            self._clock_started = True
        dut.rst.value = 1
        dut.mmio__valid.value = 0
        dut.mmio_rdata__ready.value = 1
        self.dram.idle()
        self.host.idle()
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await FallingEdge(dut.clk)

    async def _access(self, addr, write, value=0):
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.mmio__payload.value = (addr << _ADDR.offset) | (int(write) << _WRITE.offset) | \
            ((value & (2**64 - 1)) << _DATA.offset)
        dut.mmio__valid.value = 1
        for _ in range(100):
            await ReadOnly()
            taken = bool(dut.mmio__ready.value)
            await FallingEdge(dut.clk)
            if taken:
                break
        else:
            raise TimeoutError(f"MMIO access to {addr:#x} not taken")
        dut.mmio__valid.value = 0
        if write:
            return None
        for _ in range(100):
            await ReadOnly()
            if dut.mmio_rdata__valid.value:
                value = dut.mmio_rdata__payload.value.to_unsigned()
                await FallingEdge(dut.clk)
                return value
            await FallingEdge(dut.clk)
        raise TimeoutError(f"MMIO read of {addr:#x} got no data")

    async def write(self, addr, value):
        await self._access(addr, True, value)

    async def read(self, addr):
        return await self._access(addr, False)

    async def start(self, launch):
        """Load the launch's memory regions, then make its register writes (doorbell last)."""
        for addr, data in launch.regions:
            await self.dram.load(addr, data)
        for offset, value in launch.writes:
            await self.write(offset, value)

    async def wait(self, irqs, timeout_cycles):
        """Sleep until ``irqs`` interrupts have come (``None``: only a stop counts) or the
        device stopped, at most ``timeout_cycles``; returns the cycles waited (to within a
        poll)."""
        dut = self.dut
        waited = 0
        step = 1000
        while waited < timeout_cycles:
            await ReadOnly()
            if (irqs is not None and dut.irq_count.value.to_unsigned() >= irqs) \
                    or dut.stopped.value:
                await FallingEdge(dut.clk)
                return waited
            await First(dut.irq_count.value_change, dut.stopped.value_change,
                        Timer(step * self.clock_ns, unit="ns"))
            waited += step
        raise TimeoutError(f"no interrupt and no stop within {timeout_cycles} cycles")

    async def status(self):
        value = await self.read(regmap.OFFSET["STATUS"])
        return regmap.DeviceState(value & 3), value >> 8 & 0xFF

    async def error_offset(self):
        return await self.read(regmap.OFFSET["ERROR_OFFSET"])

