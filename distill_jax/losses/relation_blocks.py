"""MiniLMv2 relation KL in blocks: never a whole [B, R, S, S] relation, only [B, R, Q, K] blocks.

For one query row with teacher scores s_t and student scores s_s over the valid keys
(s = x_q . x_k / sqrt(d_r) per relation head),

    KL(p_t || p_s) = E_{p_t}[s_t - s_s] - lse(s_t) + lse(s_s),

and every piece is a running statistic over key blocks, as flash attention keeps its softmax:
a running max m and l = sum exp(s - m) for each model, and d = sum exp(s_t - m_t) ((s_t - m_t) -
(s_s - m_s)), rescaled by exp(m_old - m_new) when a max moves; then lse = m + log l and
KL = d / l_t - log l_t + log l_s (the same identity with the maxes cancelled).
The gradient wrt the student scores is (p_s - p_t) per valid (query row, key) pair; the custom
VJP recomputes it block by block from the per-row lse the forward pass saved ([B, R, S]) and
accumulates dx = (G x + G^T x) / sqrt(d_r), so the backward pass holds no [S, S] either.

Query rows and keys are cut into blocks of ``block_size`` (the last one padded with masked
positions). Padding follows mha.relation_log_probs exactly: padded tokens are zeroed, padded keys
get MASK_VALUE (exp of it is exactly 0), padded query rows do not count. Float32 math at HIGHEST
matmul precision whatever the input dtype.

Memory: O(B R S) statistics plus a few live blocks [B, R, Q, K] float32 (at Q = K = 128, B = 64,
R = 48 one block is 192 MiB); see BUILD_NOTES.md for measured step temporaries.

One block (S <= block, the recipes' S = 64 and 128): ``relation_kl_sum_one_block`` needs no
running statistics. Its forward pass computes the value and, with the same scores and
exponentials, the whole gradient wrt the student's states (a [B, S, W_s] array, the only
residual); the backward pass scales it by the cotangent. That halves the [B, R, S, S] work of the
blockwise VJP (which recomputes both models' scores and exponentials) and replaces its two
gradient matmuls by one: with q = k = x, dx = (G + G^T) x / sqrt(d_r).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from distill_jax.losses._utils import MASK_VALUE, PRECISION, f32


def _to_blocks(x_bsw: jax.Array, mask_bs: jax.Array, num_heads: int, block: int) -> jax.Array:
    """[B, S, W] -> [N, B, R, block, d_r] float32, padded tokens and pad-to-block rows zeroed."""
    b, s, w = x_bsw.shape
    n = -(-s // block)
    x = jnp.where(mask_bs[:, :, None] > 0, f32(x_bsw), 0.0)
    x = jnp.pad(x, ((0, 0), (0, n * block - s), (0, 0)))
    x = x.reshape(b, n, block, num_heads, w // num_heads)
    return x.transpose(1, 0, 3, 2, 4)


def _from_blocks(x_nbrqd: jax.Array, s: int) -> jax.Array:
    """Inverse of _to_blocks' layout: [N, B, R, block, d_r] -> [B, S, W] (pad rows dropped)."""
    n, b, r, q, d = x_nbrqd.shape
    return x_nbrqd.transpose(1, 0, 3, 2, 4).reshape(b, n * q, r * d)[:, :s]


