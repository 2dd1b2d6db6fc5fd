"""One distillation objective from config: a weighted sum of OD, HS and MHA terms.

    objective = build_objective(objective_cfg, student_dims, teacher_dims)
    aux_params = objective.init_params(rng)      # trainable student-side state ({} when none)
    loss, terms = objective(aux_params, student_out, teacher_out, batch,
                            student_mlm_head=None, teacher_mlm_head=None)

``loss = sum over the configured terms of weight * terms[term]``. ``terms`` holds every configured
term's unweighted float32 value under its name, plus its components under "term/part" names
(e.g. "minilmv2/qq"); component entries are for logging only and are not added again.

Config schema (a plain dict or an ml_collections ConfigDict; one entry per term; a term that is
absent, None, or has weight 0 is off; unknown terms or options are a ValueError):

  od:             output distribution, T^2 KL(teacher || student) on MLM logits (needs MLM heads)
    weight        float (required)
    temperature   float > 0, default 1.0
    positions     "mlm" (batch mlm_positions / mlm_weights, default) | "all" (every non-pad token)
    chunk_size    positions per chunk of the MLM heads' vocabulary projection, default 16
  mlm:            hard-label masked-LM cross-entropy of the student at mlm_positions vs mlm_ids
    weight        float (required)
  hs:             hidden states over a layer map
    weight        float (required)
    map           "last" | "uniform" | "uniform_cons" (default) | "uniform_last" | "identity" |
                  explicit list of [student_layer, teacher_layer or [teacher_layers]] (0 = embeddings)
    embeddings    bool, default False: also map the embedding output 0 -> 0 (named strategies)
    loss          "mse" (default) | "cosine"
    projection    "per_layer" (default) | "shared": learned linear maps when the widths differ
    one_to_many   "mean_target" (default; average the teacher layers) | "mean_loss"
  minilmv2:       Q-Q, K-K, V-V self-attention relations (KL) between one teacher and one student layer
    weight        float (required)
    relation_heads  int R dividing both hidden sizes, default 48 (64 for large teachers)
    teacher_layer   int, default -1 (last); 1..L_T or negative from the end (-2 = L_T - 1)
    student_layer   int, default -1 (last)
    qq, kk, vv      relation weights, default 1.0 each
    heads_per_chunk int, default 0 (for the platform: all heads at once on TPU/GPU, cache-sized
                    chunks on CPU; mha.default_heads_per_chunk); c > 0 computes c heads at a time
                    (c heads' relation blocks live instead of R heads'; same value); R = all at once
    block_size      int, default 128: blockwise relation KL over blocks of this many query rows and
                    keys (memory grows with S, not S^2); 0 = the dense [B, R, S, S] relations
  minilm:         MiniLM v1: attention-distribution KL + value-relation KL (equal head counts)
    weight        float (required)
    teacher_layer, student_layer   int, default -1 (last)
    attention, value               component weights, default 1.0 each
  direct_minilm:  MSE between linearly projected student Q/K/V and the teacher's
    weight        float (required)
    teacher_layer, student_layer   int, default -1 (last)
    q, k, v                        component weights, default 1.0 each
  tinybert_attention:  MSE between pre-softmax attention scores, head by head (equal head counts)
    weight        float (required)
    map           layer map as for hs (no layer 0), default "uniform"

Example: {"minilmv2": {"weight": 1.0, "relation_heads": 48}, "hs": {"weight": 1.0, "map": "uniform_cons"}}

``student_dims`` / ``teacher_dims``: a dict or any object (e.g. EncoderConfig) with num_layers,
hidden_size and num_heads. Every check (layer maps, ranges, divisibility, head counts, unknown
names) runs in ``build_objective``, before any compile, and raises ValueError naming the field.

Model outputs are duck-typed: anything with the attributes of ``ModelOutputs`` below (the models'
EncoderOutputs qualifies). ``batch`` holds attention_mask [B, S] and, for od (positions "mlm") and
mlm, mlm_positions / mlm_ids [B, P] int32 and mlm_weights [B, P] float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from distill_jax.losses import hs as hs_lib
from distill_jax.losses import mha
from distill_jax.losses import od as od_lib
from distill_jax.losses.layer_maps import LayerMap, check_no_embeddings, layer_map
from distill_jax.losses.terms import REQUIRED, TERM_OPTIONS, TERMS, terms_reading


class ModelOutputs(NamedTuple):
    """What the objectives read from a model (a pytree; fields a term doesn't use may be None).

    hidden_states: L+1 arrays [B, S, D] (0 = embeddings); queries/keys/values: L arrays [B, S, D]
    (heads concatenated); attention_scores: L arrays [B, H, S, S] pre-softmax, no mask added;
    attention_probs: L arrays [B, H, S, S]; mlm_logits: [B, S, V].
    """
    hidden_states: tuple | None = None
    queries: tuple | None = None
    keys: tuple | None = None
    values: tuple | None = None
    attention_scores: tuple | None = None
    attention_probs: tuple | None = None
    mlm_logits: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Dims:
    num_layers: int
    hidden_size: int
    num_heads: int


def _dims(dims: Any, who: str) -> Dims:
    values = {}
    for name in ("num_layers", "hidden_size", "num_heads"):
        value = dims.get(name) if isinstance(dims, Mapping) else getattr(dims, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{who}.{name}={value!r}: must be a positive int")
        values[name] = value
    if values["hidden_size"] % values["num_heads"]:
        raise ValueError(f"{who}: num_heads={values['num_heads']} does not divide hidden_size={values['hidden_size']}")
    return Dims(**values)


def _plain(cfg: Any) -> Any:
    """ConfigDict / FrozenConfigDict -> plain dict (recursively); other values unchanged."""
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    return cfg


def _resolve_layer(value: Any, num_layers: int, field: str) -> int:
    """1..L, or negative from the end (-1 = L); 0 (embeddings) has no Q/K/V."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}={value!r}: must be an int layer index (1..L or -1 for the last)")
    resolved = value + num_layers + 1 if value < 0 else value
    if not 1 <= resolved <= num_layers:
        raise ValueError(f"{field}={value}: out of range for a model with {num_layers} layers; "
                         f"use 1..{num_layers} or -1..-{num_layers} (layer 0, the embeddings, has no Q/K/V)")
    return resolved


