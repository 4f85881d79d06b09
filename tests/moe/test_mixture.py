"""Mixed-batch inference: every sample through its own expert equals each sample alone."""

from __future__ import annotations

import pytest
import torch

from tests.toys import (
    MOE_TASKS,
    make_moe_expert,
    moe_rows,
)
from ttlora_moe.blocks import transformer_blocks
from ttlora_moe.data.batching import tokenize
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import load_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.moe.features import FeatureSpec, feature_dim
from ttlora_moe.moe.expert_linear import MoETTLinear
from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
from ttlora_moe.moe.router import Router

pytestmark = pytest.mark.usefixtures("one_thread")


# every attention projection (tt_study's q,k,v,o variant), not only the default query/value
ALL_ATTENTION = {"bert": ["query", "key", "value", "attention.output.dense"],
                 "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.mark.parametrize(("kind", "qkvo", "path"), [("bert", False, "auto"), ("llama", False, "auto"),
                                                    ("bert", True, "merged"), ("llama", True, "contract"),
                                                    ("bert", True, "factored"), ("llama", True, "factored")])
def test_mixed_batch_equals_each_sample_alone_through_its_expert(kind, qkvo, path, tiny_bert, tiny_llama, tmp_path):
    ref = tiny_bert if kind == "bert" else tiny_llama
    names = ["senti", "nli", "quest"]  # 2, 3 and 2 labels
    targets = ALL_ATTENTION[kind] if qkvo else None
    dirs = [make_moe_expert(tmp_path / n, ref, n, seed=i + 1, target_modules=targets) for i, n in enumerate(names)]
    base = load_base_model(ref)
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    metas = [read_expert_meta(d) for d in dirs]
    spec = FeatureSpec()
    router = Router(feature_dim(spec, base), len(names), "linear")
    infos = [ExpertInfo(n, "7", n, MOE_TASKS[n][0], MOE_TASKS[n][2]) for n in names]
    moe = MixtureOfExperts(base, infos, [load_tensors(d / "adapter.safetensors") for d in dirs], metas, router, spec, 32,
                           adapter_path=path)
    adapted = sum(isinstance(m, MoETTLinear) for m in base.model.modules())
    assert adapted == (4 if qkvo else 2) * len(transformer_blocks(base.model))
    assert {m.path for m in base.model.modules() if isinstance(m, MoETTLinear)} == {"merged+factored" if path == "auto" else path}

    rows = moe_rows("senti", 3) + moe_rows("nli", 3) + moe_rows("quest", 2) + moe_rows("nli", 1, 7)
    experts = [0, 1, 0, 1, 2, 1, 2, 0, 1]  # mixed, and some samples through another task's expert
    batch = tokenize(base.tokenizer, rows, 32)
    logits = moe.expert_logits(batch["input_ids"], batch["attention_mask"], torch.tensor(experts))
    assert logits.shape == (len(rows), 3)
    assert torch.isinf(logits[torch.tensor(experts) != 1, 2]).all()  # padded class of 2-label heads

    answers = moe.predict(rows, batch_size=4, force_expert=experts)
    alone = [load_expert(d, load_base_model(ref)) for d in dirs]
    for i, (row, e) in enumerate(zip(rows, experts)):
        single = tokenize(base.tokenizer, [row], 32)
        with torch.no_grad():
            ref_probs = torch.softmax(alone[e].model(single["input_ids"], single["attention_mask"]), -1)[0]
        c = len(MOE_TASKS[names[e]][0])
        assert torch.allclose(torch.softmax(logits[i, :c], -1), ref_probs, atol=1e-5)
        got = torch.tensor(list(answers[i]["probabilities"].values()))
        assert list(answers[i]["probabilities"]) == MOE_TASKS[names[e]][0]  # the task's own labels only
        assert torch.allclose(got, ref_probs, atol=1e-5)
        assert answers[i]["expert"] == {"name": names[e], "version": "7"} and answers[i]["task"] == names[e]
    # the experts really differ, so the equality above is not trivial
    p0 = torch.softmax(alone[0].model(batch["input_ids"][:1], batch["attention_mask"][:1]), -1)
    p2 = torch.softmax(alone[2].model(batch["input_ids"][:1], batch["attention_mask"][:1]), -1)
    assert not torch.allclose(p0, p2, atol=1e-3)
    # the routing pass sees the plain base model: identical to the un-adapted model's states
    with moe.routing(None):
        plain = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    fresh = load_base_model(ref).model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.allclose(plain, fresh.last_hidden_state, atol=1e-6)
    assert moe.slot.get() is None


