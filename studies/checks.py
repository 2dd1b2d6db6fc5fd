"""The study's checks, before anything trains: every method builds against the teacher, the GLUE
and zero-shot files exist, a report dir holds one student shape's records. Each failure is one
line naming the field and the fix.
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections

from distill_jax.evaluate.run import split_list
from studies.identity import REFERENCES, needs_teacher_head
from studies.records import log, read_json, write_json


def check_study(config) -> dict:
    """One-line errors naming the field, before any model is trained. Returns facts the run uses:
    teacher_dir, teacher_shape, fitted_head (whether an OD method needs the head fitted first)."""
    from distill_jax import models
    from distill_jax.evaluate import data as glue_data
    from distill_jax.evaluate.tasks import get_task
    from distill_jax.losses import build_objective
    from distill_jax.models.hf_io import resolve_model

    known = (*REFERENCES, *config.method_objectives.keys())
    for field, names in (("methods", list(config.methods)), ("only", split_list(config.only))):
        for name in names:
            if name not in known:
                raise ValueError(f"config.{field}: unknown method {name!r}; known: {', '.join(known)}")
    try:
        teacher = resolve_model(config.teacher_name, field="config.teacher_name")
    except FileNotFoundError:
        if not config.dry_run:
            raise
        # A dry run (the pod preset planned on a machine without the hub) needs shapes only.
        teacher = resolve_model(config.teacher_name, field="config.teacher_name", shapes_only=True)
        log(f"dry run: {config.teacher_name} is not reachable here; checking against {teacher.source}")
    teacher_dir = str(teacher.model_dir) if teacher.model_dir is not None else None
    teacher_shape = models.EncoderConfig.from_hf_dict(teacher.hf_config, source=teacher.source)
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
        if needs_teacher_head(config, method) and teacher_dir and not models.has_mlm_head(teacher_dir):
            if not config.fit_head.get("enabled", False):
                raise ValueError(
                    f"config.methods: {method} needs the teacher's MLM head and {config.teacher_name} has none; "
                    "set config.fit_head.enabled=True (fit one first) or point config.teacher_name at a "
                    "*ForMaskedLM directory (python main.py --config=configs/fit_mlm_head.py makes one)")
            fitted_head = True
    glue = config.glue
    for task in split_list(glue.tasks):
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
    saved = read_json(path)
    if saved is None:
        if glob.glob(os.path.join(report_dir, "records", "*.json")):
            raise ValueError(f"{report_dir}/records holds records but no {STUDENT_MARKER} naming their student "
                             f"shape; write {json.dumps({'student': shape})} there if they are of this study's "
                             f"{name} student, or use another config.report_dir")
        if write:
            write_json(path, {"student": shape})
    elif saved.get("student") != shape:
        raise ValueError(f"config.report_dir={report_dir} holds the records of student {saved.get('student')} and "
                         f"this study's student is {shape}; give each shape its own report dir (e.g. "
                         f"docs/study_{name})")
