"""The router: training, calibration, abstain threshold, files."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.moe.router import (
    RouterConfig,
    abstain_threshold,
    fit_temperature,
    load_router,
    save_router,
    task_weights,
    train_router,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_config(**options) -> RouterConfig:
    """A RouterConfig for synthetic features: no raw-text statistics unless ``features`` asks for them."""
    features = {"surface": False, "unknown_words": False, **options.pop("features", {})}
    return RouterConfig(**options, features=features)


def _blobs(n_per: int, dim: int = 8, seed: int = 0, sizes=(1.0, 1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, dim) * 4
    xs, ys = [], []
    for e, size in enumerate(sizes):
        n = int(n_per * size)
        xs.append(centres[e] + torch.randn(n, dim, generator=g))
        ys.append(torch.full((n,), e))
    return torch.cat(xs) * 10 + 5, torch.cat(ys)  # unscaled: standardisation must cope


@pytest.mark.parametrize("kind,solver", [("linear", "lbfgs"), ("linear", "adamw"), ("mlp", "adamw")])
def test_router_learns_calibrates_and_abstains(kind, solver):
    tx, ty = _blobs(200, sizes=(1.0, 1.0, 0.2))  # task 2 has 5x fewer rows: balanced by weights
    vx, vy = _blobs(100, seed=1)
    config = synthetic_config(kind=kind, solver=solver, hidden=16, lr=1e-2, batch_size=64, max_epochs=25, patience=5,
                              false_abstain_rate=0.05)
    router, report = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    assert report.validation_balanced_accuracy > 0.9 and min(report.validation_per_task.values()) > 0.85
    assert 0.03 <= report.validation_abstain_rate <= 0.07
    assert report.threshold == float(router.detector.threshold) and report.temperature > 0
    index, confidence, probs, score = router.route(vx)
    assert torch.allclose(probs.sum(-1), torch.ones(len(vx)))
    assert ((index == -1) == (score > report.threshold)).all()
    # points unlike every blob (here: pointing the other way; the detector compares directions) are out of
    # scope, however confident the router is about them
    far, _ = _blobs(30, seed=3)
    far_index, far_confidence, _, far_score = router.route(-far)
    assert (far_index == -1).float().mean() > 0.9 and far_score.median() > score.quantile(0.95)
    # a router left in training mode (dropout on) never routes with dropout: it answers as in eval mode, or refuses
    router.train()
    with contextlib.suppress(RuntimeError):
        again, again_confidence, _, _ = router.route(vx)
        assert torch.equal(index, again) and torch.equal(confidence, again_confidence)


def test_router_is_reproducible_with_its_seed():
    tx, ty = _blobs(60)
    vx, vy = _blobs(30, seed=1)
    config = synthetic_config(kind="mlp", hidden=8, max_epochs=5)
    r1, _ = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    r2, _ = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(r1.state_dict().values(), r2.state_dict().values()))


def test_the_lbfgs_router_is_one_convex_fit_along_an_l2_path():
    """Solver lbfgs: the same weights whatever the seed (zero start, full batch); penalties tried from the largest,
    the kept one has the lowest validation loss of those tried, and the path stops at the first that does worse.
    Overlapping blobs with few rows: a weak penalty overfits, so the path must stop before the end."""
    tx, ty = _blobs(20, dim=40, seed=4)
    tx = tx + 12 * torch.randn(tx.shape, generator=torch.Generator().manual_seed(5))
    vx, vy = _blobs(60, dim=40, seed=6)
    vx = vx + 12 * torch.randn(vx.shape, generator=torch.Generator().manual_seed(7))
    penalties = [1e-5, 1.0, 1e-3, 0.1, 1e-2]  # any order: sorted largest first
    routers = [train_router(tx, ty, vx, vy, ["a", "b", "c"], synthetic_config(seed=seed, l2=penalties), progress=False)
               for seed in (0, 1)]
    (r0, report), (r1, _) = routers
    assert torch.equal(r0.net[0].weight, r1.net[0].weight) and report.solver == "lbfgs"
    tried = [h["l2"] for h in report.history]
    assert tried == sorted(penalties, reverse=True)[: len(tried)] and 3 <= len(tried) < len(penalties)
    losses = [h["val_loss"] for h in report.history]
    assert losses[-1] >= min(losses[:-1]) and all(a > b for a, b in zip(losses[:-2], losses[1:-1]))
    assert report.l2 == tried[losses.index(min(losses))] and report.epochs == report.history[-1]["passes"]
    assert report.best_epoch == report.history[losses.index(min(losses))]["passes"]
    for bad in ([], [0.0], [-1e-3], ["big"], [True]):
        with pytest.raises(BadInput, match="router.l2"):
            RouterConfig(l2=bad)
    with pytest.raises(BadInput, match="unknown router solver 'sgd'"):
        RouterConfig(solver="sgd")


def test_temperature_threshold_and_weights():
    labels = torch.tensor([0, 0, 0, 1])
    assert torch.allclose(task_weights(labels, 2), torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    logits = torch.tensor([[8.0, 0.0], [0.0, 8.0], [8.0, 0.0], [0.0, 8.0]])  # half right, overconfident
    assert fit_temperature(logits, torch.tensor([0, 0, 1, 1])) > 5
    conf = torch.linspace(0.5, 1.0, 101)
    assert abstain_threshold(conf, 0.0) == 0.0
    t = abstain_threshold(conf, 0.1)
    assert 0.09 <= float((conf < t).float().mean()) <= 0.11


# knn: what routers saved before the fused detector hold; fragmentation: the features end in its columns
# shaped: the relative detector with the task-shaped term
@pytest.mark.parametrize("method,fragmentation", [("relative", True), ("relative", False), ("fused", True), ("knn", True),
                                                  ("shaped", True)])
def test_router_files_round_trip_and_bad_files(tmp_path, method, fragmentation):
    tx, ty = _blobs(40)
    shaped = method == "shaped"
    method = "relative" if shaped else method
    oos = {"method": method, **({"task_covariance": 0.2, "task_covariance_weight": 0.5} if shaped else {})}
    config = synthetic_config(kind="mlp", hidden=8, max_epochs=3, out_of_scope=oos,
                          features={"fragmentation": fragmentation})
    router, report = train_router(tx, ty, tx, ty, ["a", "b", "c"], config, progress=False)
    save_router(tmp_path, router, {"experts": ["a", "b", "c"]})
    assert ("detector.expert_scales" in router.state_dict()) == (method != "knn")
    assert ("detector.whiten" in router.state_dict()) == (method == "relative")
    assert ("detector.shaped_whiten" in router.state_dict()) == shaped
    loaded, meta = load_router(tmp_path)
    assert meta["experts"] == ["a", "b", "c"] and meta["temperature"] == pytest.approx(report.temperature)
    assert meta["out_of_scope"]["method"] == method and meta["out_of_scope"]["block"] == 8  # no block given: the whole row
    assert meta["out_of_scope"]["lexical_weight"] == (0.5 if fragmentation and method != "knn" else 0.0)
    assert loaded.detector.lexical_weight == router.detector.lexical_weight
    assert meta["out_of_scope"]["task_covariance_weight"] == (0.5 if shaped else 0.0)
    assert loaded.detector.task_covariance_weight == router.detector.task_covariance_weight
    for got, want in zip(loaded.route(tx), router.route(tx)):
        assert torch.equal(got, want)
    with pytest.raises(BadInput, match=r"unknown router key\(s\) \[.kinds.\]"):
        RouterConfig.from_dict({"kinds": "mlp"})
    with pytest.raises(BadInput, match="unknown router kind"):
        RouterConfig(kind="attention")
    (tmp_path / "router.safetensors").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="router.safetensors"):
        load_router(tmp_path)


def test_the_detectors_task_gaussians_join_the_logits_only_when_validation_says_so(tmp_path):
    """An under-trained router (one epoch at a tiny lr) routes near chance; the relative detector's Gaussians
    separate the blobs, so validation picks a weight > 0 and routing follows it. [0] keeps the router alone."""
    tx, ty = _blobs(150)
    vx, vy = _blobs(80, seed=1)
    weak = dict(kind="linear", solver="adamw", lr=1e-6, max_epochs=1, patience=1, out_of_scope={"method": "relative", "components": 4})
    alone, report_alone = train_router(tx, ty, vx, vy, ["a", "b", "c"], synthetic_config(**weak, generative_weights=[0]),
                                       progress=False)
    mixed, report = train_router(tx, ty, vx, vy, ["a", "b", "c"], synthetic_config(**weak, generative_weights=[0, 0.5, 2.0]),
                                 progress=False)
    assert report_alone.generative_weight == 0 and report_alone.validation_balanced_accuracy < 0.8
    assert report.generative_weight in (0.5, 2.0) and report.validation_balanced_accuracy > 0.97
    with torch.no_grad():
        z = (vx - mixed.mean) / mixed.scale
        expected = mixed.net(z) + report.generative_weight * mixed.detector.task_log_likelihood(vx)
        assert torch.allclose(mixed.logits(vx), expected)
        assert torch.allclose(alone.logits(vx), alone.net((vx - alone.mean) / alone.scale))
    save_router(tmp_path, mixed, {"experts": ["a", "b", "c"]})
    loaded, meta = load_router(tmp_path)
    assert meta["generative_weight"] == report.generative_weight == loaded.generative_weight
    for got, want in zip(loaded.route(vx), mixed.route(vx)):
        assert torch.equal(got, want)
    # a detector without Gaussians: the candidates are ignored, the router stays alone
    knn, report_knn = train_router(tx, ty, vx, vy, ["a", "b", "c"],
                                   synthetic_config(**{**weak, "out_of_scope": {"method": "knn", "components": 4}}), progress=False)
    assert report_knn.generative_weight == 0 and knn.generative_weight == 0


@pytest.mark.parametrize("weights", [[], [-0.1], ["big"], [True]])
def test_bad_generative_weights_are_one_line(weights):
    with pytest.raises(BadInput, match="router.generative_weights"):
        RouterConfig(generative_weights=weights)


def _reloaded_meta(directory, router, x) -> dict:
    """Save ``router`` into ``directory``, load it back, check it routes ``x`` exactly as before; its router.json."""
    save_router(directory, router, {"experts": ["a", "b", "c"]})
    loaded, meta = load_router(directory)
    for got, want in zip(loaded.route(x), router.route(x)):
        assert torch.equal(got, want)
    return meta


def test_the_latest_state_term_is_saved_and_loaded(tmp_path):
    """With blocks, the relative detector adds the latest state's text block (default spec: segments only, so the
    features' second-to-last block); router.json records it and a router saved without it loads without it."""
    tx, ty = _blobs(40, dim=8)
    tx = torch.cat([tx, tx.flip(1), tx.roll(1, 1), tx * 0.5 + 1], 1)  # 4 blocks of 8: states 0 and 1, text and pair
    router, _ = train_router(tx, ty, tx, ty, ["a", "b", "c"], synthetic_config(max_epochs=3), progress=False, block=8)
    assert router.detector.state_weight == 1.0 and router.detector.state_block == 2
    meta = _reloaded_meta(tmp_path, router, tx)
    assert meta["out_of_scope"]["state_weight"] == 1.0 and meta["out_of_scope"]["state_block"] == 2
    off, _ = train_router(tx, ty, tx, ty, ["a", "b", "c"], synthetic_config(max_epochs=3, out_of_scope={"state_weight": 0}),
                          progress=False, block=8)
    (tmp_path / "off").mkdir()
    save_router(tmp_path / "off", off, {"experts": ["a", "b", "c"]})
    meta_path = tmp_path / "off" / "router.json"
    saved = json.loads(meta_path.read_text())
    del saved["out_of_scope"]["state_weight"], saved["out_of_scope"]["state_block"]  # as routers before it wrote
    meta_path.write_text(json.dumps(saved))
    old, _ = load_router(tmp_path / "off")
    assert old.detector.state_weight == 0.0 and not hasattr(old.detector, "state_whiten")
    assert torch.equal(old.route(tx)[3], off.route(tx)[3])


