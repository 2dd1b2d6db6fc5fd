"""From runs to results: best epoch per run, median and spread over seeds per learning rate, the
best learning rate per (model, task), and the side-by-side table (markdown, JSON, CSV) and bar chart.

Selection protocol (as in BERT / MiniLM papers, and optimistic in the same way): each run reports
its best dev epoch; runs of one learning rate are summarised by the median over seeds; the learning
rate with the highest median is reported, with the min-max spread of its seeds.
"""

from __future__ import annotations

import csv
import json
import os
import statistics

import numpy as np

from distill_jax.evaluate import glue_metrics
from distill_jax.evaluate.tasks import TaskSpec, get_task, task_score

# The reference rows a distillation comparison (the study's table, configs/study.py) puts beside
# the distilled students: 'teacher' fine-tunes the teacher itself; 'none' fine-tunes the student's
# shape at a random init (no distillation). The study driver (studies/) gives them their meaning.
REFERENCES = ("teacher", "none")


def summarise_runs(runs: list[dict]) -> dict:
    """Summary of all runs of one (model, task); `runs` are RunResult.to_json() dicts.

    Returns best_lr, per_lr {lr: {scores, median, min, max}}, and for the best lr: median_score,
    min_score, max_score, std_score, n_seeds, metrics {split: {metric: median over seeds}},
    best_epochs (per seed), train_rows, seconds (all runs of the pair).
    """
    if not runs:
        raise ValueError("no runs to summarise")
    spec = get_task(runs[0]["task"])
    by_lr: dict[float, list[dict]] = {}
    for run in runs:
        by_lr.setdefault(float(run["learning_rate"]), []).append(run)
    per_lr = {}
    for lr, group in sorted(by_lr.items()):
        scores = [r["best_score"] for r in sorted(group, key=lambda r: r["seed"])]
        per_lr[lr] = {"seeds": [r["seed"] for r in sorted(group, key=lambda r: r["seed"])],
                      "scores": scores, "median": statistics.median(scores),
                      "min": min(scores), "max": max(scores)}
    best_lr = max(per_lr, key=lambda lr: (per_lr[lr]["median"], -lr))
    best_runs = by_lr[best_lr]
    best_epochs = [max(r["epochs"], key=lambda e: (e["score"], -e["epoch"])) for r in best_runs]
    metric_medians = {}
    for split, _ in spec.dev_splits:
        metric_medians[split] = {m: statistics.median(e["dev"][split][m] for e in best_epochs)
                                 for m in spec.metrics}
    scores = per_lr[best_lr]["scores"]
    return {
        "model": runs[0]["model"], "task": spec.name, "best_lr": best_lr, "per_lr": per_lr,
        "median_score": per_lr[best_lr]["median"], "min_score": min(scores), "max_score": max(scores),
        "std_score": float(np.std(scores)), "n_seeds": len(scores), "metrics": metric_medians,
        "best_epochs": [e["epoch"] for e in best_epochs], "train_rows": best_runs[0]["train_rows"],
        "seconds": float(sum(r["seconds"] for r in runs)),
    }


def majority_baseline(spec: TaskSpec, train_labels: np.ndarray, dev_labels: dict[str, np.ndarray]) -> dict:
    """Scores of always predicting the most frequent training class (regression: the training mean).

    What a model that learned nothing about the input scores; the reference for 'chance'.
    """
    result = {}
    for split, labels in dev_labels.items():
        if spec.is_regression:
            outputs = np.full((len(labels), 1), float(np.mean(train_labels)), np.float32)
        else:
            majority = int(np.bincount(train_labels, minlength=spec.num_labels).argmax())
            outputs = np.eye(spec.num_labels, dtype=np.float32)[np.full(len(labels), majority)]
        result[split] = glue_metrics.compute_metrics(spec.metrics, outputs, labels, spec.is_regression)
    score = task_score(spec, result[spec.main_dev_split])
    return {"model": "majority class", "task": spec.name, "median_score": score, "min_score": score,
            "max_score": score, "n_seeds": 0, "metrics": result, "best_lr": None}


def _metric_header(spec: TaskSpec) -> str:
    if spec.name == "mnli":
        return "MNLI-m/mm acc"
    return f"{spec.display} " + "/".join(m if m != "mcc" else "MCC" for m in spec.metrics)


def _cell(spec: TaskSpec, summary: dict | None) -> str:
    """'m1/m2 (lo-hi)' in percent: medians of the task's metrics, spread of the task score."""
    if summary is None:
        return "–"
    if spec.name == "mnli":
        values = [summary["metrics"][s]["acc"] for s, _ in spec.dev_splits]
    else:
        values = [summary["metrics"][spec.main_dev_split][m] for m in spec.metrics]
    text = "/".join(f"{100 * v:.1f}" for v in values)
    if summary.get("n_seeds", 0) > 1:
        text += f" ({100 * summary['min_score']:.1f}–{100 * summary['max_score']:.1f})"
    return text


