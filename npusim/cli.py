"""The ``npusim`` command line: disassemble and run streams, the flagship simulation, benchmarks.

Benchmark convention: ``npusim bench NAME`` prints a readable table and, as its last line, one
JSON object of its figures; ``make bench`` runs them all and records the JSON under
``bench/results/``.
"""

import argparse
import json
import sys
from pathlib import Path

from . import __version__

__all__ = ["main"]


def _int(text):
    return int(text, 0)


def _split_spec(text, n_fields, usage):
    """``[DEV:]F1:...:Fn=RHS`` -> (device, [F1, ..., Fn], RHS); DEV defaults to 0."""
    spec, _, rhs = text.partition("=")
    parts = spec.split(":")
    if not rhs or len(parts) not in (n_fields, n_fields + 1):
        raise argparse.ArgumentTypeError(f"expected {usage}, got {text!r}")
    dev = int(parts[0]) if len(parts) == n_fields + 1 else 0
    return dev, parts[-n_fields:], rhs


def _space(text):
    if text.lower() not in ("dram", "sram"):
        raise argparse.ArgumentTypeError(f"space must be dram or sram, got {text!r}")
    return text.lower()


def _parse_image(text):
    """``[DEV:]SPACE:ADDR=FILE`` -> (dev, space, addr, path)."""
    dev, (space, addr), path = _split_spec(text, 2, "[DEV:]SPACE:ADDR=FILE")
    return dev, _space(space), _int(addr), path


def _parse_dump(text):
    """``[DEV:]SPACE:ADDR:LEN=FILE`` -> (dev, space, addr, length, path)."""
    dev, (space, addr, length), path = _split_spec(text, 3, "[DEV:]SPACE:ADDR:LEN=FILE")
    return dev, _space(space), _int(addr), _int(length), path


def _parse_reg(text):
    """``[DEV:]REG=VALUE`` -> (dev, register index, value)."""
    dev, (reg,), value = _split_spec(text, 1, "[DEV:]REG=VALUE")
    return dev, int(reg.lstrip("rR")), _int(value)


def _buckets(text):
    try:
        buckets = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token counts like 16,32, got {text!r}")
    if not buckets or min(buckets) < 1:
        raise argparse.ArgumentTypeError(f"bucket sizes are positive, got {text!r}")
    return buckets


def cmd_disasm(args):
    from .sw.isa import IsaError, disassemble
    try:
        sys.stdout.write(disassemble(Path(args.stream).read_bytes(), check_crc=not args.no_crc))
    except IsaError as e:
        print(f"npusim disasm: {args.stream}: {e}", file=sys.stderr)
        return 2
    return 0


def format_report(report):
    """The functional model's per-device, per-engine summary as a text table."""
    lines = [f"{'dev':>3} {'engine':<8} {'cmds':>6} {'busy':>10} {'wait':>10} {'util':>6} "
             f"{'bytes':>10} {'MACs':>10}"]
    for d in report:
        for name, e in d["engines"].items():
            lines.append(f"{d['device']:>3} {name:<8} {e['commands']:>6} {e['busy_cycles']:>10} "
                         f"{e['wait_cycles']:>10} {e['utilisation']:>6.1%} {e['bytes']:>10} "
                         f"{e['macs']:>10}")
        lines.append(f"{d['device']:>3} {'total':<8} cycles={d['cycles']} state={d['state']} "
                     f"error={d['error']} MAC utilisation="
                     f"{d['engines']['COMPUTE']['mac_utilisation']:.1%}")
    return "\n".join(lines)


