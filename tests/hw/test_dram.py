# amaranth: UnusedElaboratable=no
"""Tests of the DRAM model (``cosim/dram_model.sv`` through ``hw/dram.py``), behind the AXI
arbiter (``hw/axi_arbiter.py``), in Verilator through cocotb (``dram_tb.py``).

One build of :class:`DramTestTop` (a 1 MiB DRAM on a 2 MiB address space, so the upper half
answers DECERR; three masters) and one ``run()`` for all cocotb tests. The testbench writes
its measurements (read latency, bandwidth, backdoor speed) to a JSON report that this test
prints (``-s``).
"""

import json
import time
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from npusim.cosim import verilator_flow
from npusim.cosim.verilator_flow import build, run, verilog_sources
from npusim.hw import dram
from npusim.hw.axi import AxiParams, AxiSignature
from npusim.hw.axi_arbiter import AxiArbiter
from npusim.hw.dram import DramBackdoorSignature, DramModel
from npusim.sw.params import HwParams


TESTBENCH = Path(__file__).with_name("dram_tb.py")

#: The tested configuration: a small DRAM with the default beat width and latency.
PARAMS = HwParams(dram_bytes=1 << 20)
MASTERS = 3
MASTER_ID_WIDTH = 2
OUTSTANDING = 8
ADDR_WIDTH = 21  # twice the DRAM: the upper half is unmapped


class DramTestTop(wiring.Component):
    """:class:`DramModel` behind an :class:`AxiArbiter`, with the arbiter's master ports and
    the model's backdoor as top-level ports.

    Members
    -------
    masters : ``In(AxiSignature(...)).array(masters)``
    backdoor : ``In(DramBackdoorSignature())``
    """

    def __init__(self, params, *, masters, id_width, outstanding, addr_width):
        self.master_params = AxiParams(addr_width=addr_width,
                                       data_bytes=params.dram_bytes_per_cycle,
                                       id_width=id_width)
        self.arbiter = AxiArbiter(self.master_params, masters)
        self.dram = DramModel(params, id_width=self.arbiter.slave_params.id_width,
                              outstanding=outstanding, addr_width=addr_width)
        super().__init__({
            "masters": In(AxiSignature(self.master_params)).array(masters),
            "backdoor": In(DramBackdoorSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = arbiter = self.arbiter
        m.submodules.dram = self.dram
        for outer, inner in zip(self.masters, arbiter.masters):
            wiring.connect(m, wiring.flipped(outer), inner)
        wiring.connect(m, arbiter.slave, self.dram.axi)
        wiring.connect(m, wiring.flipped(self.backdoor), self.dram.backdoor)
        return m


def _top():
    return DramTestTop(PARAMS, masters=MASTERS, id_width=MASTER_ID_WIDTH,
                       outstanding=OUTSTANDING, addr_width=ADDR_WIDTH)


@pytest.mark.rtl
def test_dram_model(tmp_path):
    started = time.monotonic()
    design = build(_top(), "dram_top")
    report = tmp_path / "report.json"
    result = run(design, TESTBENCH, timeout=600, env={
        "DRAM_TB_CONFIG": json.dumps({
            "masters": MASTERS, "addr_width": ADDR_WIDTH, "id_width": MASTER_ID_WIDTH,
            "data_bytes": PARAMS.dram_bytes_per_cycle, "dram_bytes": PARAMS.dram_bytes,
            "latency": PARAMS.dram_latency, "outstanding": OUTSTANDING,
        }),
        "DRAM_TB_SEED": "7",
        "DRAM_TB_REPORT": str(report),
    })
    measured = json.loads(report.read_text())
    print(f"dram_top: build {design.seconds:.1f} s ({'cached' if design.cached else 'cold'}), "
          f"{result.tests} cocotb tests in {result.seconds:.1f} s, "
          f"{time.monotonic() - started:.1f} s in all")
    for name, value in sorted(measured.items()):
        print(f"  {name}: {value}")
    assert measured["read_latency_cycles"] == PARAMS.dram_latency
    assert measured["read_bandwidth_ratio"] >= 0.95


def test_the_model_source_travels_with_the_instance():
    """The flow finds the SystemVerilog file from the instance alone, and its contents (not
    its path) are in the build key."""
    from amaranth.back import rtlil
    assert dram.VERILOG_SOURCE_ATTR == verilator_flow.VERILOG_SOURCE_ATTR
    text = rtlil.convert(_top(), name="dram_top")
    assert verilog_sources(text) == [dram.VERILOG_SOURCE.resolve()]
    assert str(dram.VERILOG_SOURCE) not in verilator_flow._without_src(text)


def test_model_source_contents_are_in_the_key(tmp_path, monkeypatch):
    key = verilator_flow.build_key(_top(), "dram_top")
    copy = tmp_path / dram.VERILOG_SOURCE.name
    copy.write_text(dram.VERILOG_SOURCE.read_text())
    monkeypatch.setattr(dram, "VERILOG_SOURCE", copy)
    assert verilator_flow.build_key(_top(), "dram_top") == key  # same contents elsewhere
    copy.write_text(dram.VERILOG_SOURCE.read_text() + "// changed\n")
    assert verilator_flow.build_key(_top(), "dram_top") != key


@pytest.mark.parametrize("change", [
    {"dram_bytes": 1000},      # not whole beats
    {"dram_latency": 0},
])
def test_bad_parameters(change):
    with pytest.raises(ValueError):
        DramModel(PARAMS.replace(**change))


def test_bad_port_options():
    with pytest.raises(ValueError):
        DramModel(PARAMS, addr_width=19)  # cannot address 1 MiB
    with pytest.raises(ValueError):
        DramModel(PARAMS, outstanding=0)


def test_default_port_widths():
    model = DramModel(HwParams())
    assert model.axi_params == AxiParams(addr_width=26, data_bytes=32, id_width=4)
    assert model.words == 64 * 1024 * 1024 // 32
