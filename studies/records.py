"""The study's files: records (small JSON, committed under <report_dir>/records/), their names,
whole-or-absent writes, and the console line every stage logs with.

    distill__<method>.json                       a method's student (stages.student_dir)
    zeroshot__<method>.json                      its zero-shot STS-B score (stages.score_zero_shot)
    <method>__<task>__lr<lr>__seed<k>.json       one fine-tuning run (stages.finetune_all)
    mlm_head_fit.json                            the MLM-head fit for OD (stages.fit_head)
"""

from __future__ import annotations

import glob
import json
import os

import jax


def log(message: str) -> None:
    """The study's console line (process 0 only): `[study] <message>`."""
    if jax.process_index() == 0:
        print(f"[study] {message}", flush=True)


def write_json(path: str, payload: dict) -> None:
    """Whole or absent: a temporary file renamed over `path` (a killed study leaves no half record)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> dict | None:
    """The JSON at `path`, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def portable_record(record: dict) -> dict:
    """Records are committed: machine-local directories become names relative to their roots."""
    out = dict(record)
    for key in ("teacher_dir", "export_dir", "workdir"):
        if isinstance(out.get(key), str):
            out[key] = "/".join(os.path.normpath(out[key]).split(os.sep)[-3:])
    return out


FIT_RECORD = "mlm_head_fit.json"   # the MLM-head fit (one per study)


def distill_record_path(records_dir: str, method: str) -> str:
    return os.path.join(records_dir, f"distill__{method}.json")


def run_record_path(records_dir: str, method: str, task: str, lr: float, seed: int) -> str:
    return os.path.join(records_dir, f"{method}__{task}__lr{float(lr):g}__seed{int(seed)}.json")


def zero_shot_path(records_dir: str, method: str) -> str:
    return os.path.join(records_dir, f"zeroshot__{method}.json")


def load_records(records_dir: str) -> tuple[dict[str, list[dict]], dict[str, dict], dict | None]:
    """(fine-tuning runs by method, distillation records by method, MLM-head fit record or None).
    Zero-shot records: load_zero_shot."""
    runs: dict[str, list[dict]] = {}
    distill: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(records_dir, "*.json"))):
        name = os.path.basename(path)
        if name.startswith("zeroshot__") or name == FIT_RECORD:
            continue
        record = read_json(path)
        if name.startswith("distill__"):
            distill[record["method"]] = record
        else:
            runs.setdefault(record["method"], []).append(record)
    return runs, distill, read_json(os.path.join(records_dir, FIT_RECORD))


def load_zero_shot(records_dir: str) -> dict[str, dict]:
    """The zero-shot STS-B record of every method that has one."""
    out = {}
    for path in sorted(glob.glob(os.path.join(records_dir, "zeroshot__*.json"))):
        record = read_json(path)
        out[record["method"]] = record
    return out
