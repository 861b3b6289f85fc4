"""npusim: an open, cycle-level model of a scalable LLM-inference NPU system.

Sub-packages map to the top-level folders of the repository:
``npusim.sw`` (host side: ISA, numerics, functional model), ``npusim.hw`` (Amaranth RTL),
``npusim.firmware`` (kernel library and vector microcode), ``npusim.cosim`` (cocotb + Verilator).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("npusim")
except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
    __version__ = "0.0.0+unknown"
