"""Profiling output of a traced run: a Perfetto trace, a summary table and a PNG timeline.

The input is what the functional model records when tracing is on (``Cluster.trace()``): per
device a list of :class:`~npusim.sw.fm.device.TraceEvent` (engine, command name, start and end
cycle, the command's DRAM address, bytes moved, MACs), given as a list indexed by device or a
``{device: events}`` dict, and optionally the runtime's phase launches ``[(name, start_cycle,
end_cycle)]`` (spans of cycles on all devices, e.g. ``("decode:4", 1200, 5400)``).

- :func:`perfetto_trace`: Chrome trace-event JSON that ui.perfetto.dev and chrome://tracing
  open: a process per device, a thread per engine queue and one for the phases, a complete
  event per command (``SEM_WAIT`` spans as category ``stall`` named ``wait``), counters of the
  bytes each DMA engine moved per bucket of time;
- :func:`summary` / :func:`format_summary`: per device and engine busy cycles, utilisation,
  stalls, bytes and MACs, per phase launches, cycles and share, per command counts and cycles;
- :func:`timeline_png`: a matplotlib (Agg) timeline, one row per (device, engine);
- :func:`profile`: all of it for a :class:`~npusim.sw.runtime.cluster.Cluster`.

Cycles are device clock cycles; ``params.clock_hz`` turns them into time (microseconds in the
trace and on the timeline). Without a clock (``clock_hz`` 0 or None) the trace shows one cycle
as one microsecond and the timeline is in cycles.
"""

import json
import math
import os
from collections.abc import Mapping

from npusim.sw.isa.enums import Engine
from npusim.sw.params import DEFAULT

__all__ = ["perfetto_trace", "summary", "format_summary", "timeline_png", "profile", "union",
           "COUNTER_BUCKETS"]

#: Buckets of time the trace's "bytes moved" counters cut the run into.
COUNTER_BUCKETS = 200

_ENGINES = sorted(Engine, key=int)                      # DMA_IN, DMA_OUT, COMPUTE, LINK
_DMA_ENGINES = (Engine.DMA_IN, Engine.DMA_OUT, Engine.LINK)
_COMPUTE = frozenset(("MATMUL", "VECTOR", "REDUCE", "MASK"))
_WAIT, _SIGNAL = "SEM_WAIT", "SEM_SIGNAL"

# timeline bar kinds: (label, colour, hatch); drawn in this order, legend in this order
_KINDS = {
    "DMA_IN": ("DMA in", "#4c72b0", None),
    "DMA_OUT": ("DMA out", "#55a868", None),
    "MATMUL": ("MATMUL", "#c44e52", None),
    "VECTOR": ("vector / reduce / mask", "#dd8452", None),
    "LINK": ("link DMA", "#8172b3", None),
    "SIGNAL": ("semaphore signal (tick)", "#222222", None),
    "WAIT": ("stall (SEM_WAIT)", "#d9d9d9", "////"),
    "OTHER": ("other", "#937860", None),
}
_PHASE_COLOURS = ("#fff2b3", "#d6ecff")


# -- inputs ------------------------------------------------------------------------------------

def _devices(events_by_device):
    """``[(device, [events])]`` from a list (index = device) or a ``{device: events}``."""
    if isinstance(events_by_device, Mapping):
        items = sorted(events_by_device.items())
    else:
        items = list(enumerate(events_by_device))
    return [(int(d), list(evs or ())) for d, evs in items]


def _phases(phases):
    """``[(name, start, end)]`` from 3-sequences, mappings or objects with those fields."""
    out = []
    for p in phases or ():
        if isinstance(p, Mapping):
            name, start, end = p["name"], p["start"], p["end"]
        elif hasattr(p, "start") and hasattr(p, "end") and hasattr(p, "name"):
            name, start, end = p.name, p.start, p.end
        else:
            name, start, end = p
        start, end = int(start), int(end)
        if end < start:
            raise ValueError(f"phase {name!r} ends ({end}) before it starts ({start})")
        out.append((str(name), start, end))
    return out


def _span(devices, phases):
    """(first cycle, last cycle) over every event and phase; (0, 0) when there is none."""
    starts = [min(ev.start for ev in evs) for _, evs in devices if evs] + \
        [s for _, s, _ in phases]
    ends = [max(ev.end for ev in evs) for _, evs in devices if evs] + [e for _, _, e in phases]
    return (min(starts), max(ends)) if starts else (0, 0)


