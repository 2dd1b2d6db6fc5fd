"""The encoder: BERT / RoBERTa / XLM-R as HF defines them (post-LN blocks, learned absolute positions,
token types), returning every layer's hidden states and Q/K/V, optionally attention scores /
probabilities and MLM logits.

Shapes: B batch, S sequence, D width, H heads, K head dim (D = H*K), F FFN width, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from distill_jax.models.attention import heads_first_attention, splash_attention
from distill_jax.models.config import EncoderConfig
from distill_jax.models.layers import Dense, Embed, LayerNorm, activation, dropout, param


@struct.dataclass
class EncoderOutputs:
    """What one forward pass returns (a pytree: None fields are empty subtrees).

    hidden_states: L+1 arrays [B,S,D]; index 0 is the embedding output, i the output of layer i.
    queries/keys/values: L arrays [B,S,D], heads concatenated, after the projection bias.
    attention_scores: L arrays [B,H,S,S] of q.k/sqrt(K) before the padding mask, or None.
    attention_probs: L arrays [B,H,S,S] after masking and softmax (before dropout), or None.
    mlm_logits: [B,S,V] or None.
    """

    hidden_states: tuple
    queries: tuple
    keys: tuple
    values: tuple
    attention_scores: tuple | None = None
    attention_probs: tuple | None = None
    mlm_logits: jax.Array | None = None


def _dense(cfg: EncoderConfig, n_in: int, n_out: int, axes: tuple[str, str], rngs: nnx.Rngs) -> Dense:
    return Dense(n_in, n_out, axes=axes, stddev=cfg.initializer_range, dtype=cfg.dtype,
                 param_dtype=cfg.param_dtype, rngs=rngs)


def _norm(cfg: EncoderConfig) -> LayerNorm:
    return LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)


def position_ids_for(cfg: EncoderConfig, input_ids_bs: jax.Array) -> jax.Array:
    """[B,S] position ids. BERT: 0..S-1. RoBERTa/XLM-R (fairseq): pad tokens get pad_token_id,
    the others pad_token_id + 1 + their rank among non-pad tokens (HF create_position_ids_from_input_ids)."""
    if cfg.family == "bert":
        return jnp.broadcast_to(jnp.arange(input_ids_bs.shape[1], dtype=jnp.int32), input_ids_bs.shape)
    not_pad_bs = (input_ids_bs != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad_bs, axis=1) * not_pad_bs + cfg.pad_token_id


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        std = cfg.initializer_range
        self.cfg = cfg
        self.word = Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), stddev=std,
                          param_dtype=cfg.param_dtype, rngs=rngs, zero_row=cfg.pad_token_id)
        self.position = Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=("positions", "embed"),
                              stddev=std, param_dtype=cfg.param_dtype, rngs=rngs,
                              zero_row=cfg.pad_token_id if cfg.family != "bert" else None)
        self.token_type = Embed(cfg.type_vocab_size, cfg.hidden_size, axes=("types", "embed"), stddev=std,
                                param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm = _norm(cfg)

    def __call__(self, input_ids_bs, token_type_ids_bs, dropout_rng):
        if self.cfg.type_vocab_size == 1:
            # RoBERTa/XLM-R have one token type; pair inputs may still carry 1s for the second
            # segment, which would index past the table (jnp.take fills NaN there), so use type 0.
            token_type_ids_bs = jnp.zeros_like(input_ids_bs)
        # Same summation order as HF ((word + type) + position) so float32 results agree bit-closely.
        x_bsd = self.word(input_ids_bs).astype(jnp.float32) + self.token_type(token_type_ids_bs).astype(jnp.float32)
        x_bsd = x_bsd + self.position(position_ids_for(self.cfg, input_ids_bs)).astype(jnp.float32)
        return dropout(self.norm(x_bsd), self.cfg.hidden_dropout, dropout_rng)


class SelfAttention(nnx.Module):
    """Multi-head self-attention projections (query/key/value) and the output dense."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.query = _dense(cfg, d, d, ("embed", "heads"), rngs)
        self.key = _dense(cfg, d, d, ("embed", "heads"), rngs)
        self.value = _dense(cfg, d, d, ("embed", "heads"), rngs)
        self.out = _dense(cfg, d, d, ("heads", "embed"), rngs)

    def __call__(self, x_bsd, mask_bs, *, dropout_rng, output_attentions):
        """Returns (context after out-proj [B,S,D], q, k, v [B,S,D], scores, probs [B,H,S,S] or None)."""
        cfg = self.cfg
        b, s, _ = x_bsd.shape
        q_bsd, k_bsd, v_bsd = self.query(x_bsd), self.key(x_bsd), self.value(x_bsd)
        split = lambda t: t.reshape(b, s, cfg.num_heads, cfg.head_dim)  # noqa: E731
        q_bshk, k_bshk, v_bshk = split(q_bsd), split(k_bsd), split(v_bsd)
        scale = cfg.head_dim ** -0.5
        key_mask_b11s = mask_bs.astype(bool)[:, None, None, :]
        needs_prob_dropout = dropout_rng is not None and cfg.attention_dropout > 0
        scores = probs = None
        if output_attentions or needs_prob_dropout:
            # Explicit path: scores and probabilities are materialised (and dropout can hit them).
            scores_bhst = jnp.einsum("bshk,bthk->bhst", q_bshk, k_bshk,
                                     preferred_element_type=jnp.float32) * scale
            masked = jnp.where(key_mask_b11s, scores_bhst, jnp.finfo(jnp.float32).min)
            probs_bhst = jax.nn.softmax(masked, axis=-1)
            dropped = dropout(probs_bhst, cfg.attention_dropout, dropout_rng)
            ctx_bshk = jnp.einsum("bhst,bthk->bshk", dropped.astype(cfg.dtype), v_bshk)
            if output_attentions:
                scores, probs = scores_bhst, probs_bhst
        elif cfg.attention_impl in ("splash", "splash_interpret"):
            # Pallas splash kernel (TPU): [S,S] tiles only, recomputed in its own backward pass.
            ctx_bshk = splash_attention(q_bshk, k_bshk, v_bshk, mask_bs, scale,
                                        interpret=cfg.attention_impl == "splash_interpret")
        elif cfg.attention_impl == "heads_first":
            # CPU: the same arithmetic with B*H as one batch dim, which XLA:CPU's dots run faster.
            ctx_bshk = heads_first_attention(q_bshk, k_bshk, v_bshk, mask_bs, scale)
        else:
            # Fused path: lets GPUs use cuDNN flash attention; nothing [S,S]-sized is returned.
            ctx_bshk = jax.nn.dot_product_attention(q_bshk, k_bshk, v_bshk, mask=key_mask_b11s, scale=scale,
                                                    implementation=cfg.attention_impl)
        ctx_bsd = self.out(ctx_bshk.reshape(b, s, cfg.hidden_size))
        return ctx_bsd, q_bsd, k_bsd, v_bsd, scores, probs


