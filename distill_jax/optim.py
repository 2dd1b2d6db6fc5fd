"""Optimizer: AdamW with linear warmup and linear decay, global-norm clipping, and no weight decay
on LayerNorm parameters and biases (the BERT recipe).

Which parameters decay is decided by rank: matrices (kernels, embedding tables, projections) decay;
vectors (biases, LayerNorm scale and bias) do not. That is exactly BERT's "no decay for bias and
LayerNorm" rule for every parameter these encoders have, and it needs no parameter names.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                           end_lr: float = 0.0) -> optax.Schedule:
    """0 -> peak_lr linearly over `warmup_steps`, then peak_lr -> end_lr linearly until `total_steps`.

    Step s is the learning rate used by the update that produces step s+1 (optax counts updates).
    """
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"optim.warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]: set "
                         f"--config.optim.warmup_steps too, or shorten the run through the recipe's steps "
                         f"arg, which scales its warmup (e.g. --config=configs/quickstart.py:steps={total_steps})")
    warmup = optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1))
    decay = optax.linear_schedule(peak_lr, end_lr, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: every array of rank >= 2."""
    return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW from an `optim` config block. Returns (transformation, learning-rate schedule).

    Fields (all required; configs/common.py holds the defaults): learning_rate, warmup_steps,
    end_learning_rate, b1, b2, eps, weight_decay, grad_clip_norm (<= 0 disables clipping).
    """
    for field in ("learning_rate", "b1", "b2", "eps", "weight_decay"):
        value = float(optim_cfg[field])
        if value < 0 or (field in ("b1", "b2") and value >= 1):
            raise ValueError(f"optim.{field}={value} is out of range")
    schedule = learning_rate_schedule(
        float(optim_cfg.learning_rate), int(optim_cfg.warmup_steps), int(total_steps),
        float(optim_cfg["end_learning_rate"]))
    parts = []
    clip = float(optim_cfg["grad_clip_norm"])
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adamw(
        schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay), mask=weight_decay_mask))
    return optax.chain(*parts), schedule