def test_moe_refuses_router_of_other_size(tiny_bert, tmp_path):
    d = make_moe_expert(tmp_path / "senti", tiny_bert, "senti", 1)
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    base = load_base_model(tiny_bert)
    with pytest.raises(BadInput, match="routes to 3 experts"):
        MixtureOfExperts(base, [ExpertInfo("senti", None, "senti", ["neg", "pos"], "accuracy")],
                         [load_tensors(d / "adapter.safetensors")], [read_expert_meta(d)], Router(10, 3, "linear"),
                         FeatureSpec(), 32)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_multiple_choice_expert_scores_each_option_inside_a_mixed_batch(kind, tiny_bert, tiny_llama, tmp_path):
    """An options head in the mixture (two-pass and single-pass) answers exactly as the expert alone."""
    from tests.toys import make_random_expert
    from ttlora_moe.data.batching import Collator
    from ttlora_moe.data.choices import options_text
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    ref = tiny_bert if kind == "bert" else tiny_llama
    quiz = list("ABCD")
    dirs = [make_moe_expert(tmp_path / "senti", ref, "senti", seed=1),
            make_random_expert(tmp_path / "quiz", ref, "quiz", seed=2, labels=quiz, options=True)]
    rows = moe_rows("senti", 2) + [
        {"text": "what sat on the mat", "text_pair": options_text(["the cat", "a dog (B) here", "the red bird", "it"])},
        {"text": "which one", "text_pair": options_text(["yes", "no", "maybe"])},  # fewer options than the head
        {"text": "a question with no options", "text_pair": None},
        {"text": "pick one", "text_pair": options_text(["first option", "second", "the long third " * 12, "cut off"])},
    ]
    experts = torch.tensor([0, 1, 1, 1, 1, 1])
    base = load_base_model(ref)
    spec = FeatureSpec()
    infos = [ExpertInfo("senti", "1", "senti", ["neg", "pos"], "accuracy"), ExpertInfo("quiz", "1", "quiz", quiz, "accuracy")]
    moe = MixtureOfExperts(base, infos, [load_tensors(d / "adapter.safetensors") for d in dirs],
                           [read_expert_meta(d) for d in dirs], Router(feature_dim(spec, base), 2, "linear"), spec, 48)
    assert moe.reads_options and moe.option_heads.tolist() == [False, True]
    answers = moe.predict(rows, batch_size=4, force_expert=experts.tolist())
    alone = [load_expert(d, load_base_model(ref)).model for d in dirs]
    assert alone[1].options and not alone[0].options
    for row, e, answer in zip(rows, experts.tolist(), answers):
        single = Collator(base.tokenizer, 48, options=alone[e].options)([{**row, "label": None}])
        with torch.no_grad():
            expected = torch.softmax(alone[e](**single), -1)[0]
        assert torch.allclose(torch.tensor(list(answer["probabilities"].values())), expected, atol=1e-5)
    # the options really are scored one by one: different options, different probabilities
    probs = [list(a["probabilities"].values()) for a in answers[2:4]]
    assert max(probs[0]) - min(probs[0]) > 1e-4
    assert list(answers[4]["probabilities"].values()) == pytest.approx([0.25] * 4)  # no options: nothing to prefer
    batch = tokenize(base.tokenizer, rows, 48, options=True)
    masks = batch["option_mask"]
    assert masks.shape[:2] == (len(rows), 4) and not masks[:2].any() and not masks[4].any()
    assert masks[2].any(-1).all() and masks[3].any(-1).tolist() == [True, True, True, False]
    assert not masks[5, 3].any() and masks[5, 0].any()  # truncation cut the long row's last option
    logits = moe.expert_logits(batch["input_ids"], batch["attention_mask"], experts, batch["option_mask"])
    plain = moe.expert_logits(batch["input_ids"], batch["attention_mask"], experts)  # no masks: pooled states
    assert torch.allclose(logits[:2], plain[:2]) and not torch.allclose(logits[2:4], plain[2:4])


def test_single_pass_scores_options_as_the_adapted_pass(tiny_bert, tmp_path):
    from tests.toys import make_random_expert
    from ttlora_moe.data.choices import options_text
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors
    from ttlora_moe.moe.single_pass import restrict_spec

    dirs = [make_random_expert(tmp_path / "senti", tiny_bert, "senti", seed=1, layers_from=1),
            make_random_expert(tmp_path / "quiz", tiny_bert, "quiz", seed=2, labels=list("ABC"), layers_from=1, options=True)]
    base = load_base_model(tiny_bert)
    spec = FeatureSpec(segment_layers="all")
    router = Router(feature_dim(restrict_spec(spec, 1), base), 2, "linear")
    infos = [ExpertInfo("senti", "1", "senti", ["neg", "pos"], "accuracy"), ExpertInfo("quiz", "1", "quiz", list("ABC"), "accuracy")]
    moe = MixtureOfExperts(base, infos, [load_tensors(d / "adapter.safetensors") for d in dirs],
                           [read_expert_meta(d) for d in dirs], router, spec, 48, route_after_layer=1)
    with torch.no_grad():
        router.net[0].bias.copy_(torch.tensor([-50.0, 50.0]))  # every row rides the quiz expert
    rows = [{"text": "what sat here", "text_pair": options_text(["the cat", "a dog", "the bird"])},
            {"text": "the movie was good", "text_pair": None}]
    batch = moe.tokenize_rows(rows)
    _, _, probs, _, logits = moe.single_pass(batch)
    ride = probs.argmax(-1)
    assert ride.tolist() == [1, 1]
    assert torch.allclose(logits, moe.expert_logits(batch["input_ids"], batch["attention_mask"], ride,
                                                    batch["option_mask"]), atol=1e-5)


def test_moving_a_mixture_moves_its_base_model_and_every_adapted_layer(tiny_bert, tmp_path):
    """``moe.to(device)`` after loading (``meta`` stands in for a GPU) leaves no tensor of the base behind."""
    dirs = [make_moe_expert(tmp_path / n, tiny_bert, n, seed=i + 1) for i, n in enumerate(["senti", "nli"])]
    base = load_base_model(tiny_bert)
    from ttlora_moe.experts.artifact import read_expert_meta
    from ttlora_moe.files import load_tensors

    spec = FeatureSpec()
    infos = [ExpertInfo(n, "1", n, MOE_TASKS[n][0], MOE_TASKS[n][2]) for n in ["senti", "nli"]]
    moe = MixtureOfExperts(base, infos, [load_tensors(d / "adapter.safetensors") for d in dirs],
                           [read_expert_meta(d) for d in dirs], Router(feature_dim(spec, base), 2, "linear"), spec, 32)
    moe.to("meta")
    assert moe.device.type == "meta"
    assert {t.device.type for t in [*base.model.parameters(), *base.model.buffers()]} == {"meta"}
    assert any(isinstance(m, MoETTLinear) for m in moe.modules())
