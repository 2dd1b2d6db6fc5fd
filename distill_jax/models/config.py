"""EncoderConfig: every size and switch of a BERT / RoBERTa / XLM-R encoder, and its HF mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("bert", "roberta", "xlm-roberta")
# HF model_type -> our family; HF spells XLM-R "xlm-roberta".
_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "xlm-roberta"}
# EncoderConfig.attention_impl values (see the field's comment).
ATTENTION_IMPLS = (None, "xla", "heads_first", "cudnn", "splash", "splash_interpret")
# Activations HF encoders use, by their HF names (ACT2FN keys).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu", "silu")


def canonical_dtype(dtype: Any, field: str = "dtype") -> str:
    """'float32' / 'bfloat16' / 'float16' from a string or numpy/jax dtype; ValueError otherwise."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError as exc:
        raise ValueError(f"{field}={dtype!r} is not a dtype; use 'float32', 'bfloat16' or 'float16'") from exc
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{field}={name!r} unsupported; use 'float32', 'bfloat16' or 'float16'")
    return name


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of one encoder. Frozen and hashable so it can sit in an nnx graphdef.

    dtype is the compute dtype (activations, matmul inputs); param_dtype is what parameters are
    stored in. LayerNorm and softmax always run in float32.
    """

    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    with_mlm_head: bool = False
    with_pooler: bool = True  # HF BertModel/RobertaModel carry a [CLS] pooler; the BERT classifier uses it
    hidden_act: str = "gelu"
    classifier_dropout: float | None = None  # None: hidden_dropout, as HF
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    # The fused attention path (taken when no probabilities are requested and no attention dropout
    # applies): None/'xla' = jax.nn.dot_product_attention in XLA, everywhere; 'heads_first' = the same
    # arithmetic with heads flattened into the batch (models/attention.py; faster on CPU); 'cudnn' = its cuDNN
    # fused kernel on NVIDIA GPUs (bf16/fp16 compute only; not exercised by CI, which has no GPU);
    # 'splash' = the Pallas splash-attention kernel, TPU only (models/attention.py);
    # 'splash_interpret' = that kernel in the Pallas interpreter, any backend, slow (for tests).
    attention_impl: str | None = None
    # Rematerialise each layer on the backward pass (jax.checkpoint): activation memory drops from
    # O(layers) to O(1) blocks at the cost of one extra forward. A training setting; never exported.
    remat: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} unsupported; use one of {', '.join(FAMILIES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                             "pick num_heads that divides the width")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} unsupported; use one of {', '.join(ACTIVATIONS)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r} unsupported; use one of "
                             f"{', '.join(map(repr, ATTENTION_IMPLS))}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "dtype"))
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype, "param_dtype"))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        """RoBERTa/XLM-R count positions from pad_token_id + 1 (fairseq); BERT from 0."""
        return self.pad_token_id + 1 if self.family != "bert" else 0

    @property
    def max_seq_len(self) -> int:
        """Longest input the position table allows."""
        return self.max_position_embeddings - self.position_offset

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict, *, source: str = "config.json", **overrides) -> "EncoderConfig":
        """From an HF config.json dict; `source` names the file in errors; overrides win."""
        model_type = hf.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(f"{source}: model_type={model_type!r} unsupported; distill_jax loads "
                             f"{', '.join(_MODEL_TYPES)} checkpoints")
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type={pos_type!r} unsupported; only 'absolute'")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError(f"{source}: decoder / cross-attention configs are unsupported; use an encoder checkpoint")
        if hf.get("embedding_size", hf.get("hidden_size")) != hf.get("hidden_size"):
            raise ValueError(f"{source}: embedding_size != hidden_size is unsupported")
        if hf.get("tie_word_embeddings", True) is False:
            raise ValueError(f"{source}: tie_word_embeddings=false is unsupported; the MLM decoder is tied")
        act = hf.get("hidden_act", "gelu")
        if not isinstance(act, str):
            raise ValueError(f"{source}: hidden_act={act!r} must be a name such as 'gelu'")
        kwargs = dict(
            family=_MODEL_TYPES[model_type],
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            hidden_act=act,
            classifier_dropout=hf.get("classifier_dropout"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """HF config.json fields (without 'architectures', which depends on the exported heads)."""
        hf = {
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "classifier_dropout": self.classifier_dropout,
            "tie_word_embeddings": True,
            "dtype": "float32",  # export always writes float32 tensors
        }
        if self.bos_token_id is not None:
            hf["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            hf["eos_token_id"] = self.eos_token_id
        return hf
