"""Multi-head-attention (MHA) distillation: MiniLM, MiniLMv2, DirectMiniLM, TinyBERT attention.

Shapes: x [B, S, W] with heads concatenated along W (as the models' queries/keys/values);
attention scores/probs [B, H, S(query), S(key)]; mask [B, S] with 1 = real token.

Averaging convention (every function here):
  * KL terms are computed per (head, valid query row) over the valid keys, then averaged over the
    heads and the valid query rows of the whole batch (rows of padding never count).
  * MSE terms are averaged over the counted elements (valid tokens x features, or heads x valid
    (query, key) pairs), then over the mapped layer pairs.
  * MiniLMv2 / MiniLM / DirectMiniLM return the weighted *sum* of their components (Q-Q + K-K + V-V;
    attention + value), each component also returned on its own for logging.
Padded positions are zeroed (or masked to a finite -1e30 before a softmax) before any arithmetic,
so whatever values sit there never change the result. Float32 math whatever the input dtype;
teacher inputs are under stop_gradient.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

from distill_jax.losses._utils import MASK_VALUE, PRECISION, as_mask, f32, safe_divide
from distill_jax.losses.hs import apply_linear
from distill_jax.losses.layer_maps import LayerMap
from distill_jax.losses.relation_blocks import relation_kl_sum, relation_kl_sum_one_block

# Query rows / keys per block of the blockwise relation KL (relation_kl_loss block_size): at
# S <= 128 one block, so short sequences run the same arithmetic as the dense path, not slower.
RELATION_BLOCK_SIZE = 128

# heads_per_chunk=0 on CPU: as many relation heads per chunk as keep one [B, c, block, block]
# float32 relation tensor within this many bytes. The relation KL streams such tensors through
# memory several times (scores, max, exp, sums, gradient); a chunk that fits the core's cache is
# read from there instead (2.4-3x faster value+grad at B=16, S=128, R=48: BUILD_NOTES.md).
# Accelerators take all heads at once (one wide op beats a loop of small ones there).
CPU_RELATION_CHUNK_BYTES = 1 << 20

# The platform a step is being traced for, when it is not JAX's default backend (the TPU plan
# compiles for TPU topologies from a CPU host): set by the step's builder around the trace.
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str | None) -> Iterator[None]:
    """Traces inside this context resolve heads_per_chunk=0 for `platform` ('cpu', 'tpu', 'gpu')."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)

# Floor for probabilities given as probabilities (MiniLM v1): log(0) would be -inf.
PROB_FLOOR = 1e-30


def _zero_padding(x_bs_: jax.Array, mask_bs: jax.Array) -> jax.Array:
    valid = as_mask(mask_bs).reshape(mask_bs.shape + (1,) * (x_bs_.ndim - 2)) > 0
    return jnp.where(valid, f32(x_bs_), 0.0)


def relation_log_probs(x_bsw: jax.Array, mask_bs: jax.Array, num_relation_heads: int) -> jax.Array:
    """log softmax over keys of x x^T / sqrt(d_r) per relation head -> [B, R, S, S] float32.

    The width W is split into R heads of d_r = W / R; padded keys get -1e30 before the softmax.
    """
    b, s, w = x_bsw.shape
    check_relation_heads(w, num_relation_heads)
    d_r = w // num_relation_heads
    x = _zero_padding(x_bsw, mask_bs).reshape(b, s, num_relation_heads, d_r)
    scores = jnp.einsum("bqrd,bkrd->brqk", x, x, precision=PRECISION) / math.sqrt(d_r)
    key_valid = (as_mask(mask_bs) > 0)[:, None, None, :]
    return jax.nn.log_softmax(jnp.where(key_valid, scores, MASK_VALUE), axis=-1)


def _kl_rows_sum(logp_t: jax.Array, logp_s: jax.Array, mask_bs: jax.Array) -> jax.Array:
    """sum_k p_t (log p_t - log p_s) over valid keys, summed over heads and valid query rows."""
    m = as_mask(mask_bs)
    key_valid = (m > 0)[:, None, None, :]
    terms = jnp.where(key_valid, jnp.exp(logp_t) * (logp_t - logp_s), 0.0)
    return jnp.sum(jnp.sum(terms, axis=-1) * m[:, None, :])


