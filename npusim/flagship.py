"""``npusim sim``: the flagship co-simulation -- a tensor-parallel LLM on the RTL system.

The trained test model (``tiny-trained``: a 2-layer byte-level Llama) is compiled for TP
devices of the system RTL's hardware, a prompt runs through prefill and ``tokens`` decode
steps on the Verilated system (devices, switch and root complex, driven over the link by the
runtime's ``rtl`` backend), and the same requests run on the functional model and in PyTorch.
Checks: the RTL's tokens are PyTorch's and the functional model's, its logits are the
functional model's bit for bit and within the compiled model's bound of PyTorch's, and its
engine trace holds the same commands (count, bytes, MACs per engine) as the model's. The
summary gives the cycles per phase and device, matrix-unit utilisation, bytes over the link,
the all-reduces' share of the time, the RTL's simulated cycles per wall second and the
functional model's estimate against the RTL's cycles. Artifacts go to ``build/sim/``: the
Perfetto trace and PNG timeline of the RTL run (every command each engine head held, traced
from the system's ``busy`` and ``running`` ports), and with ``waves`` the FST of the run.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["run_flagship", "BOUND"]

#: Logit error bound of the compiled model against PyTorch, as a fraction of the largest
#: logit (bf16 matrix operands; docs/compiler.md).
BOUND = 0.02
#: What fits the system RTL's 64 KiB scratchpad: contexts of 64 positions, prefills of at most
#: 32 tokens (a 64-token bucket's attention tiles do not fit); ``npusim generate --backend
#: rtl`` serves within them too.
RTL_CONTEXT, RTL_BUCKETS = 64, [16, 32]
PROMPT = "We hold these truths"


def _pytorch(config, prompt_ids, n):
    """PyTorch's (Hugging Face's) greedy tokens and their logits."""
    import torch
    from .sw.compiler.models import build_model
    model = build_model(config)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.stack(out.logits)[:, 0].numpy()


def _work(events, params):
    """``{(engine, command): (count, bytes, MACs)}`` of a device's trace (the profile's
    per-command table)."""
    from .sw.runtime.profile import summary
    return {(c["engine"], c["command"]): (c["count"], c["bytes"], c["macs"])
            for c in summary([events], params)["commands"]}


def run_flagship(*, tp=2, tokens=8, layers=2, waves=False, array=4, small=False,
                 out="build/sim", prompt=None):
    """Run the flagship; returns the exit status (0 when every check passes). ``layers``
    takes the trained checkpoint's first layers (1 or 2); ``array`` is the matrix unit's
    edge; ``small`` a short prompt and at most 2 decode steps."""
    from .sw.compiler.models import PRESETS
    from .sw.runtime.engine import LLM, SamplingParams
    from .sw.runtime.profile import (format_summary, perfetto_trace, summary, timeline_png,
                                     union)
    from .cosim.rtl_backend import RTL_PARAMS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompt = prompt or ("We hold" if small else PROMPT)
    if small:
        tokens = min(tokens, 2)
    params = RTL_PARAMS.replace(array_rows=array, array_cols=array, vector_lanes=array)
    config = dict(PRESETS["tiny-trained"], num_hidden_layers=layers)
    # a short prompt still runs in a 32-token bucket: the prefill then overlaps its
    # all-reduces with the GEMMs (firmware/schedule.py), which the RTL holds to the model's
    # bits
    kw = dict(tp=tp, max_context=RTL_CONTEXT, kv_blocks=16,
              prompt_buckets=[32] if small else RTL_BUCKETS,
              max_num_seqs=1, record_logits=True, params=params)
    sampling = SamplingParams(max_tokens=tokens + 1)      # the prefill's token, then decodes
    print(f"npusim sim: tiny-trained ({layers}-layer byte-level Llama) at TP = {tp} on the "
          f"system RTL ({tp} devices, {array}x{array} matrix units, switch, root complex); "
          f"prompt {prompt!r}, prefill + {tokens} decode steps\n")

    started = time.monotonic()
    options = {"waves": waves, "results_dir": out / "rtl"}
    with LLM(config, backend="rtl", backend_options=options, **kw) as rtl:
        setup = time.monotonic() - started
        rtl.cluster.trace()
        t0 = time.monotonic()
        got = rtl.generate(prompt, sampling)[0]
        wall = time.monotonic() - t0
        rtl_cycles = dict(rtl.model.cycles)
        rtl_device = {k: list(v) for k, v in rtl.model.device_cycles.items()}
        events = [rtl.cluster.events(d) for d in range(tp)]
        spans = list(rtl.model.spans)
        backend = rtl.cluster.backend
    fst = backend.waves
    print(f"RTL: {got.text!r} ({sum(rtl_cycles.values()):,} cycles in {wall:.1f} s after "
          f"{setup:.1f} s of build check, compile and load)")

    with LLM(config, **kw) as fm:
        fm.cluster.trace()
        want = fm.generate(prompt, sampling)[0]
        fm_cycles = dict(fm.model.cycles)
        fm_work = [_work(fm.cluster.events(d), params) for d in range(tp)]
    torch_tokens, torch_logits = _pytorch(config, got.prompt_token_ids, tokens + 1)

    rtl_logits, fm_logits = np.array(got.logits), np.array(want.logits)
    differ = [i for i, (a, b) in enumerate(zip(rtl_logits, fm_logits))
              if not np.array_equal(a.view(np.uint32), b.view(np.uint32))]
    worst = max((float(np.abs(rtl_logits[i] - fm_logits[i]).max()) for i in differ),
                default=0.0)
    errors = [float(np.abs(a - b).max() / np.abs(b).max())
              for a, b in zip(rtl_logits, torch_logits)]
    checks = [
        ("tokens: RTL = PyTorch", got.token_ids == torch_tokens),
        ("tokens: RTL = functional model", got.token_ids == want.token_ids),
        ("logits: RTL = functional model, bit for bit" +
         (f" (steps {differ} differ, by up to {worst:.3g})" if differ else ""),
         rtl_logits.shape == fm_logits.shape and not differ),
        (f"logits: RTL within {BOUND:.0%} of PyTorch's largest (worst "
         f"{max(errors):.2%})", max(errors) <= BOUND),
        ("trace: the RTL's commands = the functional model's (per device, engine and "
         "command: count, bytes, MACs)", [_work(ev, params) for ev in events] == fm_work),
    ]

    s = summary(events, params, spans)
    hz = params.clock_hz
    macs = {x["device"]: x["macs"] for x in s["devices"]}
    total_rtl = sum(rtl_cycles.values())
    # cycles the LINK queue held a command: the all-reduces' sends and their waits
    link = [union([(e.start, e.end) for e in ev if e.engine.name == "LINK"]) for ev in events]
    lines = ["", "checks:"]
    lines += [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks]
    lines += ["", f"{'phase':<11} {'launches':>8} {'device':>6} {'RTL cycles':>11} "
              f"{'model est.':>11} {'est./RTL':>8}"]
    for phase in rtl_cycles:
        launches = sum(1 for p, _, _ in spans if p == phase)
        for d in range(tp):
            lines.append(f"{phase:<11} {launches:>8} {d:>6} {rtl_device[phase][d]:>11,} "
                         f"{fm_cycles[phase]:>11,} {fm_cycles[phase] / rtl_cycles[phase]:>8.3f}")
    lines.append("")
    for d in range(tp):
        util = macs[d] / (total_rtl * params.macs_per_cycle)
        link_bytes = sum(e.bytes for e in events[d] if e.engine.name == "LINK")
        lines.append(f"device {d}: matrix-unit utilisation {util:.1%} ({macs[d]:,} MACs in "
                     f"{total_rtl:,} RTL cycles); {link_bytes:,} bytes sent over the link; "
                     f"all-reduces {link[d] / total_rtl:.1%} of the time")
    lines.append(f"RTL: {total_rtl:,} cycles in {wall:.1f} s = {total_rtl / wall:,.0f} cycles "
                 f"per wall second ({total_rtl / hz * 1e6:.1f} us at {hz / 1e9:g} GHz)")
    lines.append(f"functional model's estimate: {sum(fm_cycles.values()):,} cycles "
                 f"({sum(fm_cycles.values()) / total_rtl:.3f} of the RTL's)")

    files = {"perfetto": out / "trace.json", "timeline": out / "timeline.png"}
    perfetto_trace(events, params, spans, path=files["perfetto"])
    timeline_png(events, params, files["timeline"], spans,
                 title=f"npusim sim: tiny-trained on the RTL, TP = {tp}, prompt {prompt!r}")
    if fst is not None and fst.is_file():
        from .cosim.fst import signals
        from .cosim.gtkwave import layout
        files["waves"] = out / "system.fst"
        shutil.move(fst, files["waves"])    # gigabytes for a default run: not copied
        files["layout"] = out / "system.gtkw"
        files["layout"].write_text(layout(signals(files["waves"]), backend.design.name, tp,
                                          "system.fst"))
    (out / "summary.json").write_text(json.dumps({
        "checks": {name: bool(ok) for name, ok in checks}, "tokens": got.token_ids,
        "text": got.text, "rtl_cycles": rtl_cycles, "rtl_device_cycles": rtl_device,
        "model_cycles": fm_cycles, "rtl_cycles_per_second": total_rtl / wall,
        "logit_errors": errors, "params": params.as_dict()}, indent=1) + "\n")
    lines.append("")
    lines.append("artifacts: " + ", ".join(str(f) for f in files.values()) +
                 f", {out / 'summary.json'}")
    print("\n".join(lines))
    print("\n" + format_summary(s))
    ok = all(ok for _, ok in checks)
    print(f"\nnpusim sim: {'PASS' if ok else 'FAIL'} ({time.monotonic() - started:.0f} s)")
    return 0 if ok else 1
