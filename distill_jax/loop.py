"""The loop toolkit the three training loops share: distillation (distill_jax/train.py), GLUE
fine-tuning (distill_jax/evaluate/finetune.py) and the MLM-head fit (distill_jax/mlm_head.py).

  log_due        the logging cadence: every N steps and the last step (train.py also logs the
                 first step of each run, so a start shows at once)
  Progress       the rate and time left of a loop of N steps: steps/s over the interval since the
                 last report (what tokens/s and MFU are computed from) and the ETA at the pace of
                 the whole run so far (evaluations and saves included)
  progress_line  the console line: "step 40/100 (40%) | <the loop's fields> | 1.61 steps/s | ETA 1m05s"
  check_finite   the finite-loss policy: the first non-finite loss (or term, or gradient norm) stops
                 the loop with Diverged (a FloatingPointError: one line, exit 1) naming the value
                 and the step, and what to change. Values are checked as the loop fetches them
                 (each log or save), every step's own, before anything is saved. train.py adds the
                 spike rule and keeps the last good checkpoint out of rotation (divergence.py).
  history_row    the logged curve, one row per logged step: {"step": int, <name>: float, ...}
                 (train.py's checkpoints/history.json and summary.json, the MLM-head fit's
                 record; plots.plot_loss_curves draws either). Rates (perf/*) stay out of it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

# ----------------------------------------------------------------------------------------------
# Cadence, rate and ETA
# ----------------------------------------------------------------------------------------------


def log_due(step: int, every: int, total_steps: int, *, first_step: int | None = None) -> bool:
    """Whether `step` (1-based, after it ran) gets a log line: a multiple of `every` (0 = never),
    the last step of the loop (when `every` logs at all), or `first_step`."""
    if step == first_step:
        return True
    return every > 0 and (step % every == 0 or step == total_steps)


def format_duration(seconds: float) -> str:
    """'1h02m03s', '2m05s' (whole seconds, never negative)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Rate and time left of a loop that runs steps start_step+1 .. total_steps (see the module
    docstring). Times are time.perf_counter() seconds from the moment it is made."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps = int(total_steps)
        self._start_step, self._start_time = int(start_step), time.perf_counter()
        self._last_step, self._last_time = self._start_step, self._start_time

    def reset(self, step: int) -> None:
        """Restarts the rate's interval at `step` (after a save, say) without reporting; the ETA's
        pace still counts that time."""
        self._last_step, self._last_time = int(step), time.perf_counter()

    def eta_s(self, step: int) -> float | None:
        """Seconds left at the pace of the run so far; None before its first step."""
        done = step - self._start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._start_time) / done * (self.total_steps - step)

    def report(self, step: int) -> dict[str, float]:
        """{"steps_per_sec" (over the interval since the last report or reset), "eta_s"}, and the
        interval restarts; {} when no step ran in the interval."""
        now = time.perf_counter()
        steps = step - self._last_step
        elapsed = max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        if steps <= 0:
            return {}
        return {"steps_per_sec": steps / elapsed, "eta_s": self.eta_s(step)}


def progress_line(step: int, total_steps: int, fields: Iterable[str], rates: Mapping[str, float]) -> str:
    """The console line of every distillation-style loop: the step, the loop's own `fields` (loss,
    terms, ...), then the rate and ETA of `rates` (Progress.report) when there are any."""
    parts = [f"step {step}/{total_steps} ({100.0 * step / max(total_steps, 1):.0f}%)", *fields]
    if "steps_per_sec" in rates:
        parts.append(f"{rates['steps_per_sec']:.2f} steps/s")
    if rates.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(rates['eta_s'])}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# The finite-loss policy
# ----------------------------------------------------------------------------------------------

class Diverged(FloatingPointError):
    """The loss blew up (non-finite; in train.py also a spike): one line naming the step."""


def first_non_finite(values: Mapping[str, Any]) -> str | None:
    """The name of the first NaN/Inf among `values` (flat: {"loss", "terms/hs", "grad_norm"}), a
    loss term ("terms/..." or "loss/...") before the total: the term is the cause, the loss only
    inherits it."""
    def order(name: str):
        return (not name.startswith(("terms/", "loss/")), name)

    for name in sorted(values, key=order):
        if not math.isfinite(float(values[name])):
            return name
    return None


def non_finite_reason(name: str, step: int) -> str:
    return f"non-finite {name} at step {step}"


def check_finite(step: int, values: Mapping[str, Any], *, hint: str, run: str = "") -> None:
    """Raises Diverged, 'training diverged: non-finite <name> at step <step>[ of <run>]; <hint>',
    when a value of step `step` is NaN or Inf (first_non_finite)."""
    bad = first_non_finite(values)
    if bad is not None:
        raise Diverged(f"training diverged: {non_finite_reason(bad, step)}{f' of {run}' if run else ''}; {hint}")


# ----------------------------------------------------------------------------------------------
# The logged curve
# ----------------------------------------------------------------------------------------------

def history_row(step: int, scalars: Mapping[str, Any]) -> dict:
    """One row of a loop's logged curve: {"step": step, <name>: float} without the rates (perf/*)."""
    return {"step": int(step), **{k: float(v) for k, v in scalars.items() if not k.startswith("perf/")}}


def write_history(path: str, rows: list[dict]) -> None:
    """The curve as JSON at `path` (local or gs://), whole or absent."""
    from etils import epath

    from distill_jax.atomic import write_atomic

    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), json.dumps(rows))


def read_history(path: str, *, until_step: int | None = None) -> list[dict]:
    """The curve at `path` (an unreadable or missing file: none), rows after `until_step` left out
    (they belong to a checkpoint that a resume does not continue from)."""
    from etils import epath

    try:
        rows = json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
        return []
    return [row for row in rows if until_step is None or row["step"] <= until_step]
