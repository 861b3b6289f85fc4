"""Timed streams on the multi-device system: the same streams on the functional model and on
the RTL system (root complex, switch, links, devices), measured by completion records.

A :class:`SystemCase` gives one stream per device. Each is wrapped as::

    SEM_WAIT GO            (released by the host, on every device at once)
    COMPLETE -> record 0   (its record carries the device's cycle count)
    ...the case's commands...
    COMPLETE -> record 1

so a case starts on every device together however long the launches took, and its span is
``max(record 1) - min(record 0)`` over the devices: from the first device starting to the last
one finishing. Cycle counts are the same clock on every device (all leave reset together).

:func:`measure` runs the cases one after another on one functional-model ``System`` and then
on one RTL system (enumerated once, rings continuing from case to case, as the model's do),
from the same images and register writes; it checks the DRAM regions each case names
against the model's and returns both spans, every record, the wall time and the cycles
simulated. The link calibration test (``tests/hw/test_system_timing.py``) and the ``link``,
``allreduce`` and ``simspeed`` benchmarks are built on it.
"""

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..sw import regmap
from ..sw.fm.system import System
from ..sw.isa import Command, encode_stream
from ..sw.isa.enums import Engine, Space
from ..sw.isa.table import NUM_SEMAPHORES
from .device import model_launch
from .device_timing import RECORD_ADDR, STREAM_ADDR, model_records, record
from .system_top import SYSTEM_BUS, SYSTEM_PARAMS

__all__ = ["SystemCase", "GO_SEM", "STREAM_ADDR", "RECORD_ADDR", "fm_run", "measure",
           "peer_write_case", "peer_read_case", "ping_pong_case", "allreduce_case"]

#: The semaphore every case's streams wait on; the host sets it to 1 to start them.
GO_SEM = NUM_SEMAPHORES - 1


@dataclass
class SystemCase:
    """``streams`` ``{device: [Command]}`` timed together; ``inputs`` ``[(device, dram addr,
    bytes)]`` loaded first; ``regs`` ``{device: {register: value}}`` run-time registers;
    ``checks`` ``[(device, dram addr, n)]`` compared with the model after the run; ``setup``
    and ``teardown`` ``{device: [Command]}`` run untimed before record 0 and after record 1;
    ``info`` free-form (sizes, for tables)."""
    name: str
    streams: dict
    inputs: list = field(default_factory=list)
    regs: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)
    teardown: dict = field(default_factory=dict)

    def stream(self, device):
        return [Command("SEM_WAIT", sem=GO_SEM, value=1, consume=True),
                *self.setup.get(device, []), record(0), *self.streams.get(device, []),
                record(1), *self.teardown.get(device, [])]

    def span(self, records):
        """First start to last finish, from ``{device: (record 0, record 1)}``."""
        return max(r[1] for r in records.values()) - min(r[0] for r in records.values())


def fm_run(system, case):
    """Run ``case`` on ``system`` (a model ``System``, left as the case leaves it): ``(launches,
    records, checks)`` -- the launch per device for the RTL, ``{device: (record 0, record
    1)}`` and ``{(device, addr): bytes}`` of the case's checks."""
    n = len(system.devices)
    for d, addr, data in case.inputs:
        system.devices[d].dram.write(addr, np.frombuffer(bytes(data), np.uint8))
    launches = {}
    for d in range(n):
        inputs = [(addr, data) for dd, addr, data in case.inputs if dd == d]
        launches[d] = model_launch(system, d, encode_stream(case.stream(d)), STREAM_ADDR,
                                   regs=case.regs.get(d), extra_regions=inputs)
    for dev in system.devices:     # every device released at the same cycle
        dev.mmio_write(regmap.SEM_VALUE + 8 * GO_SEM, 1)
    system.run(50_000_000)
    for d, dev in enumerate(system.devices):
        if dev.error_code:
            raise AssertionError(f"{case.name}: device {d} stops with {dev.error_code.name}: "
                                 f"{dev.error_message}")
    system.check()
    records = {d: tuple(model_records(dev)) for d, dev in enumerate(system.devices)}
    checks = {(d, addr): system.devices[d].dram.read(addr, n).tobytes()
              for d, addr, n in case.checks}
    return launches, records, checks


