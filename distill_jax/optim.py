"""Optimizer: AdamW with linear warmup and linear decay, global-norm clipping, and no weight decay
on LayerNorm parameters and biases (the BERT recipe).

Which parameters decay is decided by rank: matrices (kernels, embedding tables, projections) decay;
vectors (biases, LayerNorm scale and bias) do not. That is exactly BERT's "no decay for bias and
LayerNorm" rule for every parameter these encoders have, and it needs no parameter names.

`AdamW` is the one optimizer schema: distillation's `config.optim` and GLUE fine-tuning's
`config.finetune.optim` both hold its fields (their schedules differ: steps vs a ratio of the run).
optax and JAX load inside the functions, so that configs read the schema without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class AdamW:
    """AdamW's settings: one schema for distillation (`config.optim`, with the schedule's fields
    beside) and GLUE fine-tuning (`config.finetune.optim`). Defaults: BERT's."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6             # BERT's AdamW epsilon
    weight_decay: float = 0.01    # decoupled; not on biases and LayerNorm (weight_decay_mask)
    grad_clip_norm: float = 1.0   # global-norm clipping before the update; <= 0 disables

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], field: str = "optim") -> "AdamW":
        """From a config block holding (at least) these fields; a value out of range is a one-line
        ValueError naming `<field>.<name>`."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in cfg:
                raise ValueError(f"{field}.{f.name} is missing (default {f.default}): the AdamW fields are "
                                 f"{', '.join(x.name for x in dataclasses.fields(cls))}")
            value = values[f.name] = float(cfg[f.name])
            if (value < 0 and f.name != "grad_clip_norm") or (f.name in ("b1", "b2") and value >= 1):
                raise ValueError(f"{field}.{f.name}={value} is out of range"
                                 + (" (use 0 <= b < 1)" if f.name in ("b1", "b2") else " (use >= 0)"))
        return cls(**values)


def adamw_config() -> ml_collections.ConfigDict:
    """The AdamW fields with their defaults, as a config block (configs add the schedule's)."""
    return ml_collections.ConfigDict(dataclasses.asdict(AdamW()))


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                           end_lr: float = 0.0):
    """0 -> peak_lr linearly over `warmup_steps`, then peak_lr -> end_lr linearly until `total_steps`
    (an optax.Schedule).

    Step s is the learning rate used by the update that produces step s+1 (optax counts updates).
    """
    import optax

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
    import jax

    return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def adamw(settings: AdamW, learning_rate):
    """The AdamW transformation (an optax.GradientTransformation): global-norm clipping, then
    AdamW at `learning_rate` (a float or a schedule) with decay masked by weight_decay_mask."""
    import optax

    parts = [optax.clip_by_global_norm(settings.grad_clip_norm)] if settings.grad_clip_norm > 0 else []
    parts.append(optax.adamw(learning_rate, b1=settings.b1, b2=settings.b2, eps=settings.eps,
                             weight_decay=settings.weight_decay, mask=weight_decay_mask))
    return optax.chain(*parts)


def make_optimizer(optim_cfg, total_steps: int):
    """AdamW from an `optim` config block. Returns (optax transformation, learning-rate schedule).

    Fields (all required; configs/common.py holds the defaults): the schedule's learning_rate,
    warmup_steps, end_learning_rate, and AdamW's (AdamW: b1, b2, eps, weight_decay, grad_clip_norm).
    """
    settings = AdamW.from_config(optim_cfg, "optim")
    if float(optim_cfg.learning_rate) < 0:
        raise ValueError(f"optim.learning_rate={float(optim_cfg.learning_rate)} is out of range (use >= 0)")
    schedule = learning_rate_schedule(
        float(optim_cfg.learning_rate), int(optim_cfg.warmup_steps), int(total_steps),
        float(optim_cfg["end_learning_rate"]))
    return adamw(settings, schedule), schedule
