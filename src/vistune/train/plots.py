"""The run's loss and learning-rate curves as a PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from vistune.utils.io import atomic_path


def plot_metrics(records: list[dict], path: Path, title: str = "") -> Path | None:
    """Loss (left) and learning rate (right) against the step; None when there is nothing to plot."""
    points = [r for r in records if "loss" in r and "lr" in r]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in points]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, [r["loss"] for r in points], lw=1.2)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (per supervised token)")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in points], lw=1.2, color="tab:orange")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax_lr.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
