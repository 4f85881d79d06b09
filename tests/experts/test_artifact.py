"""The expert artifact: exact round trip, and refusal of corrupt or foreign experts."""

from __future__ import annotations

import pytest
import torch

from tests.toys import Collate, make_classifier, toy_rows
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import load_expert, save_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.training import TrainConfig, evaluate, predict, train
from ttlora_moe.tt.config import TTLoRAConfig

CONFIG = dict(epochs=3, batch_size=16, lr=2e-2, head_lr=2e-2, evals_per_epoch=1, patience=5, checkpoint_every=2)


def expert_meta(base, metrics):
    return {"task": "toy", "label_names": ["neg", "pos"], "metric": "accuracy", "tt": TTLoRAConfig(rank=2, alpha=4.0).to_dict(),
            "base_model": {"ref": base.ref, "fingerprint": base.fingerprint}, "metrics": {"test": metrics}}


def test_expert_round_trip_reproduces_predictions_exactly(tiny_bert, tmp_path):
    base, model = make_classifier(tiny_bert)
    collate = Collate(base.tokenizer)
    train(model, toy_rows(64, 1), toy_rows(32, 2), collate, TrainConfig(**{**CONFIG, "epochs": 1}), "accuracy", progress=False)
    test_rows = toy_rows(40, 3)
    metrics = evaluate(model, test_rows, collate, "accuracy", progress=False)
    save_expert(tmp_path / "expert", model, expert_meta(base, metrics))
    assert sorted(p.name for p in (tmp_path / "expert").iterdir()) == ["adapter.safetensors", "expert.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    expert = load_expert(tmp_path / "expert", load_base_model(tiny_bert))
    _, probs_before = predict(model, test_rows, collate, progress=False)
    _, probs_after = predict(expert.model, test_rows, collate, progress=False)
    assert torch.equal(probs_before, probs_after)
    assert evaluate(expert.model, test_rows, collate, "accuracy", progress=False) == metrics


def test_corrupt_or_foreign_experts_are_refused(tiny_bert, tiny_llama, tmp_path):
    base, model = make_classifier(tiny_bert)
    save_expert(tmp_path / "expert", model, expert_meta(base, {}))
    with pytest.raises(BadInput, match="trained on base model"):
        load_expert(tmp_path / "expert", load_base_model(tiny_llama))
    (tmp_path / "expert" / "adapter.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(BadInput, match="not a readable safetensors"):
        load_expert(tmp_path / "expert", load_base_model(tiny_bert))
    with pytest.raises(BadInput, match="does not exist"):
        load_expert(tmp_path / "nowhere", load_base_model(tiny_bert))


def test_an_artifact_of_a_kind_load_expert_cannot_rebuild_is_refused(tiny_bert, tmp_path):
    base, model = make_classifier(tiny_bert)
    # a `lora` artifact (benchmarks) stores its head but not its LoRA weights: loading it would be head-only
    save_expert(tmp_path / "lora", model, {**expert_meta(base, {}), "kind": "lora"})
    with pytest.raises(BadInput, match=r"expert.json is a 'lora' artifact.*kind ttlora or head-only"):
        load_expert(tmp_path / "lora", load_base_model(tiny_bert))
    save_expert(tmp_path / "ttlora", model, {**expert_meta(base, {}), "kind": "ttlora"})
    assert load_expert(tmp_path / "ttlora", load_base_model(tiny_bert)).meta["kind"] == "ttlora"