def test_a_router_with_the_surface_term_saves_and_loads_it(tmp_path):
    """With router.features.surface the features end in the surface and fragmentation columns: the detector reads the
    surface, and router.json records its weight and where the columns lie."""
    tx, ty = _blobs(40, dim=8)
    g = torch.Generator().manual_seed(3)
    form = torch.randn(3, 12, generator=g)[ty] + 0.2 * torch.randn(len(tx), 12, generator=g)
    tx = torch.cat([tx, tx.flip(1), form, torch.zeros(len(tx), 2)], 1)  # 2 blocks of 8, surface, fragmentation
    config = synthetic_config(max_epochs=3, features={"surface": True})
    router, _ = train_router(tx, ty, tx, ty, ["a", "b", "c"], config, progress=False, block=8)
    assert router.detector.surface_weight == 1.0 and router.detector.surface_offset == 2
    meta = _reloaded_meta(tmp_path, router, tx)
    assert meta["out_of_scope"]["surface_weight"] == 1.0 and meta["out_of_scope"]["surface_offset"] == 2
    far = tx[:5].clone()
    far[:, 16:28] += 50  # a form no task has: out of scope on the surface alone
    assert bool((router.route(far)[0] == -1).all())
    plain, _ = train_router(tx[:, :16], ty, tx[:, :16], ty, ["a", "b", "c"],
                            synthetic_config(max_epochs=3, features={"fragmentation": False}), progress=False, block=8)
    assert plain.detector.surface_weight == 0.0 and not hasattr(plain.detector, "surface_whiten")  # the default spec: none


