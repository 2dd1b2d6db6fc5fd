"""The study's report, from the records alone: `build_report(config, report_dir)` writes
<report_dir>/study_results.{md,json,csv,png} (GLUE dev table and chart, the zero-shot and cost
columns, the compute per method and the MLM-head fit) and study_results_runs.csv (every run).
"""

from __future__ import annotations

import glob
import os

from distill_jax.evaluate.run import split_list
from studies.identity import portable
from studies.ledger import distill_seconds, untimed_scale_from
from studies.records import load_records, load_zero_shot, log, read_json, write_json

TABLE_NAME = "study_results"


def build_report(config, report_dir: str) -> dict:
    """Table (md/json/csv) and chart of every (method, task) with records, plus compute and the
    MLM-head fit, into report_dir/study_results.*. Reads nothing but the records (and, for the
    majority-class row, the GLUE training labels when they are present)."""
    from distill_jax.evaluate import report
    from distill_jax.evaluate.tasks import get_task

    runs, distill, head_fit = load_records(os.path.join(report_dir, "records"))
    task_names = [get_task(t).name for t in split_list(config.glue.tasks)]
    labels = {m: config.method_labels.get(m, m) for m in config.methods}
    summaries, rows = {}, []
    for method in config.methods:
        by_task: dict[str, list[dict]] = {}
        for run in runs.get(method, []):
            by_task.setdefault(run["task"], []).append(run)
        if not by_task:
            continue
        rows.append(labels[method])
        for task, task_runs in by_task.items():
            summaries[(labels[method], task)] = report.summarise_runs(task_runs)
    majority = _majority_rows(config, task_names)
    if majority:
        summaries.update({("majority class", t): s for t, s in majority.items()})
        rows.append("majority class")
    compute = compute_table(config, runs, distill, head_fit)
    zero_shot = {m: r for m, r in load_zero_shot(os.path.join(report_dir, "records")).items() if m in labels}
    cost = read_json(cost_record_path(config))
    extra_rows = _zero_shot_and_cost_rows(config, zero_shot, cost)
    notes = _zero_shot_and_cost_table(config, extra_rows, cost) + _notes(config, task_names, compute, head_fit, runs)
    payload = {"preset": config.preset, "teacher": config.teacher_name, "tasks": task_names,
               "methods": list(config.methods), "labels": labels,
               # (config.eval, scores logged while training, holds a machine path and no result)
               "distill": {k: v for k, v in config.distill.to_dict().items() if k != "eval"}
                          | {"data": portable(config.distill.data.to_dict())},
               "objectives": config.method_objectives.to_dict(), "finetune": config.glue.finetune.to_dict(),
               "learning_rates": list(config.glue.learning_rates), "seeds": list(config.glue.seeds),
               "summaries": [v | {"row": k[0]} for k, v in summaries.items()],
               "compute": compute, "mlm_head_fit": head_fit, "zero_shot_and_cost": extra_rows,
               "student_shape": f"{config.distill.student.num_layers}x{config.distill.student.hidden_size}",
               "records": sorted(os.path.basename(p) for p in glob.glob(os.path.join(report_dir, "records", "*.json")))}
    if not rows:
        log(f"no fine-tuning records yet in {report_dir}/records: nothing to report")
        write_json(os.path.join(report_dir, f"{TABLE_NAME}.json"), payload)   # the zero-shot rows already
        return payload
    d = config.distill
    paths = report.write_outputs(
        report_dir, TABLE_NAME, task_names, rows, summaries, notes, payload, chart=report.panel_bar_chart,
        chart_title=f"{config.teacher_name} -> {d.student.num_layers}x{d.student.hidden_size} students, "
                    f"{d.total_steps * d.batch_size * d.data.seq_len / 1e6:.1f} M tokens each (preset "
                    f"{config.preset}): GLUE dev, median and min-max over {len(config.glue.seeds)} seeds")
    _write_runs_csv(os.path.join(report_dir, f"{TABLE_NAME}_runs.csv"), runs)
    log("report: " + ", ".join(paths.values()))
    log("\n" + report.markdown_table(task_names, rows, summaries))
    return payload


def cost_record_path(config) -> str:
    """The cost record of config.preset (studies/cost.py measures it): config.cost_record."""
    return config.get("cost_record", "")


