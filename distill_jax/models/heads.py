"""Sequence classification / regression heads for fine-tuning (GLUE), as HF defines them.

BERT family (HF BertForSequenceClassification): the encoder's pooler tanh(dense(h[CLS])), dropout,
linear to num_labels. RoBERTa / XLM-R (HF RobertaClassificationHead): dropout, dense + tanh on the
<s> token, dropout, out_proj. num_labels == 1 means regression (e.g. STS-B).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from distill_jax.models.config import EncoderConfig
from distill_jax.models.encoder import Encoder
from distill_jax.models.layers import Dense, dropout


def _dense(cfg: EncoderConfig, n_in: int, n_out: int, axes, rngs) -> Dense:
    return Dense(n_in, n_out, axes=axes, stddev=cfg.initializer_range, dtype=cfg.dtype,
                 param_dtype=cfg.param_dtype, rngs=rngs)


class BertClassificationHead(nnx.Module):
    """dropout(pooled) -> out_proj; the pooler itself lives in the encoder (HF bert.pooler)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rate: float, rngs: nnx.Rngs):
        self.out_proj = _dense(cfg, cfg.hidden_size, num_labels, ("embed", "classes"), rngs)
        self.rate = rate

    def __call__(self, encoder: Encoder, h_bsd, dropout_rng):
        if encoder.pooler is None:
            raise ValueError("BERT-family classification needs the encoder's pooler; build it with with_pooler=True")
        pooled_bd = dropout(encoder.pooler(h_bsd), self.rate, dropout_rng)
        return self.out_proj(pooled_bd)


class RobertaClassificationHead(nnx.Module):
    def __init__(self, cfg: EncoderConfig, num_labels: int, rate: float, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"), rngs)
        self.out_proj = _dense(cfg, cfg.hidden_size, num_labels, ("mlp", "classes"), rngs)
        self.rate = rate

    def __call__(self, encoder: Encoder, h_bsd, dropout_rng):
        r1, r2 = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
        x_bd = dropout(h_bsd[:, 0], self.rate, r1)
        x_bd = dropout(jnp.tanh(self.dense(x_bd)), self.rate, r2)
        return self.out_proj(x_bd)


class SequenceClassifier(nnx.Module):
    """Encoder + classification/regression head. Construct with
    `SequenceClassifier(encoder, num_labels, rngs=nnx.Rngs(0))`; the encoder is shared, not copied."""

    def __init__(self, encoder: Encoder, num_labels: int, *, rngs: nnx.Rngs):
        if num_labels < 1:
            raise ValueError(f"num_labels={num_labels}: must be >= 1 (1 means regression)")
        cfg = encoder.cfg
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
        self.encoder = encoder
        self.num_labels = num_labels
        head_cls = BertClassificationHead if cfg.family == "bert" else RobertaClassificationHead
        self.head = head_cls(cfg, num_labels, rate, rngs)

    @property
    def cfg(self) -> EncoderConfig:
        return self.encoder.cfg

    def __call__(self, input_ids_bs, attention_mask_bs=None, token_type_ids_bs=None, *,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Logits [B, num_labels] in float32 (num_labels == 1: regression scores)."""
        enc_rng = head_rng = None
        if dropout_rng is not None:
            enc_rng, head_rng = jax.random.split(dropout_rng)
        out = self.encoder(input_ids_bs, attention_mask_bs, token_type_ids_bs, dropout_rng=enc_rng)
        return self.head(self.encoder, out.hidden_states[-1], head_rng).astype(jnp.float32)
