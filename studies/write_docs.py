"""Copies the study's results into docs/results/study.md, between its markers:

    python -m studies.write_docs                      # after the study (or its report_only step)
    python -m studies.write_docs --report_dir=docs/study --page=docs/results/study.md
    python -m studies.write_docs --budget_dirs=docs/study_4000   # also the budget comparison
    python -m studies.write_docs --budget_dirs=docs/study_4000 --shape_dirs=docs/study_3x192  # and the shapes

<!-- study-table -->: the results table of <report_dir>/study_results.md (built from the records
alone by the study's report step) and its chart. <!-- study-budget --> (only with --budget_dirs):
every method that the other report directories (the same study at another `steps=`) also hold, one
row per token budget, from each directory's study_results.json, plus each distillation's last
logged loss from its record. <!-- study-shapes --> (only with --shape_dirs): every (method, student
shape) of --report_dir and the shapes' dirs, with SST-2, zero-shot STS-B, parameters and latency.
<!-- study-cost -->: the measured cost per method and task (CPU- and wall-minutes per fine-tuning
run, each distillation's steps, tokens and minutes) and how many records exist, from
<report_dir>/records/*.json. Nothing else in the page is touched; a missing marker is one error line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from distill_jax.evaluate.run import split_list
from studies.ledger import distill_seconds, untimed_scale_from

STUDY_PAGE = "docs/results/study.md"
TABLE_MARKERS = ("<!-- study-table -->", "<!-- /study-table -->")
COST_MARKERS = ("<!-- study-cost -->", "<!-- /study-cost -->")
BUDGET_MARKERS = ("<!-- study-budget -->", "<!-- /study-budget -->")
SHAPES_MARKERS = ("<!-- study-shapes -->", "<!-- /study-shapes -->")


def _records(report_dir: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(report_dir, "records", "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def table_block(report_dir: str, page_dir: str) -> str:
    """The results table (the first paragraph of study_results.md) and the chart, linked relative
    to the page's folder."""
    with open(os.path.join(report_dir, "study_results.md")) as f:
        table = f.read().split("\n\n", 1)[0].strip()
    chart = os.path.relpath(os.path.join(report_dir, "study_results.png"), page_dir)
    return f"{table}\n\n![study chart]({chart})"


def _results(report_dir: str) -> dict:
    path = os.path.join(report_dir, "study_results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: build it with the study's report_only step for that directory")
    with open(path) as f:
        return json.load(f)


def budget_block(report_dirs: list[str]) -> str:
    """Markdown: the methods every directory holds (references excepted), one table row per
    (method, token budget) in the first directory's method order, then each distillation's last
    logged loss per budget. report_dirs: the same study at different `steps=`, smallest first
    by convention. Reads study_results.json and the distill records only."""
    from distill_jax.evaluate import report

    results = [_results(d) for d in report_dirs]
    tasks = results[0]["tasks"]
    for d, r in zip(report_dirs[1:], results[1:]):
        if r["tasks"] != tasks or r["teacher"] != results[0]["teacher"]:
            raise ValueError(f"{d}: tasks {r['tasks']} / teacher {r['teacher']} differ from {report_dirs[0]}'s; "
                             f"--budget_dirs must hold the same study at another steps=")
    distilled = [{c["method"]: c for c in r["compute"] if c.get("distill_steps")} for r in results]
    methods = [m for m in results[0]["methods"] if all(m in d for d in distilled)]
    if not methods:
        raise ValueError(f"--budget_dirs: no distilled method is in all of {report_dirs}")
    rows, summaries, losses = [], {}, []
    for m in methods:
        per_budget = []
        for d, r, comp in zip(report_dirs, results, distilled):
            label, tokens_m = r["labels"][m], comp[m]["distill_tokens"] / 1e6
            row = f"{label}, {tokens_m:.1f} M tokens"
            rows.append(row)
            summaries.update({(row, s["task"]): s for s in r["summaries"] if s["row"] == label})
            with open(os.path.join(d, "records", f"distill__{m}.json")) as f:
                last = json.load(f)["loss_last_logged"]["loss"]
            per_budget.append(f"{last:.4f} at {tokens_m:.1f} M")
        losses.append(f"- `{m}`: last logged distillation loss " + ", ".join(per_budget) + ".")
    return report.markdown_table(tasks, rows, summaries) + "\n" + "\n".join(losses)


