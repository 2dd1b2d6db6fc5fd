"""The distillation-methods study: `run_study(config, workdir)` for configs/study.py.

For every method of config.methods, in order:
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
(`build_report(config, report_dir)`), plus the compute used per method and the MLM-head fit.

A record carries a fingerprint of everything that decides its result (the method's distillation
config minus machine paths, the fine-tuning recipe, task, rows, lr, seed); a rerun skips a record
whose fingerprint matches, so the same command continues where it stopped, in a later session or
from a fresh clone (the records are committed; the heavy state in the workdir is rebuilt only when
a record is missing). CPU seconds of each stage are measured with time.process_time (all threads
of this process) and kept in the records.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from distill_jax.run_config import OPERATIONAL_FIELDS

REFERENCES = ("teacher", "none")
TABLE_NAME = "study_results"


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[study] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# Identity of a method's distillation (what its records' fingerprints rest on)
# ----------------------------------------------------------------------------------------------

# Fields that change how a run is carried out or logged, never what it computes: left out of a
# method's identity, so stopping early (stop_after_step), logging more often or moving the caches
# does not orphan finished records. attention_impl picks a kernel for the same softmax attention;
# eval (scores logged during training) reads the student and never changes it.
# One list, owned by distill_jax/run_config.py (the trainer's resume check reads it too).
_OPERATIONAL_FIELDS = OPERATIONAL_FIELDS


def _portable(node: Any) -> Any:
    """A config dict without machine-local paths and operational fields: data.paths keeps its last
    two components (".../wikipedia_en_sample/text"), cache folders and _OPERATIONAL_FIELDS go."""
    if isinstance(node, Mapping):
        out = {}
        for key, value in node.items():
            if key in _OPERATIONAL_FIELDS:
                continue
            if key == "paths" and isinstance(value, str):
                value = ",".join("/".join(os.path.normpath(p).split(os.sep)[-2:]) for p in value.split(","))
            out[key] = _portable(value)
        return out
    if isinstance(node, (list, tuple)):
        return [_portable(v) for v in node]
    return node


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def method_identity(config, method: str, fitted_head: bool = False) -> dict:
    """What decides a method's student: the shared distillation config with its objective, or for
    the references the teacher / the student shape and seed."""
    d = config.distill
    if method == "teacher":
        return {"method": method, "teacher": config.teacher_name}
    student = dict(d.student.to_dict())
    if method == "none":
        return {"method": method, "teacher": config.teacher_name, "student": student, "seed": int(d.seed)}
    distill = dict(d.to_dict())
    distill["objective"] = config.method_objectives[method].to_dict()
    distill.pop("teacher", None)
    identity = {"method": method, "teacher": config.teacher_name, "distill": _portable(distill)}
    if _needs_teacher_head(config, method) and fitted_head:
        identity["fitted_mlm_head"] = _portable(config.fit_head.to_dict())
    return identity


# ----------------------------------------------------------------------------------------------
# Checks before anything trains
# ----------------------------------------------------------------------------------------------

def _needs_teacher_head(config, method: str) -> bool:
    return method not in REFERENCES and "od" in config.method_objectives[method]


def check_study(config) -> dict:
    """One-line errors naming the field, before any model is trained. Returns facts the run uses:
    teacher_dir, teacher_shape, fitted_head (whether an OD method needs the head fitted first)."""
    from distill_jax import models
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate.tasks import get_task
    from distill_jax.losses import build_objective
    from distill_jax.models.hf_io import known_hub_config, read_hf_config

    known = (*REFERENCES, *config.method_objectives.keys())
    for field, names in (("methods", list(config.methods)), ("only", _split(config.only))):
        for name in names:
            if name not in known:
                raise ValueError(f"config.{field}: unknown method {name!r}; known: {', '.join(known)}")
    try:
        teacher_dir = str(models.resolve_model_dir(config.teacher_name))
        teacher_hf, source = read_hf_config(Path(teacher_dir)), f"{teacher_dir}/config.json"
    except FileNotFoundError as exc:
        # A dry run (the pod preset planned on a machine without the hub) needs shapes only.
        teacher_dir, teacher_hf = None, known_hub_config(config.teacher_name) if config.dry_run else None
        if teacher_hf is None:
            raise FileNotFoundError(f"config.teacher_name={config.teacher_name!r}: {exc}") from None
        source = f"the shipped shapes of {config.teacher_name}"
        log(f"dry run: {config.teacher_name} is not reachable here; checking against {source}")
    teacher_shape = models.EncoderConfig.from_hf_dict(teacher_hf, source=source)
    s = config.distill.student
    student_dims = ml_collections.ConfigDict(dict(num_layers=s.num_layers, hidden_size=s.hidden_size,
                                                  num_heads=s.num_heads, intermediate_size=s.intermediate_size))
    fitted_head = False
    for method in config.methods:
        if method in REFERENCES:
            continue
        try:
            build_objective(config.method_objectives[method], student_dims, teacher_shape)
        except ValueError as exc:
            raise ValueError(f"config.method_objectives.{method}: {exc}") from None
        if _needs_teacher_head(config, method) and teacher_dir and not models.has_mlm_head(teacher_dir):
            if not config.fit_head.get("enabled", False):
                raise ValueError(
                    f"config.methods: {method} needs the teacher's MLM head and {config.teacher_name} has none; "
                    "set config.fit_head.enabled=True (fit one first) or point config.teacher_name at a "
                    "*ForMaskedLM directory (python main.py --config=configs/fit_mlm_head.py makes one)")
            fitted_head = True
    glue = config.glue
    for task in _split(glue.tasks):
        spec = get_task(task)
        if glue.data.source == "tsv" and not config.dry_run:
            for split in ("train", *(name for name, _ in spec.dev_splits)):
                glue_data.read_split(spec, split, glue.data)  # FileNotFoundError names the file
    if config.zero_shot.enabled and glue.data.source == "tsv" and not config.dry_run:
        glue_data.read_split(get_task("stsb"), config.zero_shot.split, glue.data)  # the zero-shot pairs
    if not list(glue.seeds) or not list(glue.learning_rates):
        raise ValueError("config.glue.seeds and config.glue.learning_rates must each list at least one value")
    return {"teacher_dir": teacher_dir, "teacher_shape": teacher_shape, "fitted_head": fitted_head}


STUDENT_MARKER = "student_shape.json"


def check_report_shape(config, report_dir: str, *, write: bool) -> None:
    """A report dir holds one student shape's records: <report_dir>/student_shape.json names it.
    Refuses (one line) a dir made for another shape, or one with records but no marker (which shape
    they are of is unknown); with write, marks a new dir as this config's."""
    s = config.distill.student
    shape = {k: int(s[k]) for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size")}
    name = f"{shape['num_layers']}x{shape['hidden_size']}"
    path = os.path.join(report_dir, STUDENT_MARKER)
    saved = _read_json(path)
    if saved is None:
        if glob.glob(os.path.join(report_dir, "records", "*.json")):
            raise ValueError(f"{report_dir}/records holds records but no {STUDENT_MARKER} naming their student "
                             f"shape; write {json.dumps({'student': shape})} there if they are of this study's "
                             f"{name} student, or use another config.report_dir")
        if write:
            _write_json(path, {"student": shape})
    elif saved.get("student") != shape:
        raise ValueError(f"config.report_dir={report_dir} holds the records of student {saved.get('student')} and "
                         f"this study's student is {shape}; give each shape its own report dir (e.g. "
                         f"docs/study_{name})")


def _split(value) -> list[str]:
    from distill_jax.evaluate.run import split_list

    return split_list(value)


# ----------------------------------------------------------------------------------------------
# CPU accounting
# ----------------------------------------------------------------------------------------------

class Stage:
    """Measures one stage's wall and CPU seconds (this process, all threads)."""

    def __enter__(self):
        self.wall, self.cpu = time.time(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall_s, self.cpu_s = time.time() - self.wall, time.process_time() - self.cpu


def _ledger_add(workdir: str, entry: dict) -> None:
    """Appends a stage's measured seconds to <workdir>/cpu_ledger.jsonl (also interrupted stages,
    so a resumed distillation's CPU time adds up over its segments)."""
    with open(os.path.join(workdir, "cpu_ledger.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def _ledger_sum(workdir: str, method: str, stage: str) -> dict:
    total = {"cpu_s": 0.0, "wall_s": 0.0, "segments": 0, "steps": 0}
    path = os.path.join(workdir, "cpu_ledger.jsonl")
    if os.path.isfile(path):
        for line in open(path):
            entry = json.loads(line)
            if entry["method"] == method and entry["stage"] == stage:
                total["cpu_s"] += entry["cpu_s"]
                total["wall_s"] += entry["wall_s"]
                total["segments"] += 1
                total["steps"] += int(entry.get("steps", 0))
    return total


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
# Stage 1: a student per method
# ----------------------------------------------------------------------------------------------

def _fit_head(config, workdir: str, records_dir: str) -> str:
    """Fits the teacher's MLM head once (resumable); returns the teacher-with-head directory."""
    from distill_jax.mlm_head import finished_fit, fit_mlm_head

    fit_dir = os.path.join(workdir, "mlm_head")
    fit_cfg = ml_collections.ConfigDict(config.fit_head.to_dict())
    fit_cfg.teacher.name = config.teacher_name
    del fit_cfg["enabled"]
    fingerprint = _digest(_portable(fit_cfg.to_dict()))
    marker = _read_json(os.path.join(fit_dir, "study_fit.json"))
    if marker is not None and marker["fingerprint"] != fingerprint:
        raise ValueError(f"{fit_dir} holds a head fitted with another config.fit_head; use a new --workdir or "
                         "delete that folder")
    _write_json(os.path.join(fit_dir, "study_fit.json"), {"fingerprint": fingerprint})
    record_path = os.path.join(records_dir, "mlm_head_fit.json")
    if finished_fit(fit_dir) is not None and os.path.isfile(record_path):
        # A rerun for OD's remaining runs: the head's cost and record stay as they were.
        log(f"the MLM head is already fitted ({fit_dir}); its record {record_path} stands")
        return os.path.join(fit_dir, "export")
    log(f"fitting the MLM head of {config.teacher_name} (frozen) for OD in {fit_dir}")
    with Stage() as stage:
        record = fit_mlm_head(fit_cfg, fit_dir)
    _ledger_add(workdir, {"method": "mlm_head", "stage": "fit", "cpu_s": stage.cpu_s, "wall_s": stage.wall_s})
    summary = {k: v for k, v in record.items() if k != "history"} | {
        "loss_curve": record.get("history", []),
        "cpu_s_all_segments": _ledger_sum(workdir, "mlm_head", "fit")["cpu_s"]}
    _write_json(record_path, _portable_record(summary))
    curve = os.path.join(fit_dir, "loss_curves.png")
    if os.path.isfile(curve):   # the fit's loss curve beside the table
        shutil.copyfile(curve, os.path.join(os.path.dirname(records_dir), "mlm_head_fit.png"))
    return os.path.join(fit_dir, "export")


def portable_model_spec(config, method: str) -> str:
    """The model a record came from, named the same on every machine: the teacher's id, or the
    method's export relative to the study's workdir (what the record's fingerprint names exactly)."""
    return config.teacher_name if method == "teacher" else f"distill/{method}/export"


def _portable_record(record: dict) -> dict:
    """Records are committed: machine-local directories become names relative to their roots."""
    out = dict(record)
    for key in ("teacher_dir", "export_dir", "workdir"):
        if isinstance(out.get(key), str):
            out[key] = "/".join(os.path.normpath(out[key]).split(os.sep)[-3:])
    return out


def _distil(config, method: str, workdir: str, teacher_dir: str, fingerprint: str) -> dict:
    """Runs (or resumes) the method's distillation; returns its record."""
    from distill_jax.metrics import host_description
    from distill_jax.train import run_training

    run_dir = os.path.join(workdir, "distill", method)
    cfg = ml_collections.ConfigDict(config.distill.to_dict())
    cfg.objective = ml_collections.ConfigDict(config.method_objectives[method].to_dict())
    cfg.teacher.name = teacher_dir
    log(f"{method}: distilling {cfg.total_steps} steps of {cfg.batch_size} x {cfg.data.seq_len} "
        f"into {run_dir} (resumes from its checkpoints)")
    with Stage() as stage:
        result = run_training(cfg, run_dir)
    _ledger_add(workdir, {"method": method, "stage": "distill", "cpu_s": stage.cpu_s, "wall_s": stage.wall_s,
                          "steps": result.summary["steps"]["this_run"]})
    if result.preempted:
        raise SystemExit(f"[study] {method}: distillation stopped at step {result.final_step} (preempted); "
                         "rerun the same command to continue")
    spent = _ledger_sum(workdir, method, "distill")
    s = result.summary
    tokens = int(cfg.total_steps) * int(cfg.batch_size) * int(cfg.data.seq_len)
    return {"method": method, "fingerprint": fingerprint, "objective": cfg.objective.to_dict(),
            "teacher": config.teacher_name, "steps": s["steps"]["final"], "tokens": tokens,
            "loss_first_logged": s["loss_first_logged"], "loss_last_logged": s["loss_last_logged"],
            "cpu_s": spent["cpu_s"], "wall_s": spent["wall_s"], "segments": spent["segments"],
            # Steps whose process lived to write its ledger entry: a process killed outright (a
            # session's end) trained steps whose seconds were never recorded.
            "cpu_timed_steps": spent["steps"],
            "train_loop_s": s["times_s"]["train_loop_all_runs"], "throughput": s["throughput"],
            "export_dir": os.path.join(run_dir, "export"), "devices": s["devices"],
            "host": host_description()}


def _export_init(config, workdir: str, teacher_dir: str, teacher_shape, fingerprint: str) -> dict:
    """'none': the student shape at the random init the trainer draws (same seed), exported."""
    from flax import nnx

    from distill_jax import models

    s = config.distill.student
    export_dir = os.path.join(workdir, "distill", "none", "export")
    with Stage() as stage:
        student = models.make_student(teacher_shape, num_layers=s.num_layers, hidden_size=s.hidden_size,
                                      num_heads=s.num_heads, intermediate_size=s.intermediate_size,
                                      init="random", with_mlm_head=False, rngs=nnx.Rngs(int(config.distill.seed)))
        models.export_pretrained(student, export_dir, tokenizer_dir=teacher_dir)
    return {"method": "none", "fingerprint": fingerprint, "steps": 0, "tokens": 0, "cpu_s": stage.cpu_s,
            "wall_s": stage.wall_s, "export_dir": export_dir}


def _student_dir(config, method: str, workdir: str, facts: dict, records_dir: str, fingerprint: str,
                 state: dict) -> str:
    """The directory of the method's model, distilling it first when its export is missing."""
    from distill_jax import models

    if method == "teacher":
        return facts["teacher_dir"]
    run_dir = os.path.join(workdir, "distill", method)
    marker = os.path.join(run_dir, "study_method.json")
    saved = _read_json(marker)
    if saved is not None and saved.get("fingerprint") != fingerprint:
        raise ValueError(f"{run_dir} was made by another configuration of method {method} (fingerprint "
                         f"{saved.get('fingerprint')} vs {fingerprint}); use a new --workdir or delete that folder")
    export_dir = os.path.join(run_dir, "export")
    record_path = os.path.join(records_dir, f"distill__{method}.json")
    record = _read_json(record_path)
    if os.path.isfile(os.path.join(export_dir, "config.json")) and record and record["fingerprint"] == fingerprint:
        return export_dir
    # A record without its export: the workdir was lost (a new machine) while some of the method's
    # fine-tunes were still to do. The student is made again and compared with the recorded one.
    earlier = record if record and record.get("fingerprint") == fingerprint else None
    os.makedirs(run_dir, exist_ok=True)
    _write_json(marker, {"fingerprint": fingerprint,
                         "identity": method_identity(config, method, facts["fitted_head"])})
    if method == "none":
        record = _export_init(config, workdir, facts["teacher_dir"], facts["teacher_shape"], fingerprint)
    else:
        teacher_dir = facts["teacher_dir"]
        if _needs_teacher_head(config, method) and facts["fitted_head"]:
            if "head_dir" not in state:
                state["head_dir"] = _fit_head(config, workdir, records_dir)
            teacher_dir = state["head_dir"]
        record = _distil(config, method, workdir, teacher_dir, fingerprint)
    record["export_sha256"] = models.weights_sha256(export_dir)
    if earlier is not None:
        record |= _compare_students(method, earlier, record["export_sha256"], records_dir)
    _write_json(record_path, _portable_record(record))
    log(f"{method}: student ready in {export_dir}; record {record_path}")
    return export_dir


def _compare_students(method: str, earlier: dict, export_sha256: str, records_dir: str) -> dict:
    """Says whether a student made again is the one the method's finished fine-tune records came
    from; returns the fields that keep a differing earlier student on the record."""
    finished = len(glob.glob(os.path.join(records_dir, f"{method}__*__lr*__seed*.json")))
    before = earlier.get("export_sha256")
    if before == export_sha256:
        log(f"{method}: the student made again is bit-identical to the recorded one (weights sha256 "
            f"{export_sha256[:16]}); its {finished} finished fine-tune records stand")
        return {}
    if before is None:
        log(f"{method}: the earlier student's weights were not digested, so the {finished} finished fine-tune "
            f"records cannot be matched to this one (weights sha256 {export_sha256[:16]}); they are kept")
        return {"earlier_export_sha256": None}
    log(f"warning: {method}: the student made again differs from the recorded one (weights sha256 "
        f"{export_sha256[:16]} vs {before[:16]}; another machine's kernels); its {finished} finished fine-tune "
        "records came from the earlier student and are kept (delete them to fine-tune this one)")
    return {"earlier_export_sha256": before}


# ----------------------------------------------------------------------------------------------
# Stage 1b: the zero-shot sentence-embedding record (distill_jax/evaluate/stsb.py)
# ----------------------------------------------------------------------------------------------

def _zero_shot_path(records_dir: str, method: str) -> str:
    return os.path.join(records_dir, f"zeroshot__{method}.json")


def _zero_shot_fingerprint(config, fingerprint: str) -> str:
    """What decides a zero-shot score: the model (the method's fingerprint) and the evaluation."""
    return _digest({"model": fingerprint, "zero_shot": config.zero_shot.to_dict(),
                    "source": config.glue.data.source})


def _zero_shot_missing(config, method: str, fingerprint: str, records_dir: str) -> bool:
    if not config.zero_shot.enabled:
        return False
    saved = _read_json(_zero_shot_path(records_dir, method))
    return saved is None or saved.get("fingerprint") != _zero_shot_fingerprint(config, fingerprint)


def _zero_shot(config, method: str, model_dir: str, fingerprint: str, records_dir: str) -> dict:
    """Scores the method's model on STS-B (config.zero_shot.split) with no fine-tuning; one record."""
    from distill_jax import models
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate import stsb
    from distill_jax.evaluate.tasks import get_task

    z = config.zero_shot
    examples = glue_data.read_split(get_task("stsb"), z.split, config.glue.data)
    with Stage() as stage:
        score = stsb.score_model_dir(model_dir, examples, max_len=int(z.max_len), batch_size=int(z.batch_size))
    record = {"method": method, "fingerprint": _zero_shot_fingerprint(config, fingerprint), "task": "stsb",
              "split": z.split, "pooling": "mean of the last hidden states (attention-masked)",
              "similarity": "cosine", **score, "student_sha256": models.weights_sha256(model_dir),
              "cpu_s": stage.cpu_s, "wall_s": stage.wall_s}
    _write_json(_zero_shot_path(records_dir, method), record)
    log(f"{method}: zero-shot STS-B {z.split} Spearman x 100 = {score['spearman']:.1f} "
        f"({score['pairs']} pairs, {stage.wall_s:.0f} s)")
    return record


# ----------------------------------------------------------------------------------------------
# Stage 2: fine-tuning records
# ----------------------------------------------------------------------------------------------

def _record_path(records_dir: str, method: str, task: str, lr: float, seed: int) -> str:
    return os.path.join(records_dir, f"{method}__{task}__lr{float(lr):g}__seed{int(seed)}.json")


class _Tasks:
    """Each task's text read once (capped as config.glue says) and encoded once per tokenizer."""

    def __init__(self, glue):
        from distill_jax.evaluate import data as glue_data
        from distill_jax.evaluate.run import _task_caps
        from distill_jax.evaluate.tasks import get_task

        self.glue, self.examples, self._encoded = glue, {}, {}
        for task in _split(glue.tasks):
            spec = get_task(task)
            train_full = glue_data.read_split(spec, "train", glue.data)
            train = glue_data.subsample(train_full, _task_caps(glue, spec.name), int(glue.subsample_seed))
            dev = {s: glue_data.read_split(spec, s, glue.data) for s, _ in spec.dev_splits}
            self.examples[spec.name] = (train, dev)

    @property
    def names(self) -> list[str]:
        return list(self.examples)

    def encoded(self, task: str, model_dir: str):
        from distill_jax.evaluate import encode
        from distill_jax.evaluate.run import task_recipe

        key = (task, model_dir)
        if key not in self._encoded:
            tokenizer = encode.load_tokenizer(model_dir)
            max_len = int(task_recipe(self.glue, task).max_len)
            train, dev = self.examples[task]
            self._encoded = {key: (encode.encode_examples(tokenizer, train, max_len),
                                   {s: encode.encode_examples(tokenizer, d, max_len) for s, d in dev.items()})}
        return self._encoded[key]


def _missing_runs(config, method: str, fingerprint: str, records_dir: str, tasks: _Tasks) -> list[tuple]:
    from distill_jax.evaluate.run import _load_run, fingerprint as run_fingerprint

    missing = []
    for task in tasks.names:
        rows = len(tasks.examples[task][0])
        for lr in config.glue.learning_rates:
            for seed in config.glue.seeds:
                fp = run_fingerprint(config.glue, f"{method}:{fingerprint}", task, rows, float(lr), int(seed))
                if _load_run(_record_path(records_dir, method, task, lr, seed), fp) is None:
                    missing.append((task, float(lr), int(seed), fp))
    return missing


def _finetune_all(config, method: str, model_dir: str, missing: list[tuple], records_dir: str,
                  tasks: _Tasks, steps_cache: dict, progress: dict) -> None:
    from distill_jax import models
    from distill_jax.evaluate import model_io
    from distill_jax.evaluate.run import run_or_reuse

    if not missing:
        return
    label = config.method_labels.get(method, method)
    model = model_io.load_glue_model(model_dir, label=label)
    # Which weights each record was fine-tuned from: a student made again on another machine may
    # differ in its last bits (see _compare_students).
    student_sha256 = models.weights_sha256(model.model_dir)
    for task, lr, seed, fp in missing:
        train, dev = tasks.encoded(task, model.model_dir)
        log(f"{method}: fine-tuning {task} lr={lr:g} seed={seed} ({progress['done']}/{progress['total']} "
            f"records done)")
        with Stage() as stage:
            record = run_or_reuse(config.glue, model, task, train, dev, lr, seed,
                                  _record_path(records_dir, method, task, lr, seed), fp,
                                  steps_cache=steps_cache,
                                  extra={"method": method, "student_sha256": student_sha256,
                                         "model_spec": portable_model_spec(config, method)})
        if "cpu_s" not in record:   # a new run: add its measured seconds to the record on disk
            record |= {"cpu_s": stage.cpu_s, "wall_s": stage.wall_s}
            _write_json(_record_path(records_dir, method, task, lr, seed), record)
        progress["done"] += 1
        log(f"{method}: {task} seed {seed}: best dev score {100 * record['best_score']:.1f} "
            f"(epoch {record['best_epoch']}, {stage.cpu_s / 60:.1f} CPU-min)")


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

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
    tasks = _Tasks(config.glue) if not config.dry_run else None
    # config.only also sets the run order (the table keeps config.methods' order).
    methods = [m for m in _split(config.only) if m in config.methods] or list(config.methods)
    fingerprints = {m: _digest(method_identity(config, m, facts["fitted_head"])) for m in methods}
    task_names = _split(config.glue.tasks)
    if config.dry_run:  # no data is read: every run counts as to do
        todo = {m: [(t, lr, s, "") for t in task_names for lr in config.glue.learning_rates for s in config.glue.seeds]
                for m in methods}
    else:
        todo = {m: _missing_runs(config, m, fingerprints[m], records_dir, tasks) for m in methods}
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
        zero_shot = _zero_shot_missing(config, method, fingerprints[method], records_dir)
        if not todo[method] and not zero_shot:
            log(f"({index}/{len(methods)}) {method}: every record done, skipped")
            continue
        log(f"({index}/{len(methods)}) {method}: {len(todo[method])} fine-tuning runs"
            + (" and the zero-shot record" if zero_shot else "") + " to do")
        model_dir = _student_dir(config, method, workdir, facts, records_dir, fingerprints[method], state)
        if zero_shot:   # seconds: it lands before the method's fine-tunes
            _zero_shot(config, method, model_dir, fingerprints[method], records_dir)
        _finetune_all(config, method, model_dir, todo[method], records_dir, tasks, steps_cache, progress)
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


# ----------------------------------------------------------------------------------------------
# Stage 3: the report, from the records alone
# ----------------------------------------------------------------------------------------------

def load_records(records_dir: str) -> tuple[dict[str, list[dict]], dict[str, dict], dict | None]:
    """(fine-tuning runs by method, distillation records by method, MLM-head fit record or None).
    Zero-shot records: load_zero_shot."""
    runs: dict[str, list[dict]] = {}
    distill: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(records_dir, "*.json"))):
        name = os.path.basename(path)
        if name.startswith("zeroshot__") or name == "mlm_head_fit.json":
            continue
        record = _read_json(path)
        if name.startswith("distill__"):
            distill[record["method"]] = record
        else:
            runs.setdefault(record["method"], []).append(record)
    return runs, distill, _read_json(os.path.join(records_dir, "mlm_head_fit.json"))


def load_zero_shot(records_dir: str) -> dict[str, dict]:
    """The zero-shot STS-B record of every method that has one."""
    out = {}
    for path in sorted(glob.glob(os.path.join(records_dir, "zeroshot__*.json"))):
        record = _read_json(path)
        out[record["method"]] = record
    return out


def build_report(config, report_dir: str) -> dict:
    """Table (md/json/csv) and chart of every (method, task) with records, plus compute and the
    MLM-head fit, into report_dir/study_results.*. Reads nothing but the records (and, for the
    majority-class row, the GLUE training labels when they are present)."""
    from distill_jax.evaluate import report
    from distill_jax.evaluate.tasks import get_task

    runs, distill, head_fit = load_records(os.path.join(report_dir, "records"))
    task_names = [get_task(t).name for t in _split(config.glue.tasks)]
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
    compute = _compute_table(config, runs, distill, head_fit)
    zero_shot = {m: r for m, r in load_zero_shot(os.path.join(report_dir, "records")).items() if m in labels}
    cost = _read_json(cost_record_path(config))
    extra_rows = _zero_shot_and_cost_rows(config, zero_shot, cost)
    notes = _zero_shot_and_cost_table(config, extra_rows, cost) + _notes(config, task_names, compute, head_fit, runs)
    payload = {"preset": config.preset, "teacher": config.teacher_name, "tasks": task_names,
               "methods": list(config.methods), "labels": labels,
               # (config.eval, scores logged while training, holds a machine path and no result)
               "distill": {k: v for k, v in config.distill.to_dict().items() if k != "eval"}
                          | {"data": _portable(config.distill.data.to_dict())},
               "objectives": config.method_objectives.to_dict(), "finetune": config.glue.finetune.to_dict(),
               "learning_rates": list(config.glue.learning_rates), "seeds": list(config.glue.seeds),
               "summaries": [v | {"row": k[0]} for k, v in summaries.items()],
               "compute": compute, "mlm_head_fit": head_fit, "zero_shot_and_cost": extra_rows,
               "student_shape": f"{config.distill.student.num_layers}x{config.distill.student.hidden_size}",
               "records": sorted(os.path.basename(p) for p in glob.glob(os.path.join(report_dir, "records", "*.json")))}
    if not rows:
        log(f"no fine-tuning records yet in {report_dir}/records: nothing to report")
        _write_json(os.path.join(report_dir, f"{TABLE_NAME}.json"), payload)   # the zero-shot rows already
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


def untimed_scale_from(record: dict) -> int | None:
    """The timed steps a distillation's seconds must be scaled from, when a killed process left
    some of its steps untimed (0 < cpu_timed_steps < steps); None when its seconds cover them all."""
    timed, steps = record.get("cpu_timed_steps", 0), record.get("steps", 0)
    return timed if 0 < timed < steps else None


def distill_seconds(record: dict, field: str) -> float:
    """Seconds for all of a distillation's steps: measured, or scaled up from the timed ones."""
    timed = untimed_scale_from(record)
    return record.get(field, 0.0) * (record["steps"] / timed if timed else 1.0)


def _compute_table(config, runs, distill, head_fit) -> list[dict]:
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
        f"{_portable(d.data.to_dict()).get('paths') or d.data.source}; AdamW lr {d.optim.learning_rate:g}, "
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
