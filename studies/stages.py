"""The study's stages for one method, each resumable and each leaving records:

  1. student_dir: the method's student: distil (train.run_training into
     <workdir>/distill/<method>/), or for 'none' the random init exported, or 'teacher' itself;
     an OD method on a teacher without an MLM head first fits one (fit_head, mlm_head.py);
  1b. score_zero_shot: its zero-shot STS-B record (distill_jax/evaluate/stsb.py);
  2. finetune_all: its missing fine-tuning records (distill_jax.evaluate.run.run_or_reuse), the
     GLUE text read once per task and encoded once per tokenizer (Tasks).
"""

from __future__ import annotations

import glob
import os
import shutil

import ml_collections

from distill_jax.evaluate.run import split_list
from studies.identity import REFERENCES, digest, method_identity, needs_teacher_head, portable, portable_model_spec
from studies.ledger import Stage, ledger_add, ledger_sum
from studies.records import (FIT_RECORD, distill_record_path, log, portable_record, read_json, run_record_path,
                             write_json, zero_shot_path)


# ----------------------------------------------------------------------------------------------
# 1. A student per method
# ----------------------------------------------------------------------------------------------

def fit_head(config, workdir: str, records_dir: str) -> str:
    """Fits the teacher's MLM head once (resumable); returns the teacher-with-head directory."""
    from distill_jax.mlm_head import finished_fit, fit_mlm_head

    fit_dir = os.path.join(workdir, "mlm_head")
    fit_cfg = ml_collections.ConfigDict(config.fit_head.to_dict())
    fit_cfg.teacher.name = config.teacher_name
    del fit_cfg["enabled"]
    fingerprint = digest(portable(fit_cfg.to_dict()))
    marker = read_json(os.path.join(fit_dir, "study_fit.json"))
    if marker is not None and marker["fingerprint"] != fingerprint:
        raise ValueError(f"{fit_dir} holds a head fitted with another config.fit_head; use a new --workdir or "
                         "delete that folder")
    write_json(os.path.join(fit_dir, "study_fit.json"), {"fingerprint": fingerprint})
    record_path = os.path.join(records_dir, FIT_RECORD)
    if finished_fit(fit_dir) is not None and os.path.isfile(record_path):
        # A rerun for OD's remaining runs: the head's cost and record stay as they were.
        log(f"the MLM head is already fitted ({fit_dir}); its record {record_path} stands")
        return os.path.join(fit_dir, "export")
    log(f"fitting the MLM head of {config.teacher_name} (frozen) for OD in {fit_dir}")
    with Stage() as stage:
        record = fit_mlm_head(fit_cfg, fit_dir)
    ledger_add(workdir, {"method": "mlm_head", "stage": "fit", "cpu_s": stage.cpu_s, "wall_s": stage.wall_s})
    summary = {k: v for k, v in record.items() if k != "history"} | {
        "loss_curve": record.get("history", []),
        "cpu_s_all_segments": ledger_sum(workdir, "mlm_head", "fit")["cpu_s"]}
    write_json(record_path, portable_record(summary))
    curve = os.path.join(fit_dir, "loss_curves.png")
    if os.path.isfile(curve):   # the fit's loss curve beside the table
        shutil.copyfile(curve, os.path.join(os.path.dirname(records_dir), "mlm_head_fit.png"))
    return os.path.join(fit_dir, "export")


def distil(config, method: str, workdir: str, teacher_dir: str, fingerprint: str) -> dict:
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
    ledger_add(workdir, {"method": method, "stage": "distill", "cpu_s": stage.cpu_s, "wall_s": stage.wall_s,
                         "steps": result.summary["steps"]["this_run"]})
    if result.preempted:
        raise SystemExit(f"[study] {method}: distillation stopped at step {result.final_step} (preempted); "
                         "rerun the same command to continue")
    spent = ledger_sum(workdir, method, "distill")
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


def export_init(config, workdir: str, teacher_dir: str, teacher_shape, fingerprint: str) -> dict:
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