def _zero_shot_and_cost_rows(config, zero_shot: dict, cost: dict | None) -> list[dict]:
    """One row per method with a zero-shot record or (with a cost record) any row of the table:
    zero-shot STS-B Spearman x 100, and the shape's parameters and forward latency. The teacher
    runs at the teacher's shape, every other row at the study's student shape."""
    s = config.distill.student
    student = f"{s.num_layers}x{s.hidden_size}"
    models = (cost or {}).get("models", {})
    teacher_latency = models.get("teacher", {}).get("latency", {})
    rows = []
    for method in config.methods:
        z = zero_shot.get(method)
        shape_key = "teacher" if method == "teacher" else student
        m = models.get(shape_key)
        if z is None and m is None:
            continue
        row = {"method": method, "label": config.method_labels.get(method, method),
               "shape": m.get("shape", shape_key) if m else (None if method == "teacher" else student),
               "stsb_spearman": z["spearman"] if z else None}
        if m:
            row |= {"params_total": m["params"]["total"], "params_without_embeddings": m["params"]["without_embeddings"]}
            for key, lat in m["latency"].items():
                row[f"latency_{key}_ms"] = lat["median_ms"]
                base = teacher_latency.get(key, {}).get("median_ms")
                row[f"speedup_{key}"] = base / lat["median_ms"] if base else None
        rows.append(row)
    return rows


