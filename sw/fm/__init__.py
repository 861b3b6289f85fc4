"""The functional model: executes command streams on a numpy model of devices, bit-exact with
the RTL, with a cycle-approximate timing model per engine."""

from .device import Device, EngineStats
from .fault import DeviceFault
from .system import BusMap, DeviceError, System

__all__ = ["System", "Device", "BusMap", "DeviceError", "DeviceFault", "EngineStats"]
