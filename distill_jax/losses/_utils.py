"""Small helpers shared by the loss modules: float32 casts, masks and masked means."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Matmuls inside the losses run at full float32 precision: on TPU the default would round the
# float32 operands to bfloat16, which the "float32 math whatever the input dtype" contract forbids.
PRECISION = jax.lax.Precision.HIGHEST

# A finite "minus infinity" for masked logits: exp() of it is exactly 0 in float32, yet it keeps
# log-softmax, its gradient and 0 * log p finite (a real -inf gives NaN through 0 * inf).
MASK_VALUE = -1e30


def f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def as_mask(mask: jax.Array) -> jax.Array:
    """Any 0/1 (int, bool or float) mask -> float32 0./1."""
    return (jnp.asarray(mask) > 0).astype(jnp.float32)


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 when count is 0 (a batch with nothing selected contributes nothing)."""
    return total / jnp.maximum(count, 1e-9) * (count > 0)
