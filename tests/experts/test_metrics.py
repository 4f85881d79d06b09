"""Task metrics."""

from __future__ import annotations

import pytest

from ttlora_moe.experts.metrics import task_metrics


def test_task_metrics():
    assert task_metrics([1, 0, 1, 1], [1, 0, 0, 1], "accuracy") == {"accuracy": 0.75}
    assert task_metrics([1, 0, 1, 1], [1, 0, 0, 1], "f1")["f1"] == pytest.approx(0.8)
    assert task_metrics([1, 0, 1, 0], [1, 0, 1, 0], "mcc")["mcc"] == pytest.approx(1.0)
    assert task_metrics([1, 0, 1, 0], [0, 1, 0, 1], "mcc")["mcc"] == pytest.approx(-1.0)
