"""Divergence: a run whose loss blows up stops before that state is saved, and its last good
checkpoint is never rotated out.

The rule (checked on every step's metrics, which the trainer fetches at each log, save and stop
step, always before a save):
  * a non-finite loss, loss term or grad norm, or
  * a loss above SPIKE_FACTOR x the median of the previous WINDOW steps' losses (once at least
    MIN_HISTORY are known; a resumed run seeds the window from the logged curve, history.json).
The median of 20 steps follows the slow decline of a healthy run and ignores single noisy steps;
a factor of 10 is far above the step-to-step noise of a distillation loss (< 2x in every run
measured here) and far below what a learning rate that is too high produces (1e15x within steps).

On a detection the trainer raises Diverged (a FloatingPointError: one line, exit 1) naming the
newest checkpoint, which necessarily predates the spike (every save follows a check), and records
that step in `<checkpoints>/divergence.json`; the Checkpointer keeps every step listed there out
of rotation (orbax preservation policy), so a resume with a lower learning rate cannot rotate out
the only checkpoint from before the blow-up.
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np
from etils import epath

from distill_jax.atomic import write_atomic
# The loops' one exception for a loss that blew up (distill_jax/loop.py: their finite-loss policy).
from distill_jax.loop import Diverged, non_finite_reason  # noqa: F401 (Diverged: train.py raises it from here)

WINDOW = 20          # previous per-step losses the median is taken over
MIN_HISTORY = 3      # no spike verdict before this many losses are known
SPIKE_FACTOR = 10.0  # loss > SPIKE_FACTOR x median(window) is a spike
RECORD_NAME = "divergence.json"


def record_path(checkpoint_dir: str) -> str:
    return f"{checkpoint_dir.rstrip('/')}/{RECORD_NAME}"


def protected_steps(checkpoint_dir: str) -> list[int]:
    """Checkpoint steps recorded as the last good ones before a detected divergence."""
    try:
        records = json.loads(epath.Path(record_path(checkpoint_dir)).read_text())
    except (OSError, ValueError):
        return []
    return sorted({int(r["good_step"]) for r in records if r.get("good_step") is not None})


def record(checkpoint_dir: str, *, spike_step: int, good_step: int | None, reason: str) -> None:
    """Appends a detection to divergence.json (whole-or-absent write)."""
    path = record_path(checkpoint_dir)
    try:
        records = json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
        records = []
    records.append({"spike_step": int(spike_step), "good_step": good_step, "reason": reason})
    epath.Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(records, indent=1))


class DivergenceGuard:
    """Feeds on each step's flat metrics (loss, loss/<term>, grad_norm, ...) in step order."""

    def __init__(self, history: list[dict] = (), *, window: int = WINDOW, factor: float = SPIKE_FACTOR,
                 min_history: int = MIN_HISTORY):
        self.factor, self.min_history = factor, min_history
        self.losses: deque[float] = deque((float(r["loss"]) for r in history if "loss" in r),
                                          maxlen=window)

    def check(self, step: int, metrics: dict) -> str | None:
        """Why `step` diverged, or None (then its loss joins the window). `metrics`: one step's
        host-side metrics as the step returns them ({"loss", "grad_norm", "terms": {...}, ...})."""
        from distill_jax.step import first_non_finite

        bad = first_non_finite(metrics)
        if bad is not None:
            return non_finite_reason(bad, step)
        loss = float(metrics["loss"])
        if len(self.losses) >= self.min_history:
            median = float(np.median(self.losses))
            if median > 0 and loss > self.factor * median:
                return (f"loss {loss:.4g} at step {step} is over {self.factor:g}x the median "
                        f"{median:.4g} of the previous {len(self.losses)} steps")
        self.losses.append(loss)
        return None


def diverged_message(reason: str, good_step: int | None, checkpoint_dir: str) -> str:
    where = (f"the newest checkpoint before it is step {good_step} in {checkpoint_dir} (kept out of "
             f"rotation); rerun with a lower --config.optim.learning_rate and "
             f"--config.allow_config_change=True to resume from it" if good_step is not None else
             "no checkpoint was saved before it; rerun with a lower --config.optim.learning_rate "
             "in a fresh --workdir")
    return f"training diverged: {reason}; stopped before saving that state; {where} (or check the data)"
