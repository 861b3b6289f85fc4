"""The host side of the co-simulated system (cocotb): enumeration, MMIO, launches, interrupts.

:class:`SystemHost` drives a :class:`~npusim.cosim.system_top.SystemTop` as a host driver
drives PCIe cards behind a switch. Every register access is a real transaction through the
root complex, the link and the switch: configuration writes and reads to find and size the
devices' BARs and program the switch's windows, memory reads and writes of their registers.
Memory images move through the DRAM models' backdoors (one file per image). Between host
events Python sleeps on a timer or an interrupt counter, never per cycle; every wait has a
limit.

The bus map is the functional model's (:class:`~npusim.sw.fm.system.BusMap`), so a stream,
its memory images and its register writes run unchanged on both: :func:`model_launch`
records what the model's ``System.launch`` did, :meth:`SystemHost.start` replays it.
"""

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, Timer

from ..hw.link.completer import BUS_MASTER, CFG_BAR0, CFG_BAR2, CFG_COMMAND, MEMORY_ENABLE
from ..hw.link.switch import WINDOW_REGS
from ..hw.link.tlp import CplStatus, make_id, tlp_beat, to_beats
from ..sw import regmap
from .device import Launch, model_launch
from .dram import DramBackdoor
from .root_complex import HOST_REQUEST, HOST_RESPONSE, HostOp

__all__ = ["SystemHost", "LinkError", "Launch", "model_launch", "CFG"]

#: Configuration-space registers (byte offsets) the host uses: the endpoint's
#: (``hw/link/completer.py``) and a switch port's windows (``WINDOW_REGS`` of
#: ``hw/link/switch.py``: memory base, memory limit, prefetchable base, limit; 64-bit each).
_WINDOWS = 4 * WINDOW_REGS.start
CFG = {"ID": 0x00, "COMMAND": CFG_COMMAND, "BAR0": CFG_BAR0, "BAR2": CFG_BAR2,
       "MEM_BASE": _WINDOWS, "MEM_LIMIT": _WINDOWS + 8,
       "PREF_BASE": _WINDOWS + 16, "PREF_LIMIT": _WINDOWS + 24}


class LinkError(RuntimeError):
    """A host request failed: no completion (``timeout``) or an error completion status."""


def _pack(layout, **fields):
    value = 0
    for name, v in fields.items():
        f = layout[name]
        value |= (int(v) & ((1 << f.width) - 1)) << f.offset
    return value


def _unpack(layout, value):
    return {name: value >> f.offset & ((1 << f.width) - 1) for name, f in layout}