def shapes_block(report_dirs: list[str]) -> str:
    """Markdown: one row per (method, shape) over the shapes' report dirs (the same study at
    another student=), in each dir's method order, once it has a score: SST-2 median (min-max),
    zero-shot STS-B, the shape's parameters and latency with the speed-up over the teacher; the
    teacher once. Reads
    each dir's study_results.json only; a cell without a record is '–'."""
    lines = ["| model | shape | SST-2 acc | STS-B zero-shot | params (M) | latency 32x128 (ms) | speed-up 32x128 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    seen = set()
    for d in report_dirs:
        r = _results(d)
        sst2 = {s["row"]: s for s in r.get("summaries", []) if s.get("task") == "sst2"}
        extra = {row["method"]: row for row in r.get("zero_shot_and_cost", [])}
        for method in r["methods"]:
            label = r["labels"][method]
            shape = "6x384" if method == "teacher" else r.get("student_shape", "?")
            x = extra.get(method, {})
            shape = x.get("shape") or shape
            if (method, shape) in seen or (label not in sst2 and x.get("stsb_spearman") is None):
                continue   # a row shows once it has a score (the cost alone is the shape's)
            seen.add((method, shape))
            s = sst2.get(label)
            acc = (f"{100 * s['median_score']:.1f} ({100 * s['min_score']:.1f}–{100 * s['max_score']:.1f})"
                   if s else "–")
            params = x.get("params_total")
            lines.append(f"| {label} | {shape} | {acc} | {fmt(x.get('stsb_spearman'), '.1f')} | "
                         f"{fmt(params and params / 1e6, '.1f')} | {fmt(x.get('latency_32x128_ms'), '.0f')} | "
                         f"{fmt(x.get('speedup_32x128'), '.2f')} |")
    return "\n".join(lines)


def cost_block(records: list[dict], *, methods: int, runs_total: int) -> str:
    """Markdown: per (method, task) the mean CPU- and wall-minutes of a fine-tuning run, then one
    line per distillation and the count of records."""
    runs = [r for r in records if "best_score" in r]
    distills = {r["method"]: r for r in records if "best_score" not in r and "steps" in r and "method" in r}
    by_pair: dict[tuple, list[dict]] = {}
    for r in runs:
        by_pair.setdefault((r["method"], r["task"]), []).append(r)
    lines = ["", "| method | task | runs | CPU-min per run | wall-min per run |", "|---|---|---:|---:|---:|"]
    for (method, task), rs in sorted(by_pair.items()):
        cpu = sum(r.get("cpu_s", 0.0) for r in rs) / len(rs) / 60
        wall = sum(r.get("wall_s", 0.0) for r in rs) / len(rs) / 60
        lines.append(f"| {method} | {task} | {len(rs)} | {cpu:.1f} | {wall:.1f} |")
    lines.append("")
    distilled = [m for m in distills if distills[m]["steps"]]
    for method in distilled:
        d = distills[method]
        timed = untimed_scale_from(d)
        scaled = (f" (scaled from the {timed} steps timed: {d['cpu_s'] / 60:.1f} CPU-min measured; an "
                  f"earlier process was killed before recording its seconds)" if timed else "")
        peak = (d.get("throughput") or {}).get("peak_flops")
        host = (d.get("host") or {}).get("cpu_model")
        machine = ((f" on {host or 'a host the record does not name'}" if host or peak else "")
                   + (f" (float32 peak measured at its start {peak / 1e12:.2f} TFLOP/s)" if peak else ""))
        lines.append(f"- distillation `{method}`: {d['steps']} steps, {d['tokens'] / 1e6:.2f} M tokens, "
                     f"{distill_seconds(d, 'cpu_s') / 60:.1f} CPU-min over {d.get('segments', 1)} recorded "
                     f"segment(s), {distill_seconds(d, 'wall_s') / 60:.1f} wall-min{machine}{scaled}.")
    lines.append(f"- records: {len(runs)} fine-tuning runs of {runs_total}, {len(distilled)} distillations "
                 f"of {methods}.")
    return "\n".join(lines)


def replace_between(text: str, markers: tuple[str, str], block: str, path: str) -> str:
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{path}: markers {start} ... {end} not found; add them where the block goes")
    pattern = re.escape(start) + r".*?" + re.escape(end)
    return re.sub(pattern, lambda _: f"{start}\n{block}\n{end}", text, count=1, flags=re.S)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report_dir", default="docs/study")
    p.add_argument("--page", default=STUDY_PAGE, help="the results page holding the markers")
    p.add_argument("--preset", default="cpu", help="the study preset (for the totals: methods, runs)")
    p.add_argument("--budget_dirs", default="", help="comma list of report dirs of the same study at other "
                   "steps= (e.g. docs/study_4000): fills the <!-- study-budget --> block")
    p.add_argument("--shape_dirs", default="", help="comma list of report dirs of the same study at another "
                   "student= (e.g. docs/study_3x192): fills the <!-- study-shapes --> block")
    args = p.parse_args(argv)
    from configs import study

    config = study.get_config(f"preset={args.preset}")
    methods = [m for m in config.methods if m not in study.REFERENCES]
    runs_total = (len(config.methods) * len(split_list(config.glue.tasks)) * len(split_list(config.glue.seeds))
                  * len(split_list(config.glue.learning_rates)))
    blocks = [(TABLE_MARKERS, table_block(args.report_dir, os.path.dirname(os.path.abspath(args.page)))),
              (COST_MARKERS, cost_block(_records(args.report_dir), methods=len(methods), runs_total=runs_total))]
    if args.budget_dirs:
        blocks.append((BUDGET_MARKERS, budget_block([args.report_dir, *split_list(args.budget_dirs)])))
    if args.shape_dirs:
        blocks.append((SHAPES_MARKERS, shapes_block([args.report_dir, *split_list(args.shape_dirs)])))
    with open(args.page) as f:
        text = f.read()
    for markers, block in blocks:   # every block is checked before the page is written
        text = replace_between(text, markers, block, args.page)
    with open(args.page, "w") as f:
        f.write(text)
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    from distill_jax.commands import run_with_one_line_errors
    run_with_one_line_errors(lambda: sys.exit(main()))