def markdown_table(task_names: list[str], row_names: list[str], summaries: dict) -> str:
    """Rows = models (plus references), columns = tasks, then the mean task score.

    summaries[(row, task)] -> summary dict (summarise_runs or majority_baseline)."""
    specs = [get_task(t) for t in task_names]
    lines = ["| model | " + " | ".join(_metric_header(s) for s in specs) + " | mean score |",
             "|---|" + "---:|" * (len(specs) + 1)]
    for row in row_names:
        cells = [_cell(s, summaries.get((row, s.name))) for s in specs]
        scores = [summaries[(row, s.name)]["median_score"] for s in specs if (row, s.name) in summaries]
        mean = f"{100 * float(np.mean(scores)):.1f}" if len(scores) == len(specs) else "–"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def csv_rows(task_names: list[str], row_names: list[str], summaries: dict) -> list[dict]:
    """One flat row per (model, task) with every metric median and the score spread."""
    rows = []
    for row in row_names:
        for task in task_names:
            s = summaries.get((row, task))
            if s is None:
                continue
            flat = {"model": row, "task": task, "best_lr": s.get("best_lr"), "n_seeds": s.get("n_seeds"),
                    "median_score": s["median_score"], "min_score": s["min_score"], "max_score": s["max_score"],
                    "train_rows": s.get("train_rows"), "seconds": s.get("seconds")}
            for split, ms in s["metrics"].items():
                for m, v in ms.items():
                    flat[f"{split}_{m}"] = v
            rows.append(flat)
    return rows


def bar_chart(task_names: list[str], row_names: list[str], summaries: dict, path: str, title: str = "") -> None:
    """Grouped bars (tasks x models) of the median task score in percent, min-max whiskers over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [get_task(t) for t in task_names]
    width = 0.8 / max(len(row_names), 1)
    # Wide enough for every bar (about 0.22 inch each), and never narrower than the legend needs.
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.22 * len(specs) * len(row_names) + 0.4 * len(specs)), 3.8),
                           dpi=100)
    x = np.arange(len(specs))
    for i, row in enumerate(row_names):
        med = np.array([100 * summaries[(row, s.name)]["median_score"] if (row, s.name) in summaries else np.nan
                        for s in specs])
        lo = np.array([100 * summaries[(row, s.name)]["min_score"] if (row, s.name) in summaries else np.nan
                       for s in specs])
        hi = np.array([100 * summaries[(row, s.name)]["max_score"] if (row, s.name) in summaries else np.nan
                       for s in specs])
        ax.bar(x + (i - (len(row_names) - 1) / 2) * width, med, width, label=row,
               yerr=np.stack([med - lo, hi - med]), capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(x, [f"{s.display}\n{'/'.join(s.score_metrics)}" for s in specs], fontsize=8)
    ax.set_ylabel("dev score (%)", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    # The legend goes below the axes, in columns, and the saved figure grows to hold it
    # (bbox_inches="tight"): a legend beside a one-task chart used to be cut off.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,
              ncol=min(len(row_names), 3))
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def panel_bar_chart(task_names: list[str], row_names: list[str], summaries: dict, path: str, title: str = "",
                    reference_row: str = "majority class") -> None:
    """One panel per task, one horizontal bar per model (rows top to bottom in `row_names` order):
    the median task score in percent with min-max whiskers over seeds and the value written at the
    bar's end; `reference_row` (chance level) is drawn as a dashed line instead of a bar. For many
    models, where grouped vertical bars get too thin to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [get_task(t) for t in task_names]
    bars = [r for r in row_names if r != reference_row]
    # Constrained layout fits the two-line panel titles and the suptitle (tight_layout could not).
    fig, axes = plt.subplots(1, len(specs), figsize=(2.2 + 2.9 * len(specs), 1.3 + 0.32 * len(bars)), dpi=110,
                             sharey=True, squeeze=False, layout="constrained")
    y = np.arange(len(bars))[::-1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, spec in zip(axes[0], specs):
        for yi, row in zip(y, bars):
            s = summaries.get((row, spec.name))
            if s is None:
                ax.text(1, yi, "not run yet", va="center", fontsize=7, color="gray")
                continue
            med, lo, hi = (100 * s[k] for k in ("median_score", "min_score", "max_score"))
            ax.barh(yi, med, 0.7, color=colors[bars.index(row) % len(colors)],
                    xerr=[[med - lo], [hi - med]], capsize=2, error_kw={"linewidth": 0.8})
            ax.text(hi + 0.8, yi, f"{med:.1f}", va="center", fontsize=7)
        ref = summaries.get((reference_row, spec.name))
        panel_title = f"{spec.display} ({'/'.join(spec.score_metrics)})"
        if ref is not None:
            ax.axvline(100 * ref["median_score"], color="black", linestyle="--", linewidth=0.8)
            panel_title += f"\ndashed: {reference_row} {100 * ref['median_score']:.1f}"
        top = max([100 * s["max_score"] for (r, t), s in summaries.items() if t == spec.name] + [1.0])
        ax.set_xlim(min(0.0, *(100 * s["min_score"] for (r, t), s in summaries.items() if t == spec.name)),
                    max(top * 1.12 + 2, 20.0))  # a panel of zeros (CoLA MCC at chance) still reads in %
        ax.set_title(panel_title, fontsize=8)
        ax.set_xlabel("dev score (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(y, bars, fontsize=8)
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=int(14 * fig.get_figwidth())), fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def write_outputs(out_dir: str, name: str, task_names: list[str], row_names: list[str], summaries: dict,
                  notes: str, payload: dict, chart_title: str = "", chart=bar_chart) -> dict[str, str]:
    """Writes <name>.md (table + notes), <name>.json (payload), <name>.csv and <name>.png."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "json", "csv", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown_table(task_names, row_names, summaries) + "\n" + notes)
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=1, default=float)
    rows = csv_rows(task_names, row_names, summaries)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    chart(task_names, row_names, summaries, paths["png"], chart_title)
    return paths
