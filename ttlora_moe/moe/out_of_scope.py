"""Out-of-scope detection on the router's features: is this input far from every task the bundle knows?

A router's softmax is confident far from its training data (it only learned which of *its* tasks an
input is most like), so confidence alone lets code, URLs or an unseen task through. The detector adds
a distance on the same standardised features the router reads:

- project onto the top ``components`` principal directions of the training mix (randomised PCA);
- class-conditional Mahalanobis distance with one shared, shrunk covariance: the distance to the
  nearest task's mean, divided by the number of components;
- plus the norm of what the projection leaves out (the part of the input no training direction
  explains), relative to its median on the training mix.

With ``method: combined`` (the default) the score adds the distance and ``-log(confidence)``, each
put on the scale of in-scope validation inputs (median and interquartile range), so neither term
dominates by units. ``mahalanobis`` uses the distance alone, ``confidence`` the router's confidence
alone (what bundles before 0.2 did). The threshold is the score below which all but
``false_abstain_rate`` of the (task-weighted) in-scope validation inputs fall. What it separates
and what it does not is in the README ("Abstention").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ttlora_moe.errors import BadInput

METHODS = ("combined", "mahalanobis", "confidence")


class OutOfScopeDetector(nn.Module):
    """``score(z, confidence)``: higher is further out of scope; ``score > threshold`` abstains."""

    def __init__(self, dim: int, num_tasks: int, components: int, method: str = "combined") -> None:
        super().__init__()
        if method not in METHODS:
            raise BadInput(f"unknown out-of-scope method {method!r}", f"use one of {', '.join(METHODS)}")
        self.method = method
        k = 0 if method == "confidence" else components
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(k, dim))
        self.register_buffer("means", torch.zeros(num_tasks, k))
        self.register_buffer("precision", torch.zeros(k, k))
        self.register_buffer("residual_scale", torch.ones(()))
        self.register_buffer("distance_center", torch.zeros(()))
        self.register_buffer("distance_scale", torch.ones(()))
        self.register_buffer("confidence_center", torch.zeros(()))
        self.register_buffer("confidence_scale", torch.ones(()))
        self.register_buffer("threshold", torch.tensor(math.inf))

    def distance(self, z: torch.Tensor) -> torch.Tensor:
        """Distance to the nearest task in the principal subspace plus the unexplained residual, ``[B]``."""
        centered = z - self.center
        projected = centered @ self.components.T
        diff = projected[:, None, :] - self.means[None]
        mahalanobis = torch.einsum("bek,kl,bel->be", diff, self.precision, diff).min(1).values
        residual = (centered - projected @ self.components).norm(dim=1) / self.residual_scale
        return mahalanobis / max(1, self.components.shape[0]) + residual

    def score(self, z: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """``[B]`` out-of-scope scores of standardised features ``z`` with router confidences ``confidence``."""
        surprise = -torch.log(confidence.clamp_min(1e-12))
        if self.method == "confidence":
            return surprise
        distance = (self.distance(z) - self.distance_center) / self.distance_scale
        if self.method == "mahalanobis":
            return distance
        return distance + (surprise - self.confidence_center) / self.confidence_scale


def _robust_scale(values: torch.Tensor, floor: float) -> tuple[float, float]:
    """Median and interquartile range, the range at least ``floor`` (validation inputs that all score alike
    must not turn a tiny difference into a huge one)."""
    q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return median, max(q3 - q1, floor)


def weighted_quantile_threshold(scores: torch.Tensor, rate: float, weights: torch.Tensor) -> float:
    """The score above which a (weighted) share ``rate`` of ``scores`` lies; ``rate = 0`` never abstains."""
    if rate <= 0 or not len(scores):
        return math.inf
    order = torch.argsort(scores, descending=True)
    cum = torch.cumsum(weights[order], 0) / weights.sum()
    k = int(torch.searchsorted(cum, torch.tensor(rate), right=False))
    return float(scores[order[min(k, len(order) - 1)]])


@torch.no_grad()
def fit_detector(train_z: torch.Tensor, train_y: torch.Tensor, val_z: torch.Tensor, val_confidence: torch.Tensor,
                 val_weights: torch.Tensor, num_tasks: int, config: dict[str, Any]) -> OutOfScopeDetector:
    """Fit the detector on standardised training features and calibrate its scale and threshold on validation."""
    method = str(config.get("method", "combined"))
    # At least ~20 training inputs per component, or the subspace fits the training mix itself.
    components = max(1, min(int(config.get("components", 128)), train_z.shape[1], len(train_z) // 20))
    detector = OutOfScopeDetector(train_z.shape[1], num_tasks, components, method)
    if method != "confidence":
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(int(config.get("seed", 0)))  # pca_lowrank is randomised
        center = train_z.mean(0)
        _, _, v = torch.pca_lowrank(train_z - center, q=components, center=False, niter=4)
        torch.random.set_rng_state(generator_state)
        basis = v[:, :components].T.contiguous()
        projected = (train_z - center) @ basis.T
        means = torch.stack([projected[train_y == e].mean(0) if (train_y == e).any() else projected.mean(0)
                             for e in range(num_tasks)])
        within = projected - means[train_y]
        covariance = within.T @ within / len(within)
        shrink = float(config.get("shrinkage", 0.1))
        covariance = (1 - shrink) * covariance + shrink * covariance.diagonal().mean() * torch.eye(components)
        detector.center.copy_(center)
        detector.components.copy_(basis)
        detector.means.copy_(means)
        detector.precision.copy_(torch.linalg.inv(covariance))
        # The residual is scaled on held-out inputs: on the training mix the subspace explains more than it will.
        val_centered = val_z - center
        residual = (val_centered - (val_centered @ basis.T) @ basis).norm(dim=1).median()
        # floored at 5% of a typical input's norm: data the subspace explains almost exactly (templated,
        # low-rank text) must not turn a small departure into an enormous score
        residual = max(float(residual), 0.05 * float(val_centered.norm(dim=1).median()), 1e-6)
        detector.residual_scale.fill_(residual)
        center_d, scale_d = _robust_scale(detector.distance(val_z), 1e-3)
        detector.distance_center.fill_(center_d)
        detector.distance_scale.fill_(scale_d)
    center_c, scale_c = _robust_scale(-torch.log(val_confidence.clamp_min(1e-12)), 0.05)
    detector.confidence_center.fill_(center_c)
    detector.confidence_scale.fill_(scale_c)
    scores = detector.score(val_z, val_confidence)
    detector.threshold.fill_(weighted_quantile_threshold(scores, float(config.get("false_abstain_rate", 0.01)),
                                                         val_weights))
    return detector