class EncoderLayer(nnx.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attention = SelfAttention(cfg, rngs)
        self.attention_norm = _norm(cfg)
        self.ffn_in = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs)
        self.ffn_out = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs)
        self.ffn_norm = _norm(cfg)

    def __call__(self, x_bsd, mask_bs, *, dropout_rng, output_attentions):
        cfg = self.cfg
        rngs = [None] * 3 if dropout_rng is None else list(jax.random.split(dropout_rng, 3))
        attn_bsd, q, k, v, scores, probs = self.attention(
            x_bsd, mask_bs, dropout_rng=rngs[0], output_attentions=output_attentions)
        x_bsd = self.attention_norm(x_bsd + dropout(attn_bsd, cfg.hidden_dropout, rngs[1]))
        h_bsf = activation(cfg.hidden_act)(self.ffn_in(x_bsd))
        x_bsd = self.ffn_norm(x_bsd + dropout(self.ffn_out(h_bsf), cfg.hidden_dropout, rngs[2]))
        return x_bsd, q, k, v, scores, probs


class MLMHead(nnx.Module):
    """transform dense + activation + LayerNorm, then the decoder tied to the word embeddings + bias.

    BERT uses config.hidden_act in the transform; RoBERTa/XLM-R always use exact GELU (HF RobertaLMHead).
    """

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.transform = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"), rngs)
        self.norm = _norm(cfg)
        self.bias = param(jnp.zeros((cfg.vocab_size,), cfg.param_dtype), ("vocab",))

    def __call__(self, h_xd, word_embedding_vd):
        act = activation(self.cfg.hidden_act if self.cfg.family == "bert" else "gelu")
        t_xd = self.norm(act(self.transform(h_xd)))
        logits = jnp.einsum("...d,vd->...v", t_xd, word_embedding_vd.astype(self.cfg.dtype),
                            preferred_element_type=jnp.float32)
        return logits + self.bias[...].astype(jnp.float32)


