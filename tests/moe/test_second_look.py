"""The second look: inputs in the band get every state of the plain base and the second router decides; the
rest keep the early decision; a bundle builds, records and loads it."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.moe.test_single_pass import build, make_expert, spread_router
from tests.toys import MIXED_ROWS, add_pair_task
from ttlora_moe.data.batching import tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.moe.features import FeatureSpec, batch_features
from ttlora_moe.moe.router import RouterConfig
from ttlora_moe.moe.second_look import SecondLook, second_look_config
from ttlora_moe.moe.single_pass import restrict_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def experts(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("second-look-experts")
    return [make_expert(root / t, tiny_bert, t, seed=i + 1, layers_from=1) for i, t in enumerate(["senti", "nli", "quest"])]


def test_the_band_gets_the_second_router_and_the_rest_keeps_the_early_decision(tiny_bert, experts):
    plain = load_base_model(tiny_bert)
    early_spec = restrict_spec(FeatureSpec(), 1)
    early, second = spread_router(plain, early_spec, 3, seed=3).eval(), spread_router(plain, FeatureSpec(), 3, seed=5).eval()
    early.threshold.fill_(0.0)  # alone, the early router would never abstain
    batch = tokenize(plain.tokenizer, MIXED_ROWS, 32, **FeatureSpec().row_statistics)
    early_scores = early.route(batch_features(plain, batch, early_spec))[3]
    second_scores = second.route(batch_features(plain, batch, FeatureSpec()))[3]  # every state, plain base
    band = float(early_scores.median())
    looked = early_scores > band
    threshold = band + float(second_scores[looked].median())  # about half of the looked rows abstain
    moe = build(tiny_bert, experts, early, early_spec, 1, SecondLook(second, FeatureSpec(), band, threshold, 0.5))

    index, _, probs, score, _ = moe.single_pass(batch)
    ride = probs.argmax(-1)
    assert torch.allclose(score[~looked], early_scores[~looked])  # below the band: the early score, never abstains
    assert torch.equal(index[~looked], ride[~looked])
    assert torch.allclose(score[looked], band + second_scores[looked], atol=1e-5)
    assert torch.equal(index[looked] < 0, score[looked] > threshold)
    assert 0 < int((index < 0).sum()) < int(looked.sum())  # the second router really decides
    answers = moe.predict(MIXED_ROWS, batch_size=4)
    alone = moe.predict(MIXED_ROWS, batch_size=1)  # which rows share a batch changes nothing
    assert [(a["task"], a["label"], a["abstained"]) for a in answers] == [(a["task"], a["label"], a["abstained"])
                                                                           for a in alone]
    assert all(abs(a["out_of_scope_score"] - b["out_of_scope_score"]) < 1e-4 for a, b in zip(answers, alone))
    assert [a["abstained"] for a in answers] == (index < 0).tolist()
    assert all(abs(a["out_of_scope_score"] - float(s)) < 1e-4 for a, s in zip(answers, score))
    assert moe.slot.get() is None


def test_the_second_look_needs_single_pass_and_a_matching_spec(tiny_bert, experts):
    plain = load_base_model(tiny_bert)
    early_spec = restrict_spec(FeatureSpec(), 1)
    look = SecondLook(spread_router(plain, FeatureSpec(), 3), FeatureSpec(), 0.0, 1.0, 0.05)
    wrong = SecondLook(spread_router(plain, early_spec, 3), FeatureSpec(), 0.0, 1.0, 0.05)
    for k, spec, second in ((None, FeatureSpec(), look), (1, early_spec, wrong)):
        with pytest.raises(BadInput, match="second look does not fit") as info:
            build(tiny_bert, experts, spread_router(plain, spec, 3), spec, k, second)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("options, message", [
    ({"rate": 2}, "rate"), ({"rate": True}, "rate"), ({"share": 0.1}, "rate"),
    ({"out_of_scope": {"components": 0}}, "components"), ({"out_of_scope": []}, "rate"),
])
def test_bad_second_look_options_are_one_line_errors(options, message):
    with pytest.raises(BadInput, match=message) as info:
        RouterConfig(second_look=options)
    assert "\n" not in str(info.value)


def test_the_second_look_is_only_for_single_pass():
    assert second_look_config(RouterConfig(second_look={"rate": 0.05})) is None  # the library routes in two passes
    assert second_look_config(RouterConfig(route_after_layer=1)) is None  # off by default
    second = second_look_config(RouterConfig(route_after_layer=1, second_look={"rate": 0.05,
                                                                               "out_of_scope": {"components": 8}}))
    assert second.route_after_layer is None and second.out_of_scope["components"] == 8
    assert second.out_of_scope["method"] == RouterConfig().out_of_scope["method"]  # over router.out_of_scope


def test_a_single_pass_bundle_builds_records_and_loads_its_second_look(project, monkeypatch, tmp_path, tiny_bert):
    from ttlora_moe.files import read_json
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import load_moe

    add_pair_task(project)
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    router = {"train_per_task": 60, "validation_per_task": 40, "route_after_layer": 1, "false_abstain_rate": 0.05,
              "second_look": {"rate": 0.25, "out_of_scope": {"components": 16}}}
    dirs = [make_expert(tmp_path / "experts" / t, tiny_bert, t, seed=i + 1, layers_from=1)
            for i, t in enumerate(["toy", "pairs"])]
    summary = build_bundle(dirs, tmp_path / "bundle", params=params, router=router, progress=False)
    manifest = read_json(tmp_path / "bundle" / "manifest.json")
    record = manifest["router"]["second_look"]
    assert record == summary["second_look"] and record["rate"] == 0.25
    assert {"second_look/router.json", "second_look/router.safetensors"} <= set(manifest["files"])  # checksummed
    assert 0 < record["validation_share_looked"] <= 0.25 + 1 / 40  # at most `rate` of the validation rows (ties stay out)
    assert record["validation_false_abstain"] <= 0.05 + 1 / 40
    assert read_json(tmp_path / "bundle" / "second_look" / "router.json")["features"]["segment_layers"] == "all"
    moe = load_moe(tmp_path / "bundle")
    assert moe.second_look is not None and moe.second_look.band == record["band"]
    answers = moe.predict(MIXED_ROWS)
    assert [a["task"] for a in answers] == [a["task"] for a in moe.predict(MIXED_ROWS, batch_size=1)]

    off = build_bundle(dirs, tmp_path / "off", params=params, router={**router, "second_look": {"rate": 0}},
                       progress=False)
    assert off["second_look"] is None and not (tmp_path / "off" / "second_look").exists()
    assert load_moe(tmp_path / "off").second_look is None


def test_calibration_sets_the_band_and_keeps_the_total_false_abstain_rate():
    from ttlora_moe.moe.second_look import calibrate_second_look

    generator = torch.Generator().manual_seed(0)
    early, second = torch.rand(1000, generator=generator) * 10, torch.rand(1000, generator=generator) * 10
    weights = torch.ones(1000)
    look, report = calibrate_second_look(None, FeatureSpec(), early, second, weights, 0.1, 0.02)
    looked = early > look.band
    assert 99 <= int(looked.sum()) <= 100 and report["validation_share_looked"] == pytest.approx(looked.float().mean())
    served = look.score(early, looked, second[looked])
    abstains = int((served > look.threshold).sum())  # the threshold is one input's own score: at most one short
    assert 19 <= abstains <= 20 and abstains == round(1000 * report["validation_false_abstain"])
    assert not (served[~looked] > look.threshold).any()
    # a band narrower than the false-abstain rate: every looked input may abstain, none below the band
    narrow, report = calibrate_second_look(None, FeatureSpec(), early, second, weights, 0.005, 0.02)
    assert narrow.threshold >= narrow.band and report["validation_false_abstain"] <= 0.005


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_an_adapted_look_scores_the_single_pass_own_states(kind, tiny_bert, tiny_llama, tmp_path):
    """Source ``adapted``: no second forward; the second router reads every state of the single pass itself, i.e.
    each input's states through the expert it rides with, exactly as a forced forward through that expert gives them,
    and what the build trains on (each task's rows through its own expert, loaded the training way) agrees."""
    from ttlora_moe.moe.expert_features import adapted_base

    ref = tiny_bert if kind == "bert" else tiny_llama
    dirs = [make_expert(tmp_path / t, ref, t, seed=i + 1, layers_from=1) for i, t in enumerate(["senti", "nli", "quest"])]
    plain = load_base_model(ref)
    early_spec = restrict_spec(FeatureSpec(), 1)
    early, second = spread_router(plain, early_spec, 3, seed=3).eval(), spread_router(plain, FeatureSpec(), 3, seed=5).eval()
    batch = tokenize(plain.tokenizer, MIXED_ROWS, 32, **FeatureSpec().row_statistics)
    early_scores = early.route(batch_features(plain, batch, early_spec))[3]
    band = float(early_scores.median())
    looked = early_scores > band
    moe = build(ref, dirs, early, early_spec, 1, SecondLook(second, FeatureSpec(), band, 1e9, 0.5, "adapted"))
    calls = []
    moe.base.model.register_forward_pre_hook(lambda *a: calls.append(1))
    index, _, probs, score, _ = moe.single_pass(batch)
    assert len(calls) == 1  # one forward, no second one
    ride = probs.argmax(-1)
    with moe.routing(ride):  # every input forced through the expert it rode with
        forced = batch_features(moe.base, batch, FeatureSpec())
    want = second.route(forced)[3]
    assert torch.allclose(score[looked], band + want[looked], atol=1e-5)
    assert torch.allclose(score[~looked], early_scores[~looked])
    assert torch.equal(index, ride)  # the threshold is out of reach here
    assert (forced[:, -2:] - batch_features(plain, batch, FeatureSpec())[:, -2:]).abs().max() == 0  # counts: same rows
    for e in ride.unique().tolist():  # the build's features: the task's own expert, loaded as it was trained
        rows = (ride == e).nonzero().flatten()
        alone = batch_features(adapted_base(dirs[e], ref), {k: v[rows] for k, v in batch.items()
                                                             if isinstance(v, torch.Tensor) and v.dim()}, FeatureSpec())
        assert torch.allclose(alone, forced[rows], atol=1e-4)
    answers = moe.predict(MIXED_ROWS, batch_size=4)
    assert [a["out_of_scope_score"] for a in answers] == pytest.approx([a["out_of_scope_score"] for a in
                                                                        moe.predict(MIXED_ROWS, batch_size=1)], abs=1e-4)


def test_a_bundle_with_an_adapted_look_trains_it_on_each_task_through_its_own_expert(project, monkeypatch, tmp_path,
                                                                                      tiny_bert):
    from ttlora_moe.files import read_json
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import load_moe
    from ttlora_moe.moe.expert_features import expert_fingerprint

    add_pair_task(project)
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    router = {"train_per_task": 60, "validation_per_task": 40, "route_after_layer": 1, "false_abstain_rate": 0.05,
              "second_look": {"rate": 1, "source": "adapted", "out_of_scope": {"components": 16}}}
    dirs = [make_expert(tmp_path / "experts" / t, tiny_bert, t, seed=i + 1, layers_from=1)
            for i, t in enumerate(["toy", "pairs"])]
    summary = build_bundle(dirs, tmp_path / "bundle", params=params, router=router, progress=False)
    record = read_json(tmp_path / "bundle" / "manifest.json")["router"]["second_look"]
    assert record["source"] == "adapted" and record["band"] == -1.0 and record["validation_share_looked"] == 1.0
    assert record["validation_false_abstain"] <= 0.05 + 1 / 40
    cached = {p.parent.name for p in (tmp_path / "cache" / "features").rglob("*.safetensors")}
    assert summary["cache_misses"] > 0 and len(cached) == 2 + 2  # early base features once, every state per expert
    moe = load_moe(tmp_path / "bundle")
    assert moe.second_look.source == "adapted"
    answers = moe.predict(MIXED_ROWS)
    assert all(a["out_of_scope_score"] is not None for a in answers)
    assert expert_fingerprint("base", dirs[0]) != expert_fingerprint("base", dirs[1])
    again = build_bundle(dirs, tmp_path / "again", params=params, router=router, progress=False)
    assert again["cache_misses"] == 0  # the experts' features come from the cache


def test_an_unknown_second_look_source_is_a_one_line_error():
    with pytest.raises(BadInput, match="source") as info:
        RouterConfig(second_look={"rate": 1, "source": "tail"})
    assert "\n" not in str(info.value)


def test_a_summed_look_adds_both_surprisals_and_keeps_looked_inputs_above_the_band():
    from ttlora_moe.moe.second_look import calibrate_second_look

    generator = torch.Generator().manual_seed(1)
    early, second = torch.rand(1000, generator=generator) * 10, torch.rand(1000, generator=generator) * 10
    look, report = calibrate_second_look(None, FeatureSpec(), early, second, torch.ones(1000), 0.2, 0.02, "adapted", "sum")
    assert (look.source, look.combine) == ("adapted", "sum") and look.record()["combine"] == "sum"
    looked = early > look.band
    served = look.score(early, looked, second[looked])
    assert torch.equal(served[looked], early[looked] + second[looked]) and torch.equal(served[~looked], early[~looked])
    assert served[looked].min() > served[~looked].max()  # monotone in the decision, like the band
    assert 19 <= int((served > look.threshold).sum()) <= 20 and look.threshold >= look.band
    everyone, _ = calibrate_second_look(None, FeatureSpec(), early, second, torch.ones(1000), 1, 0.02, "adapted", "sum")
    assert everyone.band == -1.0 and torch.equal(everyone.score(early, early > -1, second), early + second)
    with pytest.raises(BadInput, match="combine"):
        RouterConfig(second_look={"rate": 1, "combine": "max"})