def _clock(params):
    hz = getattr(params, "clock_hz", None)
    return float(hz) if hz else None


def _is_dma(name):
    return name.startswith("DMA_")


def _kind(ev):
    """The timeline bar kind of an event."""
    name, engine = ev.name, Engine(ev.engine)
    if name == _WAIT:
        return "WAIT"
    if name == _SIGNAL:
        return "SIGNAL"
    if name == "MATMUL":
        return "MATMUL"
    if name in _COMPUTE:
        return "VECTOR"
    if _is_dma(name):
        return engine.name if engine != Engine.COMPUTE else "OTHER"
    return "OTHER"


def _category(ev):
    """The trace category of an event: dma, link, matmul, vector, sync or stall."""
    name = ev.name
    if name == _WAIT:
        return "stall"
    if name == _SIGNAL:
        return "sync"
    if _is_dma(name):
        return "link" if Engine(ev.engine) == Engine.LINK else "dma"
    if name == "MATMUL":
        return "matmul"
    return "vector" if name in _COMPUTE else "other"


# -- Perfetto / Chrome trace ------------------------------------------------------------------

def _by_start(ev):
    return ev.start


def _pid(d):
    return d + 1                      # pid 0 is the idle process to some viewers


def _tid(d, k):
    """Thread ids unique over the whole trace: k = 0 phases, 1 + engine for the engines."""
    return (d + 1) * 1000 + k


def perfetto_trace(events_by_device, params=DEFAULT, phases=(), *, path=None):
    """A Chrome trace-event JSON object of the run (and written to ``path``, compact, when
    given): ``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}``.

    One process per device ("device 0", ...) with a thread per engine queue (DMA_IN, DMA_OUT,
    COMPUTE, LINK) and a "phases" thread (on top) carrying the phase spans. Each command is a
    complete event (``"ph": "X"``) with ``ts``/``dur`` in microseconds and ``args`` bytes,
    macs, offset (the command's DRAM address, hex), cycles and start_cycle; categories are
    ``dma``, ``link`` (DMAs on the LINK queue), ``matmul``, ``vector``, ``sync``
    (``SEM_SIGNAL``) and ``stall`` (a ``SEM_WAIT`` span, named ``wait``). Per device a counter
    ``bytes moved`` holds the bytes each DMA engine moved in each of :data:`COUNTER_BUCKETS`
    buckets of the run (``otherData["counter_bucket_cycles"]`` wide).
    """
    params = params or DEFAULT
    devices, phases = _devices(events_by_device), _phases(phases)
    hz = _clock(params)
    per_us = hz / 1e6 if hz else 1.0          # cycles per microsecond (1000.0 at 1 GHz)

    def us(cycle):
        return cycle / per_us

    first, last = _span(devices, phases)
    bucket = max(1, math.ceil((last - first) / COUNTER_BUCKETS)) if last > first else 1
    meta, body = [], []
    for d, evs in devices:
        pid = _pid(d)
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                     "args": {"name": f"device {d}"}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                     "args": {"sort_index": d}})
        threads = [(0, "phases")] + [(1 + int(e), e.name) for e in _ENGINES]
        for order, (k, name) in enumerate(threads):
            meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": _tid(d, k),
                         "args": {"name": name}})
            meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": _tid(d, k),
                         "args": {"sort_index": order}})
        for name, start, end in phases:
            body.append({"ph": "X", "name": name, "cat": "phase", "pid": pid, "tid": _tid(d, 0),
                         "ts": us(start), "dur": us(end - start),
                         "args": {"cycles": end - start, "start_cycle": start}})
        looks = {}                    # (engine, command) -> (event name, category, tid)
        for ev in sorted(evs, key=_by_start):
            key = (ev.engine, ev.name)
            look = looks.get(key)
            if look is None:
                look = looks[key] = ("wait" if ev.name == _WAIT else ev.name, _category(ev),
                                     _tid(d, 1 + int(ev.engine)))
            name, cat, tid = look
            args = {"cycles": ev.end - ev.start, "start_cycle": ev.start,
                    "offset": f"{ev.offset:#x}", "bytes": int(ev.bytes), "macs": int(ev.macs)}
            if cat == "stall":
                args["command"] = ev.name
            body.append({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid,
                         "ts": ev.start / per_us, "dur": (ev.end - ev.start) / per_us,
                         "args": args})
        body.extend(_counters(evs, pid, first, last, bucket, us))
    other = {"generator": "npusim.sw.runtime.profile", "devices": len(devices),
             "first_cycle": first, "last_cycle": last, "cycles": last - first,
             "clock_hz": hz or 0, "time_unit": "us" if hz else "cycles (shown as us)",
             "counter_bucket_cycles": bucket, "phases": len(phases)}
    trace = {"traceEvents": meta + body, "displayTimeUnit": "ns", "otherData": other}
    if path is not None:
        with open(path, "w") as f:           # dumps: the C encoder (dump's is pure Python)
            f.write(json.dumps(trace, separators=(",", ":")))
    return trace


