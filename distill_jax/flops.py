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

# How much of a model's deepest needed layer must run, in increasing order of work.
LAYER_QKV = 1  # Q/K/V projections only (MiniLMv2, DirectMiniLM)
LAYER_SCORES = 2  # plus Q K^T (attention scores/probs: MiniLM v1, TinyBERT attention)
LAYER_FULL = 3  # the whole layer (hidden-state output)

SUPPORTED_TERMS = ("od", "hs", "minilmv2", "minilm", "direct_minilm", "tinybert_attn")


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
                       num_relations: int = 3,
                       hs_pairs: Sequence[tuple[int, Sequence[int]]] | None = None,
                       hs_project: bool | None = None) -> StepFlops:
    """Matmul FLOPs of one distillation step on a global batch of [batch_size, seq_len].

    terms: objective terms present, any of SUPPORTED_TERMS (a string for one).
    mlm_positions: MLM positions per row (OD; the heads run only there).
    teacher_layer / student_layer: layer of the MHA terms (None or -1 = last; 1-based otherwise).
    num_relations: relation matrices of MiniLMv2 (Q-Q, K-K, V-V = 3) / MiniLM v1 (1 value relation,
      the attention distribution comes from the forward's own scores).
    hs_pairs: (student_layer, teacher_layers) pairs of HS / TinyBERT terms, 1-based with 0 the
      embeddings (as losses.layer_map returns); default: every student layer to the last teacher.
    hs_project: HS projection student->teacher width (default: when widths differ).
    """
    _check_shape(teacher, "teacher")
    _check_shape(student, "student")
    terms = (terms,) if isinstance(terms, str) else tuple(terms)
    unknown = [t for t in terms if t not in SUPPORTED_TERMS]
    if unknown or not terms:
        raise ValueError(f"objective terms {unknown or terms}: flops supports {SUPPORTED_TERMS}")
    b, s = batch_size, seq_len
    ds, dt = student.hidden_size, teacher.hidden_size
    t_needs: dict[int, int] = {}
    s_needs: dict[int, int] = {}
    obj_teacher = obj_student = 0
    heads_at = 0
    pairs = list(hs_pairs) if hs_pairs is not None else [
        (i, [teacher.num_layers]) for i in range(1, student.num_layers + 1)]
    for term in terms:
        if term == "od":
            _need(t_needs, teacher.num_layers, LAYER_FULL)
            _need(s_needs, student.num_layers, LAYER_FULL)
            if mlm_positions <= 0:
                raise ValueError("terms include 'od' but mlm_positions=0: pass the MLM positions per row")
            heads_at = mlm_positions
        elif term in ("minilmv2", "direct_minilm", "minilm"):
            lt = _resolve_layer(teacher_layer, teacher.num_layers, "teacher_layer")
            ls = _resolve_layer(student_layer, student.num_layers, "student_layer")
            level = LAYER_SCORES if term == "minilm" else LAYER_QKV
            _need(t_needs, lt, level)
            _need(s_needs, ls, level)
            if term == "direct_minilm":  # student Q/K/V projected to the teacher's width
                obj_student += 3 * 2 * b * s * ds * dt
            else:  # relation scores x x^T per relation, each side with its own width
                obj_teacher += num_relations * 2 * b * s * s * dt
                obj_student += num_relations * 2 * b * s * s * ds
        elif term in ("hs", "tinybert_attn"):
            level = LAYER_FULL if term == "hs" else LAYER_SCORES
            for s_layer, t_layers in pairs:
                _need(s_needs, s_layer, level)
                for t_layer in t_layers:
                    _need(t_needs, t_layer, level)
            project = (ds != dt) if hs_project is None else hs_project
            if term == "hs" and project:
                obj_student += len(pairs) * 2 * b * s * ds * dt
    teacher_fwd = _forward_from_needs(teacher, t_needs, b, s, heads_at)
    student_fwd = _forward_from_needs(student, s_needs, b, s, heads_at)
    return StepFlops(teacher_forward=teacher_fwd, student_forward=student_fwd,
                     student_backward=2 * student_fwd,
                     objective_forward=obj_teacher + obj_student,
                     objective_backward=2 * obj_student)


def objective_flops(config, objective, teacher_cfg, student_cfg) -> float | None:
    """Matmul FLOPs of one step of a built objective (losses.Objective) on config's global batch
    (teacher fwd + student fwd/bwd + objective: distill_step_flops); None when an objective term
    has no FLOPs model (the report then leaves MFU out). TrainSetup.step_flops() calls it: the
    trainer's MFU and the TPU plan's step-time floor."""
    names = {"od": "od", "hs": "hs", "minilmv2": "minilmv2", "minilm": "minilm",
             "direct_minilm": "direct_minilm", "tinybert_attention": "tinybert_attn"}
    cfg = objective.config
    terms = [names[t] for t in cfg if t in names]
    if not terms:  # only the hard-label "mlm" term: the student forward/backward + head
        terms = ["od"]
    kwargs: dict[str, Any] = {}
    mha = next((cfg[t] for t in ("minilmv2", "minilm", "direct_minilm") if t in cfg), None)
    if mha is not None:
        kwargs["teacher_layer"] = mha["teacher_layer"]
        kwargs["student_layer"] = mha["student_layer"]
        kwargs["num_relations"] = 3 if "minilmv2" in cfg else 1
    pairs = (cfg.get("hs") or cfg.get("tinybert_attention") or {}).get("pairs")
    if pairs is not None:
        kwargs["hs_pairs"] = [(s, list(t) if isinstance(t, (list, tuple)) else [t]) for s, t in pairs]
    if "od" in terms:
        positions = config.data.seq_len if cfg.get("od", {}).get("positions") == "all" else \
            config.data.mlm.max_predictions
        kwargs["mlm_positions"] = int(positions)
    try:
        return float(distill_step_flops(teacher_cfg, student_cfg, config.batch_size,
                                        config.data.seq_len, terms=terms, **kwargs).total)
    except ValueError:
        return None
