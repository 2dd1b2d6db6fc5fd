"""Loss-curve PNG written at the end of a run: total loss and every term against the step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
    names = ["loss"] + sorted({k for row in history for k in row if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    all_positive = True
    for name in names:
        points = [(row["step"], row[name]) for row in history if name in row]
        steps, values = zip(*points)
        all_positive &= min(values) > 0
        ax.plot(steps, values, label=name, linewidth=2.2 if name == "loss" else 1.2)
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