def student_dir(config, method: str, workdir: str, facts: dict, records_dir: str, fingerprint: str,
                state: dict) -> str:
    """The directory of the method's model, distilling it first when its export is missing."""
    from distill_jax import models

    if method == "teacher":
        return facts["teacher_dir"]
    run_dir = os.path.join(workdir, "distill", method)
    marker = os.path.join(run_dir, "study_method.json")
    saved = read_json(marker)
    if saved is not None and saved.get("fingerprint") != fingerprint:
        raise ValueError(f"{run_dir} was made by another configuration of method {method} (fingerprint "
                         f"{saved.get('fingerprint')} vs {fingerprint}); use a new --workdir or delete that folder")
    export_dir = os.path.join(run_dir, "export")
    record_path = distill_record_path(records_dir, method)
    record = read_json(record_path)
    if os.path.isfile(os.path.join(export_dir, "config.json")) and record and record["fingerprint"] == fingerprint:
        return export_dir
    # A record without its export: the workdir was lost (a new machine) while some of the method's
    # fine-tunes were still to do. The student is made again and compared with the recorded one.
    earlier = record if record and record.get("fingerprint") == fingerprint else None
    os.makedirs(run_dir, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint,
                        "identity": method_identity(config, method, facts["fitted_head"])})
    if method == "none":
        record = export_init(config, workdir, facts["teacher_dir"], facts["teacher_shape"], fingerprint)
    else:
        teacher_dir = facts["teacher_dir"]
        if needs_teacher_head(config, method) and facts["fitted_head"]:
            if "head_dir" not in state:
                state["head_dir"] = fit_head(config, workdir, records_dir)
            teacher_dir = state["head_dir"]
        record = distil(config, method, workdir, teacher_dir, fingerprint)
    record["export_sha256"] = models.weights_sha256(export_dir)
    if earlier is not None:
        record |= compare_students(method, earlier, record["export_sha256"], records_dir)
    write_json(record_path, portable_record(record))
    log(f"{method}: student ready in {export_dir}; record {record_path}")
    return export_dir


def compare_students(method: str, earlier: dict, export_sha256: str, records_dir: str) -> dict:
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
# 1b. The zero-shot sentence-embedding record (distill_jax/evaluate/stsb.py)
# ----------------------------------------------------------------------------------------------

def zero_shot_fingerprint(config, fingerprint: str) -> str:
    """What decides a zero-shot score: the model (the method's fingerprint) and the evaluation."""
    return digest({"model": fingerprint, "zero_shot": config.zero_shot.to_dict(),
                   "source": config.glue.data.source})


def zero_shot_missing(config, method: str, fingerprint: str, records_dir: str) -> bool:
    if not config.zero_shot.enabled:
        return False
    saved = read_json(zero_shot_path(records_dir, method))
    return saved is None or saved.get("fingerprint") != zero_shot_fingerprint(config, fingerprint)


def score_zero_shot(config, method: str, model_dir: str, fingerprint: str, records_dir: str) -> dict:
    """Scores the method's model on STS-B (config.zero_shot.split) with no fine-tuning; one record."""
    from distill_jax import models
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate import stsb
    from distill_jax.evaluate.tasks import get_task

    z = config.zero_shot
    examples = glue_data.read_split(get_task("stsb"), z.split, config.glue.data)
    with Stage() as stage:
        score = stsb.score_model_dir(model_dir, examples, max_len=int(z.max_len), batch_size=int(z.batch_size))
    record = {"method": method, "fingerprint": zero_shot_fingerprint(config, fingerprint), "task": "stsb",
              "split": z.split, "pooling": "mean of the last hidden states (attention-masked)",
              "similarity": "cosine", **score, "student_sha256": models.weights_sha256(model_dir),
              "cpu_s": stage.cpu_s, "wall_s": stage.wall_s}
    write_json(zero_shot_path(records_dir, method), record)
    log(f"{method}: zero-shot STS-B {z.split} Spearman x 100 = {score['spearman']:.1f} "
        f"({score['pairs']} pairs, {stage.wall_s:.0f} s)")
    return record


# ----------------------------------------------------------------------------------------------
# 2. Fine-tuning records
# ----------------------------------------------------------------------------------------------

