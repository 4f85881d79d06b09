"""PNG plots of a bundle evaluation (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def confusion_png(confusion: list[list[int]], tasks: list[str], path: Path, title: str = "Routing confusion (test)") -> Path:
    """Row-normalised routing confusion matrix: true task (rows) -> chosen expert or abstain (columns)."""
    columns = tasks + ["abstain"]
    totals = [max(1, sum(row)) for row in confusion]
    share = [[v / t for v in row] for row, t in zip(confusion, totals)]
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2, 0.9 * len(tasks) + 1.8))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("routed to")
    ax.set_ylabel("true task")
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, f"{share[i][j]:.2f}\n({count})", ha="center", va="center", fontsize=7,
                        color="white" if share[i][j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def per_task_png(per_task: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per task: router accuracy, the task metric inside the bundle, the same expert alone and the head-only
    baseline (the bars an evaluation measured)."""
    tasks = list(per_task)
    series = [(label, key) for label, key in (("router accuracy", "router_accuracy"), ("bundle metric", "bundle_metric"),
                                              ("expert alone", "expert_metric"), ("head-only baseline", "baseline_metric"))
              if any(per_task[t].get(key) is not None for t in tasks)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2, 4.2))
    lowest = 0.0
    for k, (label, key) in enumerate(series):
        values = [float(per_task[t].get(key) or 0.0) for t in tasks]
        lowest = min(lowest, *values)
        bars = ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))], values, width, label=label)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, max(v, 0) + 0.01, f"{v:.2f}", ha="center", va="bottom",
                    fontsize=6)
    names = [f"{t}\n({per_task[t].get('metric', 'accuracy')})" for t in tasks]
    ax.set_xticks(range(len(tasks)), names)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylim(min(0.0, lowest - 0.05), 1.12)
    ax.set_ylabel("score on the test split")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), fontsize=8, frameon=False)
    ax.set_title("Bundle vs expert alone", pad=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
