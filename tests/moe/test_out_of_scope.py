"""The out-of-scope detector: block normalisation, separation of unseen clusters and junk, the router's doubt per
expert, surprisals, calibration, options."""

from __future__ import annotations

import math

import pytest
import torch

from ttlora_moe.data.surface import SURFACE_COLUMNS
from ttlora_moe.errors import BadInput
from ttlora_moe.moe.detection import auroc
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.out_of_scope import (
    check_options,
    fit_detector,
    fit_surprisal,
    normalise_blocks,
    surprisal,
    surprisals,
    weighted_quantiles,
)

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


@pytest.mark.parametrize("method", ["relative", "fused", "knn"])
def test_unseen_clusters_and_junk_score_above_the_calibrated_threshold(method):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 2 * BLOCK, generator=g)
    train_x, train_y = clusters(200, centres[:3], seed=1)  # three tasks in scope
    val_x, val_y = clusters(100, centres[:3], seed=2)
    test_x, _ = clusters(100, centres[:3], seed=3)
    unseen, _ = clusters(100, centres[3:], seed=4)  # two tasks the bundle does not serve
    junk = torch.cat([torch.randn(50, 2 * BLOCK, generator=g) * 5, torch.zeros(50, 3)], 1)
    ones = torch.ones(len(val_x))
    detector = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK,
                            {"method": method, "components": 8, "bank_per_task": 50}, false_abstain_rate=0.05)
    assert detector.bank.shape == (150, 8) and detector.components.shape == (8, 2 * BLOCK)
    score = lambda x: detector.score(x, torch.ones(len(x)), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    assert float((score(val_x) > detector.threshold).float().mean()) == pytest.approx(0.05, abs=0.01)
    assert auroc(score(unseen), score(test_x)) > 0.95
    assert float((score(junk) > detector.threshold).float().mean()) > 0.95
    assert float((score(test_x) > detector.threshold).float().mean()) < 0.15
    if method == "knn":  # the confidence term moves scores only when weighted
        weighted = fit_detector(train_x, train_y, val_x, ones * 0.9, val_y, ones, 3, BLOCK,
                                {"method": "knn", "components": 8, "bank_per_task": 50, "confidence_weight": 1.0}, 0.05)
        e = torch.zeros(300, dtype=torch.long)
        assert torch.all(weighted.score(test_x, torch.full((300,), 0.1), e) > weighted.score(test_x, torch.full((300,), 0.99), e))


def test_fused_doubt_is_judged_on_the_routed_experts_own_scale():
    """An in-scope-looking input the router is unsure about abstains when its expert's inputs are usually easy
    (an unseen sibling task), not when that expert's inputs are often hard (multiple-choice siblings)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 2 * BLOCK, generator=g)
    train_x, train_y = clusters(200, centres, seed=1)
    val_x, val_y = clusters(200, centres, seed=2)
    easy = 0.97 + 0.02 * torch.rand(len(val_x), generator=g)  # expert 0: always sure
    hard = 0.45 + 0.5 * torch.rand(len(val_x), generator=g)  # expert 1: often unsure
    val_conf = torch.where(val_y == 0, easy, hard)
    detector = fit_detector(train_x, train_y, val_x, val_conf, val_y, torch.ones(len(val_x)), 2, BLOCK,
                            {"method": "fused", "components": 8, "bank_per_task": 100}, false_abstain_rate=0.02)
    x = val_x[:1].repeat(2, 1)  # the same features, routed to either expert with confidence 0.6
    doubtful = detector.score(x, torch.full((2,), 0.6), torch.tensor([0, 1]))
    assert doubtful[0] > detector.threshold > doubtful[1]
    sure = detector.score(x[:1], torch.full((1,), 0.98), torch.tensor([0]))
    assert sure < detector.threshold
    val_scores = detector.score(val_x, val_conf, val_y)
    assert float((val_scores > detector.threshold).float().mean()) == pytest.approx(0.02, abs=0.01)


def test_surprisal_follows_the_validation_tail_and_never_saturates():
    # validation scores from an exponential distribution: P(score >= x) = exp(-x), so the surprisal is x itself
    values = -torch.log1p(-(torch.arange(2000.0) + 0.5) / 2000)
    fitted = fit_surprisal(values, torch.ones(2000))
    x = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0, 5.0, 12.0, 40.0])  # the largest validation score is 8.3
    got = surprisal(x, fitted)
    assert got[0] == 0
    assert torch.allclose(got[1:], x[1:], rtol=0.05, atol=0.05)
    assert torch.all(got[1:] > got[:-1])  # keeps its order far beyond the largest validation score
    # weights count: the heavy half moves the median
    uniform = torch.arange(1000.0)
    weights = torch.where(uniform < 500, 3.0, 1.0)
    assert float(weighted_quantiles(uniform, weights, torch.tensor([0.5]))) == pytest.approx(333, abs=2)


def test_surprisals_of_several_terms_each_follow_their_own_tail():
    # one call for every term of a score: row t of the values is read on row t's summary only
    values = -torch.log1p(-(torch.arange(2000.0) + 0.5) / 2000)  # exponential, scale 1
    fitted = torch.stack([fit_surprisal(values, torch.ones(2000)), fit_surprisal(3 * values, torch.ones(2000)),
                          fit_surprisal(values + 10, torch.ones(2000))])
    x = torch.tensor([0.5, 1.0, 2.0, 5.0, 30.0])
    got = surprisals(torch.stack([x, 3 * x, x + 10]), fitted)
    assert got.shape == (3, 5)
    assert torch.allclose(got[0], x, rtol=0.05, atol=0.05)
    assert torch.equal(got[0], surprisal(x, fitted[0])) and torch.equal(got[2], surprisal(x + 10, fitted[2]))
    assert torch.allclose(got[1], got[0], rtol=0.02, atol=0.02) and torch.allclose(got[2], got[0], rtol=0.02, atol=0.02)


@pytest.mark.parametrize("method", ["relative", "fused"])
def test_fragmented_text_abstains_through_the_lexical_surprisal(method):
    """Inputs whose pooled features look in scope but break into many pieces per word (code, another language)
    abstain once the fragmentation columns are read; without them, they pass."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2 * BLOCK, generator=g)

    def with_fragmentation(x: torch.Tensor, level: float) -> torch.Tensor:
        frag = level + 0.1 * torch.rand(len(x), 2, generator=g)
        return torch.cat([x, frag], 1)

    (train_x, train_y), (val_x, val_y) = clusters(200, centres, seed=1), clusters(100, centres, seed=2)
    test_x, test_y = clusters(100, centres, seed=3)
    ones = torch.ones(len(val_x))
    options = {"method": method, "components": 8, "bank_per_task": 50, "lexical_weight": 1.0}
    fitted = {lexical: fit_detector(with_fragmentation(train_x, 0.2), train_y, with_fragmentation(val_x, 0.2), ones,
                                    val_y, ones, 3, BLOCK, options, 0.02, fragmentation=lexical)
              for lexical in (True, False)}
    assert fitted[True].lexical_weight == 1.0 and fitted[False].lexical_weight == 0.0
    assert len(fitted[True].surprisals) == len(fitted[False].surprisals) + 1
    conf, expert = torch.ones(len(test_x)), test_y
    plain, fragmented = with_fragmentation(test_x, 0.2), with_fragmentation(test_x, 1.5)
    for lexical, detector in fitted.items():
        abstains = lambda x: float((detector.score(x, conf, expert) > detector.threshold).float().mean())  # noqa: E731
        assert abstains(plain) < 0.1
        assert (abstains(fragmented) > 0.95) if lexical else (abstains(fragmented) < 0.1)


def test_confidence_method_and_a_zero_rate():
    x, y = clusters(30, torch.randn(2, 2 * BLOCK), seed=5)
    conf = torch.linspace(0.5, 1.0, len(x))
    detector = fit_detector(x, y, x, conf, y, torch.ones(len(x)), 2, BLOCK, {"method": "confidence"}, 0.1)
    assert torch.allclose(detector.score(x, conf, y), -torch.log(conf)) and detector.bank.numel() == 0
    never = fit_detector(x, y, x, conf, y, torch.ones(len(x)), 2, BLOCK, {}, 0.0)
    assert math.isinf(float(never.threshold))


@pytest.mark.parametrize("options", [{"method": "mahalanobis"}, {"k": 0}, {"components": "many"}, {"shrinkage": 0},
                                     {"shrinkage": "a lot"}, {"whitening": True},
                                     {"confidence_weight": -1}, {"bank_per_task": True},
                                     {"lexical_weight": -0.5}, {"task_covariance": 1.0},
                                     {"task_covariance": -0.1}, {"task_covariance_weight": -1},
                                     {"state_weight": -1}, {"state_weight": "yes"}])
def test_bad_options_are_one_line(options):
    with pytest.raises(BadInput, match="router.out_of_scope is"):
        check_options(options)
    check_options({"method": "knn", "k": 5})
    check_options({"method": "relative", "shrinkage": 0.5})


def test_relative_mahalanobis_is_the_task_distance_minus_the_mix_distance():
    """The whitened computation equals the textbook one: min over tasks of (z - mu_t)' S^-1 (z - mu_t), S the
    task-balanced within-task covariance, minus (z - mu)' S0^-1 (z - mu) for the whole mix, both shrunk."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2 * BLOCK, generator=g)
    train_x, train_y = clusters(120, centres, seed=1)
    train_x, train_y = train_x[40:], train_y[40:]  # task 0 has fewer rows: every task still weighs the same
    ones = torch.ones(60)
    val_x, val_y = clusters(20, centres, seed=2)
    detector = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK,
                            {"method": "relative", "components": 6, "bank_per_task": 50, "shrinkage": 0.2}, 0.05)
    _, z = detector._project(train_x)
    z, y = z.double(), train_y
    means = torch.stack([z[y == t].mean(0) for t in range(3)])
    within = sum(torch.cov((z[y == t] - means[t]).T, correction=0) for t in range(3)) / 3
    mix_mean = means.mean(0)  # task-balanced
    mix = sum(((z[y == t] - mix_mean).T @ (z[y == t] - mix_mean)) / int((y == t).sum()) for t in range(3)) / 3
    shrink = lambda c: c + 0.2 * c.diagonal().mean() * torch.eye(len(c), dtype=c.dtype)  # noqa: E731
    p, p0 = torch.linalg.inv(shrink(within)), torch.linalg.inv(shrink(mix))
    test_x, _ = clusters(10, torch.randn(2, 2 * BLOCK, generator=g), seed=3)
    _, q = detector._project(test_x)
    q = q.double()
    to_tasks = torch.stack([torch.einsum("bi,ij,bj->b", q - m, p, q - m) for m in means], 1).min(1).values
    expected = to_tasks - torch.einsum("bi,ij,bj->b", q - mix_mean, p0, q - mix_mean)
    assert torch.allclose(detector.relative_mahalanobis(test_x).double(), expected, rtol=1e-3, atol=1e-3)


def _shaped(centre: torch.Tensor, long: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` points around ``centre``, spread along the dimensions where ``long`` is true and tight elsewhere,
    plus the trailing counts."""
    scale = torch.where(long, 0.6, 0.03)
    return torch.cat([centre + scale * torch.randn(n, len(centre), generator=g), torch.zeros(n, 3)], 1)


def _shaped_tasks(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tasks with centres of their own, one long in the first half of each block, the other in the second."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([_shaped(c, long, n, g) for c, long in zip(SHAPED_CENTRES, SHAPED_LONG)])
    return x, torch.arange(2).repeat_interleave(n)


SHAPED_CENTRES = 2 * torch.randn(2, 2 * BLOCK, generator=torch.Generator().manual_seed(0))
SHAPED_LONG = [(torch.arange(2 * BLOCK) % BLOCK) < BLOCK // 2, (torch.arange(2 * BLOCK) % BLOCK) >= BLOCK // 2]


def test_task_shaped_term_matches_the_textbook_and_sees_a_task_unlike_each_shape():
    """An unseen task at task 0's centre with task 1's shape sits at a typical distance under the shared
    covariance and far under task 0's own; the term is min over tasks of the Gaussian negative log density
    under the blended covariance, minus the mix's."""
    train_x, train_y = _shaped_tasks(1, 300)
    train_x, train_y = train_x[100:], train_y[100:]  # task 0 has fewer rows: the mix weighs each row alike
    val_x, val_y = _shaped_tasks(2, 150)
    test_x, _ = _shaped_tasks(3, 150)
    unseen = _shaped(SHAPED_CENTRES[0], SHAPED_LONG[1], 300, torch.Generator().manual_seed(4))
    ones = torch.ones(len(val_x))
    options = {"method": "relative", "components": 12, "bank_per_task": 100, "shrinkage": 0.05}
    plain = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 2, BLOCK, options, 0.02)
    shaped = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 2, BLOCK,
                          {**options, "task_covariance": 0.9, "task_covariance_weight": 1.0}, 0.02)
    assert not hasattr(plain, "shaped_whiten") and len(shaped.surprisals) == len(plain.surprisals) + 1
    assert auroc(plain.relative_mahalanobis(unseen), plain.relative_mahalanobis(test_x)) < 0.8
    assert auroc(shaped.task_shaped(unseen), shaped.task_shaped(test_x)) > 0.95
    score = lambda d, x: d.score(x, torch.ones(len(x)), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    assert auroc(score(shaped, unseen), score(shaped, test_x)) > auroc(score(plain, unseen), score(plain, test_x))
    # the textbook form
    _, z = shaped._project(train_x)
    z, y = z.double(), train_y
    means = torch.stack([z[y == t].mean(0) for t in range(2)])
    own = [torch.cov((z[y == t] - means[t]).T, correction=0) for t in range(2)]
    within = sum(own) / 2
    mix_mean = z.mean(0)  # every row alike (here the tasks are the same size)
    mix = torch.cov(z.T, correction=0)
    shrink = lambda c: c + 0.05 * c.diagonal().mean() * torch.eye(len(c), dtype=c.dtype)  # noqa: E731
    _, q = shaped._project(test_x[:20])
    q = q.double()

    def neg_log_density(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        c = shrink(cov)
        return torch.einsum("bi,ij,bj->b", q - mean, torch.linalg.inv(c), q - mean) + torch.logdet(c)

    expected = (torch.stack([neg_log_density(means[t], 0.9 * own[t] + 0.1 * within) for t in range(2)], 1).min(1).values
                - neg_log_density(mix_mean, mix))
    assert torch.allclose(shaped.task_shaped(test_x[:20]).double(), expected, rtol=1e-3, atol=1e-2)
    whole = shaped.task_shaped(test_x)  # 300 inputs: two steps of SHAPED_ROWS
    assert len(test_x) > 256 and torch.allclose(whole[-20:], shaped.task_shaped(test_x[-20:]), atol=1e-3)


@pytest.mark.parametrize("spec,blocks,expected", [
    ({}, 8, 6),  # segments 0..3 (text, pair each): state 3's text
    ({"segment_layers": [0, 3, 1]}, 6, 2),
    ({"layers": [0, -1], "pooling": ["mean", "max"], "segment_layers": []}, 4, 2),  # -1: the last state
    ({"layers": "all", "segment_layers": "all"}, 12, 10),  # 4 states: 4 pooled blocks, then 4 text/pair pairs
    ({"layers": "all", "segment_layers": [1, 2]}, 7, 5),
    ({"layers": [2], "segment_layers": "all"}, 5, 3),
])
def test_latest_text_block_is_the_highest_states_text(spec, blocks, expected):
    assert FeatureSpec.from_dict(spec).latest_text_block(blocks) == expected


def test_latest_state_term_is_the_relative_distance_on_that_block_alone():
    """Task 0's first block with a second block no task has: the principal subspace of both blocks barely sees it,
    the latest block alone does; the term is the textbook relative Mahalanobis distance on that block."""
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(3, BLOCK, generator=g), torch.randn(4, BLOCK, generator=g)
    centres = torch.cat([first, second[:3]], 1)
    train_x, train_y = clusters(150, centres, seed=1)
    val_x, val_y = clusters(60, centres, seed=2)
    test_x, _ = clusters(100, centres, seed=3)
    unseen, _ = clusters(100, torch.cat([first[:1], 0.5 * second[:1] + 0.5 * second[3:]], 1), seed=4)
    ones = torch.ones(len(val_x))
    options = {"method": "relative", "components": 4, "bank_per_task": 100, "shrinkage": 0.1}
    plain = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK, {**options, "state_weight": 0.0}, 0.02,
                         state_block=1)
    state = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK, options, 0.02, state_block=1)
    assert not hasattr(plain, "state_whiten") and len(state.surprisals) == len(plain.surprisals) + 1
    assert state.state_weight == 1.0 and state.state_block == 1
    score = lambda d, x: d.score(x, torch.ones(len(x)), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    assert auroc(score(state, unseen), score(state, test_x)) > auroc(score(plain, unseen), score(plain, test_x))
    z = torch.nn.functional.normalize(train_x[:, BLOCK:2 * BLOCK], dim=1).double()
    means = torch.stack([z[train_y == t].mean(0) for t in range(3)])
    within = sum(torch.cov((z[train_y == t] - means[t]).T, correction=0) for t in range(3)) / 3
    mix_mean = means.mean(0)
    mix = ((z - mix_mean).T @ (z - mix_mean)) / len(z)  # equal task sizes: task-balanced = every row alike
    shrink = lambda c: c + 0.1 * c.diagonal().mean() * torch.eye(len(c), dtype=c.dtype)  # noqa: E731
    p, p0 = torch.linalg.inv(shrink(within)), torch.linalg.inv(shrink(mix))
    q = torch.nn.functional.normalize(unseen[:20, BLOCK:2 * BLOCK], dim=1).double()
    to_tasks = torch.stack([torch.einsum("bi,ij,bj->b", q - m, p, q - m) for m in means], 1).min(1).values
    expected = to_tasks - torch.einsum("bi,ij,bj->b", q - mix_mean, p0, q - mix_mean)
    assert torch.allclose(state.latest_state(unseen[:20]).double(), expected, rtol=1e-3, atol=1e-2)
    whole_row = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, None, options, 0.02, state_block=0)
    assert whole_row.state_weight == 0.0  # one block: nothing to single out


def with_surface(x: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with the surface columns (around each row's centre) and two fragmentation columns appended."""
    g = torch.Generator().manual_seed(seed)
    surface = centres[labels] + 0.3 * torch.randn(len(x), len(SURFACE_COLUMNS), generator=g)
    return torch.cat([x, surface, torch.zeros(len(x), 2)], 1)


def test_surface_term_is_the_relative_distance_on_the_standardised_surface_columns():
    """An unseen task whose pooled states sit on a served task's but whose surface no task has: only the surface
    term finds it; the term reads the surface columns before the fragmentation, standardised on the training mix."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2 * BLOCK, generator=g)
    forms = torch.randn(4, len(SURFACE_COLUMNS), generator=g) * 3
    train_x, train_y = clusters(150, centres, seed=1)
    val_x, val_y = clusters(60, centres, seed=2)
    test_x, test_y = clusters(100, centres, seed=3)
    unseen, _ = clusters(100, centres[:1], seed=4)  # task 0's states, a fourth form
    train_x, val_x = with_surface(train_x, forms, train_y, 5), with_surface(val_x, forms, val_y, 6)
    test_x, unseen = with_surface(test_x, forms, test_y, 7), with_surface(unseen, forms, torch.full((100,), 3), 8)
    ones = torch.ones(len(val_x))
    options = {"method": "relative", "components": 4, "bank_per_task": 100, "shrinkage": 0.1, "lexical_weight": 0.0}
    plain = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK, {**options, "surface_weight": 0.0}, 0.02,
                         fragmentation=True, surface=True)
    shaped = fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK, options, 0.02, fragmentation=True,
                          surface=True)
    assert not hasattr(plain, "surface_whiten") and len(shaped.surprisals) == len(plain.surprisals) + 1
    assert shaped.surface_weight == 1.0 and shaped.surface_offset == 2
    score = lambda d, x: d.score(x, torch.ones(len(x)), torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    assert auroc(score(plain, unseen), score(plain, test_x)) < 0.8
    assert auroc(score(shaped, unseen), score(shaped, test_x)) > 0.99
    raw = train_x[:, -2 - len(SURFACE_COLUMNS):-2].double()
    z = (raw - raw.mean(0)) / raw.std(0)
    means = torch.stack([z[train_y == t].mean(0) for t in range(3)])
    within = sum(torch.cov((z[train_y == t] - means[t]).T, correction=0) for t in range(3)) / 3
    mix_mean = means.mean(0)
    mix = ((z - mix_mean).T @ (z - mix_mean)) / len(z)
    shrink = lambda c: c + 0.1 * c.diagonal().mean() * torch.eye(len(c), dtype=c.dtype)  # noqa: E731
    p, p0 = torch.linalg.inv(shrink(within)), torch.linalg.inv(shrink(mix))
    q = (unseen[:20, -2 - len(SURFACE_COLUMNS):-2].double() - raw.mean(0)) / raw.std(0)
    to_tasks = torch.stack([torch.einsum("bi,ij,bj->b", q - m, p, q - m) for m in means], 1).min(1).values
    expected = to_tasks - torch.einsum("bi,ij,bj->b", q - mix_mean, p0, q - mix_mean)
    assert torch.allclose(shaped.surface(unseen[:20]).double(), expected, rtol=1e-3, atol=1e-2)
    # features that cannot hold the columns the spec says they end in: a clear error, not a shape mismatch
    with pytest.raises(BadInput, match="cannot hold the 14 surface, unknown-word and fragmentation columns"):
        fit_detector(train_x[:, -10:], train_y, val_x[:, -10:], ones, val_y, ones, 3, None, options, 0.02,
                     fragmentation=True, surface=True)
    # the method that reads no Gaussians ignores the option
    assert fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK, {**options, "method": "fused"}, 0.02,
                        fragmentation=True, surface=True).surface_weight == 0.0


@pytest.mark.parametrize("method", ["relative", "fused"])
def test_unknown_words_count_only_beyond_their_in_scope_quantile(method):
    """Rows of words nobody writes abstain through the unknown-word term; in-scope rows below the term's level get
    nothing from it (their scores are those of the detector without it), and it reads the columns between the
    surface and the fragmentation."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2 * BLOCK, generator=g)

    def with_tail(x: torch.Tensor, unknown: float) -> torch.Tensor:  # 12 surface, 2 unknown-word, 2 fragmentation
        shares = unknown + 0.05 * torch.rand(len(x), 2, generator=g)
        return torch.cat([x, torch.rand(len(x), len(SURFACE_COLUMNS), generator=g), shares, torch.zeros(len(x), 2)], 1)

    (train_x, train_y), (val_x, val_y) = clusters(200, centres, seed=1), clusters(100, centres, seed=2)
    test_x, test_y = clusters(100, centres, seed=3)
    train_x, val_x = with_tail(train_x, 0.05), with_tail(val_x, 0.05)
    ones = torch.ones(len(val_x))
    options = {"method": method, "components": 8, "bank_per_task": 50, "lexical_weight": 0.0, "surface_weight": 0.0,
               "unknown_weight": 1.0, "unknown_level": 0.99}
    fit = lambda opts, unknown=True: fit_detector(train_x, train_y, val_x, ones, val_y, ones, 3, BLOCK,  # noqa: E731
                                                  opts, 0.02, fragmentation=True, surface=True, unknown_words=unknown)
    detector, without = fit(options), fit({**options, "unknown_weight": 0.0})
    assert detector.unknown_offset == 2 and detector.surface_offset == 4 and not without.unknown_weight
    assert len(detector.surprisals) == len(without.surprisals) + 1 and not fit(options, False).unknown_weight
    conf, expert = torch.ones(len(test_x)), test_y
    served, strange = with_tail(test_x, 0.05), with_tail(test_x, 0.6)
    assert torch.equal(detector.unknown_words(strange), strange[:, -4:-2].amax(1))
    abstains = lambda d, x: float((d.score(x, conf, expert) > d.threshold).float().mean())  # noqa: E731
    assert abstains(detector, served) < 0.1 and abstains(detector, strange) > 0.95
    assert abstains(without, strange) < 0.1
    below = detector.unknown_words(served) < detector.unknown_words(val_x).quantile(0.9)
    assert below.sum() > 100 and torch.allclose(detector.score(served, conf, expert)[below],
                                                without.score(served, conf, expert)[below])
    with pytest.raises(BadInput, match="unknown_level"):
        check_options({"unknown_level": 1.0})