def _mask_blocks(mask_bs: jax.Array, block: int) -> jax.Array:
    """[B, S] -> [N, B, block] float32 0/1, pad-to-block positions 0."""
    b, s = mask_bs.shape
    n = -(-s // block)
    m = jnp.pad(mask_bs, ((0, 0), (0, n * block - s)))
    return m.reshape(b, n, block).transpose(1, 0, 2)


def _scores(xq: jax.Array, xk: jax.Array, key_valid_b11k: jax.Array) -> jax.Array:
    """[B, R, Q, d] x [B, R, K, d] -> masked scores [B, R, Q, K] / sqrt(d)."""
    scores = jnp.einsum("brqd,brkd->brqk", xq, xk, precision=PRECISION) / math.sqrt(xq.shape[-1])
    return jnp.where(key_valid_b11k, scores, MASK_VALUE)


def _row_stats(qs, qt, ks_n, kt_n, km_n):
    """One query block against every key block: (kl_row, lse_s, lse_t), each [B, R, Q].

    d accumulates sum_k exp(s_t - m_t) ((s_t - m_t) - (s_s - m_s)) against the *current* maxes (so
    the dominant keys contribute differences of small numbers, not of scores in the hundreds);
    when a max moves, every earlier term shifts by the same (m_s_new - m_s) - (m_t_new - m_t).
    """
    b, r, q, _ = qs.shape
    init = tuple(jnp.full((b, r, q), v, jnp.float32) for v in (MASK_VALUE, 0.0, MASK_VALUE, 0.0, 0.0))

    def step(carry, key_block):
        m_s, l_s, m_t, l_t, d = carry
        ks, kt, km = key_block
        valid = (km > 0)[:, None, None, :]
        s_s, s_t = _scores(qs, ks, valid), _scores(qt, kt, valid)
        m_s_new = jnp.maximum(m_s, jnp.max(s_s, axis=-1))
        m_t_new = jnp.maximum(m_t, jnp.max(s_t, axis=-1))
        rescale_t = jnp.exp(m_t - m_t_new)
        d = rescale_t * (d + l_t * ((m_s_new - m_s) - (m_t_new - m_t)))
        shifted_t, shifted_s = s_t - m_t_new[..., None], s_s - m_s_new[..., None]
        e_t = jnp.exp(shifted_t)
        d = d + jnp.sum(e_t * jnp.where(valid, shifted_t - shifted_s, 0.0), axis=-1)
        l_t = l_t * rescale_t + jnp.sum(e_t, axis=-1)
        l_s = l_s * jnp.exp(m_s - m_s_new) + jnp.sum(jnp.exp(shifted_s), axis=-1)
        return (m_s_new, l_s, m_t_new, l_t, d), None

    (m_s, l_s, m_t, l_t, d), _ = jax.lax.scan(step, init, (ks_n, kt_n, km_n))
    kl = d / l_t - jnp.log(l_t) + jnp.log(l_s)
    return kl, m_s + jnp.log(l_s), m_t + jnp.log(l_t)


def _forward(xs_bsw, xt_bsw, mask_bs, num_heads, block):
    xs_n = _to_blocks(xs_bsw, mask_bs, num_heads, block)
    xt_n = _to_blocks(xt_bsw, mask_bs, num_heads, block)
    m_n = _mask_blocks(mask_bs, block)

    def query_block(args):
        qs, qt, qm = args
        kl, lse_s, lse_t = _row_stats(qs, qt, xs_n, xt_n, m_n)
        return jnp.sum(kl * qm[:, None, :]), lse_s, lse_t

    sums, lse_s, lse_t = jax.lax.map(query_block, (xs_n, xt_n, m_n))
    return jnp.sum(sums), (lse_s, lse_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def relation_kl_sum(xs_bsw: jax.Array, xt_bsw: jax.Array, mask_bs: jax.Array, num_heads: int,
                    block: int) -> jax.Array:
    """sum over relation heads and valid query rows of KL(teacher row || student row), float32.

    xs_bsw [B, S, W_s], xt_bsw [B, S, W_t] (each split into num_heads relation heads of its own
    width); mask_bs [B, S] float32 0/1. Differentiable in xs only: the teacher is a constant
    (its cotangent is zero, as relation_kl_loss puts it under stop_gradient).
    """
    return _forward(xs_bsw, xt_bsw, mask_bs, num_heads, block)[0]


def _fwd(xs_bsw, xt_bsw, mask_bs, num_heads, block):
    total, (lse_s, lse_t) = _forward(xs_bsw, xt_bsw, mask_bs, num_heads, block)
    return total, (xs_bsw, xt_bsw, mask_bs, lse_s, lse_t)


def _bwd(num_heads, block, residuals, g):
    xs_bsw, xt_bsw, mask_bs, lse_s_n, lse_t_n = residuals
    xs_n = _to_blocks(xs_bsw, mask_bs, num_heads, block)
    xt_n = _to_blocks(xt_bsw, mask_bs, num_heads, block)
    m_n = _mask_blocks(mask_bs, block)
    inv_sqrt_d = 1.0 / math.sqrt(xs_n.shape[-1])

    def query_block(dk_n, args):
        qs, qt, qm, lse_s, lse_t = args
        row_weight = (g * qm)[:, None, :, None]  # cotangent of each row's KL: g where the row counts

        def key_block(dq, key_args):
            ks, kt, km, dk = key_args
            valid = (km > 0)[:, None, None, :]
            p_s = jnp.exp(_scores(qs, ks, valid) - lse_s[..., None])
            p_t = jnp.exp(_scores(qt, kt, valid) - lse_t[..., None])
            grad_scores = jnp.where(valid, p_s - p_t, 0.0) * row_weight * inv_sqrt_d
            dq = dq + jnp.einsum("brqk,brkd->brqd", grad_scores, ks, precision=PRECISION)
            dk = dk + jnp.einsum("brqk,brqd->brkd", grad_scores, qs, precision=PRECISION)
            return dq, dk

        dq, dk_n = jax.lax.scan(key_block, jnp.zeros_like(qs), (xs_n, xt_n, m_n, dk_n))
        return dk_n, dq

    dk_n, dq_n = jax.lax.scan(query_block, jnp.zeros_like(xs_n), (xs_n, xt_n, m_n, lse_s_n, lse_t_n))
    s = xs_bsw.shape[1]
    dxs = _from_blocks(dq_n + dk_n, s) * (mask_bs[:, :, None] > 0)  # padded tokens were zeroed
    return dxs.astype(xs_bsw.dtype), jnp.zeros_like(xt_bsw), jnp.zeros_like(mask_bs)


relation_kl_sum.defvjp(_fwd, _bwd)


def _heads(x_bsw: jax.Array, mask_bs: jax.Array, num_heads: int) -> jax.Array:
    """[B, S, W] -> [B, R, S, d_r] float32, padded tokens zeroed: the one block of _to_blocks."""
    return _to_blocks(x_bsw, mask_bs, num_heads, x_bsw.shape[1])[0]


def _log_softmax_and_probs(x_brsd: jax.Array, key_valid_b11s: jax.Array):
    """Relation scores of x with itself -> (log p, p), each [B, R, S, S], one exp per entry."""
    scores = _scores(x_brsd, x_brsd, key_valid_b11s)
    shifted = scores - jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(shifted)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return shifted - jnp.log(total), e / total


def _one_block(xs_bsw, xt_bsw, mask_bs, num_heads, with_grad: bool):
    """(sum of row KLs, d sum / d xs [B, S, W_s] or None) over the whole sequence at once."""
    xs, xt = _heads(xs_bsw, mask_bs, num_heads), _heads(xt_bsw, mask_bs, num_heads)
    key_valid = (mask_bs > 0)[:, None, None, :]
    row_valid = (mask_bs > 0)[:, None, :, None]
    logp_s, p_s = _log_softmax_and_probs(xs, key_valid)
    logp_t, p_t = _log_softmax_and_probs(xt, key_valid)
    counted = key_valid & row_valid
    total = jnp.sum(jnp.where(counted, p_t * (logp_t - logp_s), 0.0))
    if not with_grad:
        return total, None
    # d KL_row / d s_s = p_s - p_t on counted entries; s = x x^T / sqrt(d), so
    # dx = (G + G^T) x / sqrt(d) with G those entries (one matmul instead of two).
    g_brss = jnp.where(counted, p_s - p_t, 0.0)
    g_brss = (g_brss + jnp.swapaxes(g_brss, -1, -2)) * (1.0 / math.sqrt(xs.shape[-1]))
    dx_brsd = jnp.einsum("brqk,brkd->brqd", g_brss, xs, precision=PRECISION)
    b, s, w = xs_bsw.shape
    dx_bsw = dx_brsd.transpose(0, 2, 1, 3).reshape(b, s, w) * (mask_bs[:, :, None] > 0)
    return total, dx_bsw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def relation_kl_sum_one_block(xs_bsw: jax.Array, xt_bsw: jax.Array, mask_bs: jax.Array,
                              num_heads: int) -> jax.Array:
    """``relation_kl_sum`` when one block holds the sequence: same value and gradient (xs only),
    the gradient computed in the forward pass and kept as the only residual ([B, S, W_s])."""
    return _one_block(xs_bsw, xt_bsw, mask_bs, num_heads, with_grad=False)[0]


def _one_block_fwd(xs_bsw, xt_bsw, mask_bs, num_heads):
    total, dx_bsw = _one_block(xs_bsw, xt_bsw, mask_bs, num_heads, with_grad=True)
    # The float32 gradient is scaled by the cotangent before it is rounded to xs's dtype; the
    # empty array carries that dtype.
    # No teacher states or mask are kept: their cotangents are zero (None).
    return total, (dx_bsw, jnp.zeros((0,), xs_bsw.dtype))


def _one_block_bwd(num_heads, residuals, g):
    dx_bsw, xs_dtype_carrier = residuals
    return (g * dx_bsw).astype(xs_dtype_carrier.dtype), None, None


relation_kl_sum_one_block.defvjp(_one_block_fwd, _one_block_bwd)
