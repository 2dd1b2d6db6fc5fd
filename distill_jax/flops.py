"""Analytic FLOPs of an encoder forward and of one distillation step, for MFU.

Convention (the one PaLM / maxtext MFU figures use): only matrix multiplications are counted, a
[m, k] x [k, n] product costing 2*m*k*n FLOPs. LayerNorm, softmax, GELU, bias adds and the loss's
elementwise work are left out; on BERT shapes they are a few percent of the total (the tests bound
the gap against XLA's own count). Embedding lookups are gathers and cost no FLOPs.

One encoder layer on B rows of S tokens (N = B*S tokens, width D, FFN width F):

    Q, K, V projections      3 * 2*N*D*D
    scores  Q K^T            2*B*S*S*D        (all heads together: H * S*S*(D/H))
    context P V              2*B*S*S*D
    attention output         2*N*D*D
    FFN up + down            2 * 2*N*D*F

The MLM head (dense D->D, then decoder D->V) at P positions per row: 2*B*P*(D*D + D*V).

A distillation step is teacher forward + student forward + student backward (2x its forward) +
the objective's matmuls (the student-side ones again twice for their backward). Only the work the
objective actually reads is counted: XLA removes the rest (DESIGN.md: "XLA drops teacher outputs
that no objective reads"), so e.g. MiniLMv2 on the last layers needs only that layer's Q/K/V
projections, not its attention output or FFN, in both models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from distill_jax.losses.terms import READS, TERMS

# How much of a model's deepest needed layer must run, in increasing order of work.
LAYER_QKV = 1  # Q/K/V projections only (MiniLMv2, DirectMiniLM)
LAYER_SCORES = 2  # plus Q K^T (attention scores/probs: MiniLM v1, TinyBERT attention)
LAYER_FULL = 3  # the whole layer (hidden-state output)

# The forward level each thing a term reads needs (losses/terms.py READS).
_READ_LEVEL = {"mlm_logits": LAYER_FULL, "hidden_states": LAYER_FULL, "qkv": LAYER_QKV,
               "attention_probs": LAYER_SCORES, "attention_scores": LAYER_SCORES}
assert set(_READ_LEVEL) == set(READS)


class EncoderShape(Protocol):
    """Anything shaped like models.EncoderConfig (duck-typed: only these fields are read)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class Shape:
    """A plain encoder shape, for callers that have no EncoderConfig (benchmarks, tests)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = 30522


def _check_shape(cfg: Any, name: str) -> None:
    for field in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size"):
        if not isinstance(getattr(cfg, field, None), int) or getattr(cfg, field) <= 0:
            raise ValueError(f"{name}.{field}={getattr(cfg, field, None)!r}: must be a positive int")


def layer_flops(batch_size: int, seq_len: int, hidden_size: int, intermediate_size: int,
                upto: int = LAYER_FULL) -> int:
    """Matmul FLOPs of one encoder layer forward on [batch_size, seq_len] tokens.

    `upto` LAYER_QKV counts only the Q/K/V projections, LAYER_SCORES adds Q K^T, LAYER_FULL all.
    """
    n, d, s = batch_size * seq_len, hidden_size, seq_len
    flops = 3 * 2 * n * d * d
    if upto >= LAYER_SCORES:
        flops += 2 * batch_size * s * s * d
    if upto >= LAYER_FULL:
        flops += 2 * batch_size * s * s * d + 2 * n * d * d + 2 * 2 * n * d * intermediate_size
    return flops


def mlm_head_flops(cfg: EncoderShape, batch_size: int, mlm_positions: int) -> int:
    """MLM head (transform dense + vocabulary decoder) at `mlm_positions` positions per row."""
    d = cfg.hidden_size
    return 2 * batch_size * mlm_positions * (d * d + d * cfg.vocab_size)


def encoder_forward_flops(cfg: EncoderShape, batch_size: int, seq_len: int, *,
                          depth: int | None = None, last_layer: int = LAYER_FULL,
                          mlm_positions: int = 0) -> int:
    """Matmul FLOPs of an encoder forward on [batch_size, seq_len] tokens.

    depth: layers that run (default all); the deepest of them runs only as far as `last_layer`
    (LAYER_QKV / LAYER_SCORES / LAYER_FULL). mlm_positions: rows' positions the MLM head is applied
    at (0 = no head; seq_len = full-sequence logits).
    """
    _check_shape(cfg, "encoder")
    depth = cfg.num_layers if depth is None else depth
    if not 0 <= depth <= cfg.num_layers:
        raise ValueError(f"depth={depth}: must be in 0..num_layers={cfg.num_layers}")
    if depth == 0:
        return mlm_head_flops(cfg, batch_size, mlm_positions)
    full = layer_flops(batch_size, seq_len, cfg.hidden_size, cfg.intermediate_size)
    last = layer_flops(batch_size, seq_len, cfg.hidden_size, cfg.intermediate_size, last_layer)
    return (depth - 1) * full + last + mlm_head_flops(cfg, batch_size, mlm_positions)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one distillation step, by part (all matmul FLOPs, per global batch)."""

    teacher_forward: int
    student_forward: int
    student_backward: int  # 2x student_forward
    objective_forward: int  # relation scores, HS projections (teacher and student sides)
    objective_backward: int  # 2x the student-side objective matmuls

    @property
    def total(self) -> int:
        return (self.teacher_forward + self.student_forward + self.student_backward
                + self.objective_forward + self.objective_backward)

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}


