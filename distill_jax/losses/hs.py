"""Hidden-state (HS) distillation over a layer map.

For each pair (s, (t_1..t_n)) of the layer map (see ``layer_maps.py``):

    x      = student_states[s] @ W + b     (learned projection when the widths differ, else x as is)
    target = mean_j teacher_states[t_j]    (one_to_many="mean_target", the default: a 1-to-N pair
                                            averages its teacher layers)
    pair   = per-token distance(x, target), averaged over valid tokens
             (or, with one_to_many="mean_loss", the mean over j of the pair loss against each t_j)

    mse    distance = mean over the D_t features of (x - target)^2
    cosine distance = 1 - cos(x, target)

    hs = mean over the pairs of the pair losses (so the scale does not grow with the number of
         mapped layers; a term weight in the objective rescales it).

Valid tokens are those with mask 1; padded tokens' values never reach the result (they are zeroed
before any arithmetic, so even inf/NaN there is harmless). Float32 math; teacher under stop_gradient.

Projections are trainable student-side state (never exported with the student): a dict
``{"layer_<s>": {"kernel": [D_s, D_t], "bias": [D_t]}, ...}`` (one per student layer, as in
"per_layer") or ``{"shared": {...}}`` (one for all layers, as TinyBERT's W_h).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from distill_jax.losses._utils import PRECISION, as_mask, f32, safe_divide
from distill_jax.losses.layer_maps import LayerMap

HS_LOSSES = ("mse", "cosine")
PROJECTIONS = ("per_layer", "shared")
ONE_TO_MANY = ("mean_target", "mean_loss")


def init_linear(rng: jax.Array, in_width: int, out_width: int) -> dict[str, jax.Array]:
    """A float32 linear map: identity when the widths match (so equal models start at loss 0),
    else LeCun-normal kernel (std 1/sqrt(in_width)) and zero bias."""
    if in_width == out_width:
        kernel = jnp.eye(in_width, dtype=jnp.float32)
    else:
        kernel = jax.random.normal(rng, (in_width, out_width), jnp.float32) / jnp.sqrt(in_width)
    return {"kernel": kernel, "bias": jnp.zeros((out_width,), jnp.float32)}


def apply_linear(params: dict[str, jax.Array], x_bsd: jax.Array) -> jax.Array:
    return jnp.einsum("bsd,de->bse", f32(x_bsd), f32(params["kernel"]), precision=PRECISION) + f32(params["bias"])


def projection_key(student_layer: int) -> str:
    return f"layer_{student_layer}"


def init_hs_projections(rng: jax.Array, pairs: LayerMap, student_width: int, teacher_width: int,
                        mode: str = "per_layer") -> dict:
    """Projection params for ``hs_loss``: {} when widths match, else per student layer or shared."""
    if student_width == teacher_width:
        return {}
    if mode == "shared":
        return {"shared": init_linear(rng, student_width, teacher_width)}
    if mode != "per_layer":
        raise ValueError(f"projection={mode!r}: use one of {', '.join(PROJECTIONS)}")
    student_layers = sorted({s for s, _ in pairs})
    keys = jax.random.split(rng, len(student_layers))
    return {projection_key(s): init_linear(k, student_width, teacher_width) for s, k in zip(student_layers, keys)}


def _project(projections: dict | None, student_layer: int, x_bsd: jax.Array) -> jax.Array:
    if not projections:
        return f32(x_bsd)
    params = projections["shared"] if "shared" in projections else projections[projection_key(student_layer)]
    return apply_linear(params, x_bsd)


def token_distance(x_bsd: jax.Array, y_bsd: jax.Array, loss: str) -> jax.Array:
    """Per-token distance [B, S] (both inputs already float32 and zero at padding)."""
    if loss == "mse":
        return jnp.mean(jnp.square(x_bsd - y_bsd), axis=-1)
    if loss == "cosine":
        dot = jnp.sum(x_bsd * y_bsd, axis=-1)
        # The clamp keeps zero vectors (padding) finite in value and gradient.
        norms = jnp.sqrt(jnp.maximum(jnp.sum(x_bsd * x_bsd, -1) * jnp.sum(y_bsd * y_bsd, -1), 1e-24))
        return 1.0 - dot / norms
    raise ValueError(f"loss={loss!r}: use one of {', '.join(HS_LOSSES)}")


def masked_token_mean(per_token_bs: jax.Array, mask_bs: jax.Array) -> jax.Array:
    m = as_mask(mask_bs)
    return safe_divide(jnp.sum(jnp.where(m > 0, per_token_bs, 0.0)), jnp.sum(m))


def hs_loss(student_states: Sequence[jax.Array], teacher_states: Sequence[jax.Array], pairs: LayerMap,
            mask_bs: jax.Array, *, projections: dict | None = None, loss: str = "mse",
            one_to_many: str = "mean_target") -> jax.Array:
    """Hidden-state loss over a layer map, float32 scalar.

    Args:
      student_states / teacher_states: HF-style hidden_states, L+1 arrays [B, S, D] (index 0 = embeddings).
      pairs: a layer map from ``layer_map`` (student_layer, (teacher_layer, ...)).
      mask_bs: [B, S] attention mask, 1 = real token.
      projections: from ``init_hs_projections`` (None / {} = widths already match).
      loss: "mse" or "cosine".
      one_to_many: "mean_target" (average the teacher layers, then compare) or "mean_loss".
    """
    if one_to_many not in ONE_TO_MANY:
        raise ValueError(f"one_to_many={one_to_many!r}: use one of {', '.join(ONE_TO_MANY)}")
    valid = as_mask(mask_bs)[..., None] > 0
    per_pair = []
    for s, ts in pairs:
        # Zero padded tokens before projecting so their values (even NaN) never enter the math.
        x = _project(projections, s, jnp.where(valid, f32(student_states[s]), 0.0))
        x = jnp.where(valid, x, 0.0)
        targets = [jnp.where(valid, f32(jax.lax.stop_gradient(teacher_states[t])), 0.0) for t in ts]
        if one_to_many == "mean_target":
            target = sum(targets) / len(targets)
            per_pair.append(masked_token_mean(token_distance(x, target, loss), mask_bs))
        else:
            per_pair.append(sum(masked_token_mean(token_distance(x, y, loss), mask_bs) for y in targets)
                            / len(targets))
    return sum(per_pair) / len(per_pair)