def measure(cases, n, params=SYSTEM_PARAMS, bus=SYSTEM_BUS, *, timeout=2400,
            timeout_cycles=2_000_000):
    """Run ``cases`` on the model and on the ``n``-device RTL system. Returns ``(rows,
    run)``: per case ``{"name", "info", "fm", "rtl"}`` (spans) and ``"fm_records"``,
    ``"rtl_records"`` (``{device: (record 0, record 1)}``), ``"rtl_go"`` (``{device: cycle the
    host requested its GO write}``), ``"wall_s"`` and ``"cycles"`` (the RTL's wall time and
    cycles from the host's release to the last interrupt); ``run`` is
    ``{"build_seconds", "cached", "simulation_seconds", "directory"}`` (the build's)."""
    from .system_top import build_system
    from .verilator_flow import run
    system = System(n, params, bus=bus)
    specs, fm = [], []
    for case in cases:
        launches, records, checks = fm_run(system, case)
        fm.append(records)
        specs.append({"name": case.name,
                      "launches": {d: {"regions": [[a, bytes(x).hex()] for a, x in l.regions],
                                       "writes": [list(w) for w in l.writes]}
                                   for d, l in launches.items()},
                      "checks": [[d, a, x.hex()] for (d, a), x in checks.items()]})
    design = build_system(n, params, bus, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="npusim-system-timing-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({
            "params": params.as_dict(), "host_bytes": bus.host_bytes, "devices": n,
            "timeout_cycles": timeout_cycles, "go": regmap.SEM_VALUE + 8 * GO_SEM,
            "records": RECORD_ADDR, "cases": specs}))
        started = time.monotonic()
        ran = run(design, Path(__file__).with_name("system_timing_tb.py"), timeout=timeout,
                  env={"SYSTEM_TIMING_SPEC": str(spec), "SYSTEM_TIMING_RESULT": str(result)})
        measured = json.loads(result.read_text())["cases"]
    rows = []
    for case, records, got in zip(cases, fm, measured, strict=True):
        rtl = {int(d): tuple(r) for d, r in got["records"].items()}
        rows.append({"name": case.name, "info": case.info, "fm": case.span(records),
                     "rtl": case.span(rtl), "fm_records": records, "rtl_records": rtl,
                     "rtl_go": {int(d): c for d, c in got["go"].items()},
                     "wall_s": got["wall_s"], "cycles": got["cycles"]})
    return rows, {"build_seconds": design.seconds, "cached": design.cached,
                  "simulation_seconds": ran.seconds or time.monotonic() - started,
                  "directory": str(design.directory)}


# -- the cases ---------------------------------------------------------------------------------

#: DRAM areas of the cases (every device): inputs, outputs.
IN, OUT = 0x100000, 0x200000
#: Run-time registers the cases use for bus addresses (the collectives use 29-31).
PEER_DATA, PEER_MMIO = 20, 21
#: The semaphore the point-to-point cases signal.
SIGNAL_SEM = 5