def _resolve_layer(index: int | None, num_layers: int, name: str) -> int:
    """1-based layer number from an index that may be negative (-1 = last) or None (last)."""
    if index is None:
        return num_layers
    layer = index + num_layers + 1 if index < 0 else index
    if not 1 <= layer <= num_layers:
        raise ValueError(f"{name}={index}: out of range for a {num_layers}-layer model")
    return layer


def _need(needs: dict[int, int], layer: int, level: int) -> None:
    needs[layer] = max(needs.get(layer, 0), level)


def _forward_from_needs(cfg: EncoderShape, needs: dict[int, int], batch_size: int, seq_len: int,
                        mlm_positions: int) -> int:
    """Forward FLOPs when layer i must run at least to level needs[i] (layer 0 = embeddings)."""
    deepest = max((layer for layer in needs if layer > 0), default=0)
    level = needs.get(deepest, LAYER_FULL) if deepest else LAYER_FULL
    return encoder_forward_flops(cfg, batch_size, seq_len, depth=deepest, last_layer=level,
                                 mlm_positions=mlm_positions)


def distill_step_flops(teacher: EncoderShape, student: EncoderShape, batch_size: int,
                       seq_len: int, *, terms: str | Iterable[str],
                       mlm_positions: int = 0,
                       teacher_layer: int | None = None,
                       student_layer: int | None = None,
                       hs_pairs: Sequence[tuple[int, Sequence[int]]] | None = None,
                       hs_project: bool | None = None) -> StepFlops:
    """Matmul FLOPs of one distillation step on a global batch of [batch_size, seq_len].

    terms: objective terms present, names of distill_jax.losses.TERMS (a string for one); what
      each reads and computes (layers, relations, projections) comes from that table.
    mlm_positions: MLM positions per row (od / mlm; the heads run only there).
    teacher_layer / student_layer: layer of the terms that read one layer of each model (None or
      -1 = last; 1-based otherwise).
    hs_pairs: (student_layer, teacher_layers) pairs of the terms that read a layer map, 1-based with
      0 the embeddings (as losses.layer_map returns); default: every student layer to the last
      teacher layer.
    hs_project: learned per-pair projection student->teacher width (default: when widths differ).
    """
    _check_shape(teacher, "teacher")
    _check_shape(student, "student")
    terms = (terms,) if isinstance(terms, str) else tuple(terms)
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise ValueError(f"objective terms {unknown or terms}: flops supports {tuple(TERMS)}")
    one = [(_resolve_layer(student_layer, student.num_layers, "student_layer"),
            [_resolve_layer(teacher_layer, teacher.num_layers, "teacher_layer")])]
    mapped = list(hs_pairs) if hs_pairs is not None else [
        (i, [teacher.num_layers]) for i in range(1, student.num_layers + 1)]
    layer_pairs = {name: {"last": None, "one": one, "map": mapped}[TERMS[name].layers] for name in terms}
    return _step_flops(teacher, student, batch_size, seq_len, layer_pairs, mlm_positions, hs_project)


