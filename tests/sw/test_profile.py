"""Profiling output (``sw/runtime/profile.py``) of real functional-model traces: a GEMM with
semaphore stalls, DMA copies and a peer-to-peer copy over the link on a two-device cluster,
checked against what the functional model itself counted."""

import json
import struct

import numpy as np
import pytest

from npusim.firmware.dma import copy
from npusim.firmware.gemm import gemm_commands, plan_gemm
from npusim.sw.fm.device import TraceEvent
from npusim.sw.isa import Command
from npusim.sw.isa.enums import Engine, Space
from npusim.sw.runtime import profile as prof
from npusim.sw.runtime.cluster import Cluster

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENGINES = ["DMA_IN", "DMA_OUT", "COMPUTE", "LINK"]


@pytest.fixture(scope="module")
def run():
    """Two launches on a traced two-device cluster: device 0 loads to SRAM, runs a 64 x 128 x
    128 GEMM (two tiles, two k-steps: waits on its semaphores) and copies 8 KiB to device 1's
    DRAM over the link; device 1 copies DRAM to DRAM. Then device 1 alone copies again. The
    two launches are the phases ``prefill:16`` and ``decode:4``."""
    c = Cluster(2)
    c.trace()
    m, n, k = 64, 128, 128
    plan = plan_gemm(c.params, m, n, k, tk=64)
    a, b, out = c.alloc(0, 2 * m * k), c.alloc(0, 2 * k * n), c.alloc(0, 4 * m * n)
    rng = np.random.default_rng(0)
    c.upload(a, rng.integers(0, 1 << 14, m * k, dtype=np.uint16))   # small finite bf16
    c.upload(b, rng.integers(0, 1 << 14, k * n, dtype=np.uint16))
    x = c.alloc(0, 8192)
    c.upload(x, np.arange(2048, dtype=np.uint32))
    recv, y = c.alloc(1, 8192), c.alloc(1, 8192)
    s0 = c.load_stream(0, copy(Engine.DMA_IN, Space.DRAM, x.addr, Space.SRAM, 0x30000, 4096)
                       + gemm_commands(plan, a.addr, b.addr, out.addr)
                       + [Command("REG_SET", rd=5, imm=c.bus.dram(1)),
                          Command("DMA_COPY", engine=Engine.LINK, src_off=x.addr,
                                  dst_space=Space.LINK, dst_reg=5, dst_off=recv.addr, len=8192,
                                  n1=1, n2=1)])
    s1 = c.load_stream(1, copy(Engine.DMA_OUT, Space.DRAM, recv.addr, Space.DRAM, y.addr, 8192))
    phases = []
    for name, streams in (("prefill:16", {0: s0, 1: s1}), ("decode:4", {1: s1})):
        ev = c.launch(streams)
        cycles = c.wait(ev)
        phases.append((name, ev.start, ev.start + max(cycles.values())))
    # the link copy arrived
    assert np.array_equal(c.download(recv, np.uint32), np.arange(2048, dtype=np.uint32))
    events = [c.events(d) for d in range(2)]
    assert any(ev.name == "SEM_WAIT" and ev.end > ev.start for ev in events[0])
    assert any(ev.engine == Engine.LINK and ev.bytes for ev in events[0])
    return c, events, phases


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_perfetto_trace_loads_and_matches_the_model(run, tmp_path):
    c, events, phases = run
    path = tmp_path / "t.json"
    trace = prof.perfetto_trace(events, c.params, phases, path=path)
    with open(path) as f:
        loaded = json.load(f)
    assert loaded == json.loads(json.dumps(trace))
    assert loaded["displayTimeUnit"] == "ns" and loaded["otherData"]["devices"] == 2
    evs = loaded["traceEvents"]
    meta = [e for e in evs if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert sorted(procs.values()) == ["device 0", "device 1"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    order = {(e["pid"], e["tid"]): e["args"]["sort_index"] for e in meta
             if e["name"] == "thread_sort_index"}
    for pid in procs:
        names = sorted((order[k], v) for k, v in threads.items() if k[0] == pid)
        assert [v for _, v in names] == ["phases"] + ENGINES
    assert len(set(threads)) == len(threads) == 10

    xs = [e for e in evs if e["ph"] == "X"]
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in xs)
    by_pid = {pid: int(name.split()[1]) for pid, name in procs.items()}
    cmds = [e for e in xs if e["cat"] != "phase"]
    assert len(cmds) == sum(len(e) for e in events)
    report = c.backend.system.report()
    for d in range(2):
        for engine in ENGINES:
            mine = [e for e in cmds
                    if by_pid[e["pid"]] == d and threads[e["pid"], e["tid"]] == engine]
            fm = report[d]["engines"][engine]
            assert sum(e["args"]["bytes"] for e in mine) == fm["bytes"]
            assert sum(e["args"]["macs"] for e in mine) == fm["macs"]
            assert sum(e["args"]["cycles"] for e in mine) == fm["busy_cycles"]
            assert len(mine) == fm["commands"]
    # times: cycles at 1 GHz in microseconds
    for e in cmds:
        assert e["ts"] == pytest.approx(e["args"]["start_cycle"] / 1000)
        assert e["dur"] == pytest.approx(e["args"]["cycles"] / 1000)
        int(e["args"]["offset"], 16)
    stalls = [e for e in cmds if e["cat"] == "stall"]
    assert stalls and all(e["name"] == "wait" and e["args"]["command"] == "SEM_WAIT"
                          for e in stalls)
    assert len(stalls) == sum(ev.name == "SEM_WAIT" for evs_ in events for ev in evs_)
    link = [e for e in cmds if e["cat"] == "link"]
    assert link and all(threads[e["pid"], e["tid"]] == "LINK" for e in link)
    assert sum(e["args"]["bytes"] for e in link) == 8192
    assert {e["cat"] for e in cmds} == {"dma", "link", "matmul", "sync", "stall"}
    phase_events = [e for e in xs if e["cat"] == "phase"]
    assert len(phase_events) == 2 * len(phases)
    assert all(threads[e["pid"], e["tid"]] == "phases" for e in phase_events)

    # counters: the bytes each engine moved, spread over the buckets
    counters = [e for e in evs if e["ph"] == "C"]
    for d in range(2):
        for engine in ("DMA_IN", "DMA_OUT", "LINK"):
            got = sum(e["args"][engine] for e in counters if by_pid[e["pid"]] == d)
            assert got == pytest.approx(report[d]["engines"][engine]["bytes"], abs=0.01)
    # deterministic
    assert json.dumps(prof.perfetto_trace(events, c.params, phases)) == json.dumps(trace)


def test_summary_matches_the_events_and_the_model(run):
    c, events, phases = run
    s = prof.summary(events, c.params, phases)
    report = c.backend.system.report()
    assert s["start"] == 0 and s["end"] == phases[-1][2] and s["cycles"] == s["end"]
    assert s["seconds"] == pytest.approx(s["cycles"] / 1e9)
    for d, dev in enumerate(s["devices"]):
        assert dev["device"] == d and dev["cycles"] == s["cycles"]
        for engine in ENGINES:
            e, fm = dev["engines"][engine], report[d]["engines"][engine]
            mine = [ev for ev in events[d] if ev.engine == Engine[engine]]
            assert e["busy_cycles"] == sum(ev.end - ev.start for ev in mine
                                           if ev.name != "SEM_WAIT")
            assert e["busy_cycles"] == fm["busy_cycles"] - fm["wait_cycles"]
            assert e["stall_cycles"] == fm["wait_cycles"]
            assert e["waits"] == sum(ev.name == "SEM_WAIT" for ev in mine)
            assert e["bytes"] == fm["bytes"] and e["macs"] == fm["macs"]
            assert e["commands"] == fm["commands"]
            assert 0 <= e["utilisation"] <= 1
            assert e["utilisation"] == pytest.approx(e["busy_cycles"] / dev["cycles"])
        assert dev["link_bytes"] == report[d]["engines"]["LINK"]["bytes"]
        assert dev["macs"] == report[d]["engines"]["COMPUTE"]["macs"]
        assert 0 <= dev["mac_utilisation"] <= 1
        assert dev["mac_utilisation"] == pytest.approx(
            dev["macs"] / (dev["cycles"] * c.params.macs_per_cycle))
    dev0 = s["devices"][0]
    assert dev0["macs"] == 64 * 128 * 128 and dev0["link_bytes"] == 8192
    stalls = {k: v["stall_cycles"] for k, v in dev0["engines"].items()}
    assert dev0["most_stalled"] == max(stalls, key=stalls.get)
    assert dev0["stall_cycles"] == sum(stalls.values()) > 0
    assert s["devices"][1]["most_stalled"] is None
    assert [p["name"] for p in s["phases"]] == ["prefill:16", "decode:4"]
    assert all(p["launches"] == 1 for p in s["phases"])
    assert sum(p["share"] for p in s["phases"]) <= 1
    gap = phases[1][1] - phases[0][2]
    assert s["unphased_cycles"] == gap
    assert sum(p["cycles"] for p in s["phases"]) + gap == s["cycles"]
    by_cmd = {(x["engine"], x["command"]): x for x in s["commands"]}
    assert by_cmd["COMPUTE", "MATMUL"]["count"] == 4
    assert by_cmd["LINK", "DMA_COPY"]["bytes"] == 8192


def test_format_summary_tables(run):
    c, events, phases = run
    text = prof.format_summary(prof.summary(events, c.params, phases))
    lines = text.splitlines()
    assert lines[0].startswith("profile: 2 devices")
    for word in ENGINES + ["prefill:16", "decode:4", "(no phase)", "MATMUL", "SEM_WAIT",
                           "stalled most", "launches", "share", "util"]:
        assert word in text
    at = next(i for i, ln in enumerate(lines) if ln.startswith("device  engine"))
    header, rows = lines[at], lines[at + 1:at + 9]
    assert [r.split()[:2] for r in rows] == [[str(d), e] for d in "01" for e in ENGINES]
    assert lines[at + 9] == ""
    util_end = header.index(" util") + len(" util")
    for r in rows:       # right-aligned: the utilisation column ends under its header
        assert r[util_end - 1] == "%" and r[util_end] == " "


def test_summary_of_hand_made_events():
    """Exact numbers: busy excludes waits, the device span includes the phases, phases of one
    name add up, the engine that waited longest is named."""
    evs = {0: [TraceEvent(Engine.DMA_IN, "DMA_COPY", 10, 30, 0x8020, bytes=640),
               TraceEvent(Engine.COMPUTE, "SEM_WAIT", 10, 30, 0x8040),
               TraceEvent(Engine.COMPUTE, "MATMUL", 30, 70, 0x8060, macs=64 * 40),
               TraceEvent(Engine.DMA_OUT, "SEM_WAIT", 10, 75, 0x8080),
               TraceEvent(Engine.DMA_OUT, "DMA_COPY", 75, 85, 0x80a0, bytes=320)],
           1: []}
    phases = [("decode:1", 0, 50), ("decode:1", 50, 100)]
    s = prof.summary(evs, None, phases)
    d0, d1 = s["devices"]
    assert d0["cycles"] == d1["cycles"] == s["cycles"] == 100
    e = d0["engines"]
    assert (e["DMA_IN"]["busy_cycles"], e["COMPUTE"]["busy_cycles"],
            e["DMA_OUT"]["busy_cycles"]) == (20, 40, 10)
    assert e["COMPUTE"]["stall_cycles"] == 20 and e["DMA_OUT"]["stall_cycles"] == 65
    assert d0["most_stalled"] == "DMA_OUT"
    assert e["DMA_IN"]["bytes_per_cycle"] == 6.4
    assert e["DMA_IN"]["bandwidth_utilisation"] == pytest.approx(6.4 / 32)
    assert d0["mac_utilisation"] == pytest.approx(64 * 40 / (100 * 64))
    assert s["phases"] == [{"name": "decode:1", "launches": 2, "cycles": 100, "share": 1.0}]
    assert s["unphased_cycles"] == 0
    assert d1["engines"]["COMPUTE"]["utilisation"] == 0 and d1["most_stalled"] is None
    # no clock: no seconds; nothing at all: zeros, no division by zero
    assert prof.summary(evs, prof.DEFAULT.replace(clock_hz=0))["seconds"] is None
    empty = prof.summary([[]], None)
    assert empty["cycles"] == 0 and empty["devices"][0]["engines"]["DMA_IN"]["utilisation"] == 0
    assert "profile: 1 device," in prof.format_summary(empty)
    # phases as mappings
    assert prof.summary(evs, None, [{"name": "x", "start": 0, "end": 10}])["phases"][0] == \
        {"name": "x", "launches": 1, "cycles": 10, "share": 10 / 85}     # events: 10 .. 85
    with pytest.raises(ValueError, match="ends"):
        prof.summary(evs, None, [("x", 10, 0)])


def test_timeline_png(run, tmp_path):
    c, events, phases = run
    path = tmp_path / "t.png"
    assert prof.timeline_png(events, c.params, path, phases, title="test") == path
    assert _png_size(path) == (1400, 200 + 90 * 2)
    # merging bars closer than a pixel (max_bars exceeded), cycles without a clock, 3 devices
    path2 = tmp_path / "merged.png"
    prof.timeline_png({0: events[0], 1: events[1], 2: []}, c.params.replace(clock_hz=0), path2,
                      phases, max_bars=1)
    assert _png_size(path2) == (1400, 200 + 90 * 3)
    path3 = tmp_path / "empty.png"
    prof.timeline_png([], None, path3)
    assert _png_size(path3) == (1400, 290)


def test_merge_bars():
    assert prof._merge([(10, 20), (0, 5), (5.5, 8), (40, 41)], 1) == [[0, 8], [10, 20],
                                                                      [40, 41]]
    assert prof._merge([(0, 10), (2, 4), (10, 12)], 0.5) == [[0, 12]]


def test_profile_writes_the_files(run, tmp_path):
    c, events, phases = run
    s = prof.profile(c, phases, tmp_path / "out", stem="run")
    files = s["files"]
    assert files["perfetto"].endswith("run.json") and files["timeline"].endswith("run.png")
    with open(files["perfetto"]) as f:
        assert len(json.load(f)["traceEvents"]) > len(events[0])
    assert _png_size(files["timeline"]) == (1400, 380)
    assert s["devices"] == prof.summary(events, c.params, phases)["devices"]
