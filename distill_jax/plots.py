"""Loss-curve PNG written at the end of a run: total loss and every term against the step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def curve_names(history: Sequence[Mapping[str, float]]) -> list[tuple[str, str]]:
    """(key, legend label) of each curve to draw: `loss`, then every `loss/<term>` except a term
    that equals the total at every logged step (a single-term objective at weight 1), which would
    hide under the total; the total's label then names it ('loss (= loss/minilmv2)')."""
    total = [row.get("loss") for row in history]
    curves, same = [], []
    for name in sorted({k for row in history for k in row if k.startswith("loss/")}):
        values = [row.get(name) for row in history]
        if name.count("/") == 1 and all(
                t is not None and v is not None and math.isclose(t, v, rel_tol=1e-6, abs_tol=1e-12)
                for t, v in zip(total, values)):
            same.append(name)
        else:
            curves.append((name, name))
    return [("loss", "loss" + (f" (= {', '.join(same)})" if same else ""))] + curves


def plot_loss_curves(history: Sequence[Mapping[str, float]], path: str, title: str = "") -> str:
    """Plots `loss` and each `loss/<term>` of `history` (dicts with a "step" key) to a PNG.

    The total and the terms share a log-scale y axis when every value is positive (the usual case:
    KL and MSE terms), else a linear one. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on a pod host or in CI
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("plot_loss_curves: empty history, nothing to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    all_positive = True
    for name, label in curve_names(history):
        points = [(row["step"], row[name]) for row in history if name in row]
        steps, values = zip(*points)
        all_positive &= min(values) > 0
        ax.plot(steps, values, label=label, linewidth=2.2 if name == "loss" else 1.2)
    if all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "distillation loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