def _counters(evs, pid, first, last, bucket, us):
    """Counter events: bytes per DMA engine moved in each bucket (an event's bytes spread
    over the buckets it overlaps, in proportion), then zeros at the end."""
    moving = [ev for ev in evs if ev.bytes]
    if not moving or last <= first:
        return []
    n = max(1, math.ceil((last - first) / bucket))
    sums = {e.name: [0.0] * n for e in _DMA_ENGINES}
    for ev in moving:
        engine = Engine(ev.engine).name
        row = sums.setdefault(engine, [0.0] * n)
        s, e = ev.start - first, ev.end - first
        if e <= s:
            row[min(n - 1, s // bucket)] += ev.bytes
            continue
        for b in range(s // bucket, min(n - 1, (e - 1) // bucket) + 1):
            lo, hi = max(s, b * bucket), min(e, (b + 1) * bucket)
            if hi > lo:
                row[b] += ev.bytes * (hi - lo) / (e - s)
    out = []
    for b in range(n):
        out.append({"ph": "C", "name": "bytes moved", "pid": pid, "tid": 0,
                    "ts": us(first + b * bucket),
                    "args": {k: round(v[b], 3) for k, v in sums.items()}})
    out.append({"ph": "C", "name": "bytes moved", "pid": pid, "tid": 0, "ts": us(last),
                "args": {k: 0 for k in sums}})
    return out


# -- summary ----------------------------------------------------------------------------------

def union(spans):
    """Cycles covered by the union of ``[(start, end)]``."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)


def summary(events_by_device, params=DEFAULT, phases=()):
    """What the run did, as a dict:

    - ``cycles``, ``start``, ``end`` (over all devices and phases), ``clock_hz``, ``seconds``;
    - ``devices``: per device its ``cycles`` (last end - first start over its events and the
      phases), and per engine ``commands``, ``busy_cycles`` (not counting ``SEM_WAIT``),
      ``utilisation`` (busy / cycles), ``waits`` and ``stall_cycles`` (``SEM_WAIT`` spans),
      ``bytes``, ``bytes_per_cycle``, ``peak_bytes_per_cycle`` (DRAM port for DMA_IN/OUT,
      link for LINK) and ``bandwidth_utilisation``, ``macs``; the device's ``bytes``,
      ``link_bytes``, ``macs``, ``mac_utilisation`` (MACs / (cycles * macs_per_cycle)),
      ``stall_cycles`` and ``most_stalled`` (the engine that waited longest, or None);
    - ``phases``: per phase name (first launch first) ``launches``, ``cycles`` (sum of its
      spans) and ``share`` of the total; ``unphased_cycles``: cycles no phase covers (None
      without phases);
    - ``commands``: per (engine, command) over all devices ``count``, ``cycles``, ``bytes``,
      ``macs``.
    """
    params = params or DEFAULT
    devices, phases = _devices(events_by_device), _phases(phases)
    hz = _clock(params)
    first, last = _span(devices, phases)
    total = last - first
    out_devices, commands = [], {}
    for d, evs in devices:
        start, end = _span([(d, evs)], phases)
        cycles = end - start
        engines = {e.name: {"commands": 0, "busy_cycles": 0, "utilisation": 0.0, "waits": 0,
                            "stall_cycles": 0, "bytes": 0, "macs": 0} for e in _ENGINES}
        per = {}                      # (engine, command) -> [count, cycles, bytes, macs]
        for ev in evs:
            key = (ev.engine, ev.name)
            a = per.get(key)
            if a is None:
                a = per[key] = [0, 0, 0, 0]
            a[0] += 1
            a[1] += ev.end - ev.start
            a[2] += ev.bytes
            a[3] += ev.macs
        for (engine, name), (count, span, moved, macs) in per.items():
            engine = Engine(engine)
            st = engines[engine.name]
            st["commands"] += count
            if name == _WAIT:
                st["waits"] += count
                st["stall_cycles"] += span
            else:
                st["busy_cycles"] += span
            st["bytes"] += int(moved)
            st["macs"] += int(macs)
            c = commands.setdefault((int(engine), name),
                                    {"engine": engine.name, "command": name, "count": 0,
                                     "cycles": 0, "bytes": 0, "macs": 0})
            c["count"] += count
            c["cycles"] += span
            c["bytes"] += int(moved)
            c["macs"] += int(macs)
        for e in _ENGINES:
            st = engines[e.name]
            st["utilisation"] = st["busy_cycles"] / cycles if cycles else 0.0
            if e in _DMA_ENGINES:
                peak = params.link_bytes_per_cycle if e == Engine.LINK \
                    else params.dram_bytes_per_cycle
                st["bytes_per_cycle"] = st["bytes"] / cycles if cycles else 0.0
                st["peak_bytes_per_cycle"] = peak
                st["bandwidth_utilisation"] = st["bytes_per_cycle"] / peak if peak else 0.0
        stalls = {k: v["stall_cycles"] for k, v in engines.items() if v["waits"]}
        macs = engines["COMPUTE"]["macs"]
        out_devices.append({
            "device": d, "start": start, "end": end, "cycles": cycles,
            "seconds": cycles / hz if hz else None, "engines": engines,
            "bytes": sum(v["bytes"] for v in engines.values()),
            "link_bytes": engines["LINK"]["bytes"],
            "macs": macs,
            "mac_utilisation": macs / (cycles * params.macs_per_cycle) if cycles else 0.0,
            "stall_cycles": sum(stalls.values()),
            "most_stalled": max(stalls, key=lambda k: (stalls[k], -Engine[k]))
            if stalls else None,
        })
    by_name = {}
    for name, s, e in phases:
        p = by_name.setdefault(name, {"name": name, "launches": 0, "cycles": 0, "share": 0.0})
        p["launches"] += 1
        p["cycles"] += e - s
    for p in by_name.values():
        p["share"] = p["cycles"] / total if total else 0.0
    return {
        "start": first, "end": last, "cycles": total, "clock_hz": hz,
        "seconds": total / hz if hz else None,
        "macs_per_cycle": params.macs_per_cycle,
        "devices": out_devices,
        "phases": list(by_name.values()),
        "unphased_cycles": total - union([(s, e) for _, s, e in phases]) if phases else None,
        "commands": [commands[k] for k in sorted(commands)],
    }


def _int(n):
    return f"{n:,}"


def _pct(x):
    return f"{100 * x:.1f}%"


def _table(headers, rows, left=1):
    """Aligned text table; the first ``left`` columns (or the columns ``left`` lists)
    left-aligned, the others right."""
    left = set(range(left)) if isinstance(left, int) else set(left)
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


def _time(cycles, hz):
    if not hz:
        return ""
    us = cycles / hz * 1e6
    return f" ({us / 1e3:,.3f} ms)" if us >= 1e4 else f" ({us:,.3f} us)"


def format_summary(s):
    """:func:`summary` as text tables: the run, the phases, the engines per device, the
    devices (MACs, link bytes, stalls) and the commands."""
    hz = s.get("clock_hz")
    clock = f" at {hz / 1e9:g} GHz" if hz else ""
    n = len(s["devices"])
    out = [f"profile: {n} device{'s' if n != 1 else ''}, {_int(s['cycles'])} cycles"
           f"{_time(s['cycles'], hz)}{clock}, cycles {_int(s['start'])} .. {_int(s['end'])}"]
    if s["phases"]:
        rows = [[p["name"], _int(p["launches"]), _int(p["cycles"]), _pct(p["share"])]
                for p in s["phases"]]
        if s.get("unphased_cycles"):
            u = s["unphased_cycles"]
            rows.append(["(no phase)", "", _int(u), _pct(u / s["cycles"] if s["cycles"] else 0)])
        out += ["", _table(["phase", "launches", "cycles", "share"], rows)]
    rows = []
    for dev in s["devices"]:
        for name, e in dev["engines"].items():
            bw = e.get("bandwidth_utilisation")
            rows.append([dev["device"], name, _int(e["commands"]), _int(e["busy_cycles"]),
                         _pct(e["utilisation"]), _int(e["waits"]), _int(e["stall_cycles"]),
                         _int(e["bytes"]) if name != "COMPUTE" else "-",
                         f"{e['bytes_per_cycle']:.2f}" if bw is not None else "-",
                         _pct(bw) if bw is not None else "-"])
    out += ["", _table(["device", "engine", "commands", "busy", "util", "waits", "stalled",
                        "bytes", "B/cycle", "bw util"], rows, left=2)]
    rows = [[dev["device"], _int(dev["cycles"]), _int(dev["macs"]),
             _pct(dev["mac_utilisation"]), _int(dev["bytes"]), _int(dev["link_bytes"]),
             _int(dev["stall_cycles"]), dev["most_stalled"] or "-"] for dev in s["devices"]]
    out += ["", _table(["device", "cycles", "MACs", "MAC util", "bytes", "link bytes",
                        "stalled", "stalled most"], rows, left=(0, 7))]
    if s["commands"]:
        busy = {}
        for c in s["commands"]:
            busy[c["engine"]] = busy.get(c["engine"], 0) + c["cycles"]
        rows = [[c["engine"], c["command"], _int(c["count"]), _int(c["cycles"]),
                 _pct(c["cycles"] / busy[c["engine"]]) if busy[c["engine"]] else "-",
                 _int(c["bytes"]), _int(c["macs"])] for c in s["commands"]]
        out += ["", _table(["engine", "command", "count", "cycles", "of engine", "bytes",
                            "MACs"], rows, left=2)]
    return "\n".join(out)


# -- PNG timeline -----------------------------------------------------------------------------

_WIDTH_PX, _LEFT_PX, _RIGHT_PX, _TOP_PX, _BOTTOM_PX = 1400, 110, 20, 56, 84


def _merge(bars, gap):
    """Sorted ``[(start, end)]`` with bars closer than ``gap`` merged."""
    out = []
    for s, e in sorted(bars):
        if out and s - out[-1][1] < gap:
            if e > out[-1][1]:
                out[-1][1] = e
        else:
            out.append([s, e])
    return out


def timeline_png(events_by_device, params, path, phases=(), *, title=None, max_bars=20000):
    """Draw the run as a PNG at ``path`` (1400 x (200 + 90 per device) pixels) and return
    ``path``: a row per (device, engine) with its commands as bars coloured by kind (DMA in,
    DMA out, MATMUL, vector work, link DMA; a semaphore signal is a tick), ``SEM_WAIT``
    stalls as grey hatched half-height bars, the phases as shaded bands labelled on top (when
    there is room), the x axis in microseconds (in cycles without a clock), a legend. With
    more than ``max_bars`` events, a row's bars of one kind closer than a pixel are merged,
    so huge traces stay fast."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    params = params or DEFAULT
    devices, phases = _devices(events_by_device), _phases(phases)
    hz = _clock(params)
    scale = 1e6 / hz if hz else 1.0
    first, last = _span(devices, phases)
    if last <= first:
        last = first + 1
    height = 200 + 90 * max(1, len(devices))
    fig = Figure(figsize=(_WIDTH_PX / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=_LEFT_PX / _WIDTH_PX, right=1 - _RIGHT_PX / _WIDTH_PX,
                        bottom=_BOTTOM_PX / height, top=1 - _TOP_PX / height)
    ax = fig.add_subplot()
    plot_px = _WIDTH_PX - _LEFT_PX - _RIGHT_PX
    cycles_per_px = (last - first) / plot_px
    n_events = sum(len(evs) for _, evs in devices)
    merge = n_events > max_bars
    outline = not merge and n_events <= 2000      # a white edge between adjacent bars

    n_engines = len(_ENGINES)
    n_rows = n_engines * max(1, len(devices))
    labels = []
    used = set()
    for i, (d, evs) in enumerate(devices):
        rows = {}
        for ev in evs:
            rows.setdefault((int(ev.engine), _kind(ev)), []).append((ev.start, ev.end))
        for (engine, kind), bars in sorted(rows.items(), key=lambda kv: (
                kv[0][0], list(_KINDS).index(kv[0][1]))):
            if merge:
                bars = _merge(bars, cycles_per_px)
            y = n_rows - 1 - (i * n_engines + engine)
            _, colour, hatch = _KINDS[kind]
            used.add(kind)
            edge = "#8c8c8c" if hatch else "white" if outline else "none"
            if kind == "SIGNAL":        # instantaneous: a tick at the top of the row
                ax.vlines([s * scale for s, _ in bars], y + 0.12, y + 0.42, colors=colour,
                          linewidth=0.6, zorder=3)
                continue
            h = 0.4 if kind == "WAIT" else 0.76
            ax.broken_barh([(s * scale, (e - s) * scale) for s, e in bars], (y - h / 2, h),
                           facecolors=colour, edgecolors=edge,
                           linewidth=0.5 if outline and not hatch else 0, hatch=hatch, zorder=2)
    for i, (d, _) in enumerate(devices):
        for e in _ENGINES:
            labels.append((n_rows - 1 - (i * n_engines + int(e)), f"{d}  {e.name}"))
        if i:
            ax.axhline(n_rows - i * n_engines - 0.5, color="#555555", linewidth=0.8, zorder=3)
    if labels:
        ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=7)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylim(-0.5, n_rows - 0.5)
    ax.set_xlim(first * scale, last * scale)
    ax.set_xlabel("time (µs)" if hz else "cycles", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)

    top = blended_transform_factory(ax.transData, ax.transAxes)
    for k, (name, s, e) in enumerate(phases):
        ax.axvspan(s * scale, e * scale, color=_PHASE_COLOURS[k % 2], alpha=0.6, linewidth=0,
                   zorder=1)
        ax.axvline(s * scale, color="#b0a060", linewidth=0.4, zorder=1)
        if (e - s) / cycles_per_px >= 6 * len(name) + 4:
            ax.text((s + e) / 2 * scale, 1.01, name, transform=top, ha="center", va="bottom",
                    fontsize=6.5, clip_on=False)
    handles = [Patch(facecolor=_KINDS[k][1], hatch=_KINDS[k][2],
                     edgecolor="#8c8c8c" if _KINDS[k][2] else "none", label=_KINDS[k][0])
               for k in _KINDS if k in used]
    if phases:
        handles.append(Patch(facecolor=_PHASE_COLOURS[0], edgecolor="none", label="phase"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
    span = last - first
    if title is None:
        title = (f"npusim timeline: {len(devices)} device{'s' if len(devices) != 1 else ''}, "
                 f"{span:,} cycles{_time(span, hz)}")
        if merge:
            title += f" ({n_events:,} events, bars closer than a pixel merged)"
    fig.text(_LEFT_PX / _WIDTH_PX, 1 - 8 / height, title, ha="left", va="top", fontsize=9)
    fig.savefig(path, dpi=100, format="png")
    return path


# -- all of it for a cluster ------------------------------------------------------------------

def profile(cluster, phases, out_dir, stem="trace"):
    """The traced events of every device of ``cluster`` (``cluster.trace()`` before the run)
    as ``<out_dir>/<stem>.json`` (Perfetto) and ``<out_dir>/<stem>.png`` (timeline); returns
    the :func:`summary` with ``"files"``: ``{"perfetto": path, "timeline": path}``."""
    os.makedirs(out_dir, exist_ok=True)
    events = [list(cluster.events(d)) for d in range(cluster.n_devices)]
    phases = _phases(phases)
    json_path = os.path.join(out_dir, f"{stem}.json")
    png_path = os.path.join(out_dir, f"{stem}.png")
    perfetto_trace(events, cluster.params, phases, path=json_path)
    timeline_png(events, cluster.params, png_path, phases)
    out = summary(events, cluster.params, phases)
    out["files"] = {"perfetto": json_path, "timeline": png_path}
    return out
