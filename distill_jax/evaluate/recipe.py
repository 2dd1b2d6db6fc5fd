"""The fine-tuning recipe: `config.finetune` (configs/glue.py) read once into a typed value.

    recipe = FinetuneRecipe.from_config(config.finetune)    # one-line ValueError naming the field
    recipe.optim                                            # distill_jax.optim.AdamW, as config.optim's

What one fine-tuning run does besides its learning rate and seed (the grid's): the driver
(run.py) parses it once per task and hands it down to finetune.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from distill_jax.optim import AdamW

# config.finetune's AdamW fields before they became config.finetune.optim (old name -> AdamW
# field). configs/glue.py keeps the old names as references to the new fields, so command lines
# that set them still work; run records name the fields so in their fingerprints (identity()).
LEGACY_OPTIM_NAMES = {"adam_b1": "b1", "adam_b2": "b2", "adam_eps": "eps", "weight_decay": "weight_decay",
                      "grad_clip_norm": "grad_clip_norm"}


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """epochs; batch_size / eval_batch_size: global rows per step; max_len: tokens after the pair
    template; pad_multiple: batches padded to a multiple of it (few compiled shapes);
    group_by_length: similar lengths share a training batch; warmup_ratio: fraction of all steps
    warmed up, then linear decay to 0; optim: AdamW; log_every_steps: console line every N steps
    (0 = per epoch only)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    max_len: int
    pad_multiple: int
    group_by_length: bool
    warmup_ratio: float
    optim: AdamW
    log_every_steps: int = 0

    @classmethod
    def from_config(cls, cfg: Any, field: str = "finetune") -> "FinetuneRecipe":
        """From a config.finetune block (a FinetuneRecipe passes through)."""
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping) and not hasattr(cfg, "keys"):
            raise ValueError(f"config.{field} must be a config block, got {type(cfg).__name__}")
        values: dict[str, Any] = {}
        for name in ("epochs", "batch_size", "eval_batch_size", "max_len", "pad_multiple"):
            value = cfg.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{field}.{name}={value!r}: must be a positive integer")
            values[name] = value
        ratio = cfg.get("warmup_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"config.{field}.warmup_ratio={ratio!r}: must be a fraction in [0, 1]")
        if cfg.get("optim") is None:
            raise ValueError(f"config.{field}.optim is missing: the AdamW fields (distill_jax.optim.AdamW)")
        return cls(**values, group_by_length=bool(cfg.get("group_by_length", False)), warmup_ratio=float(ratio),
                   optim=AdamW.from_config(cfg["optim"], f"config.{field}.optim"),
                   log_every_steps=int(cfg.get("log_every_steps", 0) or 0))

    def identity(self) -> dict[str, Any]:
        """The fields that change a run's result, under the names run records carry in their
        fingerprints (the AdamW fields by their LEGACY_OPTIM_NAMES, as records written before the
        shared schema named them): a saved run is reused only when these match."""
        same = ("epochs", "batch_size", "max_len", "pad_multiple", "group_by_length", "warmup_ratio")
        return ({name: getattr(self, name) for name in same}
                | {old: getattr(self.optim, new) for old, new in LEGACY_OPTIM_NAMES.items()})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