class Tasks:
    """Each task's text read once (capped as config.glue says) and encoded once per tokenizer."""

    def __init__(self, glue):
        from distill_jax.evaluate.run import read_task
        from distill_jax.evaluate.tasks import get_task

        self.glue, self.examples, self._encoded = glue, {}, {}
        for task in split_list(glue.tasks):
            read = read_task(glue, task)   # the GLUE driver's reader: the same capped rows
            self.examples[get_task(task).name] = (read.train, read.dev)

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


def missing_runs(config, method: str, fingerprint: str, records_dir: str, tasks: Tasks) -> list[tuple]:
    from distill_jax.evaluate.run import _load_run, fingerprint as run_fingerprint

    missing = []
    for task in tasks.names:
        rows = len(tasks.examples[task][0])
        for lr in config.glue.learning_rates:
            for seed in config.glue.seeds:
                fp = run_fingerprint(config.glue, f"{method}:{fingerprint}", task, rows, float(lr), int(seed))
                if _load_run(run_record_path(records_dir, method, task, lr, seed), fp) is None:
                    missing.append((task, float(lr), int(seed), fp))
    return missing


def finetune_all(config, method: str, model_dir: str, missing: list[tuple], records_dir: str,
                 tasks: Tasks, steps_cache: dict, progress: dict) -> None:
    from distill_jax import models
    from distill_jax.evaluate import model_io
    from distill_jax.evaluate.run import run_or_reuse

    if not missing:
        return
    label = config.method_labels.get(method, method)
    model = model_io.load_glue_model(model_dir, label=label)
    # Which weights each record was fine-tuned from: a student made again on another machine may
    # differ in its last bits (see compare_students).
    student_sha256 = models.weights_sha256(model.model_dir)
    for task, lr, seed, fp in missing:
        train, dev = tasks.encoded(task, model.model_dir)
        log(f"{method}: fine-tuning {task} lr={lr:g} seed={seed} ({progress['done']}/{progress['total']} "
            f"records done)")
        with Stage() as stage:
            record = run_or_reuse(config.glue, model, task, train, dev, lr, seed,
                                  run_record_path(records_dir, method, task, lr, seed), fp,
                                  steps_cache=steps_cache,
                                  extra={"method": method, "student_sha256": student_sha256,
                                         "model_spec": portable_model_spec(config, method)})
        if "cpu_s" not in record:   # a new run: add its measured seconds to the record on disk
            record |= {"cpu_s": stage.cpu_s, "wall_s": stage.wall_s}
            write_json(run_record_path(records_dir, method, task, lr, seed), record)
        progress["done"] += 1
        log(f"{method}: {task} seed {seed}: best dev score {100 * record['best_score']:.1f} "
            f"(epoch {record['best_epoch']}, {stage.cpu_s / 60:.1f} CPU-min)")


def card_with_study_results(config, method: str, model_dir: str, records_dir: str, tasks: Tasks) -> None:
    """Puts the method's study numbers in its export's model card: per GLUE task the mean best dev
    score over the seeds (and learning rates) recorded so far, and the zero-shot STS-B Spearman.
    Reference rows and exports without the run's summary.json beside them keep their card."""
    summary_path = os.path.join(os.path.dirname(model_dir), "summary.json")
    if method in REFERENCES or not os.path.isfile(summary_path):
        return
    from distill_jax.export import rewrite_model_card

    evaluation = {}
    for task in tasks.names:   # the config's runs only (finetune_all has just made them current)
        records = [read_json(run_record_path(records_dir, method, task, lr, seed))
                   for lr in config.glue.learning_rates for seed in config.glue.seeds]
        scores = [float(r["best_score"]) for r in records if r]
        if scores:
            evaluation[f"GLUE {task} dev, best epoch (mean of {len(scores)} runs)"] = sum(scores) / len(scores)
    zero_shot = read_json(zero_shot_path(records_dir, method))
    if zero_shot:
        evaluation["STS-B dev Spearman x 100, zero-shot (mean pooling, cosine)"] = float(zero_shot["spearman"])
    if evaluation:
        rewrite_model_card(model_dir, read_json(summary_path), evaluation)
        log(f"{method}: model card of {model_dir} lists the study's numbers")
