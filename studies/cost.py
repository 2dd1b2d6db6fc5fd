"""The study's cost column and its quality/speed trade-off chart.

    python -m studies.cost --preset=cpu                  # measure: docs/study_cost/cost_cpu.json
    python -m studies.cost --preset=cpu --chart_only     # the chart from the records alone

Measure: the teacher's shape and every student shape of the preset (configs/study.py
STUDENT_SHAPES), built at a random init (cost depends on the shape only), their parameter counts and
forward latency at batch 1 x 128 and 32 x 128 tokens in one process, models alternating
(distill_jax/evaluate/cost.py). Run it with the machine as quiet as it gets; the record keeps the
load average before and after, the host and the protocol.

Chart (docs/study_cost/tradeoff_<preset>.png): one point per (method, shape) that has records: x
the shape's 32 x 128 latency, y the method's SST-2 median (left) and zero-shot STS-B Spearman
(right), read from each shape's study_results.json (the study's report step) and the cost record.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


def _teacher_config(teacher_name: str):
    """The teacher's EncoderConfig from its shapes alone (hf_io.resolve_model, shapes_only: a local
    config.json, the shipped hub shapes, or the offline package; no weights, no download)."""
    from distill_jax import models
    from distill_jax.models.hf_io import resolve_model

    teacher = resolve_model(teacher_name, field="config.teacher_name", shapes_only=True)
    return models.EncoderConfig.from_hf_dict(teacher.hf_config, source=teacher.source)


def shape_configs(preset: str) -> tuple[str, dict]:
    """(teacher name, {"teacher": cfg, "<L>x<W>": cfg per student shape of the preset})."""
    from configs import study

    config = study.get_config(f"preset={preset}")
    teacher = _teacher_config(config.teacher_name)
    out = {"teacher": teacher}
    for name, (layers, width, heads, ffn) in study.STUDENT_SHAPES[preset].items():
        out[name] = teacher.replace(num_layers=layers, hidden_size=width, num_heads=heads, intermediate_size=ffn)
    return config.teacher_name, out


def measure(preset: str, out_path: str, repeats: int, warmup: int) -> dict:
    from distill_jax import platforms
    platforms.choose_platforms()  # libtpu stays quiet on a machine without a TPU
    import jax

    from distill_jax.evaluate import cost
    from distill_jax.metrics import host_description

    teacher_name, configs = shape_configs(preset)
    before = os.getloadavg()[0]
    start = time.time()
    latency = cost.measure_latency(configs, repeats=repeats, warmup=warmup)
    record = {
        "preset": preset, "teacher": teacher_name, "repeats": repeats, "warmup": warmup,
        "protocol": cost.__doc__.split("Latency protocol")[1].split("\n\n")[0].strip(),
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()), "seconds": time.time() - start,
        "load_average": [before, os.getloadavg()[0]], "nice": os.nice(0), "host": host_description(),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "jax": jax.__version__,
        "models": {name: {"shape": f"{c.num_layers}x{c.hidden_size}", "heads": c.num_heads,
                          "ffn": c.intermediate_size, "params": cost.parameter_counts(c), "latency": latency[name]}
                   for name, c in configs.items()}}
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def tradeoff_points(report_dirs: list[str], cost_record: dict) -> list[dict]:
    """One point per (method, shape) with a latency: label, shape, latency_ms (32 x 128), sst2
    (median, percent) and stsb (zero-shot Spearman x 100), None where a record is missing."""
    models = cost_record["models"]
    points, seen = [], set()
    for report_dir in report_dirs:
        path = os.path.join(report_dir, "study_results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            results = json.load(f)
        sst2 = {s["row"]: 100 * s["median_score"] for s in results.get("summaries", []) if s.get("task") == "sst2"}
        for row in results.get("zero_shot_and_cost", []) or [
                {"method": m, "label": results["labels"][m], "stsb_spearman": None} for m in results["methods"]]:
            method = row["method"]
            shape = "teacher" if method == "teacher" else results.get("student_shape")
            key = (method, models.get(shape, {}).get("shape", shape))
            if key in seen or shape not in models:
                continue
            stsb, acc = row.get("stsb_spearman"), sst2.get(row["label"])
            if stsb is None and acc is None:
                continue
            seen.add(key)
            points.append({"method": method, "label": row["label"], "shape": key[1],
                           "latency_ms": models[shape]["latency"]["32x128"]["median_ms"], "sst2": acc, "stsb": stsb})
    return points


def tradeoff_chart(points: list[dict], path: str, title: str, shapes_ms: dict | None = None) -> None:
    """points: tradeoff_points; shapes_ms: {shape: 32 x 128 latency} drawn as dotted lines (a shape
    whose rows have no scores yet still shows where it will sit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=100)
    shapes = sorted({p["shape"] for p in points})
    markers = dict(zip(shapes, "osD^v<>"))
    for ax, key, name in ((axes[0], "sst2", "SST-2 dev accuracy (median of 3 fine-tunes)"),
                          (axes[1], "stsb", "STS-B dev Spearman x 100, zero-shot")):
        for p in points:
            if p[key] is None:
                continue
            ax.scatter(p["latency_ms"], p[key], marker=markers[p["shape"]], s=50)
            ax.annotate(f"{p['method']} ({p['shape']})", (p["latency_ms"], p[key]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        for shape, ms in (shapes_ms or {}).items():
            ax.axvline(ms, color="0.6", linestyle=":", linewidth=1)
            ax.annotate(shape, (ms, 0.02), xycoords=("data", "axes fraction"), fontsize=7, color="0.4",
                        xytext=(2, 0), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("forward latency, batch 32 x 128 tokens (ms, log scale; lower is faster)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def chart(preset: str, cost_path: str, report_dirs: list[str]) -> str | None:
    with open(cost_path) as f:
        record = json.load(f)
    points = tradeoff_points(report_dirs, record)
    if not points:
        print(f"no scored rows in {report_dirs}: no chart")
        return None
    path = os.path.join(os.path.dirname(cost_path), f"tradeoff_{preset}.png")
    tradeoff_chart(points, path, f"{record['teacher']} and its students (preset {preset}): quality against "
                                 f"forward latency on {(record.get('host') or {}).get('cpu_model') or 'this host'}",
                   {m["shape"]: m["latency"]["32x128"]["median_ms"] for m in record["models"].values()})
    with open(path.replace(".png", ".json"), "w") as f:
        json.dump(points, f, indent=1)
    print(f"wrote {path} ({len(points)} points)")
    return path


def main(argv=None) -> int:
    from configs import study

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=sorted(study.STUDENT_SHAPES))
    p.add_argument("--repeats", type=int, default=30, help="rounds per input shape (every model once a round)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chart_only", action="store_true", help="no measurement: the chart from the records")
    p.add_argument("--report_dirs", default="", help="comma list of the shapes' report dirs (default: "
                   "docs/study and every docs/study_<shape> of the preset)")
    args = p.parse_args(argv)
    cost_path = study.get_config(f"preset={args.preset}").cost_record
    if not args.chart_only:
        record = measure(args.preset, cost_path, args.repeats, args.warmup)
        for name, m in record["models"].items():
            print(f"{name:8s} {m['shape']:6s} params {m['params']['total'] / 1e6:5.1f} M "
                  + " ".join(f"{k}: {v['median_ms']:.1f} ms" for k, v in m["latency"].items()))
        print(f"wrote {cost_path}")
    docs = os.path.dirname(os.path.dirname(cost_path))   # docs/study_cost/cost_<preset>.json -> docs
    dirs = ([d for d in args.report_dirs.split(",") if d]
            or [os.path.join(docs, "study")] + sorted(glob.glob(os.path.join(docs, "study_*x*"))))
    chart(args.preset, cost_path, dirs)
    return 0


if __name__ == "__main__":
    from distill_jax.commands import run_with_one_line_errors
    run_with_one_line_errors(lambda: sys.exit(main()))
