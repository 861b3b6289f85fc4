"""The ``npusim`` command line, run as a user would (console script in the venv)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npusim import __version__
from npusim.sw import numerics as nx
from npusim.sw.isa import Command, Engine, Space, VectorOp, encode_stream

NPUSIM = [sys.executable, "-m", "npusim.cli"]


def npusim(*args, check=True):
    proc = subprocess.run(NPUSIM + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"npusim {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_version_and_help():
    assert npusim("--version").stdout.strip() == f"npusim {__version__}"
    out = npusim("--help").stdout
    for command in ("disasm", "run", "sim", "bench", "example", "docs", "compile"):
        assert command in out


def test_example_and_disasm(tmp_path):
    path = tmp_path / "gemm.npus"
    npusim("example", "gemm", "-o", path)
    out = npusim("disasm", path).stdout
    assert out.startswith("; npusim stream, ISA 1.0, 7 commands")
    assert "MATMUL      a=0 lda=64 b=0x10000 ldb=32 c=0x20000 ldc=32 c_dtype=FP32 m=32 n=32 k=64" in out


def test_disasm_rejects_a_corrupt_stream(tmp_path):
    path = tmp_path / "bad.npus"
    path.write_bytes(b"NOPE" + bytes(60))
    proc = npusim("disasm", path, check=False)
    assert proc.returncode == 2 and "BAD_MAGIC" in proc.stderr


def test_run_loads_computes_and_dumps(tmp_path):
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    stream = encode_stream([
        Command("DMA_COPY", engine=Engine.DMA_IN, src_reg=2, dst_space=Space.SRAM, len=256,
                n1=1, n2=1),
        Command("FENCE"),
        Command("VECTOR", op=VectorOp.EXP, dst=0x400, ldd=64, a=0, lda=64, rows=1, cols=64),
        Command("FENCE"),
        Command("DMA_COPY", engine=Engine.DMA_OUT, src_space=Space.SRAM, src_off=0x400,
                dst_off=0x8000, len=256, n1=1, n2=1),
    ])
    (tmp_path / "s.npus").write_bytes(stream)
    out = npusim("run", tmp_path / "s.npus", "--load", f"dram:0x2000={tmp_path / 'x.bin'}",
                 "--reg", "r2=0x2000", "--dump", f"dram:0x8000:256={tmp_path / 'y.bin'}",
                 "--json").stdout
    y = np.fromfile(tmp_path / "y.bin", np.uint32)
    assert np.array_equal(y, nx.vector_op(VectorOp.EXP, x.view(np.uint32)))
    report = json.loads(out.strip().splitlines()[-1])
    assert report["devices"][0]["engines"]["COMPUTE"]["commands"] == 1
    assert "simulated" in out


@pytest.mark.parametrize("option,value,message", [
    ("--dump", "xram:0:4=out.bin", "space must be dram or sram"),
    ("--load", "dram=x.bin", "expected [DEV:]SPACE:ADDR=FILE"),
    ("--reg", "1:2:r3=4", "expected [DEV:]REG=VALUE"),
    ("--load", "dram:0=missing.bin", "No such file"),
])
def test_run_rejects_malformed_options(tmp_path, option, value, message):
    (tmp_path / "s.npus").write_bytes(encode_stream([Command("NOP")]))
    proc = npusim("run", tmp_path / "s.npus", option, value.replace("missing", str(tmp_path / "missing")),
                  check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_run_reports_a_device_fault(tmp_path):
    stream = encode_stream([Command("DMA_COPY", engine=Engine.DMA_IN, src_off=2,
                                    dst_space=Space.SRAM, len=4, n1=1, n2=1)])
    (tmp_path / "s.npus").write_bytes(stream)
    proc = npusim("run", tmp_path / "s.npus", check=False)
    assert proc.returncode == 1 and "ALIGNMENT" in proc.stderr


def test_docs_are_current():
    """Every generated page (ISA reference, register map) matches its source."""
    out = npusim("docs").stdout
    assert "stale" not in out and out.count(": current") == 2, out


@pytest.mark.parametrize("package", ["sw", "firmware"])
def test_layering_sw_and_firmware_never_import_hw(package):
    root = Path(__file__).resolve().parents[1] / package
    for path in root.rglob("*.py"):
        parts = ["npusim", package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = parts if path.name == "__init__.py" else parts[:-1]
                base = pkg[:len(pkg) - node.level + 1] if node.level else []
                names = [".".join(base + [node.module] if node.module else base)]
            else:
                continue
            for name in names:
                assert not name.startswith(("npusim.hw", "npusim.cosim", "amaranth", "cocotb")), \
                    f"{path} imports {name}"


def test_bench_lists_its_benchmarks():
    proc = npusim("bench", "no-such-benchmark", check=False)
    assert proc.returncode == 2 and "fm-speed" in proc.stdout and "gemm" in proc.stdout


def test_compile_writes_streams_weights_and_manifest(tmp_path):
    """``npusim compile`` of a preset at TP = 2 with two prefill buckets, two decode batches
    and an extend bucket: a summary per phase and device, streams the disassembler reads,
    weight images whose regions are where the manifest says (the same addresses in every
    phase), and the manifest's KV geometry and run-time registers."""
    out = tmp_path / "tiny"
    proc = npusim("compile", "--config", "tiny-llama", "--tp", 2, "-o", out, "--tokens", "8,16",
                  "--batch", "1,4", "--extend", 8, "--max-context", 64)
    assert "llama: 2 layers, hidden 64, 4 heads (2 KV), vocab 256; TP = 2" in proc.stdout
    assert "decode:4         1" in proc.stdout and "prefill:8        0" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert (m["format"], m["version"], m["tp"]) == ("npusim-manifest", 1, 2)
    assert sorted(m["phases"]) == ["decode:1", "decode:4", "extend:8", "prefill:16",
                                   "prefill:8"]
    assert m["kv"]["block_size"] == 16 and m["kv"]["kv_heads_per_device"] == 1
    assert m["kv"]["groups"] == {"full": {"layers": ["layers.0.self_attn",
                                                     "layers.1.self_attn"],
                                          "window": None}}
    assert m["registers"]["first_position"] == 8
    assert m["phases"]["decode:4"]["sequences"] == [1, 1, 1, 1]
    assert m["phases"]["extend:8"]["sequences"] == [8]
    assert m["phases"]["decode:1"]["max_context"] == 64
    assert m["phases"]["prefill:8"]["tokens"] == 8
    w = m["weights"][1]
    for phase in m["phases"].values():
        for dev in phase["devices"]:
            assert dev["estimated_cycles"] > 0
            assert npusim("disasm", out / dev["stream"]).stdout.startswith(
                f"; npusim stream, ISA 1.0, {dev['commands']} commands")
            for region, (_, addr, size) in w["regions"].items():
                assert phase["devices"][1]["regions"][region] == [addr, size]
    blob = (out / w["file"]).read_bytes()
    assert len(blob) == w["bytes"]
    offset, addr, size = w["regions"]["norm.weight"]
    assert size == 4 * 64 and addr >= m["phases"]["decode:1"]["stream_bytes"]
    assert np.frombuffer(blob[offset:offset + size], np.float32).shape == (64,)


