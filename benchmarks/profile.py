"""Where the JAX step's time goes: python -m benchmarks.profile (same case flags as the bench).

Runs the compiled step under jax.profiler.trace for a few steps, then reads the trace's Chrome
JSON (trace.json.gz, written next to the .xplane.pb) and sums the duration of every XLA:CPU thunk
(one HLO op or fusion each) by category:

    matmul        dot / YNNPACK (ynn_*) / XNNPACK / oneDNN fusions: the FLOPs MFU counts
    broadcast     wrapped_broadcast: materialised constants, e.g. the zero [V, D] buffer the word
                  embedding's gather gradient is scattered into
    scatter/gather, reduce, transpose/copy, elementwise fusions (softmax, LayerNorm, GELU,
    AdamW update, ...), and runtime (thunk executor waits, thread-pool scheduling).

The times are summed over XLA's worker threads, so the shares are of busy thread time, not wall
time. `--torch` also runs torch.profiler over the PyTorch eager step of the same case for
comparison (by aten op).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

CATEGORIES = (
    ("matmul", re.compile(r"^(dot|ynn_|xnn_|onednn|.*matmul|custom-call|convolution)")),
    ("broadcast", re.compile(r"^wrapped_broadcast|^broadcast(\.|$)")),
    ("scatter/gather", re.compile(r"scatter|gather|dynamic")),
    ("reduce", re.compile(r"reduce")),
    ("transpose/copy", re.compile(r"^(copy|transpose)|^wrapped_(copy|transpose)")),
    ("elementwise fusion", re.compile(r"fusion|^wrapped_")),
)
RUNTIME = re.compile(r"^(ThunkExecutor|SlinkyThreadPool|CommonPjRt|PjitFunction|ParseArguments|"
                     r"Handle inputs|end: |\$|np\.asarray)")


def categorise(op_name: str) -> str:
    base = re.sub(r"\.\d+$", "", op_name)
    for name, pattern in CATEGORIES:
        if pattern.search(base):
            return name
    return "other"


def summarise_trace(trace_json_gz: str, steps: int) -> dict:
    """Per-category and per-op busy time (ms per step) from a jax.profiler Chrome trace."""
    with gzip.open(trace_json_gz) as f:
        events = json.load(f)["traceEvents"]
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if "dur" not in e or RUNTIME.match(e["name"]):
            continue
        if "XLA" not in threads.get((e["pid"], e.get("tid")), ""):
            continue  # python-side annotations
        by_op[e["name"]] += e["dur"] / 1e3 / steps
    by_category: collections.Counter = collections.Counter()
    for op, ms in by_op.items():
        by_category[categorise(op)] += ms
    total = sum(by_category.values())
    return {"busy_ms_per_step": total,
            "by_category_ms": dict(by_category.most_common()),
            "by_category_share": {k: v / total for k, v in by_category.most_common()},
            "top_ops_ms": dict(by_op.most_common(25))}


def profile_jax(case, *, steps: int = 2, trace_dir: str | None = None) -> dict:
    import jax

    from benchmarks import jax_step
    from benchmarks.cases import synthetic_batch

    built = jax_step.build_step(case, synthetic_batch(case))
    compiled, info = jax_step.compile_step(built)
    jax_step.time_compiled(compiled, built, warmup=2, steps=1)
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="jax_trace_")
    with jax.profiler.trace(trace_dir):
        timing = jax_step.time_compiled(compiled, built, warmup=0, steps=steps)
    traces = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace")
    summary = summarise_trace(traces[-1], steps)
    summary.update(trace=traces[-1], step_times_s=timing["step_times_s"], compile_s=info["compile_s"])
    return summary


def profile_torch(case, *, steps: int = 2) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.cases import synthetic_batch
    from benchmarks.torch_baseline import TorchDistillStep, torch_batch

    step = TorchDistillStep(case)
    batch = torch_batch(synthetic_batch(case))
    for _ in range(2):
        step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(batch)
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)
    total = sum(r.self_cpu_time_total for r in rows) / 1e3 / steps
    return {"self_cpu_ms_per_step": total,
            "top_ops_ms": {r.key: r.self_cpu_time_total / 1e3 / steps for r in rows[:20]}}


def main(argv=None) -> dict:
    from benchmarks.__main__ import apply_threads, build_cases, parse_args

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--profile_steps", type=int, default=2)
    extra.add_argument("--trace_dir", default=None)
    extra.add_argument("--profile_torch", action="store_true")
    known, rest = extra.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = parse_args(rest)
    apply_threads(args.threads)
    from distill_jax import platforms
    platforms.choose_platforms()  # libtpu stays quiet on a machine without a TPU
    out = {}
    for case in build_cases(args):
        print(f"profiling {case.name} ({case.step_flops().total / 1e9:.1f} GFLOP/step)", flush=True)
        result = {"jax": profile_jax(case, steps=known.profile_steps, trace_dir=known.trace_dir)}
        j = result["jax"]
        print(f"  jax: {j['busy_ms_per_step']:.0f} ms busy thread time per step, wall "
              f"{[round(t * 1e3) for t in j['step_times_s']]} ms; trace {j['trace']}")
        for cat, ms in j["by_category_ms"].items():
            print(f"    {cat:<20} {ms:9.1f} ms  {j['by_category_share'][cat]:6.1%}")
        print("  top ops (ms/step):")
        for op, ms in list(j["top_ops_ms"].items())[:12]:
            print(f"    {op:<40} {ms:9.1f}  [{categorise(op)}]")
        if known.profile_torch:
            result["torch_eager"] = profile_torch(case, steps=known.profile_steps)
            t = result["torch_eager"]
            print(f"  torch eager: {t['self_cpu_ms_per_step']:.0f} ms self CPU per step; top ops:")
            for op, ms in list(t["top_ops_ms"].items())[:12]:
                print(f"    {op:<40} {ms:9.1f}")
        out[case.name] = result
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
