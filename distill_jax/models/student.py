"""Student construction: a teacher's config with size overrides, initialised randomly (BERT way) or
from chosen teacher layers (DistilBERT-style) when the widths match."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from distill_jax.models.config import EncoderConfig
from distill_jax.models.encoder import Encoder
from distill_jax.models.hf_names import encoder_tensor_names, get_param


def uniform_teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spread teacher layer indices including the first and last, e.g. 12 -> 6: [0,2,4,7,9,11]."""
    if student_layers > teacher_layers:
        raise ValueError(f"num_layers={student_layers} exceeds the teacher's {teacher_layers} layers; "
                         "init='teacher' needs at most as many layers, use init='random'")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [int(round(x)) for x in np.linspace(0, teacher_layers - 1, student_layers)]


def student_config(teacher_cfg: EncoderConfig, *, num_layers: int | None = None, hidden_size: int | None = None,
                   num_heads: int | None = None, intermediate_size: int | None = None,
                   with_mlm_head: bool | None = None, **overrides) -> EncoderConfig:
    """Teacher config with the given sizes replaced (None keeps the teacher's). Vocab, positions and
    token types stay the teacher's so both read the same inputs."""
    changes = {k: v for k, v in dict(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                                     intermediate_size=intermediate_size, with_mlm_head=with_mlm_head).items()
               if v is not None}
    return teacher_cfg.replace(**changes, **overrides)


def make_student(teacher_cfg: EncoderConfig, *, num_layers: int | None = None, hidden_size: int | None = None,
                 num_heads: int | None = None, intermediate_size: int | None = None, init: str = "random",
                 teacher_layers: Sequence[int] | None = None, teacher_model: Encoder | None = None,
                 with_mlm_head: bool | None = None, rngs: nnx.Rngs, **overrides) -> Encoder:
    """A student Encoder.

    init='random': BERT initialisation (normal(initializer_range) weights, zero biases, LayerNorm 1/0).
    init='teacher': embeddings, pooler, MLM head (when both have one) and layers `teacher_layers`
      (default: evenly spread incl. first and last) copied from `teacher_model`; needs equal
      hidden_size and intermediate_size.
    with_mlm_head: None = as the teacher; True gives a freshly initialised head when the teacher has none.
    overrides: other EncoderConfig fields (dtype, param_dtype, hidden_dropout, ...).
    """
    cfg = student_config(teacher_cfg, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                         intermediate_size=intermediate_size, with_mlm_head=with_mlm_head, **overrides)
    student = Encoder(cfg, rngs=rngs)
    if init == "random":
        if teacher_layers is not None:
            raise ValueError("teacher_layers is only used with init='teacher'")
        return student
    if init != "teacher":
        raise ValueError(f"init={init!r} unsupported; use 'random' or 'teacher'")
    if teacher_model is None:
        raise ValueError("init='teacher' needs teacher_model=<the loaded teacher Encoder>")
    layers = teacher_init_layers(cfg, teacher_model.cfg, teacher_layers)
    _copy_from_teacher(student, teacher_model, layers)
    return student


def teacher_init_layers(cfg: EncoderConfig, t_cfg: EncoderConfig,
                        teacher_layers: Sequence[int] | None) -> list[int]:
    """The teacher layers init='teacher' copies into a student of config `cfg` (default: evenly
    spread incl. first and last); ValueError naming the field when the shapes do not allow it.
    Needs shapes only, so a plan checks it without weights."""
    for field in ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "type_vocab_size"):
        if getattr(cfg, field) != getattr(t_cfg, field):
            raise ValueError(f"init='teacher' needs the student's {field} ({getattr(cfg, field)}) to equal the "
                             f"teacher's ({getattr(t_cfg, field)}); use init='random' or keep {field}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"num_heads={cfg.num_heads} does not divide hidden_size={cfg.hidden_size}")
    layers = list(teacher_layers) if teacher_layers is not None else uniform_teacher_layers(
        t_cfg.num_layers, cfg.num_layers)
    if len(layers) != cfg.num_layers:
        raise ValueError(f"teacher_layers has {len(layers)} entries but the student has num_layers={cfg.num_layers}")
    bad = [i for i in layers if not 0 <= i < t_cfg.num_layers]
    if bad:
        raise ValueError(f"teacher_layers {bad} out of range: the teacher has layers 0..{t_cfg.num_layers - 1}")
    return layers


def _copy_from_teacher(student: Encoder, teacher: Encoder, layers: list[int]) -> None:
    s_cfg = student.cfg
    t_names = {tn.hf: tn for tn in encoder_tensor_names(teacher.cfg)}
    for tn in encoder_tensor_names(s_cfg):
        src_name = tn.hf
        if tn.path[0] == "layers":  # student layer j <- teacher layer layers[j]
            j = tn.path[1]
            src_name = tn.hf.replace(f"encoder.layer.{j}.", f"encoder.layer.{layers[j]}.", 1)
        if src_name not in t_names:
            continue  # e.g. a fresh MLM head when the teacher has none
        src = get_param(teacher, t_names[src_name].path).get_value()
        dst = get_param(student, tn.path)
        current = dst.get_value()
        dst.set_value(jax.device_put(src.astype(current.dtype), current.sharding))
