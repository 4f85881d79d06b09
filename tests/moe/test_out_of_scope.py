"""The out-of-scope detector: block normalisation, separation of unseen clusters and junk, calibration, options."""

from __future__ import annotations

import math

import pytest
import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.moe.detection import auroc
from ttlora_moe.moe.out_of_scope import check_options, fit_detector, normalise_blocks

BLOCK = 16


def clusters(n: int, centres: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around each centre (two blocks of BLOCK values plus 3 trailing counts), and their cluster."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([c + 0.3 * torch.randn(n, c.numel(), generator=g) for c in centres])
    counts = torch.rand(len(x), 3, generator=g) * 50  # token counts: not part of the distance
    return torch.cat([x, counts], 1), torch.arange(len(centres)).repeat_interleave(n)


def test_blocks_are_normalised_one_by_one_and_counts_dropped():
    x = torch.randn(4, 2 * BLOCK + 3)
    scaled = x.clone()
    scaled[:, :BLOCK] *= 100  # one layer on another scale
    scaled[:, -3:] += 1000  # the counts
    assert torch.allclose(normalise_blocks(x, BLOCK), normalise_blocks(scaled, BLOCK), atol=1e-6)
    out = normalise_blocks(x, BLOCK)
    assert out.shape == (4, 2 * BLOCK) and torch.allclose(out.norm(dim=1), torch.ones(4))


def test_unseen_clusters_and_junk_score_above_the_calibrated_threshold():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 2 * BLOCK, generator=g)
    train_x, train_y = clusters(200, centres[:3], seed=1)  # three tasks in scope
    val_x, val_y = clusters(100, centres[:3], seed=2)
    test_x, _ = clusters(100, centres[:3], seed=3)
    unseen, _ = clusters(100, centres[3:], seed=4)  # two tasks the bundle does not serve
    junk = torch.cat([torch.randn(50, 2 * BLOCK, generator=g) * 5, torch.zeros(50, 3)], 1)
    ones = torch.ones(len(val_x))
    detector = fit_detector(train_x, train_y, val_x, ones, ones, 3, BLOCK, {"components": 8, "bank_per_task": 50},
                            false_abstain_rate=0.05)
    assert detector.bank.shape == (150, 8) and detector.components.shape == (8, 2 * BLOCK)
    score = lambda x: detector.score(x, torch.ones(len(x)))  # noqa: E731
    assert float((score(val_x) > detector.threshold).float().mean()) == pytest.approx(0.05, abs=0.01)
    assert auroc(score(unseen), score(test_x)) > 0.95
    assert float((score(junk) > detector.threshold).float().mean()) > 0.95
    assert float((score(test_x) > detector.threshold).float().mean()) < 0.15
    # the confidence term moves scores only when weighted
    weighted = fit_detector(train_x, train_y, val_x, ones * 0.9, ones, 3, BLOCK,
                            {"components": 8, "bank_per_task": 50, "confidence_weight": 1.0}, 0.05)
    assert torch.all(weighted.score(test_x, torch.full((300,), 0.1)) > weighted.score(test_x, torch.full((300,), 0.99)))


def test_confidence_method_and_a_zero_rate():
    x, y = clusters(30, torch.randn(2, 2 * BLOCK), seed=5)
    conf = torch.linspace(0.5, 1.0, len(x))
    detector = fit_detector(x, y, x, conf, torch.ones(len(x)), 2, BLOCK, {"method": "confidence"}, 0.1)
    assert torch.allclose(detector.score(x, conf), -torch.log(conf)) and detector.bank.numel() == 0
    never = fit_detector(x, y, x, conf, torch.ones(len(x)), 2, BLOCK, {}, 0.0)
    assert math.isinf(float(never.threshold))


@pytest.mark.parametrize("options", [{"method": "mahalanobis"}, {"k": 0}, {"components": "many"}, {"shrinkage": 0.1},
                                     {"confidence_weight": -1}, {"bank_per_task": True}])
def test_bad_options_are_one_line(options):
    with pytest.raises(BadInput, match="router.out_of_scope is"):
        check_options(options)
    check_options({"method": "knn", "k": 5})