@pytest.mark.parametrize("args, message", [
    (["--config", "tiny-llama", "--tp", 8], "query heads 4 do not split evenly over TP = 8"),
    (["--config", "no-such-model"], "neither a preset"),
])
def test_compile_errors(tmp_path, args, message):
    proc = npusim("compile", *args, "-o", tmp_path / "x", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_generate_prints_tokens_summary_and_trace(tmp_path):
    """``npusim generate`` on the trained model: the greedy continuation as it comes, the
    summary, and with ``--trace`` the Perfetto JSON and the PNG timeline."""
    proc = npusim("generate", "--tp", 2, "--prompt", "We hold these truths", "--max-tokens", 6,
                  "--max-context", 64, "--trace", tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "We hold these truths to be"
    assert "1 requests, 6 tokens in" in proc.stdout and "tokens/s simulated" in proc.stdout
    assert "phase" in proc.stdout and "COMPUTE" in proc.stdout
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(e.get("name") == "MATMUL" for e in trace["traceEvents"])
    assert (tmp_path / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_reports_rejected_prompts():
    proc = npusim("generate", "--prompt", "x" * 40, "--prompt", "Liberty", "--max-tokens", 2,
                  "--max-context", 32, check=False)
    assert proc.returncode == 1
    assert "request 0 rejected: the prompt has 40 tokens" in proc.stderr
    assert "[1] 'Liberty' -> ', '" in proc.stdout
