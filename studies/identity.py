"""What a study record's fingerprint rests on: a method's identity (its distillation config
without machine paths and operational fields, or for the reference rows the teacher / the student
shape and seed), and the portable names records use for models and data.

A record carries digest(identity); a rerun skips a record whose fingerprint matches, so these
functions decide which finished work a changed config keeps (tests/test_study.py recomputes the
committed records' fingerprints from the shipped presets).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

# Fields that change how a run is carried out or logged, never what it computes: left out of a
# method's identity, so stopping early (stop_after_step), logging more often or moving the caches
# does not orphan finished records. attention_impl picks a kernel for the same softmax attention;
# eval (scores logged during training) reads the student and never changes it.
# One list, owned by distill_jax/run_config.py (the trainer's resume check reads it too).
from distill_jax.run_config import OPERATIONAL_FIELDS

# Reference rows: 'teacher' fine-tunes the teacher itself; 'none' fine-tunes the student shape at a
# random init drawn with the study's seed. Every other method distils (config.method_objectives).
# The names are the comparison table's (distill_jax.evaluate.report); their meaning is the driver's.
from distill_jax.evaluate.report import REFERENCES


def portable(node: Any) -> Any:
    """A config dict without machine-local paths and operational fields: data.paths keeps its last
    two components (".../wikipedia_en_sample/text"), cache folders and OPERATIONAL_FIELDS go."""
    if isinstance(node, Mapping):
        out = {}
        for key, value in node.items():
            if key in OPERATIONAL_FIELDS:
                continue
            if key == "paths" and isinstance(value, str):
                value = ",".join("/".join(os.path.normpath(p).split(os.sep)[-2:]) for p in value.split(","))
            out[key] = portable(value)
        return out
    if isinstance(node, (list, tuple)):
        return [portable(v) for v in node]
    return node


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def needs_teacher_head(config, method: str) -> bool:
    return method not in REFERENCES and "od" in config.method_objectives[method]


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
    identity = {"method": method, "teacher": config.teacher_name, "distill": portable(distill)}
    if needs_teacher_head(config, method) and fitted_head:
        identity["fitted_mlm_head"] = portable(config.fit_head.to_dict())
    return identity


def portable_model_spec(config, method: str) -> str:
    """The model a record came from, named the same on every machine: the teacher's id, or the
    method's export relative to the study's workdir (what the record's fingerprint names exactly)."""
    return config.teacher_name if method == "teacher" else f"distill/{method}/export"
