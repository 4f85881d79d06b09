"""Single-pass routing: one forward equals route-then-adapt, bad combinations are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.toys import MIXED_ROWS, add_pair_task
from ttlora_moe.data.batching import tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import load_expert, read_expert_meta, save_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.classifier import SequenceClassifier
from ttlora_moe.files import load_tensors
from ttlora_moe.moe.features import FeatureSpec, batch_features, compute_features, feature_dim
from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
from ttlora_moe.moe.router import Router, RouterConfig
from ttlora_moe.moe.second_look import SecondLook
from ttlora_moe.moe.single_pass import restrict_spec
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora

LABELS = {"senti": ["neg", "pos"], "nli": ["entail", "neutral", "contra"], "quest": ["no", "yes"]}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_expert(directory: Path, ref: str, task: str, seed: int, layers_from: int) -> Path:
    """An expert with random (non-zero) cores on layers >= ``layers_from`` and a random head."""
    base = load_base_model(ref)
    tt = TTLoRAConfig(rank=2, alpha=4.0, layers_from=layers_from)
    attach_tt_lora(base.model, tt, seed=seed)
    labels = LABELS.get(task, ["neg", "pos"])
    classifier = SequenceClassifier(base.model, len(labels), base.pooling, "trainable", seed)
    with torch.no_grad():
        classifier.head.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    meta = {"task": task, "kind": "ttlora", "label_names": labels, "metric": "accuracy",
            "base_model": {"ref": ref, "fingerprint": base.fingerprint, "model_type": base.model_type,
                           "hidden_size": base.hidden_size}, "tt": tt.to_dict(), "max_length": 32}
    return save_expert(directory, classifier, meta)


def spread_router(base, spec: FeatureSpec, num_experts: int, seed: int = 0) -> Router:
    """A random linear router standardised on MIXED_ROWS, so that its picks differ between rows."""
    router = Router(feature_dim(spec, base), num_experts, "linear")
    feats = batch_features(base, tokenize(base.tokenizer, MIXED_ROWS, 32, **spec.row_statistics), spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        router.mean.copy_(feats.mean(0))
        router.scale.copy_(feats.std(0).clamp_min(1e-3))
        router.net[0].weight.copy_(torch.randn(router.net[0].weight.shape, generator=generator))
    return router


def build(ref: str, dirs: list[Path], router: Router, spec: FeatureSpec, k: int | None,
          second_look: SecondLook | None = None) -> MixtureOfExperts:
    """A mixture on a fresh base (the mixture modifies its base in place)."""
    metas = [read_expert_meta(d) for d in dirs]
    infos = [ExpertInfo(m["task"], "1", m["task"], m["label_names"], "accuracy") for m in metas]
    return MixtureOfExperts(load_base_model(ref), infos, [load_tensors(d / "adapter.safetensors") for d in dirs],
                            metas, router, spec, 32, route_after_layer=k, second_look=second_look)


@pytest.fixture(scope="module")
def experts(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("single-pass-experts")
    return [make_expert(root / t, tiny_bert, t, seed=i + 1, layers_from=1) for i, t in enumerate(LABELS)]


def test_single_pass_equals_route_then_adapted_pass(tiny_bert, experts):
    """One forward = features of states 0..1 on the plain base, route, then each sample through its expert alone."""
    k = 1
    spec = restrict_spec(FeatureSpec(), k)
    plain = load_base_model(tiny_bert)
    router = spread_router(plain, spec, len(experts))
    moe = build(tiny_bert, experts, router, FeatureSpec(), k)
    batch = moe.tokenize_rows(MIXED_ROWS)
    index, confidence, probs, _, logits = moe.single_pass(batch)

    want_index, want_conf, want_probs, _ = router.route(batch_features(plain, batch, spec))
    assert torch.equal(index, want_index) and len(set(index.tolist())) >= 2  # a mixed batch
    assert torch.allclose(confidence, want_conf, atol=1e-5) and torch.allclose(probs, want_probs, atol=1e-5)
    alone = [load_expert(d, load_base_model(tiny_bert)) for d in experts]
    for i, e in enumerate(index.tolist()):
        one = tokenize(plain.tokenizer, [MIXED_ROWS[i]], 32)
        with torch.no_grad():
            want = alone[e].model(one["input_ids"], one["attention_mask"])[0]
        assert torch.allclose(logits[i, : len(want)], want, atol=1e-5)
    # the two-pass API of the same mixture agrees, and the hook left no routing state behind
    assert torch.allclose(moe.expert_logits(batch["input_ids"], batch["attention_mask"], index), logits, atol=1e-5)
    assert moe.slot.get() is None
    # the experts differ on these layers, so the equality above is not trivial
    assert not torch.allclose(moe.expert_logits(batch["input_ids"], batch["attention_mask"], torch.zeros_like(index))[:, :2],
                              moe.expert_logits(batch["input_ids"], batch["attention_mask"], torch.full_like(index, 2))[:, :2],
                              atol=1e-3)


@pytest.mark.parametrize("k", [1, None])
@pytest.mark.parametrize(("statistic", "width"), [("surface", 12), ("unknown_words", 2)])
def test_a_router_reading_row_statistics_gets_them_in_predict(tiny_bert, experts, k, statistic, width):
    """router.features.surface / unknown_words: predict() tokenises with the raw text's statistics, in one pass and in
    two, and the router sees what the offline features hold."""
    plain = load_base_model(tiny_bert)
    spec = FeatureSpec(**{statistic: True})
    routed_spec = restrict_spec(spec, k) if k is not None else spec
    router = spread_router(plain, routed_spec, len(experts), seed=5)
    with torch.no_grad():
        router.net[0].weight[:, -2 - width:-2] *= 50  # the statistics weigh in
    moe = build(tiny_bert, experts, router, spec, k)
    got = moe.predict(MIXED_ROWS, batch_size=4)
    want = router.route(compute_features(plain, MIXED_ROWS, routed_spec, progress=False))
    assert [a["router_confidence"] for a in got] == pytest.approx(want[1].tolist(), abs=1e-4)


def test_single_pass_answers_equal_two_pass_answers_with_abstains(tiny_bert, experts):
    """Same router on the same states: predict() gives the same answers in both modes, abstains included."""
    spec = restrict_spec(FeatureSpec(), 1)
    router = spread_router(load_base_model(tiny_bert), spec, len(experts), seed=3)
    single = build(tiny_bert, experts, router, spec, 1)
    confidence = single.single_pass(single.tokenize_rows(MIXED_ROWS))[1]
    router.threshold.fill_(float(confidence.median()))  # about half the rows abstain
    two = build(tiny_bert, experts, router, spec, None)
    got, want = single.predict(MIXED_ROWS, batch_size=4), two.predict(MIXED_ROWS, batch_size=4)
    assert 0 < sum(a["abstained"] for a in got) < len(MIXED_ROWS)
    for a, b in zip(got, want):
        assert (a["task"], a["label"], a["abstained"], a["router_choice"]) == (b["task"], b["label"], b["abstained"],
                                                                                b["router_choice"])
        if not a["abstained"]:
            assert all(abs(a["probabilities"][n] - b["probabilities"][n]) < 1e-5 for n in a["probabilities"])
        else:
            assert a["probabilities"] is None and a["expert"] is None
    forced = [0, 1, 2, 0, 1, 2, 0]  # oracle routing skips the router in both modes
    assert [a["label"] for a in single.predict(MIXED_ROWS, force_expert=forced)] == \
        [a["label"] for a in two.predict(MIXED_ROWS, force_expert=forced)]


def test_bad_combinations_are_one_line_errors(tiny_bert, tmp_path, experts):
    early = [make_expert(tmp_path / "senti", tiny_bert, "senti", seed=1, layers_from=0)]
    base = load_base_model(tiny_bert)
    spec = restrict_spec(FeatureSpec(), 1)
    cases = [
        (lambda: build(tiny_bert, early, Router(feature_dim(spec, base), 1, "linear"), spec, 1),
         r"adapts layer\(s\) \[0\], below router.route_after_layer=1.*tt.layers_from >= 1"),
        (lambda: build(tiny_bert, experts, Router(feature_dim(spec, base), 3, "linear"), spec, 2),
         r"route_after_layer is 2, the base model has blocks 0..1"),
        (lambda: restrict_spec(FeatureSpec(segment_layers=(2,)), 1), r"hidden state\(s\) \[2\].*states 0..1 only"),
        (lambda: build(tiny_bert, experts, Router(feature_dim(FeatureSpec(), base), 3, "linear"), FeatureSpec(), 1),
         r"reads \d+ features"),
        (lambda: RouterConfig(route_after_layer=-1), "block index >= 0 or null"),
    ]
    for make, message in cases:
        with pytest.raises(BadInput, match=message) as info:
            make()
        assert "\n" not in str(info.value)


def test_restricted_spec_names_concrete_states():
    spec = restrict_spec(FeatureSpec(layers=(-1,), pooling=("cls",), segment_layers="all"), 2)
    assert spec.layers == (2,) and spec.segment_layers == (0, 1, 2) and spec.pooling == ("cls",)


def test_bundle_records_the_mode_and_loads_it(project, monkeypatch, tmp_path, tiny_bert):
    from ttlora_moe.files import read_json, write_json
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import load_moe

    add_pair_task(project)
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    router = {"train_per_task": 60, "validation_per_task": 20, "max_epochs": 5, "route_after_layer": 1}
    late = [make_expert(tmp_path / "late" / t, tiny_bert, t, seed=i + 1, layers_from=1) for i, t in enumerate(["toy", "pairs"])]
    summary = build_bundle(late, tmp_path / "bundle", params=params, router=router, progress=False)
    manifest = read_json(tmp_path / "bundle" / "manifest.json")
    assert manifest["routing"] == summary["routing"] == {"mode": "single-pass", "route_after_layer": 1}
    assert manifest["router"]["features"]["segment_layers"] == [0, 1]  # states 0..k only
    moe = load_moe(tmp_path / "bundle")
    assert moe.route_after_layer == 1
    assert [a["task"] for a in moe.predict(MIXED_ROWS[:2])] == [
        a["task"] for a in moe.predict(MIXED_ROWS[:2], batch_size=1)]  # batch composition changes nothing
    manifest["routing"] = {"mode": "two-pass", "route_after_layer": None}  # the router was trained for k=1
    write_json(tmp_path / "bundle" / "manifest.json", manifest)
    with pytest.raises(BadInput, match="trained for route_after_layer=1"):
        load_moe(tmp_path / "bundle")
    early = [make_expert(tmp_path / "early" / "toy", tiny_bert, "toy", seed=1, layers_from=0)]
    with pytest.raises(BadInput, match=r"adapts layer\(s\) \[0\]"):
        build_bundle(early, tmp_path / "refused", params=params, router=router, progress=False)
