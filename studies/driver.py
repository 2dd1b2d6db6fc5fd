"""The distillation-methods study: `run_study(config, workdir)` for configs/study.py.

    python -m studies --config=configs/study.py:preset=cpu --workdir=<dir>
    python main.py --config=configs/study.py:preset=cpu --workdir=<dir>        # the same run

For every method of config.methods, in order (studies/stages.py):
  1. distil: `distill_jax.train.run_training` into <workdir>/distill/<method>/ (checkpoints
     there; a rerun resumes), exporting the student to .../export. Two reference rows distil
     nothing: 'none' exports the student shape at a random init drawn with the study's seed,
     'teacher' is the teacher's own directory. An OD method on a teacher
     without an MLM head first fits one (distill_jax/mlm_head.py) in <workdir>/mlm_head/.
  1b. score it zero-shot on STS-B (config.zero_shot; distill_jax/evaluate/stsb.py), one record:
     <report_dir>/records/zeroshot__<method>.json.
  2. fine-tune on every task x seed x lr of config.glue (distill_jax.evaluate.run.run_or_reuse), one
     record per run: <report_dir>/records/<method>__<task>__lr<lr>__seed<k>.json.
Then 3. report: the table (md/json/csv) and bar chart from the records alone
(studies/report.py `build_report(config, report_dir)`), plus the compute used per method and the
MLM-head fit.

A record carries a fingerprint of everything that decides its result (studies/identity.py: the
method's distillation config minus machine paths, the fine-tuning recipe, task, rows, lr, seed); a
rerun skips a record whose fingerprint matches, so the same command continues where it stopped, in
a later session or from a fresh clone (the records are committed; the heavy state in the workdir
is rebuilt only when a record is missing). CPU seconds of each stage are measured with
time.process_time (all threads of this process) and kept in the records (studies/ledger.py).
"""

from __future__ import annotations

import json
import os

import ml_collections

from distill_jax.evaluate.run import split_list
from studies.checks import check_report_shape, check_study
from studies.identity import REFERENCES, digest, method_identity
from studies.records import log
from studies.report import build_report
from studies.stages import (Tasks, card_with_study_results, finetune_all, missing_runs, score_zero_shot, student_dir,
                            zero_shot_missing)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs what is missing of the study, then writes the report. Returns the report payload."""
    config = ml_collections.ConfigDict(config)
    workdir = os.path.abspath(workdir)
    report_dir = os.path.abspath(config.report_dir or os.path.join(workdir, "report"))
    records_dir = os.path.join(report_dir, "records")
    check_report_shape(config, report_dir, write=False)   # never another shape's records
    if config.report_only:
        return build_report(config, report_dir)
    facts = check_study(config)
    tasks = Tasks(config.glue) if not config.dry_run else None
    # config.only also sets the run order (the table keeps config.methods' order).
    methods = [m for m in split_list(config.only) if m in config.methods] or list(config.methods)
    fingerprints = {m: digest(method_identity(config, m, facts["fitted_head"])) for m in methods}
    task_names = split_list(config.glue.tasks)
    if config.dry_run:  # no data is read: every run counts as to do
        todo = {m: [(t, lr, s, "") for t in task_names for lr in config.glue.learning_rates for s in config.glue.seeds]
                for m in methods}
    else:
        todo = {m: missing_runs(config, m, fingerprints[m], records_dir, tasks) for m in methods}
    total = sum(len(task_names) * len(config.glue.seeds) * len(config.glue.learning_rates) for _ in methods)
    progress = {"done": total - sum(len(v) for v in todo.values()), "total": total}
    log(f"preset {config.preset}: {len(methods)} methods x {len(task_names)} tasks x "
        f"{len(config.glue.seeds)} seeds x {len(config.glue.learning_rates)} lr; "
        + (f"{total} runs (dry run: finished records are not checked, no data is read)" if config.dry_run
           else f"{progress['done']}/{total} records already done")
        + f"; workdir {workdir}; records {records_dir}")
    if config.dry_run:
        _print_plan(config, methods, todo, fingerprints)
        return {"plan": {m: len(v) for m, v in todo.items()}}
    os.makedirs(workdir, exist_ok=True)
    check_report_shape(config, report_dir, write=True)
    state: dict = {}
    steps_cache: dict = {}
    for index, method in enumerate(methods, 1):
        zero_shot = zero_shot_missing(config, method, fingerprints[method], records_dir)
        if not todo[method] and not zero_shot:
            log(f"({index}/{len(methods)}) {method}: every record done, skipped")
            continue
        log(f"({index}/{len(methods)}) {method}: {len(todo[method])} fine-tuning runs"
            + (" and the zero-shot record" if zero_shot else "") + " to do")
        model_dir = student_dir(config, method, workdir, facts, records_dir, fingerprints[method], state)
        if zero_shot:   # seconds: it lands before the method's fine-tunes
            score_zero_shot(config, method, model_dir, fingerprints[method], records_dir)
        finetune_all(config, method, model_dir, todo[method], records_dir, tasks, steps_cache, progress)
        card_with_study_results(config, method, model_dir, records_dir, tasks)
        build_report(config, report_dir)   # the table grows as records land
    return build_report(config, report_dir)


def _print_plan(config, methods, todo, fingerprints) -> None:
    d = config.distill
    tokens = d.total_steps * d.batch_size * d.data.seq_len
    amount = f"{tokens / 1e9:.1f} B" if tokens >= 1e9 else f"{tokens / 1e6:.2f} M"
    log(f"plan: teacher {config.teacher_name}; student {d.student.num_layers}x{d.student.hidden_size} "
        f"({d.student.num_heads} heads); {d.total_steps} steps x {d.batch_size} x {d.data.seq_len} = "
        f"{amount} tokens per method; data {d.data.source}")
    for method in methods:
        objective = ("fine-tune only" if method in REFERENCES
                     else json.dumps(config.method_objectives[method].to_dict(), sort_keys=True))
        log(f"  {method:16s} {objective}; {len(todo[method])} runs to do (fingerprint {fingerprints[method]})")
    log(f"  fine-tuning: tasks {config.glue.tasks}; lrs {list(config.glue.learning_rates)}; seeds "
        f"{list(config.glue.seeds)}; recipe {config.glue.finetune.to_dict()}")