def _step_flops(teacher: EncoderShape, student: EncoderShape, b: int, s: int,
                layer_pairs: dict[str, list | None], mlm_positions: int, hs_project: bool | None) -> StepFlops:
    """distill_step_flops with each term's own (student_layer, teacher_layers) pairs (None: the
    last layer of each model)."""
    ds, dt = student.hidden_size, teacher.hidden_size
    t_needs: dict[int, int] = {}
    s_needs: dict[int, int] = {}
    obj_teacher = obj_student = 0
    t_heads_at = s_heads_at = 0
    for name, pairs in layer_pairs.items():
        term = TERMS[name]
        level = max(_READ_LEVEL[r] for r in term.reads)
        pairs = [(student.num_layers, [teacher.num_layers])] if pairs is None else pairs
        for s_layer, t_layers in pairs:
            _need(s_needs, s_layer, level)
            for t_layer in t_layers if term.reads_teacher else ():
                _need(t_needs, t_layer, level)
        if "mlm_logits" in term.reads:
            if mlm_positions <= 0:
                raise ValueError(f"terms include {name!r} but mlm_positions=0: pass the MLM positions per row")
            s_heads_at = mlm_positions
            t_heads_at = mlm_positions if term.reads_teacher else t_heads_at
        # relation scores x x^T per relation, each side with its own width
        obj_teacher += term.relations * 2 * b * s * s * dt
        obj_student += term.relations * 2 * b * s * s * ds
        if term.projections == "qkv":  # student Q/K/V projected to the teacher's width
            obj_student += 3 * 2 * b * s * ds * dt
        elif term.projections == "per_pair" and ((ds != dt) if hs_project is None else hs_project):
            obj_student += len(pairs) * 2 * b * s * ds * dt
    teacher_fwd = _forward_from_needs(teacher, t_needs, b, s, t_heads_at)
    student_fwd = _forward_from_needs(student, s_needs, b, s, s_heads_at)
    return StepFlops(teacher_forward=teacher_fwd, student_forward=student_fwd,
                     student_backward=2 * student_fwd,
                     objective_forward=obj_teacher + obj_student,
                     objective_backward=2 * obj_student)


def objective_flops(config, objective: Any, teacher_cfg: EncoderShape, student_cfg: EncoderShape) -> float:
    """Matmul FLOPs of one step of a built objective (losses.Objective; each term at its own
    resolved layers or layer map) on config's global batch: config.batch_size rows of
    config.data.seq_len tokens, config.data.mlm.max_predictions masked positions per row (od with
    positions "all" puts the heads on every position). TrainSetup.step_flops() calls it: the
    trainer's MFU and the TPU plan's step-time floor."""
    _check_shape(teacher_cfg, "teacher")
    _check_shape(student_cfg, "student")
    seq_len = int(config.data.seq_len)
    layer_pairs = {}
    for name, c in objective.config.items():
        layers = TERMS[name].layers
        layer_pairs[name] = (None if layers == "last" else [(c["student_layer"], [c["teacher_layer"]])]
                             if layers == "one" else [(s, list(t)) for s, t in c["pairs"]])
    od = objective.config.get("od")
    positions = seq_len if od is not None and od["positions"] == "all" else int(config.data.mlm.max_predictions)
    return float(_step_flops(teacher_cfg, student_cfg, int(config.batch_size), seq_len, layer_pairs, positions,
                             None).total)
