"""Task metrics: accuracy, plus the task's own headline metric (binary F1 or Matthews correlation)."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import f1_score, matthews_corrcoef


def task_metrics(labels: Sequence[int], preds: Sequence[int], metric: str) -> dict[str, float]:
    """Accuracy, plus F1 (binary, positive class 1) or Matthews correlation when the task asks."""
    labels_t, preds_t = list(labels), list(preds)
    out = {"accuracy": sum(int(a == b) for a, b in zip(labels_t, preds_t)) / max(1, len(labels_t))}
    if metric == "f1":
        out["f1"] = float(f1_score(labels_t, preds_t, zero_division=0))
    elif metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(labels_t, preds_t)) if len(set(labels_t)) > 1 else 0.0
    return out


def headline(metrics: dict[str, float], metric: str) -> float:
    """The task's headline number: its metric (f1 / mcc) when it has one, else accuracy."""
    return float(metrics.get(metric, metrics["accuracy"]))
