"""python -m benchmarks: distillation step throughput, MFU, memory and compile time, ours
against PyTorch (HF transformers) doing the same step, in one process with the same threads.

    python -m benchmarks --objective=minilmv2 --teacher=bert-base --student=6x384 \
        --batch=32 --seq_len=128 --steps=10 --warmup=2 --out=bench.json

Comma-separated values run the product (e.g. --objective=minilmv2,hs,od --seq_len=128,512).
`--teacher` is `bert-base` (random weights of bert-base's shape), `minilm-l6` (the real offline
all-MiniLM-L6-v2) or `LAYERSxWIDTH` for a random teacher of that shape (tests use tiny ones).

Per case: the JAX step (train.py's, built by distill_jax.train_setup.build_train_setup)
is lowered and compiled ahead of time (both timed), its memory_analysis() read, then timed for
`--steps` steps after `--warmup`; the PyTorch step (eager, and torch.compile unless --torch=eager)
likewise. With --rounds=N the implementations take turns N times, so slow phases of a shared
machine hit them alike; the median step time over all rounds is the steady-state figure.
MFU = analytic model FLOPs of the step (distill_jax.flops) / median step time / peak, the peak
measured in this process with a large float32 matmul on CPU (datasheet bf16 on GPU/TPU). On CPU
the matmul is measured again before every round; `mfu` uses the best sample of the run,
`mfu_vs_round_peak` (median over rounds) each round's own sample, which tracks the machine's load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
import traceback


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", default="minilmv2", help="minilmv2, hs (uniform_cons), od; comma list")
    p.add_argument("--teacher", default="bert-base", help="bert-base, minilm-l6 or LxW; comma list")
    p.add_argument("--student", default="6x384", help="LAYERSxWIDTH: 3x384, 6x384, 6x768; comma list")
    p.add_argument("--batch", default="32", help="global batch (rows); comma list")
    p.add_argument("--seq_len", default="128", help="tokens per row: 128, 512; comma list")
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compile (per impl)")
    p.add_argument("--rounds", type=int, default=1, help="times the implementations take turns")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for XLA and torch (0 = all)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--teacher_dtype", default="", choices=("", "float32", "bfloat16"),
                   help="compute dtype of the frozen teacher (default: --dtype)")
    p.add_argument("--relation_heads", type=int, default=48, help="MiniLMv2 relation heads")
    p.add_argument("--relation_block_size", default="",
                   help="MiniLMv2 block_size (0 = dense relations; default: the objective's); comma list")
    p.add_argument("--vocab", type=int, default=30522, help="vocabulary of LxW random teachers")
    p.add_argument("--torch", default="eager,compile",
                   help="PyTorch variants: eager, compile, both comma-separated, or none")
    p.add_argument("--no_data", action="store_true", help="skip the input pipeline's tokens/s")
    p.add_argument("--data_max_documents", type=int, default=0,
                   help="builtin-corpus documents for the pipeline's tokens/s (0 = all)")
    p.add_argument("--peak_n", type=int, default=0,
                   help="matmul size of the measured CPU peak; 0 = the trainer's "
                        "(distill_jax.metrics.PEAK_MATMUL_SIZE)")
    p.add_argument("--out", default="bench_results.json", help="JSON file to write")
    args = p.parse_args(argv)
    torch_variants = [] if args.torch == "none" else args.torch.split(",")
    bad = [v for v in torch_variants if v not in ("eager", "compile")]
    if bad:
        p.error(f"--torch={args.torch!r}: use eager, compile, eager,compile or none")
    args.torch_variants = torch_variants
    for name in ("steps", "warmup", "rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name}={getattr(args, name)}: too small")
    return args


def apply_threads(threads: int) -> int:
    """Pins this process to `threads` CPUs before XLA starts (XLA:CPU sizes its thread pool from the
    schedulable CPUs) and gives torch the same count. Returns the thread count in force."""
    available = sorted(os.sched_getaffinity(0))
    if threads <= 0 or threads >= len(available):
        threads = len(available)
    else:
        os.sched_setaffinity(0, available[:threads])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    return threads


def _split(value: str, cast=str) -> list:
    return [cast(v.strip()) for v in str(value).split(",") if v.strip()]


def build_cases(args):
    from benchmarks.cases import TEACHERS, make_case, student_shape
    import dataclasses

    cases = []
    for objective, teacher, student, batch, seq_len, block in itertools.product(
            _split(args.objective), _split(args.teacher), _split(args.student),
            _split(args.batch, int), _split(args.seq_len, int),
            _split(args.relation_block_size, int) or [None]):
        t_shape = None
        if teacher not in TEACHERS:
            t_shape = dataclasses.replace(student_shape(teacher), vocab_size=args.vocab)
        cases.append(make_case(objective, teacher, student, batch, seq_len, dtype=args.dtype,
                               teacher_dtype=args.teacher_dtype or None,
                               relation_heads=args.relation_heads, teacher_shape=t_shape,
                               relation_block_size=block))
    return cases


def _progress(label):
    def report(i, n, seconds):
        print(f"    {label}: step {i}/{n} {seconds * 1e3:.1f} ms", flush=True)
    return report


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def run_case(case, args, peaks) -> dict:
    """Everything measured for one case (see the module docstring)."""
    from benchmarks import jax_step, report, torch_baseline
    from benchmarks.cases import synthetic_batch

    flops = case.step_flops()
    result = {"case": case.as_dict()}
    batch_np = synthetic_batch(case)

    print(f"  jax: building and compiling ({flops.total / 1e9:.1f} GFLOP/step analytic)", flush=True)
    built = jax_step.build_step(case, batch_np)
    compiled, compile_info = jax_step.compile_step(built)
    print(f"  jax: lower {compile_info['lower_s']:.1f} s, compile {compile_info['compile_s']:.1f} s, "
          f"peak {compile_info['memory'].get('peak_bytes', 0) / 2**20:.0f} MiB", flush=True)
    jax_times, jax_cpu = [], []
    jax_first = True

    torch_steps, torch_times, torch_cpu, torch_info = {}, {}, {}, {}
    tbatch = torch_baseline.torch_batch(batch_np)
    for variant in args.torch_variants:
        try:
            torch_steps[variant] = torch_baseline.TorchDistillStep(case, compile=variant == "compile")
            torch_times[variant], torch_cpu[variant] = [], []
        except Exception as exc:  # noqa: BLE001 - reported as n/a with the reason
            torch_info[variant] = {"status": "n/a", "reason": _reason(exc)}

    from benchmarks import peak as peak_lib

    round_mfu = {"jax": [], **{f"torch_{v}": [] for v in torch_steps}}
    for r in range(args.rounds):
        print(f"  round {r + 1}/{args.rounds}", flush=True)
        # The peak measured right beside this round's timings: on a shared machine the load
        # changes within minutes, so each round's MFU is also taken against its own peak.
        round_peak = peak_lib.sample_peak(peaks, args.peak_n)
        n_before = {"jax": len(jax_times), **{v: len(t) for v, t in torch_times.items()}}
        timing = jax_step.time_compiled(compiled, built, warmup=args.warmup if jax_first else 1,
                                        steps=args.steps, progress=_progress("jax"))
        jax_first = False
        jax_times += timing["step_times_s"]
        jax_cpu += timing["step_cpu_s"]
        result["jax_final_loss"] = timing["final_loss"]
        for variant, step in list(torch_steps.items()):
            try:
                first_round = not torch_times[variant]
                t = torch_baseline.time_torch_step(step, tbatch, warmup=args.warmup if first_round else 1,
                                                   steps=args.steps, progress=_progress(f"torch {variant}"))
            except Exception as exc:  # noqa: BLE001 - e.g. inductor failing on this machine
                traceback.print_exc(limit=2)
                torch_info[variant] = {"status": "n/a", "reason": _reason(exc)}
                del torch_steps[variant]
                continue
            if first_round:
                torch_info[variant] = {"first_step_s": t["first_step_s"]}
            torch_times[variant] += t["step_times_s"]
            torch_cpu[variant] += t["step_cpu_s"]
            torch_info[variant]["final_loss"] = t["final_loss"]
            if round_peak:
                round_mfu[f"torch_{variant}"].append(
                    flops.total / statistics.median(t["step_times_s"]) / round_peak)
        if round_peak:
            round_mfu["jax"].append(
                flops.total / statistics.median(jax_times[n_before["jax"]:]) / round_peak)

    peak = peaks["jax"]["flops_per_s"]
    result["jax"] = {"step_source": built.step_source, **compile_info,
                     **report.summarise_times(jax_times, case.tokens_per_step, flops.total, peak)}
    result["jax"]["median_step_cpu_s"] = statistics.median(jax_cpu)
    if round_mfu["jax"]:
        result["jax"]["mfu_vs_round_peak"] = statistics.median(round_mfu["jax"])
    for variant in args.torch_variants:
        info = torch_info.get(variant, {})
        key = f"torch_{variant}"
        if info.get("status") == "n/a" or not torch_times.get(variant):
            result[key] = info or {"status": "n/a", "reason": "not run"}
            continue
        summary = report.summarise_times(torch_times[variant], case.tokens_per_step, flops.total, peak)
        if peaks.get("torch"):
            summary["mfu_vs_torch_peak"] = flops.total / summary["median_step_s"] / peaks["torch"]["flops_per_s"]
        if round_mfu.get(key):
            summary["mfu_vs_round_peak"] = statistics.median(round_mfu[key])
        summary["median_step_cpu_s"] = statistics.median(torch_cpu[variant])
        result[key] = {**info, **summary}
        result[f"ratio_jax_over_{key}"] = result["jax"]["tokens_per_s"] / summary["tokens_per_s"]
        # The same ratio in CPU seconds per step: less sensitive to other processes' load.
        result[f"cpu_ratio_jax_over_{key}"] = summary["median_step_cpu_s"] / result["jax"]["median_step_cpu_s"]

    if not args.no_data:
        try:
            from benchmarks.data_rate import data_tokens_per_s

            result["data"] = data_tokens_per_s(case, max_documents=args.data_max_documents)
        except Exception as exc:  # noqa: BLE001 - the pipeline is another part; report, don't die
            result["data"] = {"status": "n/a", "reason": _reason(exc)}
    return result


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = apply_threads(args.threads)
    cases = build_cases(args)  # validates every flag before anything slow

    from distill_jax import platforms
    platforms.choose_platforms()  # libtpu stays quiet on a machine without a TPU
    import jax

    from benchmarks import peak as peak_lib
    from benchmarks import report
    from distill_jax.metrics import PEAK_MATMUL_SIZE

    args.peak_n = args.peak_n or PEAK_MATMUL_SIZE  # the trainer's CPU peak unless asked otherwise
    device = jax.devices()[0]
    print(f"benchmarks: {len(cases)} case(s) on {device.platform}:{device.device_kind}, "
          f"{threads} thread(s)", flush=True)
    peaks = {"jax": peak_lib.peak_for(device, n=args.peak_n)}
    if device.platform == "cpu" and args.torch_variants:
        value = peak_lib.torch_matmul_peak(args.peak_n)
        peaks["torch"] = {"flops_per_s": value, "samples": [value],
                          "source": f"measured: best float32 {args.peak_n}x{args.peak_n} torch.mm, over "
                                    "samples taken at the start and before every round"}
        peak_lib.record_cpu_peak(peaks["torch"], "torch")
    for name, p in peaks.items():
        print(f"peak ({name}): {p['flops_per_s'] / 1e9:.1f} GFLOP/s ({p['source']})", flush=True)

    payload = {"command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "machine": {**report.machine_info(threads), "cpu_device": device.platform == "cpu"},
               "peak": peaks,
               "settings": {k: v for k, v in vars(args).items()},
               "gpu": ("not measured: this run is on CPU" if device.platform == "cpu" else
                       f"{device.device_kind}"),
               "results": []}
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {case.name}", flush=True)
        payload["results"].append(run_case(case, args, peaks))
        report.apply_peak(payload)
        report.write_json(args.out, payload)  # after every case: a long matrix keeps what it measured
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    report.apply_peak(payload)  # MFU of every case against the best peak seen in the whole run
    report.write_json(args.out, payload)
    print(report.format_table(payload["results"]), flush=True)
    print(f"wrote {args.out}", flush=True)
    return payload


if __name__ == "__main__":
    main()
