"""Training curves as PNG (matplotlib's object API: no pyplot global state, safe in worker threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curve(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train/validation loss and accuracy against the training step, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    steps = [r["step"] for r in history]
    for ax, keys, label in ((loss_ax, ("train_loss", "val_loss"), "loss"),
                            (acc_ax, ("train_accuracy", "val_accuracy"), "accuracy")):
        for key in keys:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(steps, values, marker="o", label=key.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
