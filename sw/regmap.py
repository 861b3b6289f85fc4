"""MMIO register map of a device (BAR0): the one definition of register offsets.

The functional model, the runtime and (with the device RTL) the Amaranth register block read
their offsets from here.
"""

import enum
from dataclasses import dataclass

from .isa.table import NUM_REGS, NUM_SEMAPHORES

__all__ = ["Register", "REGISTERS", "OFFSET", "MMIO_BYTES", "DeviceState", "STATE_DOC",
           "RUNTIME_REG", "SEM_VALUE", "SEM_INC", "WINDOW", "WINDOW_STRIDE", "WINDOW_READ",
           "WINDOW_WRITE", "WINDOW_LINK", "NUM_WINDOWS"]

#: DMA window registers per device.
NUM_WINDOWS = 8


class DeviceState(enum.IntEnum):
    """The ``state`` field of STATUS (meanings in :data:`STATE_DOC`)."""
    IDLE = 0
    RUNNING = 1
    HALTED = 2
    FAULT = 3


STATE_DOC = {
    DeviceState.IDLE: "nothing to do: the ring is empty",
    DeviceState.RUNNING: "fetching or executing commands",
    DeviceState.HALTED: "a HALT command stopped the queue",
    DeviceState.FAULT: "an error stopped the queue; STATUS bits 15:8 and ERROR_OFFSET say why",
}


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str  #: "ro", "rw" or "wo"
    doc: str
    count: int = 1   #: array of ``count`` registers, 8 bytes apart unless ``stride`` says
    stride: int = 8


REGISTERS = (
    Register("ID", 0x000, "ro", 'device identification: b"NPU1" in the low 32 bits'),
    Register("STATUS", 0x008, "ro", "bits 1:0 state (DeviceState), bits 15:8 error code"),
    Register("ERROR_OFFSET", 0x010, "ro", "byte address in DRAM of the faulting command"),
    Register("CONTROL", 0x018, "wo", "bit 0: reset the queue (clears a fault or halt, head = tail)"),
    Register("RING_BASE", 0x020, "rw", "DRAM address of the command ring (32-byte aligned)"),
    Register("RING_SIZE", 0x028, "rw", "ring size in bytes (a multiple of 32)"),
    Register("RING_HEAD", 0x030, "ro", "byte offset of the next command the CP takes from the ring"),
    Register("RING_TAIL", 0x038, "rw", "doorbell: byte offset one past the last valid command"),
    Register("MSI_ADDR", 0x040, "rw", "bus address MSIs are written to"),
    Register("CYCLES", 0x048, "ro", "cycle counter"),
    Register("WATCHDOG", 0x050, "rw", "cycles a SEM_WAIT may wait before it is SEM_TIMEOUT "
             "(at reset: HwParams.watchdog_cycles)"),
    Register("RUNTIME_REG", 0x100, "rw", "run-time registers R[0..31] (R[0] reads 0)", NUM_REGS),
    Register("SEM_VALUE", 0x200, "rw", "semaphore values", NUM_SEMAPHORES),
    Register("SEM_INC", 0x400, "wo", "writing n adds n to the semaphore (remote signals land here)",
             NUM_SEMAPHORES),
    Register("WINDOW", 0x600, "rw", "DMA windows: {base, size, flags (bit 0 read, bit 1 write, "
             "bit 2 link space)} at +0, +8, +16", NUM_WINDOWS, 32),
)

OFFSET = {r.name: r.offset for r in REGISTERS}
MMIO_BYTES = 0x1000
RUNTIME_REG = OFFSET["RUNTIME_REG"]
SEM_VALUE = OFFSET["SEM_VALUE"]
SEM_INC = OFFSET["SEM_INC"]
WINDOW = OFFSET["WINDOW"]
WINDOW_STRIDE = 32
WINDOW_READ, WINDOW_WRITE, WINDOW_LINK = 1, 2, 4