def _zero_shot_and_cost_table(config, rows: list[dict], cost: dict | None) -> str:
    """Markdown: the zero-shot and cost columns (empty string when there is neither)."""
    if not rows:
        return ""
    keys = sorted({k[len("latency_"):-len("_ms")] for r in rows for k in r if k.startswith("latency_")},
                  key=lambda k: int(k.split("x")[0]))
    head = "| model | shape | STS-B zero-shot Spearman | params (M) | params w/o embeddings (M) | " + " | ".join(
        f"latency {k} (ms) | speed-up {k}" for k in keys) + " |"
    lines = ["Zero-shot sentence embedding and cost: STS-B dev Spearman x 100 of the cosine between mean-pooled "
             "last hidden states, no fine-tuning (distill_jax/evaluate/stsb.py); parameters of the encoder body "
             "(embeddings + layers); forward latency of the shape through our Flax encoder "
             "(distill_jax/evaluate/cost.py), median over rounds in one process with the models alternating; "
             "speed-up = the teacher's median / the model's.", "", head,
             "|---|---|---:|---:|---:|" + "---:|---:|" * len(keys)]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        cells = [r["label"], r["shape"] or "–", fmt(r["stsb_spearman"], ".1f"),
                 fmt(r.get("params_total") and r["params_total"] / 1e6, ".1f"),
                 fmt(r.get("params_without_embeddings") and r["params_without_embeddings"] / 1e6, ".2f")]
        for k in keys:
            cells += [fmt(r.get(f"latency_{k}_ms"), ".1f"), fmt(r.get(f"speedup_{k}"), ".2f") + "x"
                      if r.get(f"speedup_{k}") else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if cost:
        host = (cost.get("host") or {}).get("cpu_model") or "a host the record does not name"
        lines += ["", f"Latency measured {cost.get('measured_at', '')} on {host} ({cost.get('devices', '')}), "
                      f"{cost['repeats']} rounds per input shape, load average {cost['load_average'][0]:.1f} before / "
                      f"{cost['load_average'][1]:.1f} after (other work on the machine slows every model alike "
                      f"only roughly: the speed-ups are the figure to read); record "
                      f"`{os.path.basename(cost_record_path(config))}`."]
    elif rows:
        lines += ["", "No cost record yet: `python -m studies.cost` measures one."]
    return "\n".join(lines) + "\n\n"


def _majority_rows(config, task_names) -> dict:
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate import report
    from distill_jax.evaluate.tasks import get_task

    out = {}
    for task in task_names:
        spec = get_task(task)
        try:
            train = glue_data.read_split(spec, "train", config.glue.data)
            dev = {s: glue_data.read_split(spec, s, config.glue.data).labels for s, _ in spec.dev_splits}
        except (FileNotFoundError, OSError, ValueError):
            return {}
        out[task] = report.majority_baseline(spec, train.labels, dev)
    return out


def compute_table(config, runs, distill, head_fit) -> list[dict]:
    rows = []
    for method in config.methods:
        d = distill.get(method, {})
        ft = runs.get(method, [])
        if not d and not ft:
            continue
        rows.append({"method": method, "label": config.method_labels.get(method, method),
                     "distill_steps": d.get("steps", 0), "distill_tokens": d.get("tokens", 0),
                     "distill_cpu_min": distill_seconds(d, "cpu_s") / 60,
                     "distill_wall_min": distill_seconds(d, "wall_s") / 60,
                     "distill_cpu_extrapolated_from": untimed_scale_from(d),
                     # The machine's measured float32 matmul peak: CPU-minutes of rows distilled
                     # on different machines compare only after dividing by it.
                     "distill_host_peak_tflops": (d.get("throughput") or {}).get("peak_flops", 0.0) / 1e12,
                     "finetune_runs": len(ft),
                     "finetune_cpu_min": sum(r.get("cpu_s", 0.0) for r in ft) / 60})
    if head_fit:
        rows.append({"method": "mlm_head_fit", "label": "MLM-head fit (for OD)",
                     "distill_steps": head_fit["steps"], "distill_tokens": head_fit["train_tokens"],
                     "distill_cpu_min": head_fit.get("cpu_s_all_segments", 0.0) / 60,
                     "distill_wall_min": head_fit["times_s"]["wall_this_run"] / 60,
                     "finetune_runs": 0, "finetune_cpu_min": 0.0})
    return rows


def _notes(config, task_names, compute, head_fit, runs) -> str:
    g = config.glue
    ft = g.finetune
    d = config.distill
    caps = {t: int((g.max_train_per_task or {}).get(t, 0) or g.max_train_examples) for t in task_names}
    lines = [
        f"Dev-set scores in percent: median over fine-tuning seeds {list(g.seeds)} of each run's best epoch, "
        f"(min–max) over seeds; learning rate(s) {list(g.learning_rates)} (the best median when several). "
        f"One recipe for every model: AdamW (wd {ft.weight_decay}), {ft.warmup_ratio:.0%} warmup then linear "
        f"decay, {ft.epochs} epochs, batch {ft.batch_size}, max length {ft.max_len}; training rows capped at "
        + ", ".join(f"{t} {c or 'all'}" for t, c in caps.items()) + " (a fixed subset), full dev sets.",
        "",
        f"Distillation (every method alike): teacher {config.teacher_name}; student "
        f"{d.student.num_layers}x{d.student.hidden_size}, {d.student.num_heads} heads, FFN "
        f"{d.student.intermediate_size}, random init (seed {d.seed}); {d.total_steps} steps x {d.batch_size} x "
        f"{d.data.seq_len} tokens = {d.total_steps * d.batch_size * d.data.seq_len / 1e6:.2f} M tokens of "
        f"{portable(d.data.to_dict()).get('paths') or d.data.source}; AdamW lr {d.optim.learning_rate:g}, "
        f"warmup {d.optim.warmup_steps}, linear decay, wd {d.optim.weight_decay}, clip {d.optim.grad_clip_norm}; "
        f"dropout {d.student.hidden_dropout}.",
        "",
        "Compute (CPU-minutes of this process, all threads; wall minutes depend on the machine's load):",
        "",
        "| method | distillation steps | tokens | distil CPU-min | host peak TFLOP/s | fine-tune runs | fine-tune CPU-min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in compute:
        timed = row.get("distill_cpu_extrapolated_from")
        cpu = f"{row['distill_cpu_min']:.1f}" + (f" (scaled from {timed} timed steps)" if timed else "")
        peak = row.get("distill_host_peak_tflops") or 0.0
        lines.append(f"| {row['label']} | {row['distill_steps']} | {row['distill_tokens'] / 1e6:.2f} M | "
                     f"{cpu} | {f'{peak:.2f}' if peak else ''} | {row['finetune_runs']} | "
                     f"{row['finetune_cpu_min']:.1f} |")
    peaks = {round(row["distill_host_peak_tflops"], 2) for row in compute if row.get("distill_host_peak_tflops")}
    if len(peaks) > 1:
        lines += ["", "Host peak: the float32 matmul rate measured when the distillation started (the MFU "
                      "denominator). It differs between rows because they ran on different machines (the "
                      "record's host names the CPU where it is known) or under different load, so CPU-minutes "
                      "compare across rows only roughly."]
    if any(row.get("distill_cpu_extrapolated_from") for row in compute):
        lines += ["", "Scaled: the process of an earlier segment was killed outright (a working session's "
                      "end) before it recorded its seconds; the figure is the timed steps' rate times all steps."]
    if head_fit:
        b, a = head_fit["before"], head_fit["after"]
        lines += ["", f"MLM head fitted on the frozen teacher for OD: {head_fit['steps']} steps x "
                      f"{head_fit['batch_size']} x {head_fit['seq_len']} on {head_fit['train_corpus']}; on "
                      f"{head_fit['eval_corpus']} ({b['positions']} masked positions): masked-token accuracy "
                      f"{b['accuracy']:.1f}% -> {a['accuracy']:.1f}%, perplexity {b['perplexity']:.1f} -> "
                      f"{a['perplexity']:.1f} (fresh head -> fitted)."]
    lines += ["", "- 'majority class': always predicting the most frequent training label (chance level)."]
    return "\n".join(lines) + "\n"


def _write_runs_csv(path: str, runs: dict[str, list[dict]]) -> None:
    """Every fine-tuning record, one row each (method, task, lr, seed, best epoch and score, seconds)."""
    import csv

    rows = []
    for method, records in runs.items():
        for r in sorted(records, key=lambda r: (r["task"], r["learning_rate"], r["seed"])):
            rows.append({"method": method, "task": r["task"], "learning_rate": r["learning_rate"],
                         "seed": r["seed"], "train_rows": r["train_rows"], "best_epoch": r["best_epoch"],
                         "best_score": r["best_score"],
                         "epoch_scores": " ".join(f"{e['score']:.4f}" for e in r["epochs"]),
                         "cpu_s": r.get("cpu_s"), "wall_s": r.get("wall_s")})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
