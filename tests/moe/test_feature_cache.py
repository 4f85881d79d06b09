"""The router's feature cache and its seeded, nested samples."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.moe.feature_cache import cache_key, cached_features, features_dir, sample_indices
from ttlora_moe.moe.features import (
    FEATURE_VERSION,
    FeatureSpec,
    compute_features,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert(tiny_bert):
    return load_base_model(tiny_bert)


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


@pytest.mark.parametrize("damage", [b"garbage", b""])
def test_a_corrupt_feature_cache_is_recomputed_and_rewritten(bert, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    rows = [{"text": f"the {w} sat on the mat", "text_pair": None, "label": 0} for w in ("cat", "dog", "red", "blue")]
    spec = FeatureSpec()
    first, _ = cached_features(bert, tmp_path, "train", [0, 2], spec, "md5a", rows=rows, progress=False)
    (path,) = features_dir().rglob("train.safetensors")
    path.write_bytes(damage)
    again, stats = cached_features(bert, tmp_path, "train", [0, 2, 3], spec, "md5a", rows=rows, progress=False)
    assert (stats.hits, stats.computed) == (0, 3) and torch.equal(again[:2], first)
    _, stats = cached_features(bert, tmp_path, "train", [3, 0], spec, "md5a", rows=rows, progress=False)
    assert (stats.hits, stats.computed) == (2, 0)  # the rewritten file is whole again


def test_sample_indices_are_seeded_nested_and_not_first_n():
    a = sample_indices(1000, 50, 0)
    assert a == sample_indices(1000, 50, 0) and a != list(range(50)) and len(set(a)) == 50
    assert sample_indices(1000, 80, 0)[:50] == a               # a larger cap extends a smaller one
    assert sample_indices(1000, 50, 1) != a
    assert sorted(sample_indices(30, None, 0)) == list(range(30))


def test_caches_written_before_the_row_statistics_keep_their_key(bert):
    """A spec without the surface statistics and the unknown words hashes as specs did before those options existed;
    with either, it differs."""
    spec = FeatureSpec(surface=False, unknown_words=False)
    before = {k: v for k, v in spec.to_dict().items() if k not in ("surface", "unknown_words")}  # what to_dict() held
    parts = {"base": bert.fingerprint, "data": "md5", "spec": before, "version": FEATURE_VERSION}
    assert cache_key(bert, "md5", spec) == hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    assert cache_key(bert, "md5", FeatureSpec(surface=True)) != cache_key(bert, "md5", spec)
    assert cache_key(bert, "md5", FeatureSpec(unknown_words=True)) != cache_key(bert, "md5", spec)