class SystemHost:
    """cocotb coroutines for one ``SystemTop`` of ``n`` devices; every wait is bounded."""

    def __init__(self, dut, params, bus, n, *, clock_ns=10):
        self.dut, self.params, self.bus, self.n = dut, params, bus, n
        self.clock_ns = clock_ns
        self._clock_started = False
        beat = params.dram_bytes_per_cycle
        self.dram = [DramBackdoor(dut, data_bytes=beat, prefix=f"dram_backdoor__{d}__",
                                  hexfile=f"dram{d}.hex") for d in range(n)]
        self.host = DramBackdoor(dut, data_bytes=beat, prefix="host_backdoor__",
                                 hexfile="host.hex")

    # -- reset and requests ----------------------------------------------------------------------

    async def reset(self):
        dut = self.dut
        if not self._clock_started:
            Clock(dut.clk, self.clock_ns, unit="ns").start()
            self._clock_started = True
        dut.rst.value = 1
        dut.req__valid.value = 0
        dut.resp__ready.value = 0
        dut.inject__valid.value = 0
        dut.links_up.value = (1 << (self.n + 1)) - 1
        for k in range(self.n + 1):
            getattr(dut, f"flip_rate__{k}").value = 0
        for backdoor in (*self.dram, self.host):
            backdoor.idle()
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await FallingEdge(dut.clk)

    async def request(self, op, *, addr=0, data=0, dws=2, cfg_id=0, cfg_reg=0,
                      limit_cycles=None):
        """One host request through the root complex; returns the response fields.
        Raises :class:`LinkError` on a timeout or an error status."""
        dut = self.dut
        limit = limit_cycles or 4 * self.params.link_completion_timeout
        dut.req__payload.value = _pack(HOST_REQUEST, op=op, addr=addr, data=data, dws=dws,
                                       cfg_id=cfg_id, cfg_reg=cfg_reg)
        dut.req__valid.value = 1
        await self._until(lambda: dut.req__ready.value, limit, "request not taken")
        dut.req__valid.value = 0
        dut.resp__ready.value = 1
        await self._until(lambda: dut.resp__valid.value, limit, "no response")
        resp = _unpack(HOST_RESPONSE, dut.resp__payload.value.to_unsigned())
        dut.resp__ready.value = 0
        what = f"{HostOp(op).name} {addr:#x}" if op <= HostOp.MEM_WRITE else \
            f"{HostOp(op).name} {cfg_id:#06x}:{4 * cfg_reg:#x}"
        if resp["timeout"]:
            raise LinkError(f"{what}: completion timeout")
        if resp["status"] != CplStatus.SC:
            raise LinkError(f"{what}: completion status {CplStatus(resp['status']).name}")
        return resp

    async def _until(self, condition, limit, message):
        """Wait for ``condition()`` at a clock edge (the handshake happens there), checking
        every cycle -- only used for the few cycles of a request's handshakes."""
        for _ in range(limit):
            await ReadOnly()
            done = bool(condition())
            await FallingEdge(self.dut.clk)
            if done:
                return
        raise TimeoutError(f"{message} within {limit} cycles")

    # -- configuration ---------------------------------------------------------------------------

    async def cfg_write(self, bus_number, device, offset, value):
        await self.request(HostOp.CFG_WRITE, cfg_id=make_id(bus_number, device),
                           cfg_reg=offset // 4, data=value, dws=1)

    async def cfg_read(self, bus_number, device, offset):
        resp = await self.request(HostOp.CFG_READ, cfg_id=make_id(bus_number, device),
                                  cfg_reg=offset // 4, dws=1)
        return resp["data"] & 0xFFFF_FFFF

    async def _bar_size(self, bus_number, offset):
        """A 64-bit BAR's size, the PCIe way: write all-ones, read the mask back."""
        for half in (0, 4):
            await self.cfg_write(bus_number, 0, offset + half, 0xFFFF_FFFF)
        lo = await self.cfg_read(bus_number, 0, offset)
        hi = await self.cfg_read(bus_number, 0, offset + 4)
        mask = (hi << 32 | lo) & ~0xF
        return (~mask + 1) & (2**64 - 1)

    async def enumerate(self):
        """Find, size and place every device's BARs where the bus map says, open the switch
        windows to them and enable the devices; returns the BAR sizes found."""
        sizes = []
        for d in range(self.n):
            b = d + 1        # the endpoint behind switch port d is bus d + 1
            await self.cfg_write(b, 0, CFG["COMMAND"], 0)    # the endpoint learns its bus
            ident = await self.cfg_read(b, 0, CFG["ID"])
            if ident == 0xFFFF_FFFF or ident == 0:
                raise LinkError(f"no device behind switch port {d} (ID {ident:#x})")
            found = {}
            for bar, base in (("BAR0", self.bus.mmio(d)), ("BAR2", self.bus.dram(d))):
                found[bar] = size = await self._bar_size(b, CFG[bar])
                await self.cfg_write(b, 0, CFG[bar], base & 0xFFFF_FFFF)
                await self.cfg_write(b, 0, CFG[bar] + 4, base >> 32)
                window = "MEM" if bar == "BAR0" else "PREF"
                for reg, value in ((f"{window}_BASE", base), (f"{window}_LIMIT", base + size - 1)):
                    await self.cfg_write(0, d, CFG[reg], value & 0xFFFF_FFFF)
                    await self.cfg_write(0, d, CFG[reg] + 4, value >> 32)
            await self.cfg_write(b, 0, CFG["COMMAND"], MEMORY_ENABLE | BUS_MASTER)
            sizes.append(found)
        return sizes

    # -- registers, images, launches -------------------------------------------------------------

    async def write(self, device, offset, value):
        """A register write (posted) to device ``device``'s BAR0."""
        await self.request(HostOp.MEM_WRITE, addr=self.bus.mmio(device) + offset, data=value)

    async def read(self, device, offset):
        resp = await self.request(HostOp.MEM_READ, addr=self.bus.mmio(device) + offset)
        return resp["data"]

    async def start(self, device, launch):
        """Load a launch's memory regions into the device's DRAM, then make its register
        writes over the link (doorbell last). A launch whose doorbell would leave the ring
        empty (recorded on a model whose ring is elsewhere) is refused, not left to hang."""
        doorbell = regmap.OFFSET["RING_TAIL"]
        tail = next(v for off, v in reversed(launch.writes) if off == doorbell)
        head = await self.read(device, regmap.OFFSET["RING_HEAD"])
        if tail == head:
            raise ValueError(f"device {device}: the launch rings the doorbell at {tail:#x}, "
                             f"where the ring's head already is: it would run nothing (was it "
                             f"recorded on a model whose ring does not match the device's?)")
        for addr, data in launch.regions:
            await self.dram[device].load(addr, data)
        for offset, value in launch.writes:
            await self.write(device, offset, value)

    async def inject(self, raw, limit_cycles=1000):
        """Send the bytes ``raw`` (whole dwords) as one TLP from the root complex's side, as
        they are: framed and protected correctly by the data-link layer, whatever they say."""
        dut, layout = self.dut, tlp_beat(self.params.link_bytes_per_cycle)
        for data, dws, last in to_beats(raw, self.params.link_bytes_per_cycle):
            dut.inject__payload.value = _pack(layout, data=data, dws=dws, last=last)
            dut.inject__valid.value = 1
            await self._until(lambda: dut.inject__ready.value, limit_cycles, "TLP not taken")
        dut.inject__valid.value = 0

    def irqs(self, vector=None):
        """Interrupts received so far (of one ``vector``)."""
        if vector is None:
            return self.dut.irq_count.value.to_unsigned()
        return self.dut.irq_per_vector.value.to_unsigned() >> (32 * vector) & 0xFFFF_FFFF

    async def wait(self, irqs, timeout_cycles):
        """Sleep until every device ``d`` has sent ``irqs[d]`` interrupts (vector ``d``) or
        some device stopped (only that, for ``irqs = {}``), at most ``timeout_cycles``;
        returns the cycles waited (to within a poll)."""
        dut = self.dut
        waited, step = 0, 1000
        while waited < timeout_cycles:
            await ReadOnly()
            done = bool(irqs) and all(self.irqs(d) >= want for d, want in irqs.items())
            if done or dut.stopped.value:
                await FallingEdge(dut.clk)
                return waited
            await First(dut.irq_count.value_change, dut.stopped.value_change,
                        Timer(step * self.clock_ns, unit="ns"))
            waited += step
        raise TimeoutError(f"interrupts {irqs} not all in within {timeout_cycles} cycles "
                           f"(have {[self.irqs(d) for d in irqs]})")

    async def status(self, device):
        value = await self.read(device, regmap.OFFSET["STATUS"])
        return regmap.DeviceState(value & 3), value >> 8 & 0xFF
