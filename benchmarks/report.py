"""Summaries of the timings, the console table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence


def summarise_times(step_times_s: Sequence[float], tokens_per_step: int, flops_per_step: float,
                    peak_flops_per_s: float | None) -> dict:
    """Median (the steady-state figure: robust to other processes on a shared machine), mean, min,
    tokens/s and MFU = flops_per_step / median step time / peak."""
    median = statistics.median(step_times_s)
    out = {"steps_timed": len(step_times_s), "median_step_s": median,
           "mean_step_s": statistics.fmean(step_times_s), "min_step_s": min(step_times_s),
           "tokens_per_s": tokens_per_step / median,
           "achieved_flops_per_s": flops_per_step / median}
    if peak_flops_per_s:
        out["mfu"] = flops_per_step / median / peak_flops_per_s
    return out


def machine_info(threads: int) -> dict:
    import jax

    from distill_jax.metrics import cpu_model

    info = {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": threads, "jax": jax.__version__,
            "jax_devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            "load_average_1_5_15": list(os.getloadavg()),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def format_table(results: Sequence[dict]) -> str:
    """One row per (case, implementation): step ms, tokens/s, MFU, compile s, peak MiB, ratio."""
    header = (f"{'case':<44} {'impl':<14} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} "
              f"{'compile s':>9} {'peak MiB':>9} {'ours/theirs':>11}")
    lines = [header, "-" * len(header)]
    for r in results:
        name = r["case"]["name"]
        j = r["jax"]
        mem = j.get("memory", {}).get("peak_bytes")
        lines.append(f"{name:<44} {'jax':<14} {j['median_step_s'] * 1e3:>9.1f} {j['tokens_per_s']:>10.0f} "
                     f"{_fmt(j.get('mfu'), '.1%'):>6} {j['compile_s']:>9.1f} "
                     f"{_fmt(mem and mem / 2**20, '.0f'):>9} {'':>11}")
        for impl in ("torch_eager", "torch_compile"):
            t = r.get(impl)
            if t is None:
                continue
            if "median_step_s" not in t:
                lines.append(f"{'':<44} {impl:<14} {'n/a: ' + t.get('reason', '')[:70]}")
                continue
            ratio = r.get(f"ratio_jax_over_{impl}")
            cpu_ratio = r.get(f"cpu_ratio_jax_over_{impl}")
            compile_s = t.get("first_step_s") if impl == "torch_compile" else None
            lines.append(f"{'':<44} {impl:<14} {t['median_step_s'] * 1e3:>9.1f} {t['tokens_per_s']:>10.0f} "
                         f"{_fmt(t.get('mfu'), '.1%'):>6} {_fmt(compile_s, '.1f', ''):>9} {'':>9} "
                         f"{_fmt(ratio, '.2f'):>10}x  (CPU-time ratio {_fmt(cpu_ratio, '.2f')}x)")
        data = r.get("data")
        if data and "tokens_per_s" in data:
            lines.append(f"{'':<44} {'data pipeline':<14} {'':>9} {data['tokens_per_s']:>10.0f}"
                         f"   (cold tokenize+pack: {data.get('build_tokens_per_s', 0):,.0f} tokens/s)")
        elif data:
            lines.append(f"{'':<44} {'data pipeline':<14} n/a: {data.get('reason', '')[:70]}")
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def apply_peak(payload: dict) -> None:
    """Recomputes every result's `mfu` (and `mfu_cpu_time`) against the run's final (best) peak."""
    peak = payload["peak"]["jax"]["flops_per_s"]
    torch_peak = payload["peak"].get("torch", {}).get("flops_per_s")
    cpu_peak = payload["peak"]["jax"].get("flops_per_cpu_s")
    for r in payload["results"]:
        flops = r["case"]["flops_per_step"]["total"]
        for key, value in r.items():
            if isinstance(value, dict) and "achieved_flops_per_s" in value:
                value["mfu"] = value["achieved_flops_per_s"] / peak
                if value.get("median_step_cpu_s") and cpu_peak:
                    # FLOPs per process-CPU-second of the step over the same for the matmul: both
                    # in CPU time, so other processes' load cancels out (spin-waits count as busy).
                    value["mfu_cpu_time"] = flops / value["median_step_cpu_s"] / cpu_peak
                if key.startswith("torch") and torch_peak:
                    value["mfu_vs_torch_peak"] = value["achieved_flops_per_s"] / torch_peak
