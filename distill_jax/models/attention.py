"""Attention kernels besides jax.nn.dot_product_attention: heads-first XLA attention (CPU) and the
Pallas splash-attention kernel (TPU), padding through segment ids.

Heads first (EncoderConfig.attention_impl='heads_first', what 'auto' picks on CPU): the same
arithmetic as jax.nn.dot_product_attention's XLA path, with the heads moved next to the batch and
flattened into one batch dimension of B*H before the two batched dots. XLA:CPU runs those dots
faster in that form: at B=16, S=128, H=12 (jitted, alternating in one process, 2-core AMD EPYC)
forward 9.5 -> 7.0 ms (head size 32) and 14.5 -> 10.5 ms (64), value+grad 30.8 -> 23.3 ms (32).

The encoder's default fused path is jax.nn.dot_product_attention, which on TPU lowers to plain XLA
and keeps [B, H, S, S] float32 probabilities live (and, under value_and_grad, saved for the
backward pass). Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) computes
softmax(q k^T) v in [block_q, block_kv] tiles with a running log-sum-exp and recomputes them in
its own VJP, so nothing [S, S]-sized survives the kernel.

What the kernel requires, and so when the encoder may use it (EncoderConfig.attention_impl):
  * no dropout on the attention probabilities (the kernel has none): the explicit path still runs
    whenever attention_dropout > 0 and a dropout key is given (a training student with the
    recipes' attention_dropout=0.1), and whenever probabilities are requested (MiniLM v1, TinyBERT);
  * a TPU to run on ('splash'); 'splash_interpret' runs the same kernel in the Pallas interpreter
    on any backend (slow: for checking numerics on CPU);
  * tiles of 128 keys (the TPU lane width; the kernel refuses smaller ones): sequences that 128
    does not divide are padded here with masked positions, so S = 64 computes a 128 x 128 tile.

Padding: real tokens get segment id 1 and padding 0, so a real query attends exactly the real keys
(as the explicit path's key mask does). Padded query rows attend the padding instead of the real
keys, so their outputs differ from the explicit path's; nothing reads them (real tokens never
attend padded keys, and every loss masks padded positions).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from distill_jax.sharding import BATCH_AXES

BLOCK = 128  # the kernel's default tile (query rows and keys)


def heads_first_attention(q_bshk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_bs: jax.Array,
                          scale: float) -> jax.Array:
    """softmax(q k^T * scale, real keys only) v -> [B, S, H, K] in q's dtype.

    Scores and softmax in float32 (as jax.nn.dot_product_attention); the probabilities are cast to
    v's dtype for the second dot. mask_bs [B, S]: 1 = real key; every row needs one real key.
    """
    b, s, h, k = q_bshk.shape
    to_nsk = lambda x: jnp.swapaxes(x, 1, 2).reshape(b * h, s, k)  # noqa: E731  n = B*H
    scores_nst = jnp.einsum("nsk,ntk->nst", to_nsk(q_bshk), to_nsk(k_bshk),
                            preferred_element_type=jnp.float32) * scale
    key_mask_b11t = mask_bs.astype(bool)[:, None, None, :]
    scores_bhst = jnp.where(key_mask_b11t, scores_nst.reshape(b, h, s, s), jnp.finfo(jnp.float32).min)
    probs_nst = jax.nn.softmax(scores_bhst, axis=-1).reshape(b * h, s, s).astype(v_bshk.dtype)
    ctx_nsk = jnp.einsum("nst,ntk->nsk", probs_nst, to_nsk(v_bshk))
    return jnp.swapaxes(ctx_nsk.reshape(b, h, s, k), 1, 2).astype(q_bshk.dtype)


def splash_attention(q_bshk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_bs: jax.Array,
                     scale: float, *, interpret: bool = False) -> jax.Array:
    """softmax(q k^T * scale, real keys only) v -> [B, S, H, K] in q's dtype.

    XLA cannot partition the kernel's custom call (it would gather the whole batch onto every
    chip), so under a mesh set with ``jax.set_mesh`` the kernel runs per shard in a shard_map:
    batch over the mesh's batch axes, heads over "tensor" when it divides them.
    """
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes = tuple(a for a in BATCH_AXES if not mesh.empty and a in mesh.axis_names and mesh.shape[a] > 1)
    tensor = "tensor" if (not mesh.empty and mesh.shape.get("tensor", 1) > 1
                          and q_bshk.shape[2] % mesh.shape["tensor"] == 0) else None
    local = functools.partial(_splash_local, scale=scale, interpret=interpret)
    if not batch_axes and tensor is None:
        return local(q_bshk, k_bshk, v_bshk, mask_bs)
    spec_bshk = P(batch_axes or None, None, tensor, None)
    return jax.shard_map(local, in_specs=(spec_bshk, spec_bshk, spec_bshk, P(batch_axes or None, None)),
                         out_specs=spec_bshk, check_vma=False)(q_bshk, k_bshk, v_bshk, mask_bs)


def _splash_local(q_bshk, k_bshk, v_bshk, mask_bs, *, scale, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    b, s, h, _ = q_bshk.shape
    block = BLOCK
    padded = -(-s // block) * block
    segment_bs = (mask_bs > 0).astype(jnp.int32)
    if padded != s:
        pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - s)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
        q_bshk, k_bshk, v_bshk, segment_bs = map(pad, (q_bshk, k_bshk, v_bshk, segment_bs))
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    kernel = splash.make_splash_mha(mask_lib.MultiHeadMask([mask_lib.FullMask((padded, padded))] * h),
                                    block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, S, H, K] <-> [B, H, S, K]
    q = heads_first(q_bshk * jnp.asarray(scale, q_bshk.dtype))  # the kernel applies no scale itself
    ctx_bhsk = jax.vmap(lambda q1, k1, v1, seg: kernel(q1, k1, v1, segment_ids=splash.SegmentIds(seg, seg)))(
        q, heads_first(k_bshk), heads_first(v_bshk), segment_bs)
    return heads_first(ctx_bhsk)[:, :s]
