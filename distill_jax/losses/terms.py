"""The objective's terms: each one's options and what it reads from the two models.

The one table of term names. `objective.build_objective` validates a config against it and
`Objective` derives what the training step must request from it; `distill_jax.flops` reads it to
count the matmuls each term makes run (a term's forward is cut where the last thing it reads is
computed: XLA drops the rest).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distill_jax.losses.mha import RELATION_BLOCK_SIZE

REQUIRED = object()  # an option without a default ("weight", everywhere)

# What a term can read from a model's forward:
#   mlm_logits        the MLM head's logits at some positions (the last layer runs whole)
#   hidden_states     whole layers' outputs
#   qkv               a layer's Q/K/V projections
#   attention_probs   a layer's softmaxed attention (Q/K/V and Q K^T)
#   attention_scores  a layer's pre-softmax attention scores (Q/K/V and Q K^T)
READS = ("mlm_logits", "hidden_states", "qkv", "attention_probs", "attention_scores")
# Which layers: "last" (each model's last layer), "one" (the teacher_layer / student_layer
# options), "map" (the pairs of the `map` option, see layer_maps.py).
LAYERS = ("last", "one", "map")
# Learned student -> teacher width projections the term trains (in the objective's aux params):
#   ""           none
#   "per_pair"   one per layer-map pair, only when the widths differ (hs)
#   "qkv"        one each for Q, K and V, always (direct_minilm)
PROJECTIONS = ("", "per_pair", "qkv")


@dataclasses.dataclass(frozen=True)
class Term:
    """One objective term.

    options: option -> default (REQUIRED = no default); the config schema of the term.
    reads: what it reads from the forward (READS); layers: which layers (LAYERS).
    reads_teacher: False for a term on the student and the batch alone (mlm's hard labels).
    components: options that weight its parts, logged as "<term>/<component>".
    relations: [B, S, S] relation matrices per model beyond the forward's own (MiniLMv2's
      Q-Q, K-K, V-V: 3; MiniLM v1's value relation: 1; its attention comes from the forward).
    projections: learned width projections it trains (PROJECTIONS).
    """

    options: dict[str, Any]
    reads: tuple[str, ...]
    layers: str
    reads_teacher: bool = True
    components: tuple[str, ...] = ()
    relations: int = 0
    projections: str = ""

    def __post_init__(self):
        assert set(self.reads) <= set(READS) and self.layers in LAYERS and self.projections in PROJECTIONS
        assert set(self.components) <= set(self.options)


_MHA_LAYERS = {"teacher_layer": -1, "student_layer": -1}

TERMS: dict[str, Term] = {
    # Output distribution: T^2 KL(teacher || student) of the MLM heads' logits.
    "od": Term({"weight": REQUIRED, "temperature": 1.0, "positions": "mlm", "chunk_size": 16},
               reads=("mlm_logits",), layers="last"),
    # Hard-label masked-LM cross-entropy of the student at the masked positions.
    "mlm": Term({"weight": REQUIRED}, reads=("mlm_logits",), layers="last", reads_teacher=False),
    # Hidden states over a layer map (MSE or cosine).
    "hs": Term({"weight": REQUIRED, "map": "uniform_cons", "embeddings": False, "loss": "mse",
                "projection": "per_layer", "one_to_many": "mean_target"},
               reads=("hidden_states",), layers="map", projections="per_pair"),
    # MiniLMv2: Q-Q, K-K, V-V self-attention relations (KL) between one layer of each model.
    "minilmv2": Term({"weight": REQUIRED, "relation_heads": 48, **_MHA_LAYERS, "qq": 1.0, "kk": 1.0, "vv": 1.0,
                      "heads_per_chunk": 0, "block_size": RELATION_BLOCK_SIZE},
                     reads=("qkv",), layers="one", components=("qq", "kk", "vv"), relations=3),
    # MiniLM v1: attention-distribution KL + value-relation KL (equal head counts).
    "minilm": Term({"weight": REQUIRED, **_MHA_LAYERS, "attention": 1.0, "value": 1.0},
                   reads=("qkv", "attention_probs"), layers="one", components=("attention", "value"),
                   relations=1),
    # MSE between linearly projected student Q/K/V and the teacher's.
    "direct_minilm": Term({"weight": REQUIRED, **_MHA_LAYERS, "q": 1.0, "k": 1.0, "v": 1.0},
                          reads=("qkv",), layers="one", components=("q", "k", "v"), projections="qkv"),
    # TinyBERT: MSE between pre-softmax attention scores over a layer map (equal head counts).
    "tinybert_attention": Term({"weight": REQUIRED, "map": "uniform"}, reads=("attention_scores",), layers="map"),
}

# term -> {option: default}: the config schema (objective.py's docstring describes each option).
TERM_OPTIONS: dict[str, dict[str, Any]] = {name: term.options for name, term in TERMS.items()}


def terms_reading(what: str, names) -> tuple[str, ...]:
    """The terms among `names` that read `what` (one of READS)."""
    return tuple(n for n in names if what in TERMS[n].reads)