def _kl_rows_mean(logp_t: jax.Array, logp_s: jax.Array, mask_bs: jax.Array) -> jax.Array:
    """The KL per (head, valid query row), averaged over heads and valid query rows."""
    num_heads = logp_t.shape[1]
    return safe_divide(_kl_rows_sum(logp_t, logp_s, mask_bs), num_heads * jnp.sum(as_mask(mask_bs)))


def default_heads_per_chunk(batch: int, block: int, num_relation_heads: int,
                            platform: str | None = None) -> int:
    """heads_per_chunk=0 resolved for `platform` (default: the `target_platform` being traced for,
    else JAX's default backend): every head on
    TPU/GPU; on CPU the largest divisor c of R with B * c * block^2 * 4 bytes <= 1 MiB (at least 1).

    block: the relation tile's side (min(block_size, S), or S for the dense path).
    """
    platform = platform or _TARGET_PLATFORM.get() or jax.default_backend()
    if platform != "cpu":
        return num_relation_heads
    per_head_bytes = batch * block * block * 4
    fitting = [c for c in range(1, num_relation_heads + 1)
               if num_relation_heads % c == 0 and c * per_head_bytes <= CPU_RELATION_CHUNK_BYTES]
    return max(fitting, default=1)


def check_relation_heads(width: int, num_relation_heads: int, heads_per_chunk: int | None = None,
                         block_size: int = 0) -> None:
    if width % num_relation_heads:
        raise ValueError(f"relation heads {num_relation_heads} do not divide the width {width}; "
                         f"choose a number of relation heads that divides every model's width")
    if heads_per_chunk and num_relation_heads % heads_per_chunk:
        raise ValueError(f"heads_per_chunk={heads_per_chunk} does not divide the {num_relation_heads} relation "
                         f"heads; use a divisor of {num_relation_heads} (or 0 for all heads at once)")
    check_block_size(block_size)


def check_block_size(block_size: int, field: str = "block_size") -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(f"{field}={block_size!r}: must be an int >= 0 (0 = dense relations, "
                         f"n > 0 = blocks of n query rows and keys)")