def _number(value: Any, field: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field}={value!r}: must be a number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{field}={value}: must be {'> 0' if positive else '>= 0'}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise ValueError(f"{field}={value!r}: use one of {', '.join(choices)}")
    return value


def _check_relation_heads(r: Any, student: Dims, teacher: Dims, field: str) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{field}={r!r}: must be a positive int")
    for who, d in (("student", student), ("teacher", teacher)):
        if d.hidden_size % r:
            divisors = [k for k in range(1, d.hidden_size + 1)
                        if student.hidden_size % k == 0 and teacher.hidden_size % k == 0]
            raise ValueError(
                f"{field}={r} does not divide the {who} hidden size {d.hidden_size}; pick a common divisor "
                f"of {student.hidden_size} and {teacher.hidden_size}, e.g. {', '.join(map(str, divisors[-4:]))}")
    return r


class Objective:
    """A built objective: static, validated config plus the pure loss function (see module doc)."""

    def __init__(self, terms: dict[str, dict[str, Any]], student: Dims, teacher: Dims):
        self.config = terms                  # resolved options per active term (layer indices 1-based)
        self.student_dims = student
        self.teacher_dims = teacher
        self.weights = {name: opts["weight"] for name, opts in terms.items()}
        # What the step must request, from what each term reads (terms.TERMS).
        self.needs_hidden_states = bool(terms_reading("hidden_states", terms))
        self.needs_qkv = bool(terms_reading("qkv", terms))
        self.needs_attention_probs = bool(terms_reading("attention_probs", terms))
        self.needs_attention_scores = bool(terms_reading("attention_scores", terms))
        self.needs_attentions = self.needs_attention_probs or self.needs_attention_scores
        self.needs_mlm_head = bool(terms_reading("mlm_logits", terms))          # student MLM head
        self.needs_teacher_mlm_head = any(TERMS[t].reads_teacher for t in terms_reading("mlm_logits", terms))
        self.needs_mlm_batch = "mlm" in terms or ("od" in terms and terms["od"]["positions"] == "mlm")
        # Terms whose trainable projections must be in aux_params (see init_params).
        self._aux_terms = tuple(t for t in terms if TERMS[t].projections == "qkv" or (
            TERMS[t].projections == "per_pair" and student.hidden_size != teacher.hidden_size))

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(self.config)

    def __repr__(self) -> str:
        return f"Objective({self.config})"

    # -- trainable student-side state ------------------------------------------------------------
    def init_params(self, rng: jax.Array) -> dict:
        """Projections (float32) the objective trains alongside the student; {} when none."""
        params: dict[str, Any] = {}
        rng_hs, rng_direct = jax.random.split(rng)
        if "hs" in self.config:
            proj = hs_lib.init_hs_projections(rng_hs, self.config["hs"]["pairs"], self.student_dims.hidden_size,
                                              self.teacher_dims.hidden_size, self.config["hs"]["projection"])
            if proj:
                params["hs"] = proj
        if "direct_minilm" in self.config:
            keys = jax.random.split(rng_direct, 3)
            params["direct_minilm"] = {
                name: hs_lib.init_linear(k, self.student_dims.hidden_size, self.teacher_dims.hidden_size)
                for name, k in zip("qkv", keys)}
        return params

    # -- the loss --------------------------------------------------------------------------------
    def __call__(self, aux_params: dict, student_out: Any, teacher_out: Any, batch: Mapping[str, jax.Array],
                 student_mlm_head: Callable | None = None, teacher_mlm_head: Callable | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        missing = [t for t in self._aux_terms if t not in (aux_params or {})]
        if missing:
            raise ValueError(f"aux_params has no {', '.join(missing)} projections; pass objective.init_params(rng) "
                             f"(and train it with the student)")
        if "attention_mask" not in batch:
            raise ValueError("batch needs attention_mask [B, S] (1 = real token, 0 = padding)")
        mask = batch["attention_mask"]
        terms: dict[str, jax.Array] = {}
        loss = jnp.zeros((), jnp.float32)

        def add(name: str, value: jax.Array, parts: dict[str, jax.Array] | None = None):
            nonlocal loss
            terms[name] = value
            for part, v in (parts or {}).items():
                terms[f"{name}/{part}"] = v
            loss = loss + self.weights[name] * value

        if "od" in self.config or "mlm" in self.config:
            for name, value in self._output_terms(student_out, teacher_out, batch, mask,
                                                  student_mlm_head, teacher_mlm_head).items():
                add(name, value)
        if "hs" in self.config:
            c = self.config["hs"]
            add("hs", hs_lib.hs_loss(student_out.hidden_states, teacher_out.hidden_states, c["pairs"], mask,
                                     projections=(aux_params or {}).get("hs"), loss=c["loss"],
                                     one_to_many=c["one_to_many"]))
        if "minilmv2" in self.config:
            c = self.config["minilmv2"]
            add("minilmv2", *mha.minilmv2_loss(
                _qkv(student_out, c["student_layer"]), _qkv(teacher_out, c["teacher_layer"]), mask,
                c["relation_heads"], (c["qq"], c["kk"], c["vv"]), heads_per_chunk=c["heads_per_chunk"],
                block_size=c["block_size"]))
        if "minilm" in self.config:
            c = self.config["minilm"]
            s, t = c["student_layer"] - 1, c["teacher_layer"] - 1
            add("minilm", *mha.minilm_loss(
                student_out.attention_probs[s], teacher_out.attention_probs[t], student_out.values[s],
                teacher_out.values[t], mask, self.student_dims.num_heads, (c["attention"], c["value"])))
        if "direct_minilm" in self.config:
            c = self.config["direct_minilm"]
            add("direct_minilm", *mha.direct_minilm_loss(
                _qkv(student_out, c["student_layer"]), _qkv(teacher_out, c["teacher_layer"]), mask,
                aux_params["direct_minilm"], (c["q"], c["k"], c["v"])))
        if "tinybert_attention" in self.config:
            c = self.config["tinybert_attention"]
            add("tinybert_attention", mha.tinybert_attention_loss(
                student_out.attention_scores, teacher_out.attention_scores, c["pairs"], mask))
        return loss, terms

    def _output_terms(self, student_out, teacher_out, batch, mask, student_head, teacher_head):
        """The od and mlm terms; one pass over the MLM heads when both use the MLM positions."""
        od_cfg = self.config.get("od")
        labels = batch["mlm_ids"] if "mlm" in self.config else None
        mlm_positions = ((batch["mlm_positions"], batch["mlm_weights"]) if self.needs_mlm_batch else None)
        heads = (student_head, teacher_head)
        if od_cfg is None:
            return self._logit_terms(student_out, teacher_out, *mlm_positions, labels, False, 1.0, 16, *heads)
        if od_cfg["positions"] == "mlm":
            return self._logit_terms(student_out, teacher_out, *mlm_positions, labels, True,
                                     od_cfg["temperature"], od_cfg["chunk_size"], *heads)
        b, s = mask.shape
        all_positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        out = self._logit_terms(student_out, teacher_out, all_positions, mask, None, True,
                                od_cfg["temperature"], od_cfg["chunk_size"], *heads)
        if labels is not None:
            out.update(self._logit_terms(student_out, teacher_out, *mlm_positions, labels, False, 1.0,
                                         od_cfg["chunk_size"], *heads))
        return out

    def _logit_terms(self, student_out, teacher_out, positions, pos_mask, labels, with_kl, temperature,
                     chunk_size, student_head, teacher_head) -> dict[str, jax.Array]:
        if student_head is not None and (teacher_head is not None or not with_kl):
            return od_lib.od_from_hidden(
                student_out.hidden_states[-1], teacher_out.hidden_states[-1] if with_kl else None,
                positions, pos_mask, student_head, teacher_head, temperature=temperature,
                labels_bp=labels, chunk_size=chunk_size, with_kl=with_kl)
        s_logits = getattr(student_out, "mlm_logits", None)
        t_logits = getattr(teacher_out, "mlm_logits", None)
        if s_logits is None or (with_kl and t_logits is None):
            raise ValueError("od/mlm terms need MLM heads: pass student_mlm_head= and teacher_mlm_head= "
                             "(callables hidden [B,P,D] -> logits [B,P,V]) or outputs with mlm_logits")
        out = {}
        s_sel = od_lib.gather_positions(s_logits, positions)
        if with_kl:
            out["od"] = od_lib.od_loss(s_sel, od_lib.gather_positions(t_logits, positions), pos_mask, temperature)
        if labels is not None:
            out["mlm"] = od_lib.mlm_ce_loss(s_sel, labels, pos_mask)
        return out


def _qkv(out: Any, layer: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    return out.queries[layer - 1], out.keys[layer - 1], out.values[layer - 1]


def build_objective(objective_cfg: Any, student_dims: Any, teacher_dims: Any) -> Objective:
    """Validates the config (see module docstring) and returns the Objective. Raises ValueError."""
    student, teacher = _dims(student_dims, "student_dims"), _dims(teacher_dims, "teacher_dims")
    cfg = _plain(objective_cfg)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"objective config must be a dict of terms, got {type(cfg).__name__}")
    resolved: dict[str, dict[str, Any]] = {}
    for name, options in cfg.items():
        field = f"objective.{name}"
        if name not in TERM_OPTIONS:
            raise ValueError(f"{field}: unknown term; use any of {', '.join(TERM_OPTIONS)}")
        if options is None:
            continue
        if not isinstance(options, Mapping):
            raise ValueError(f"{field} must be a dict of options, e.g. {{'weight': 1.0}}, got {options!r}")
        unknown = set(options) - set(TERM_OPTIONS[name])
        if unknown:
            raise ValueError(f"{field}: unknown option(s) {', '.join(sorted(unknown))}; "
                             f"{name} takes {', '.join(TERM_OPTIONS[name])}")
        opts = {k: options.get(k, default) for k, default in TERM_OPTIONS[name].items()}
        if opts["weight"] is REQUIRED:
            raise ValueError(f"{field}.weight is missing; give the term a weight (0 turns it off)")
        opts["weight"] = _number(opts["weight"], f"{field}.weight")
        if opts["weight"] == 0:
            continue
        resolved[name] = _validate_term(name, opts, field, student, teacher)
    if not resolved:
        raise ValueError("objective: no term has a non-zero weight; configure at least one of "
                         f"{', '.join(TERM_OPTIONS)}")
    return Objective(resolved, student, teacher)


def _validate_term(name: str, opts: dict, field: str, student: Dims, teacher: Dims) -> dict:
    if name == "od":
        opts["temperature"] = _number(opts["temperature"], f"{field}.temperature", positive=True)
        _choice(opts["positions"], ("mlm", "all"), f"{field}.positions")
        if isinstance(opts["chunk_size"], bool) or not isinstance(opts["chunk_size"], int) or opts["chunk_size"] < 1:
            raise ValueError(f"{field}.chunk_size={opts['chunk_size']!r}: must be a positive int (positions per chunk)")
    elif name == "hs":
        _choice(opts["loss"], hs_lib.HS_LOSSES, f"{field}.loss")
        _choice(opts["projection"], hs_lib.PROJECTIONS, f"{field}.projection")
        _choice(opts["one_to_many"], hs_lib.ONE_TO_MANY, f"{field}.one_to_many")
        opts["pairs"] = _map(opts["map"], student, teacher, f"{field}.map", bool(opts["embeddings"]))
    elif name == "tinybert_attention":
        opts["pairs"] = _map(opts["map"], student, teacher, f"{field}.map", False)
        check_no_embeddings(opts["pairs"], f"{field}.map")
        _equal_heads(student, teacher, field, "compares attention head by head")
    elif name == "minilm":
        _equal_heads(student, teacher, field, "(MiniLM v1) compares attention distributions head by head")
    if TERMS[name].layers == "one":
        opts["teacher_layer"] = _resolve_layer(opts["teacher_layer"], teacher.num_layers, f"{field}.teacher_layer")
        opts["student_layer"] = _resolve_layer(opts["student_layer"], student.num_layers, f"{field}.student_layer")
    parts = TERMS[name].components
    if parts:
        for part in parts:
            opts[part] = _number(opts[part], f"{field}.{part}")
        if not any(opts[p] for p in parts):
            raise ValueError(f"{field}: all of {', '.join(parts)} are 0; give at least one a positive weight")
    if name == "minilmv2":
        opts["relation_heads"] = _check_relation_heads(opts["relation_heads"], student, teacher,
                                                       f"{field}.relation_heads")
        c = opts["heads_per_chunk"]
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (c and opts["relation_heads"] % c):
            raise ValueError(f"{field}.heads_per_chunk={c!r}: must be 0 (chosen for the platform) or a divisor of "
                             f"relation_heads={opts['relation_heads']}")
        mha.check_block_size(opts["block_size"], f"{field}.block_size")
    return opts


def _map(spec: Any, student: Dims, teacher: Dims, field: str, embeddings: bool) -> LayerMap:
    return layer_map(spec, student.num_layers, teacher.num_layers, include_embeddings=embeddings, field=field)


def _equal_heads(student: Dims, teacher: Dims, field: str, why: str) -> None:
    if student.num_heads != teacher.num_heads:
        raise ValueError(f"{field} {why} and needs equal head counts, got student num_heads={student.num_heads} "
                         f"and teacher num_heads={teacher.num_heads}; use minilmv2 (relation heads) instead")
