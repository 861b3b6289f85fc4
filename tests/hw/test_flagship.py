"""``make sim SMALL=1`` (``npusim sim --small``): the flagship co-simulation, short -- the
trained model at TP = 2 on the 2-device system RTL through the runtime's ``rtl`` backend,
every check passing, the artifacts written."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.rtl


def test_flagship_small(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "npusim.cli", "sim", "--small", "-o",
                           str(tmp_path)], capture_output=True, text=True, timeout=1800)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for check in ("PASS  tokens: RTL = PyTorch", "PASS  tokens: RTL = functional model",
                  "PASS  logits: RTL = functional model, bit for bit",
                  "PASS  trace: the RTL's commands = the functional model's",
                  "cycles per wall second", "npusim sim: PASS"):
        assert check in out, check
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(summary["checks"].values()) and len(summary["tokens"]) == 3
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    ran = {(ev["pid"], ev["name"]) for ev in events if ev.get("ph") == "X"}
    devices = {pid for pid, _ in ran}
    assert len(devices) == 2
    for pid in devices:                     # the RTL's trace: every device ran every kind
        assert {"MATMUL", "VECTOR", "DMA_COPY", "DMA_GATHER", "DMA_SCATTER"} <= \
            {name for p, name in ran if p == pid}, pid
