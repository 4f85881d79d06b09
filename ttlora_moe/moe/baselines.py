"""The head-only baseline of a task: a linear head on the frozen base model's pooled final state.

It is what an expert must beat to be worth its adapter, and the per-task floor of a bundle's gates:
a logistic regression (scikit-learn, L-BFGS to convergence) on the same pooled state an expert's head
reads (``mean`` for encoders, ``last`` for decoders), trained on a seeded sample of the task's train
split and scored on exactly the test rows the bundle evaluation scores. The features come through the
router's feature cache (:mod:`ttlora_moe.moe.feature_cache`), so a baseline is computed once per data
version and base model and costs nothing in later evaluations.

A multiple-choice task's experts score each option's state (:mod:`ttlora_moe.experts.classifier`), so
its baseline does too: a shared linear scorer of the frozen base's option states, softmax over the
options (a conditional logit, L-BFGS, the same L2 as scikit-learn's default ``C=1``). Those states are
computed on each evaluation (not cached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ttlora_moe.data.batching import tokenize
from ttlora_moe.data.prepared import num_rows, prepared_md5
from ttlora_moe.experts.base_model import BaseModel, pool
from ttlora_moe.experts.classifier import class_states
from ttlora_moe.experts.metrics import headline, task_metrics
from ttlora_moe.moe.feature_cache import cached_features, sample_indices
from ttlora_moe.moe.features import FeatureSpec


def head_only_spec(pooling: str, max_length: int) -> FeatureSpec:
    """The expert head's input: the final hidden state pooled as the experts pool it, nothing else."""
    return FeatureSpec(layers=(-1,), pooling=(pooling,), segment_layers=(), lengths=False, surface=False,
                       unknown_words=False, fragmentation=False, max_length=max_length)


def head_only_baseline(base: BaseModel, prepared: Path, metric: str, test_indices: Sequence[int],
                       labels: Sequence[int], pooling: str, max_length: int, train_rows: int = 2000,
                       seed: int = 0, options: int = 0) -> dict[str, Any]:
    """The baseline's ``metric`` on the test rows ``test_indices`` (whose labels are ``labels``);
    ``options``: the number of options of a multiple-choice task whose experts score each option."""
    from ttlora_moe.data.prepared import load_split

    train_index = sample_indices(num_rows(prepared, "train"), train_rows, seed)
    train = load_split(prepared, "train")
    if options:
        test = load_split(prepared, "test")
        scorer = fit_option_scorer(option_states(base, [train[i] for i in train_index], max_length, pooling, options),
                                   torch.tensor([int(train[i]["label"]) for i in train_index]))
        states = option_states(base, [test[i] for i in test_indices], max_length, pooling, options)
        predictions = scorer(states).argmax(-1).tolist()
    else:
        predictions = _pooled_predictions(base, prepared, train, train_index, test_indices, pooling, max_length)
    scores = task_metrics(list(labels), predictions, metric)
    return {"metric": headline(scores, metric), "scores": scores, "train_rows": len(train_index)}


def _pooled_predictions(base: BaseModel, prepared: Path, train: Sequence[dict[str, Any]], train_index: list[int],
                        test_indices: Sequence[int], pooling: str, max_length: int) -> list[int]:
    """Logistic regression on the frozen base's cached pooled features: its test predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = head_only_spec(pooling, max_length)
    md5 = prepared_md5(prepared)
    x, _ = cached_features(base, prepared, "train", train_index, spec, md5, rows=train, progress=False)
    y = np.array([train[i]["label"] for i in train_index])
    test_x, _ = cached_features(base, prepared, "test", list(test_indices), spec, md5, progress=False)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x.numpy(), y)
    return model.predict(test_x.numpy()).tolist()


@torch.no_grad()
def option_states(base: BaseModel, rows: Sequence[dict[str, Any]], max_length: int, pooling: str, options: int,
                  batch_size: int = 32) -> torch.Tensor:
    """``[N, options, H]``: each option's state of each row on the frozen base (an options head's input)."""
    device = next(base.model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        batch = tokenize(base.tokenizer, rows[start : start + batch_size], max_length, options=True)
        mask = batch["attention_mask"].to(device)
        hidden = base.model(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
        out.append(class_states(hidden, pool(hidden, mask, pooling), batch["option_mask"].to(device), options).cpu())
    return torch.cat(out) if out else torch.zeros(0, options, base.hidden_size)


def fit_option_scorer(states: torch.Tensor, labels: torch.Tensor,
                      l2: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A shared linear scorer of standardised option states, trained by L-BFGS on the softmax over each
    row's options with penalty ``||w||^2 / (2 * l2 * N)`` (scikit-learn's ``C``); returns ``states -> logits``."""
    flat = states.reshape(-1, states.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    x = (states - mean) / std
    w = torch.zeros(states.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w, labels) + w.square().sum() / (2 * l2 * len(labels))
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    weight = w.detach()
    return lambda new: ((new - mean) / std) @ weight
