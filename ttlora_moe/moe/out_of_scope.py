"""Out-of-scope detection on the router's features: is this input far from every task the bundle knows?

A router's softmax is confident far from its training data (it only learned which of *its* tasks an
input is most like), so confidence alone lets code, URLs or an unseen task through. The ``knn``
detector (the default) measures distance instead, on the router's raw features:

- every pooled block (one layer's mean state of ``text``, of ``text_pair``, ...; ``block`` values
  each) is L2-normalised, so no layer dominates by its scale, and the whole vector is normalised;
- that vector is projected onto the top ``components`` principal directions of the training mix;
  the score adds the mean cosine distance to the ``k`` nearest training inputs in that subspace (a
  bank of at most ``bank_per_task`` inputs per task) and the norm of what the projection leaves
  out (text unlike anything in training, such as code, URLs or another language, lives there);
- each part is put on the scale of in-scope validation inputs (median and interquartile range), and
  with ``confidence_weight`` > 0 so is ``-log(router confidence)``, added with that weight.

``method: confidence`` scores by the confidence alone (what routers before the detector did). The
threshold is the score above which ``false_abstain_rate`` of the (task-weighted) in-scope validation
inputs lie. benchmarks/out_of_scope.py measures it leave-one-task-out; the README has its table.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ttlora_moe.errors import BadInput

METHODS = ("knn", "confidence")
OPTIONS = ("method", "components", "k", "bank_per_task", "confidence_weight")
DEFAULTS: dict[str, Any] = {"method": "knn", "components": 256, "k": 10, "bank_per_task": 1000, "confidence_weight": 0.0}


def check_options(options: dict[str, Any]) -> None:
    """BadInput unless ``options`` (params.yaml ``router.out_of_scope``) names known keys with sane values."""
    unknown = sorted(set(options) - set(OPTIONS))
    merged = {**DEFAULTS, **options}
    ints_ok = all(isinstance(merged[k], int) and not isinstance(merged[k], bool) and merged[k] >= 1
                  for k in ("components", "k", "bank_per_task"))
    weight = merged["confidence_weight"]
    if unknown or merged["method"] not in METHODS or not ints_ok or not isinstance(weight, (int, float)) or weight < 0:
        raise BadInput(f"router.out_of_scope is {options}",
                       f"use method ({', '.join(METHODS)}), components, k and bank_per_task (integers >= 1) "
                       "and confidence_weight (>= 0) only")


def normalise_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each ``block``-wide slice of ``x`` L2-normalised (values past the last whole block, e.g. token
    counts, dropped), then the whole row."""
    whole = (x.shape[1] // block) * block
    blocks = x[:, :whole].float().reshape(len(x), -1, block)
    return nn.functional.normalize(nn.functional.normalize(blocks, dim=-1).reshape(len(x), -1), dim=1)


class OutOfScopeDetector(nn.Module):
    """``score(features, confidence)``: higher is further out of scope; ``score > threshold`` abstains."""

    def __init__(self, dim: int, block: int, components: int, bank_rows: int, k: int = 10,
                 method: str = "knn", confidence_weight: float = 0.0) -> None:
        super().__init__()
        if method not in METHODS:
            raise BadInput(f"unknown out-of-scope method {method!r}", f"use one of {', '.join(METHODS)}")
        self.method, self.block, self.k, self.confidence_weight = method, int(block), int(k), float(confidence_weight)
        width = 0 if method == "confidence" else (dim // block) * block
        q = 0 if method == "confidence" else components
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("components", torch.zeros(q, width))
        self.register_buffer("bank", torch.zeros(0 if method == "confidence" else bank_rows, q))
        self.register_buffer("scales", torch.tensor([[0.0, 1.0]] * 3))  # (median, spread) of distance, residual, surprise
        self.register_buffer("threshold", torch.tensor(math.inf))

    def parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (kNN cosine distance, residual norm), ``[B]`` each."""
        centered = normalise_blocks(features, self.block) - self.center
        projected = centered @ self.components.T
        residual = (centered - projected @ self.components).norm(dim=1)
        similarity = nn.functional.normalize(projected, dim=1) @ self.bank.T
        distance = 1 - similarity.topk(min(self.k, len(self.bank)), dim=1).values.mean(1)
        return distance, residual

    def score(self, features: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """``[B]`` out-of-scope scores of raw router ``features`` with router confidences ``confidence``."""
        surprise = -torch.log(confidence.float().clamp_min(1e-12))
        if self.method == "confidence":
            return surprise
        distance, residual = self.parts(features)
        (dc, ds), (rc, rs), (sc, ss) = self.scales.tolist()
        score = (distance - dc) / ds + (residual - rc) / rs
        return score + self.confidence_weight * (surprise - sc) / ss if self.confidence_weight else score


def _robust_scale(values: torch.Tensor, floor: float) -> list[float]:
    """Median and interquartile range, the range at least ``floor`` (validation inputs that all score alike
    must not turn a tiny difference into a huge one)."""
    q1, median, q3 = torch.quantile(values.float(), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return [median, max(q3 - q1, floor)]


def weighted_quantile_threshold(scores: torch.Tensor, rate: float, weights: torch.Tensor) -> float:
    """The score above which a (weighted) share ``rate`` of ``scores`` lies; ``rate = 0`` never abstains."""
    if rate <= 0 or not len(scores):
        return math.inf
    order = torch.argsort(scores, descending=True)
    cum = torch.cumsum(weights[order], 0) / weights.sum()
    k = int(torch.searchsorted(cum, torch.tensor(rate), right=False))
    return float(scores[order[min(k, len(order) - 1)]])


@torch.no_grad()
def fit_detector(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_confidence: torch.Tensor,
                 val_weights: torch.Tensor, num_tasks: int, block: int | None, options: dict[str, Any],
                 false_abstain_rate: float, seed: int = 0) -> OutOfScopeDetector:
    """Fit the detector on raw training features and calibrate its scales and threshold on validation.

    ``block`` is the width of one pooled vector (the base model's hidden size; None: the whole row).
    """
    opts = {**DEFAULTS, **options}
    block = int(block or train_x.shape[1])
    generator = torch.Generator().manual_seed(seed)
    keep = torch.cat([idx[torch.randperm(len(idx), generator=generator)[: int(opts["bank_per_task"])]]
                      for idx in (torch.nonzero(train_y == e).flatten() for e in range(num_tasks))])
    bank_x = normalise_blocks(train_x[keep], block) if opts["method"] != "confidence" else train_x[:0]
    # at most one principal direction per bank input (and per dimension)
    components = max(1, min(int(opts["components"]), len(bank_x) - 1, bank_x.shape[1]))
    detector = OutOfScopeDetector(train_x.shape[1], block, components, len(bank_x), int(opts["k"]),
                                  str(opts["method"]), float(opts["confidence_weight"]))
    surprise = _robust_scale(-torch.log(val_confidence.float().clamp_min(1e-12)), 0.05)
    scales = [[0.0, 1.0], [0.0, 1.0], surprise]
    if opts["method"] != "confidence":
        center = bank_x.mean(0)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # pca_lowrank is randomised
        _, _, v = torch.pca_lowrank(bank_x - center, q=components, center=False, niter=4)
        torch.random.set_rng_state(state)
        detector.center.copy_(center)
        detector.components.copy_(v[:, :components].T)
        detector.bank.copy_(nn.functional.normalize((bank_x - center) @ detector.components.T, dim=1))
        distance, residual = detector.parts(val_x)
        scales[0], scales[1] = _robust_scale(distance, 1e-4), _robust_scale(residual, 1e-4)
    detector.scales.copy_(torch.tensor(scales))
    scores = detector.score(val_x, val_confidence)
    detector.threshold.fill_(weighted_quantile_threshold(scores, false_abstain_rate, val_weights))
    return detector