def test_a_router_with_the_unknown_word_term_saves_and_loads_it(tmp_path):
    """With router.features.unknown_words the detector reads the unknown-word columns between the surface and the
    fragmentation, and router.json records its weight, its level and where the columns lie."""
    tx, ty = _blobs(40, dim=8)
    g = torch.Generator().manual_seed(4)
    form, shares = torch.randn(len(tx), 12, generator=g), 0.1 * torch.rand(len(tx), 2, generator=g)
    tx = torch.cat([tx, tx.flip(1), form, shares, torch.zeros(len(tx), 2)], 1)  # blocks, surface, unknown, fragmentation
    config = synthetic_config(max_epochs=3, features={"surface": True, "unknown_words": True})
    router, _ = train_router(tx, ty, tx, ty, ["a", "b", "c"], config, progress=False, block=8)
    detector = router.detector
    assert (detector.unknown_weight, detector.unknown_level, detector.unknown_offset) == (1.0, 0.99, 2)
    assert detector.surface_offset == 4
    oos = _reloaded_meta(tmp_path, router, tx)["out_of_scope"]
    assert (oos["unknown_weight"], oos["unknown_level"], oos["unknown_offset"], oos["surface_offset"]) == (1.0, 0.99, 2, 4)
    strange = tx[:5].clone()
    strange[:, 28:30] = 0.7  # most of the words unknown: out of scope on that alone
    assert bool((router.route(strange)[0] == -1).all()) and bool((router.route(tx[:5])[0] != -1).all())