class Pooler(nnx.Module):
    """HF BertPooler: tanh(dense(h[:, 0])); used by the BERT-family sequence classifier."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"), rngs)

    def __call__(self, h_bsd):
        return jnp.tanh(self.dense(h_bsd[:, 0]))


def _layer_call(layer: EncoderLayer, x_bsd, mask_bs, dropout_rng, output_attentions: bool):
    return layer(x_bsd, mask_bs, dropout_rng=dropout_rng, output_attentions=output_attentions)


# The same call under jax.checkpoint: only the layer's inputs are saved for the backward pass, its
# activations (FFN [B,S,F], attention [B,H,S,S]) are recomputed there. output_attentions is static.
_remat_layer_call = nnx.remat(_layer_call, static_argnums=(4,))


class Encoder(nnx.Module):
    """BERT / RoBERTa / XLM-R encoder. Construct with `Encoder(cfg, rngs=nnx.Rngs(0))`.

    The module keeps no RNG state: dropout is driven by the `dropout_rng` argument, so a train step
    over `nnx.split(model)` stays a pure function of (params, batch, key).
    """

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.pooler = Pooler(cfg, rngs) if cfg.with_pooler else None
        self.mlm_head = MLMHead(cfg, rngs) if cfg.with_mlm_head else None

    @property
    def has_mlm_head(self) -> bool:
        return self.mlm_head is not None

    def mlm_logits(self, h_xd: jax.Array) -> jax.Array:
        """MLM head on hidden states of any leading shape [..., D] -> float32 logits [..., V]."""
        if self.mlm_head is None:
            raise ValueError("this encoder has no MLM head; build it with with_mlm_head=True "
                             "(load_pretrained(..., with_mlm_head=True) or make_student(..., with_mlm_head=True))")
        return self.mlm_head(h_xd, self.embeddings.word.embedding[...])

    def __call__(self, input_ids_bs: jax.Array, attention_mask_bs: jax.Array | None = None,
                 token_type_ids_bs: jax.Array | None = None, *, dropout_rng: jax.Array | None = None,
                 output_attentions: bool = False, output_mlm_logits: bool = False) -> EncoderOutputs:
        """input_ids_bs [B,S] int; attention_mask_bs [B,S] (1 valid, 0 padding; None = all valid);
        token_type_ids_bs [B,S] (None = zeros); dropout_rng None = deterministic."""
        cfg = self.cfg
        input_ids_bs = jnp.asarray(input_ids_bs)
        if input_ids_bs.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {input_ids_bs.shape}")
        if input_ids_bs.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {input_ids_bs.shape[1]} exceeds the position table "
                             f"(max {cfg.max_seq_len}); truncate inputs to at most that many tokens")
        if attention_mask_bs is None:
            attention_mask_bs = jnp.ones_like(input_ids_bs)
        if token_type_ids_bs is None:
            token_type_ids_bs = jnp.zeros_like(input_ids_bs)
        layer_rng = lambda i: None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)  # noqa: E731

        x_bsd = self.embeddings(input_ids_bs, token_type_ids_bs, layer_rng(cfg.num_layers))
        hidden, queries, keys, values, scores, probs = [x_bsd], [], [], [], [], []
        call_layer = _remat_layer_call if cfg.remat else _layer_call
        for i, layer in enumerate(self.layers):
            x_bsd, q, k, v, s, p = call_layer(layer, x_bsd, attention_mask_bs, layer_rng(i),
                                              output_attentions)
            hidden.append(x_bsd)
            queries.append(q)
            keys.append(k)
            values.append(v)
            scores.append(s)
            probs.append(p)
        return EncoderOutputs(
            hidden_states=tuple(hidden), queries=tuple(queries), keys=tuple(keys), values=tuple(values),
            attention_scores=tuple(scores) if output_attentions else None,
            attention_probs=tuple(probs) if output_attentions else None,
            mlm_logits=self.mlm_logits(x_bsd) if output_mlm_logits else None,
        )
