"""The blockwise MiniLMv2 relation KL (relation_kl_loss block_size > 0, the default) against the
float64 numpy reference and against the dense implementation (block_size=0): values, gradients wrt
the student inputs, padding (suffix, holes, a row of nothing but padding, pad-to-block positions),
chunking over heads, bf16 inputs; and the memory property it exists for (no [S, S] live).
Block sizes >= S (9 here) take the one-block path (relation_kl_sum_one_block: gradient computed in
the forward pass), smaller ones the running-statistics path; both are checked in every test.

Tolerances: the value within 1e-5 relative of the reference and of the dense path; f32 gradients
within 1e-4 of the dense path's (relative to the largest entry) and of a float64 central finite
difference of the reference. bf16 inputs get bf16 gradients (the cotangent takes the input dtype in
both paths), so those agree to one bf16 rounding (2^-8 relative).
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from distill_jax.losses import relation_kl_loss
from test_losses_numpy_refs import ref_relation_kl

# 4 examples x 9 tokens: full, suffix-padded, holes, nothing valid.
MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 1, 1, 0, 0, 0],
                 [1, 0, 1, 1, 0, 1, 0, 0, 1],
                 [0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
B, S = MASK.shape
W_S, W_T = 24, 36

value_and_grad = jax.jit(jax.value_and_grad(relation_kl_loss), static_argnums=3,
                         static_argnames=("heads_per_chunk", "block_size"))


def inputs(dtype, seed=0, scale=1.5, offset=0.0):
    """Student / teacher states (noise * scale + offset) with garbage at padded positions (it must
    not matter). A scale much above 1.5 makes every row peak on its own token, KL ~ 1e-8: there
    float32 scores decide, in the dense path as much as here."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(B, S, W_S)) * scale + offset
    xt = rng.normal(size=(B, S, W_T)) * scale + offset
    pad = MASK[:, :, None] == 0
    xs, xt = np.where(pad, 1e4, xs), np.where(pad, -1e4, xt)
    xs, xt = jnp.asarray(xs, jnp.float32).astype(dtype), jnp.asarray(xt, jnp.float32).astype(dtype)
    return xs, xt, np.asarray(xs.astype(jnp.float32), np.float64), np.asarray(xt.astype(jnp.float32), np.float64)


def assert_grads_close(grad, expected, rtol):
    grad, expected = np.asarray(grad, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("relation_heads,block_size", [(1, 2), (4, 4), (4, 128), (12, 3), (12, 9)])
def test_blockwise_value_and_grads_match_reference_and_dense(dtype, relation_heads, block_size):
    xs, xt, xs_np, xt_np = inputs(dtype, seed=relation_heads + block_size)
    value, grad = value_and_grad(xs, xt, MASK, relation_heads, block_size=block_size)
    dense_value, dense_grad = value_and_grad(xs, xt, MASK, relation_heads, block_size=0)
    reference = ref_relation_kl(xs_np, xt_np, MASK, relation_heads)
    assert value.dtype == jnp.float32 and grad.dtype == dtype
    np.testing.assert_allclose(float(value), reference, rtol=1e-5)
    np.testing.assert_allclose(float(value), float(dense_value), rtol=1e-5)
    assert_grads_close(grad, dense_grad, 1e-4 if dtype == jnp.float32 else 2.0 ** -8)
    assert np.all(np.asarray(grad)[MASK == 0] == 0), "padded tokens must get no gradient"


@pytest.mark.parametrize("block_size", [2, 128])
def test_blockwise_gradient_matches_finite_differences_of_the_reference(block_size):
    xs, xt, xs_np, xt_np = inputs(jnp.float32, seed=11, scale=2.0)
    _, grad = value_and_grad(xs, xt, MASK, 4, block_size=block_size)
    direction = np.random.default_rng(5).normal(size=xs_np.shape) * (MASK[:, :, None] > 0)
    eps = 1e-5
    numeric = (ref_relation_kl(xs_np + eps * direction, xt_np, MASK, 4)
               - ref_relation_kl(xs_np - eps * direction, xt_np, MASK, 4)) / (2 * eps)
    analytic = float(np.sum(np.asarray(grad, np.float64) * direction))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4)


@pytest.mark.parametrize("heads_per_chunk", [2, 3])
@pytest.mark.parametrize("block_size", [2, 5, 9])
def test_blockwise_chunked_over_heads_matches_reference_and_dense(heads_per_chunk, block_size):
    xs, xt, xs_np, xt_np = inputs(jnp.float32, seed=heads_per_chunk)
    value, grad = value_and_grad(xs, xt, MASK, 6, heads_per_chunk=heads_per_chunk, block_size=block_size)
    dense_value, dense_grad = value_and_grad(xs, xt, MASK, 6, block_size=0)
    np.testing.assert_allclose(float(value), ref_relation_kl(xs_np, xt_np, MASK, 6), rtol=1e-5)
    np.testing.assert_allclose(float(value), float(dense_value), rtol=1e-5)
    assert_grads_close(grad, dense_grad, 1e-4)


@pytest.mark.parametrize("block_size", [4, 128])
def test_blockwise_large_scores_stay_accurate(block_size):
    # A shared offset puts every score near 100 (rows still spread over keys): exp() stays in range
    # only through the (running) max, and the KL must not lose its digits to the large scores.
    xs, xt, xs_np, xt_np = inputs(jnp.float32, seed=3, scale=0.3, offset=5.0)
    value, grad = value_and_grad(xs, xt, MASK, 2, block_size=block_size)
    _, dense_grad = value_and_grad(xs, xt, MASK, 2, block_size=0)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(value), ref_relation_kl(xs_np, xt_np, MASK, 2), rtol=1e-5)
    assert_grads_close(grad, dense_grad, 1e-4)


@pytest.mark.parametrize("block_size", [4, 128])
def test_nothing_valid_is_zero_with_zero_gradient(block_size):
    xs, xt, _, _ = inputs(jnp.float32)
    value, grad = value_and_grad(xs, xt, np.zeros_like(MASK), 4, block_size=block_size)
    assert float(value) == 0.0 and not np.any(np.asarray(grad))


def test_blockwise_temporaries_grow_with_s_not_s_squared():
    # One [B, R, S, S] float32 relation at S = 2048 is 32 MiB; the dense path keeps several, the
    # blockwise one only [B, R, 128, 128] blocks and [B, R, S] statistics.
    s, relation_bytes = 2048, 2 * 2048 * 2048 * 4
    x = jax.ShapeDtypeStruct((1, s, 16), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, s), jnp.int32)

    def temp_bytes(block_size):
        step = jax.jit(jax.value_and_grad(lambda a, b, m: relation_kl_loss(a, b, m, 2, block_size=block_size)))
        return step.lower(x, x, mask).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(0) > 2 * relation_bytes
    assert temp_bytes(128) < relation_bytes / 8


def test_block_size_must_be_a_non_negative_int():
    xs, xt, _, _ = inputs(jnp.float32)
    with pytest.raises(ValueError, match="block_size=-1: must be an int >= 0"):
        relation_kl_loss(xs, xt, MASK, 4, block_size=-1)