def _data(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _copy(src_space, src, dst_space, dst, nbytes, **fields):
    return Command("DMA_COPY", engine=Engine.LINK, src_space=src_space, src_off=src,
                   dst_space=dst_space, dst_off=dst, len=nbytes, n1=1, n2=1, **fields)


def _signal(**fields):
    return Command("SEM_SIGNAL", engine=Engine.LINK, sem=SIGNAL_SEM, amount=1, remote=True,
                   peer_reg=PEER_MMIO, **fields)


def _wait():
    return Command("SEM_WAIT", engine=Engine.LINK, sem=SIGNAL_SEM, value=1, consume=True)


def peer_write_case(nbytes, bus=SYSTEM_BUS):
    """Device 0 writes ``nbytes`` into device 1's DRAM over the link, then signals it; the
    span ends when device 1 has the signal (so the data is there)."""
    return SystemCase(
        f"peer write {nbytes} B",
        {0: [_copy(Space.DRAM, IN, Space.LINK, 0, nbytes, dst_reg=PEER_DATA), _signal()],
         1: [_wait()]},
        inputs=[(0, IN, _data(nbytes)), (1, OUT, bytes(nbytes))],
        regs={0: {PEER_DATA: bus.dram(1) + OUT, PEER_MMIO: bus.mmio(1)}},
        checks=[(1, OUT, nbytes)], info={"kind": "peer write", "bytes": nbytes})


def peer_read_case(nbytes, bus=SYSTEM_BUS):
    """Device 0 reads ``nbytes`` of device 1's DRAM over the link into its own."""
    return SystemCase(
        f"peer read {nbytes} B",
        {0: [_copy(Space.LINK, 0, Space.DRAM, OUT, nbytes, src_reg=PEER_DATA)]},
        inputs=[(1, IN, _data(nbytes, 2)), (0, OUT, bytes(nbytes))],
        regs={0: {PEER_DATA: bus.dram(1) + IN}},
        checks=[(0, OUT, nbytes)], info={"kind": "peer read", "bytes": nbytes})


def ping_pong_case(rounds, bus=SYSTEM_BUS):
    """Remote semaphore signals back and forth between devices 0 and 1, ``rounds`` times:
    ``2 * rounds`` one-way signal latencies, each a posted write through the switch and a
    semaphore wait woken by it."""
    return SystemCase(
        f"signal ping-pong x{rounds}",
        {0: [_signal(), _wait()] * rounds, 1: [_wait(), _signal()] * rounds},
        regs={0: {PEER_MMIO: bus.mmio(1)}, 1: {PEER_MMIO: bus.mmio(0)}},
        info={"kind": "ping-pong", "rounds": rounds, "bytes": 0})


def allreduce_case(n, count, params=SYSTEM_PARAMS, bus=SYSTEM_BUS, seed=1, slot_bytes=None):
    """A ring all-reduce of ``count`` fp32 elements in place in every device's scratchpad
    (``firmware/collectives.py``, planned for ``params``, pieces of ``slot_bytes`` or the
    planner's choice): loaded from DRAM ``OUT`` before the span, stored back after it and
    checked."""
    from ..firmware import collectives as col
    from ..firmware.collectives import Buffer
    from ..firmware.dma import copy
    nbytes = 4 * count
    plan = col.plan_allreduce(params, n, count, Buffer.sram(0), recv=IN,
                              stage=-(-nbytes // 64) * 64, slot_bytes=slot_bytes)
    rng = np.random.default_rng(seed)
    inputs = []
    for d in range(n):
        inputs += [(d, OUT, rng.standard_normal(count).astype(np.float32).tobytes()),
                   (d, IN, bytes(plan.recv_slots * plan.slot_bytes))]
    load = copy(Engine.DMA_IN, Space.DRAM, OUT, Space.SRAM, 0, nbytes)
    store = copy(Engine.DMA_OUT, Space.SRAM, 0, Space.DRAM, OUT, nbytes)
    return SystemCase(
        f"all-reduce n={n} {nbytes} B, {plan.slot_bytes} B pieces", {d: col.ring_allreduce(plan, d) for d in range(n)},
        inputs, {d: col.ring_registers(plan, d, bus) for d in range(n)},
        [(d, OUT, nbytes) for d in range(n)],
        {"kind": "allreduce", "devices": n, "bytes": nbytes, "slot_bytes": plan.slot_bytes,
         "recv_slots": plan.recv_slots},
        setup={d: load for d in range(n)}, teardown={d: store for d in range(n)})
