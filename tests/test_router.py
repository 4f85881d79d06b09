"""Router features (pooling, tokenisation, cache) and the router itself (training, calibration, abstain, files)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ttlora_moe.data.batching import tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.moe.feature_cache import cached_features, sample_indices
from ttlora_moe.moe.features import (
    FeatureSpec,
    compute_features,
    feature_dim,
    pool_states,
)
from ttlora_moe.moe.router import (
    RouterConfig,
    abstain_threshold,
    fit_temperature,
    load_router,
    save_router,
    task_weights,
    train_router,
)

ROWS = [
    {"text": "the movie was good", "text_pair": None},
    {"text": "what is a cat", "text_pair": "the cat sat on the mat"},
    {"text": "bad", "text_pair": None},
    {"text": "premise true", "text_pair": "hypothesis false maybe"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert(tiny_bert):
    return load_base_model(tiny_bert)


def test_tokenize_matches_the_experts_collator_and_marks_segments(bert):
    from ttlora_moe.data.batching import Collator

    batch = tokenize(bert.tokenizer, ROWS, 32)
    reference = Collator(bert.tokenizer, 32)([{**r, "label": 0} for r in ROWS])
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    seg = batch["segment_ids"]
    assert (seg[0] == 1).sum() == 0 and (seg[0] == 0).sum() == 4  # 4 words, CLS/SEP are -1
    assert (seg[1] == 0).sum() == 4 and (seg[1] == 1).sum() == 6
    assert (seg[batch["attention_mask"] == 0] == -1).all()


def test_pooling_ignores_pads_and_segments_pool_separately():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    seg = torch.tensor([[-1, 0, 1, -1], [-1, 0, -1, -1]])
    spec = FeatureSpec(layers=[0], pooling=("mean", "max", "cls", "last"), segment_layers=[0], lengths=True)
    f = pool_states([h], mask, seg, spec)
    assert f.shape == (2, 3 * 6 + 3)
    assert torch.allclose(f[1, 0:3], h[1, :2].mean(0))          # mean over real tokens only
    assert torch.allclose(f[1, 3:6], h[1, 1])                   # max over real tokens only
    assert torch.allclose(f[1, 9:12], h[1, 1])                  # last non-pad token
    assert torch.allclose(f[0, 12:15], h[0, 1]) and torch.allclose(f[0, 15:18], h[0, 2])
    assert torch.allclose(f[1, 15:18], torch.zeros(3))          # no pair: zero segment B
    assert torch.allclose(f[:, -1], torch.tensor([1.0, 0.0]))   # has-pair flag


def test_feature_spec_checks_and_dimensions(bert):
    # default: text and text_pair mean-pooled apart on all 3 hidden states, plus 3 length features
    assert feature_dim(FeatureSpec(), bert) == 24 * 3 * 2 + 3
    assert compute_features(bert, ROWS, FeatureSpec(), batch_size=3, progress=False).shape == (4, 24 * 6 + 3)
    spec = FeatureSpec(layers="all", pooling=("mean", "max"), segment_layers=[-1], lengths=False)
    assert compute_features(bert, ROWS, spec, progress=False).shape == (4, 24 * (3 * 2 + 2))
    with pytest.raises(BadInput, match="pools no hidden state"):
        FeatureSpec(segment_layers=())
    with pytest.raises(BadInput, match="unknown router feature pooling"):
        FeatureSpec(pooling=("median",))
    with pytest.raises(BadInput, match="unknown router feature keys"):
        FeatureSpec.from_dict({"layer": [1]})
    with pytest.raises(BadInput, match="does not exist"):
        FeatureSpec(layers=[7]).resolve(3)


def test_features_do_not_depend_on_batch_composition(bert):
    spec = FeatureSpec(segment_layers="all")
    together = compute_features(bert, ROWS, spec, batch_size=4, progress=False)
    alone = torch.cat([compute_features(bert, [r], spec, progress=False) for r in ROWS])
    assert torch.allclose(together, alone, atol=1e-5)


def test_feature_cache_second_call_runs_no_forward(bert, tmp_path, monkeypatch):
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    rows = [{"text": f"the movie {w} was good", "text_pair": None, "label": 0} for w in ("cat", "dog", "red", "blue")] * 5
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    calls = []
    hook = bert.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        spec = FeatureSpec()
        first, s1 = cached_features(bert, tmp_path, "train", [0, 3, 5], spec, "md5a", progress=False)
        n_first = len(calls)
        again, s2 = cached_features(bert, tmp_path, "train", [5, 0, 3], spec, "md5a", progress=False)
        assert n_first > 0 and len(calls) == n_first            # no forward at all
        assert (s1.hits, s1.computed, s2.hits, s2.computed) == (0, 3, 3, 0)
        assert torch.equal(again, first[[2, 0, 1]])
        more, s3 = cached_features(bert, tmp_path, "train", [0, 3, 5, 7], spec, "md5a", progress=False)
        assert (s3.hits, s3.computed) == (3, 1) and torch.equal(more[:3], first)
        _, s4 = cached_features(bert, tmp_path, "train", [0], spec, "md5b", progress=False)  # new data version
        _, s5 = cached_features(bert, tmp_path, "train", [0], FeatureSpec(max_length=16), "md5a", progress=False)
        assert s4.computed == 1 and s5.computed == 1
    finally:
        hook.remove()
    direct = compute_features(bert, [rows[i] for i in (0, 3, 5)], FeatureSpec(), progress=False)
    assert torch.allclose(first, direct, atol=2e-2, rtol=2e-3)  # the cache stores float16


def test_sample_indices_are_seeded_nested_and_not_first_n():
    a = sample_indices(1000, 50, 0)
    assert a == sample_indices(1000, 50, 0) and a != list(range(50)) and len(set(a)) == 50
    assert sample_indices(1000, 80, 0)[:50] == a               # a larger cap extends a smaller one
    assert sample_indices(1000, 50, 1) != a
    assert sorted(sample_indices(30, None, 0)) == list(range(30))


def _blobs(n_per: int, dim: int = 8, seed: int = 0, sizes=(1.0, 1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, dim) * 4
    xs, ys = [], []
    for e, size in enumerate(sizes):
        n = int(n_per * size)
        xs.append(centres[e] + torch.randn(n, dim, generator=g))
        ys.append(torch.full((n,), e))
    return torch.cat(xs) * 10 + 5, torch.cat(ys)  # unscaled: standardisation must cope


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_router_learns_calibrates_and_abstains(kind):
    tx, ty = _blobs(200, sizes=(1.0, 1.0, 0.2))  # task 2 has 5x fewer rows: balanced by weights
    vx, vy = _blobs(100, seed=1)
    config = RouterConfig(kind=kind, hidden=16, lr=1e-2, batch_size=64, max_epochs=25, patience=5, false_abstain_rate=0.05)
    router, report = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    assert report.validation_balanced_accuracy > 0.9 and min(report.validation_per_task.values()) > 0.85
    assert 0.03 <= report.validation_abstain_rate <= 0.07
    assert report.threshold > 0 and report.temperature > 0
    index, confidence, probs = router.route(vx)
    assert torch.allclose(probs.sum(-1), torch.ones(len(vx)))
    assert ((index == -1) == (confidence < report.threshold)).all()
    again, _, _ = router.route(vx)
    assert torch.equal(index, again)                           # deterministic: no noise, no dropout


def test_router_is_reproducible_with_its_seed():
    tx, ty = _blobs(60)
    vx, vy = _blobs(30, seed=1)
    config = RouterConfig(kind="mlp", hidden=8, max_epochs=5)
    r1, _ = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    r2, _ = train_router(tx, ty, vx, vy, ["a", "b", "c"], config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(r1.state_dict().values(), r2.state_dict().values()))


def test_temperature_threshold_and_weights():
    labels = torch.tensor([0, 0, 0, 1])
    assert torch.allclose(task_weights(labels, 2), torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    logits = torch.tensor([[8.0, 0.0], [0.0, 8.0], [8.0, 0.0], [0.0, 8.0]])  # half right, overconfident
    assert fit_temperature(logits, torch.tensor([0, 0, 1, 1])) > 5
    conf = torch.linspace(0.5, 1.0, 101)
    assert abstain_threshold(conf, 0.0) == 0.0
    t = abstain_threshold(conf, 0.1)
    assert 0.09 <= float((conf < t).float().mean()) <= 0.11


def test_router_files_round_trip_and_bad_files(tmp_path):
    tx, ty = _blobs(40)
    router, report = train_router(tx, ty, tx, ty, ["a", "b", "c"], RouterConfig(kind="mlp", hidden=8, max_epochs=3),
                                  progress=False)
    save_router(tmp_path, router, {"experts": ["a", "b", "c"]})
    loaded, meta = load_router(tmp_path)
    assert meta["experts"] == ["a", "b", "c"] and meta["temperature"] == pytest.approx(report.temperature)
    assert torch.equal(loaded.route(tx)[0], router.route(tx)[0])
    with pytest.raises(BadInput, match="unknown router config keys"):
        RouterConfig.from_dict({"kinds": "mlp"})
    with pytest.raises(BadInput, match="unknown router kind"):
        RouterConfig(kind="attention")
    (tmp_path / "router.safetensors").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="router.safetensors"):
        load_router(tmp_path)