def relation_kl_loss(student_x: jax.Array, teacher_x: jax.Array, mask: jax.Array,
                     num_relation_heads: int, *, heads_per_chunk: int | None = None,
                     block_size: int = RELATION_BLOCK_SIZE) -> jax.Array:
    """MiniLMv2 self-attention-relation KL(teacher || student), float32 scalar.

    Args:
      student_x: [B, S, W_s]; teacher_x: [B, S, W_t] (queries, keys or values, heads concatenated).
      mask: [B, S] 1 = real token.
      num_relation_heads: R; must divide both W_s and W_t (each model splits its own width).
      heads_per_chunk: c > 0 = c heads at a time inside lax.map, so only c heads' worth of
        relation tensors (blocks, or [B, c, S, S] when dense) is live; c = R all heads at once;
        None/0 = for the platform (``default_heads_per_chunk``: all heads on TPU/GPU, chunks that
        fit the cache on CPU).
      block_size: n > 0 (default 128) = blockwise (relation_blocks.py): query rows and keys in
        blocks of n, running log-sum-exp statistics, a custom VJP that recomputes the blocks, so
        memory grows with S (plus [B, R, n, n] blocks), not S^2. 0 = dense: both [B, R, S, S]
        float32 log-softmax relations materialised (autodiff through them). Same value and
        gradient either way (tests: 1e-5 / 1e-4).
        Measured dense (XLA CPU memory_analysis, value+grad, B=8, S=512, R=48, widths 384/768):
        1.9 GiB of temporaries at once, 0.53 GiB with heads_per_chunk=12, 0.19 GiB with 4.
    """
    for x in (student_x, teacher_x):
        check_relation_heads(x.shape[-1], num_relation_heads, heads_per_chunk, block_size)
    teacher_x = jax.lax.stop_gradient(teacher_x)
    m = as_mask(mask)
    batch, seq = student_x.shape[:2]
    block = min(block_size, seq) if block_size else seq
    if not heads_per_chunk:
        heads_per_chunk = default_heads_per_chunk(batch, block, num_relation_heads)
    if block_size:

        def kl_sum(xs, xt, heads):
            if block == xs.shape[1]:  # one block holds the sequence: no running statistics
                return relation_kl_sum_one_block(xs, xt, m, heads)
            return relation_kl_sum(xs, xt, m, heads, block)
    else:
        def kl_sum(xs, xt, heads):
            return _kl_rows_sum(relation_log_probs(xt, m, heads), relation_log_probs(xs, m, heads), m)

    if heads_per_chunk >= num_relation_heads:
        total = kl_sum(student_x, teacher_x, num_relation_heads)
    else:
        num_chunks = num_relation_heads // heads_per_chunk

        def groups(x_bsw):  # [B, S, W] -> [n, B, S, W/n]: group g holds relation heads g*c .. g*c+c-1
            b, s, w = x_bsw.shape
            return jnp.moveaxis(x_bsw.reshape(b, s, num_chunks, w // num_chunks), 2, 0)

        def chunk_sum(args):
            return kl_sum(*args, heads_per_chunk)

        # Dense chunks recompute their [B, c, S, S] relations on the backward pass instead of saving
        # them per chunk; the blockwise VJP already saves only [B, c, S] statistics.
        total = jnp.sum(jax.lax.map(chunk_sum if block_size else jax.checkpoint(chunk_sum),
                                    (groups(student_x), groups(teacher_x))))
    return safe_divide(total, num_relation_heads * jnp.sum(m))


def minilmv2_loss(student_qkv: Sequence[jax.Array], teacher_qkv: Sequence[jax.Array], mask: jax.Array,
                  num_relation_heads: int, weights: Sequence[float] = (1.0, 1.0, 1.0), *,
                  heads_per_chunk: int | None = None, block_size: int = RELATION_BLOCK_SIZE
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MiniLMv2: w_qq KL_QQ + w_kk KL_KK + w_vv KL_VV between one student and one teacher layer.

    Args:
      student_qkv / teacher_qkv: (queries, keys, values), each [B, S, W] of the chosen layers.
      weights: (w_qq, w_kk, w_vv); a zero weight skips that relation.
      heads_per_chunk, block_size: see ``relation_kl_loss``.
    Returns:
      (weighted sum, {"qq": ..., "kk": ..., "vv": ...}) for the relations with non-zero weight.
    """
    parts = {}
    total = jnp.zeros((), jnp.float32)
    for name, xs, xt, w in zip(("qq", "kk", "vv"), student_qkv, teacher_qkv, weights):
        if w:
            parts[name] = relation_kl_loss(xs, xt, mask, num_relation_heads, heads_per_chunk=heads_per_chunk,
                                           block_size=block_size)
            total = total + w * parts[name]
    return total, parts


def attention_kl_loss(student_probs: jax.Array, teacher_probs: jax.Array, mask: jax.Array) -> jax.Array:
    """MiniLM attention-distribution KL(teacher || student) from attention probabilities.

    Args:
      student_probs / teacher_probs: [B, H, S, S] softmax outputs (equal H), rows over keys.
      mask: [B, S] 1 = real token. Probabilities are floored at 1e-30 before the log.
    """
    m = as_mask(mask)
    valid = (m[:, None, :, None] * m[:, None, None, :]) > 0
    p_s = jnp.where(valid, f32(student_probs), 1.0)
    p_t = jnp.where(valid, f32(jax.lax.stop_gradient(teacher_probs)), 1.0)
    logp_s = jnp.log(jnp.maximum(p_s, PROB_FLOOR))
    logp_t = jnp.log(jnp.maximum(p_t, PROB_FLOOR))
    # exp(logp_t) == p_t up to the floor; masked entries are dropped inside _kl_rows_mean.
    return _kl_rows_mean(logp_t, logp_s, mask)


def minilm_loss(student_probs: jax.Array, teacher_probs: jax.Array, student_values: jax.Array,
                teacher_values: jax.Array, mask: jax.Array, num_heads: int,
                weights: Sequence[float] = (1.0, 1.0)) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MiniLM (v1): w_a * attention-distribution KL + w_v * value-relation KL (last layers).

    Value relation: ``relation_kl_loss`` with the models' own ``num_heads`` (equal in both).
    Returns (weighted sum, {"attention": ..., "value": ...}).
    """
    if student_probs.shape[1] != teacher_probs.shape[1]:
        raise ValueError(f"MiniLM needs equal head counts, got student {student_probs.shape[1]} and "
                         f"teacher {teacher_probs.shape[1]}; use minilmv2 (relation heads) instead")
    parts = {"attention": attention_kl_loss(student_probs, teacher_probs, mask),
             "value": relation_kl_loss(student_values, teacher_values, mask, num_heads)}
    return weights[0] * parts["attention"] + weights[1] * parts["value"], parts


def projected_mse(student_bsd: jax.Array, teacher_bsd: jax.Array, mask: jax.Array,
                  projection: dict | None) -> jax.Array:
    """mean over valid tokens and the D_t features of (student W + b - teacher)^2."""
    x = _zero_padding(student_bsd, mask)
    if projection:
        x = _zero_padding(apply_linear(projection, x), mask)
    y = _zero_padding(jax.lax.stop_gradient(teacher_bsd), mask)
    m = as_mask(mask)
    return safe_divide(jnp.sum(jnp.square(x - y)), jnp.sum(m) * y.shape[-1])


def direct_minilm_loss(student_qkv: Sequence[jax.Array], teacher_qkv: Sequence[jax.Array], mask: jax.Array,
                       projections: dict | None, weights: Sequence[float] = (1.0, 1.0, 1.0)
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DirectMiniLM: w_q MSE(Q_s W_q + b_q, Q_t) + w_k MSE(K...) + w_v MSE(V...).

    Args:
      projections: {"q": {"kernel": [W_s, W_t], "bias": [W_t]}, "k": ..., "v": ...}
        (None/{} only when the widths match: then the states are compared directly).
    Returns (weighted sum, {"q": ..., "k": ..., "v": ...}) for non-zero weights.
    """
    parts = {}
    total = jnp.zeros((), jnp.float32)
    for name, xs, xt, w in zip(("q", "k", "v"), student_qkv, teacher_qkv, weights):
        if w:
            parts[name] = projected_mse(xs, xt, mask, (projections or {}).get(name))
            total = total + w * parts[name]
    return total, parts


def tinybert_attention_loss(student_scores: Sequence[jax.Array], teacher_scores: Sequence[jax.Array],
                            pairs: LayerMap, mask: jax.Array) -> jax.Array:
    """TinyBERT attention: MSE between pre-softmax scores, head by head, on a layer map.

    Args:
      student_scores / teacher_scores: tuples of L arrays [B, H, S, S] (layer i at index i-1), scores
        q.k/sqrt(d_head) *without* mask; equal H in both models.
      pairs: layer map over transformer layers 1..L (no 0); a 1-to-N pair averages its teacher scores.
      mask: [B, S]. Only (valid query, valid key) entries count.
    Returns the MSE averaged over heads and valid (query, key) entries, then over the pairs.
    """
    m = as_mask(mask)
    valid = (m[:, None, :, None] * m[:, None, None, :]) > 0
    per_pair = []
    for s, ts in pairs:
        x = jnp.where(valid, f32(student_scores[s - 1]), 0.0)
        target = sum(jnp.where(valid, f32(jax.lax.stop_gradient(teacher_scores[t - 1])), 0.0)
                     for t in ts) / len(ts)
        if x.shape[1] != target.shape[1]:
            raise ValueError(f"TinyBERT attention compares head by head but the student has {x.shape[1]} "
                             f"heads and the teacher {target.shape[1]}; use minilmv2 instead")
        count = x.shape[1] * jnp.sum(jnp.sum(m, axis=1) ** 2)
        per_pair.append(safe_divide(jnp.sum(jnp.square(x - target)), count))
    return sum(per_pair) / len(per_pair)
