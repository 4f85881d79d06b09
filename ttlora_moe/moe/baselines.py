"""The head-only baseline of a task: a linear head on the frozen base model's pooled final state.

It is what an expert must beat to be worth its adapter, and the per-task floor of a bundle's gates:
a logistic regression (scikit-learn, L-BFGS to convergence) on the same pooled state an expert's head
reads (``mean`` for encoders, ``last`` for decoders), trained on a seeded sample of the task's train
split and scored on exactly the test rows the bundle evaluation scores. The features come through the
router's feature cache (:mod:`ttlora_moe.moe.feature_cache`), so a baseline is computed once per data
version and base model and costs nothing in later evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttlora_moe.data.prepared import num_rows, prepared_md5
from ttlora_moe.experts.base_model import BaseModel
from ttlora_moe.experts.metrics import headline, task_metrics
from ttlora_moe.moe.feature_cache import cached_features, sample_indices
from ttlora_moe.moe.features import FeatureSpec


def head_only_spec(pooling: str, max_length: int) -> FeatureSpec:
    """The expert head's input: the final hidden state pooled as the experts pool it, nothing else."""
    return FeatureSpec(layers=(-1,), pooling=(pooling,), segment_layers=(), lengths=False, max_length=max_length)


def head_only_baseline(base: BaseModel, prepared: Path, metric: str, test_indices: Sequence[int],
                       labels: Sequence[int], pooling: str, max_length: int, train_rows: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """The baseline's ``metric`` on the test rows ``test_indices`` (whose labels are ``labels``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ttlora_moe.data.prepared import load_split

    spec = head_only_spec(pooling, max_length)
    md5 = prepared_md5(prepared)
    train_index = sample_indices(num_rows(prepared, "train"), train_rows, seed)
    train = load_split(prepared, "train")
    x, _ = cached_features(base, prepared, "train", train_index, spec, md5, rows=train, progress=False)
    y = np.array([train[i]["label"] for i in train_index])
    test_x, _ = cached_features(base, prepared, "test", list(test_indices), spec, md5, progress=False)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x.numpy(), y)
    predictions = model.predict(test_x.numpy()).tolist()
    scores = task_metrics(list(labels), predictions, metric)
    return {"metric": headline(scores, metric), "scores": scores, "train_rows": len(train_index)}