def cmd_run(args):
    import numpy as np
    from .sw.fm import DeviceError, System
    from .sw.isa import IsaError, decode_stream
    data = Path(args.stream).read_bytes()
    try:
        decode_stream(data)  # the host checks the whole stream (CRC included) before launch
    except IsaError as e:
        print(f"npusim run: {args.stream}: {e}", file=sys.stderr)
        return 2
    n = max([args.devices] + [i[0] + 1 for i in args.load] + [d[0] + 1 for d in args.dump])
    system = System(n)
    for dev, space, addr, path in args.load:
        mem = system.devices[dev].dram if space == "dram" else system.devices[dev].sram
        try:
            mem.write(addr, np.fromfile(path, np.uint8))
        except OSError as e:
            print(f"npusim run: --load {path}: {e.strerror or e}", file=sys.stderr)
            return 2
    regs = {}
    for dev, r, value in args.reg:
        regs.setdefault(dev, {})[r] = value
    for dev in range(args.devices):
        system.launch(dev, data, args.at, regs.get(dev))
    cycles = system.run(args.max_cycles)
    report = system.report()
    for dev, space, addr, length, path in args.dump:
        mem = system.devices[dev].dram if space == "dram" else system.devices[dev].sram
        mem.read(addr, length).tofile(path)
    print(format_report(report))
    print(f"simulated {cycles} cycles")
    if args.json:
        print(json.dumps({"cycles": cycles, "devices": report}))
    try:
        system.check()
    except DeviceError as e:
        print(f"npusim run: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_example(args):
    from .sw.examples import EXAMPLES
    ex = EXAMPLES[args.name]()
    Path(args.output).write_bytes(ex.stream_bytes(args.device))
    print(f"wrote {args.output}: {ex.description} (device {args.device})")
    return 0


def cmd_sim(args):
    from .flagship import run_flagship
    return run_flagship(tp=args.tp, tokens=args.tokens, layers=args.layers, waves=args.waves,
                        array=args.array, small=args.small, out=args.output)


def cmd_compile(args):
    from .sw.compiler.driver import compile_model, summary, write
    from .sw.compiler.graph import GraphError
    from .sw.params import DEFAULT
    try:
        compiled = compile_model(args.config, args.tp, DEFAULT, tokens=args.tokens,
                                 batch=args.batch, extend=args.extend, block_size=args.block_size, kv_blocks=args.kv_blocks,
                                 max_context=args.max_context, seed=args.seed,
                                 estimate=not args.no_estimate)
    except (GraphError, ValueError, FileNotFoundError) as e:
        print(f"npusim compile: {e}", file=sys.stderr)
        return 2
    write(compiled, args.output)
    print(summary(compiled))
    print(f"wrote {args.output}/manifest.json")
    return 0


def cmd_generate(args):
    """Serve the prompts on a cluster, printing tokens as they come, then a summary."""
    import time
    from .sw.compiler.graph import GraphError
    from .sw.runtime.engine import LLM, SamplingParams
    from .sw.runtime.kv_cache import KVCacheError
    started = time.monotonic()
    try:
        sampling = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                  stop=tuple(args.stop))
        max_context, buckets = args.max_context, None
        if args.backend == "rtl" and max_context is None:
            from .flagship import RTL_BUCKETS, RTL_CONTEXT
            max_context, buckets = RTL_CONTEXT, RTL_BUCKETS
        llm = LLM(args.config, tp=args.tp, backend=args.backend,
                  max_num_seqs=args.max_num_seqs, max_context=max_context,
                  prompt_buckets=buckets, kv_blocks=args.kv_blocks, block_size=args.block_size)
    except (GraphError, KVCacheError, ValueError, FileNotFoundError) as e:
        print(f"npusim generate: {e}", file=sys.stderr)
        return 2
    prompts = args.prompt or ["We hold these truths"]
    setup = time.monotonic() - started
    if args.trace:
        llm.cluster.trace()
    total = len(prompts) * args.max_tokens
    done, single = 0, len(prompts) == 1
    with llm:
        try:
            outs = {}
            if single:
                print(prompts[0], end="", flush=True)
            for ev in llm.stream(prompts, sampling):
                done += ev.token_id is not None
                if single:
                    print(ev.text, end="", flush=True)
                elif ev.finished:
                    print(f"[{ev.request_id}] {ev.output.prompt!r} -> {ev.output.text!r}",
                          flush=True)
                if ev.finished:
                    outs[ev.request_id] = ev.output
                if sys.stderr.isatty() and not single:
                    bar = "#" * (30 * done // total)
                    print(f"\r[{bar:<30}] {done}/{total} tokens", end="", file=sys.stderr,
                          flush=True)
            if single:
                print()
            if sys.stderr.isatty() and not single:
                print(file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        wall = time.monotonic() - setup - started
        print(_generate_summary(llm, list(outs.values()), wall, setup))
        if args.trace:
            from .sw.runtime.profile import format_summary, profile
            info = profile(llm.cluster, llm.model.spans, args.trace)
            print(format_summary(info))
            print(f"trace: {', '.join(str(f) for f in info['files'].values())}")
    rejected = [o for o in outs.values() if o.finish_reason == "rejected"]
    for o in rejected:
        print(f"npusim generate: request {o.request_id} rejected: {o.error}", file=sys.stderr)
    return 1 if rejected else 0


def _generate_summary(llm, outs, wall, setup):
    """What a run did, in device cycles and in simulated time at the parameters' clock."""
    hz = llm.cluster.params.clock_hz
    cycles = llm.cluster.cycles
    tokens = sum(len(o.token_ids) for o in outs)
    ttft = [o.ttft_cycles for o in outs if o.ttft_cycles is not None]
    lines = [f"{len(outs)} requests, {tokens} tokens in {cycles:,} device cycles "
             f"({cycles / hz * 1e3:.3f} ms at {hz / 1e9:g} GHz): "
             f"{tokens / (cycles / hz) if cycles else 0:,.0f} tokens/s simulated",
             f"steps: {llm.steps['prefill']} prefill, {llm.steps['decode']} decode; "
             f"preemptions {sum(o.preemptions for o in outs)}; prefix-cached prompt tokens "
             f"{sum(o.cached_tokens for o in outs)}"]
    if ttft:
        lines.append(f"time to first token: mean {sum(ttft) / len(ttft) / hz * 1e3:.3f} ms, "
                     f"max {max(ttft) / hz * 1e3:.3f} ms")
    lines.append(f"backend {llm.cluster.backend_name}, TP = {llm.cluster.n_devices}; wall "
                 f"{wall:.1f} s ({cycles / wall if wall else 0:,.0f} cycles/s) after "
                 f"{setup:.1f} s of compile and load")
    return "\n".join(lines)


def cmd_bench(args):
    from .benchmarks import run_benchmarks
    return run_benchmarks(args.name, record=args.record)


def cmd_docs(args):
    from .sw import regdoc
    from .sw.isa import docgen
    status = 0
    for generator in (docgen, regdoc):
        if args.write:
            print(f"wrote {generator.write()}")
            continue
        stale = Path(generator.DOC_PATH).read_text() != generator.render()
        print(f"{generator.DOC_PATH}: {'stale (run make docs)' if stale else 'current'}")
        status |= stale
    return int(status)


def build_parser():
    p = argparse.ArgumentParser(prog="npusim", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"npusim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("disasm", help="print a readable listing of a command stream")
    s.add_argument("stream", help="stream file (header + commands)")
    s.add_argument("--no-crc", action="store_true", help="do not check the CRC-32")
    s.set_defaults(func=cmd_disasm)

    s = sub.add_parser("run", help="run a stream on the functional model")
    s.add_argument("stream", help="stream file (header + commands)")
    s.add_argument("--devices", type=int, default=1, help="devices that run the stream")
    s.add_argument("--at", type=_int, default=0x10_0000, help="DRAM address the stream is loaded at")
    s.add_argument("--load", type=_parse_image, action="append", default=[],
                   metavar="[DEV:]SPACE:ADDR=FILE", help="load a memory image before the run")
    s.add_argument("--dump", type=_parse_dump, action="append", default=[],
                   metavar="[DEV:]SPACE:ADDR:LEN=FILE", help="save memory after the run")
    s.add_argument("--reg", type=_parse_reg, action="append", default=[],
                   metavar="[DEV:]REG=VALUE", help="set a run-time register before the launch")
    s.add_argument("--max-cycles", type=int, default=None, help="stop after this many cycles")
    s.add_argument("--json", action="store_true", help="also print the report as JSON")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("example", help="write one of the example streams")
    s.add_argument("name", choices=["gemm", "tp-linear"])
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--device", type=int, default=0, help="whose stream (tp-linear)")
    s.set_defaults(func=cmd_example)

    s = sub.add_parser("sim", help="the flagship co-simulation: an LLM on the RTL system")
    s.add_argument("--tp", type=int, default=2, help="tensor-parallel devices (RTL devices)")
    s.add_argument("--tokens", type=int, default=8, help="decode steps after the prefill")
    s.add_argument("--layers", type=int, default=2, help="decoder layers (of the 2 trained)")
    s.add_argument("--array", type=int, default=4,
                   help="matrix-unit edge (rows = columns = vector lanes)")
    s.add_argument("--waves", action="store_true", help="record FST waves of the RTL run")
    s.add_argument("--small", action="store_true",
                   help="a short prompt and at most 2 decode steps (the test suite's run)")
    s.add_argument("-o", "--output", default="build/sim", help="artifact directory")
    s.set_defaults(func=cmd_sim)

    s = sub.add_parser("compile", help="compile a model to per-device command streams")
    s.add_argument("--config", required=True,
                   help="a preset (tiny-llama, tiny-mistral, tiny-qwen2, tiny-npusim, "
                        "llama-layer) or a Hugging Face config.json")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel devices")
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.add_argument("--tokens", type=_buckets, default=[16],
                   help="prefill buckets in prompt tokens, comma-separated (default 16)")
    s.add_argument("--batch", type=_buckets, default=[1],
                   help="decode buckets in sequences per step, comma-separated (default 1)")
    s.add_argument("--extend", type=_buckets, default=[],
                   help="extend buckets in tokens added to a sequence, comma-separated "
                        "(default none)")
    s.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    s.add_argument("--kv-blocks", type=int, default=64, help="KV blocks per device")
    s.add_argument("--max-context", type=int, default=None,
                   help="keys a decode step can see (default: the model's positions)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    s.add_argument("--no-estimate", action="store_true",
                   help="skip the cycle estimate on the functional model")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("generate", help="generate text with a model on a simulated cluster")
    s.add_argument("--config", default="tiny-trained",
                   help="a preset or a Hugging Face config.json (default tiny-trained)")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel devices")
    s.add_argument("--backend", choices=["functional", "rtl"], default="functional")
    s.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeat for a batch; default 'We hold these truths')")
    s.add_argument("--max-tokens", type=int, default=32, help="tokens per prompt")
    s.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s.add_argument("--max-num-seqs", type=int, default=4, help="sequences decoding together")
    s.add_argument("--max-context", type=int, default=None,
                   help="positions per sequence (default 256; 64 on the rtl backend, whose "
                        "64 KiB scratchpad then takes prefills of up to 32 tokens)")
    s.add_argument("--kv-blocks", type=int, default=64, help="KV blocks per device")
    s.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    s.add_argument("--trace", metavar="DIR",
                   help="write a Perfetto trace and a PNG timeline of the run under DIR")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("bench", help="run a benchmark (or all) and print its figures")
    s.add_argument("name", help="benchmark name, or 'all'")
    s.add_argument("--record", metavar="DIR", help="also write the JSON figures under DIR")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("docs", help="check or regenerate the generated reference pages")
    s.add_argument("--write", action="store_true", help="regenerate instead of checking")
    s.set_defaults(func=cmd_docs)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
