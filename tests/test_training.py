"""Training loop, resume after a kill, metrics, and the expert artifact round trip."""

from __future__ import annotations

import random

import pytest
import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import load_expert, save_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.classifier import SequenceClassifier
from ttlora_moe.experts.metrics import task_metrics
from ttlora_moe.experts.training import TrainConfig, evaluate, predict, train
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora

FILLER = "the a movie film plot actor it this that is was very really".split()


def toy_rows(n: int, seed: int) -> list[dict]:
    """Sentiment-like toy data: the label is whether 'good'/'great' or 'bad'/'awful' occurs."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(["good", "great"] if label else ["bad", "awful"])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "text_pair": None, "label": label})
    return rows


class Collate:
    def __init__(self, tokenizer, fail_after: int | None = None):
        self.tokenizer, self.calls, self.fail_after = tokenizer, 0, fail_after

    def __call__(self, rows):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        enc = self.tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r["label"] for r in rows])}


def make_classifier(ref, seed=0, head_mode="trainable"):
    base = load_base_model(ref)
    attach_tt_lora(base.model, TTLoRAConfig(rank=2, alpha=4.0), seed=seed)
    return base, SequenceClassifier(base.model, 2, base.pooling, head_mode, seed)


CONFIG = dict(epochs=3, batch_size=16, lr=2e-2, head_lr=2e-2, evals_per_epoch=1, patience=5, checkpoint_every=2)


def test_training_learns_a_separable_task_and_keeps_the_best_weights(tiny_bert):
    base, model = make_classifier(tiny_bert)
    collate = Collate(base.tokenizer)
    before = evaluate(model, toy_rows(64, 2), collate, "accuracy", progress=False)
    result = train(model, toy_rows(160, 1), toy_rows(64, 2), collate, TrainConfig(**CONFIG), "accuracy", progress=False)
    after = evaluate(model, toy_rows(64, 2), collate, "accuracy", progress=False)
    assert after["accuracy"] >= 0.8 and after["accuracy"] >= before["accuracy"] + 0.2, (before, after)
    assert after["accuracy"] == pytest.approx(result.best_score)
    assert [h["step"] for h in result.history] == [10, 20, 30]


def test_frozen_head_mode_trains_only_the_cores(tiny_bert):
    _, model = make_classifier(tiny_bert, head_mode="frozen")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".tt_cores." in n for n in trainable)


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(tiny_bert, tmp_path):
    config = TrainConfig(**CONFIG)
    train_rows, val_rows = toy_rows(96, 1), toy_rows(32, 2)
    base, reference = make_classifier(tiny_bert)
    train(reference, train_rows, val_rows, Collate(base.tokenizer), config, "accuracy", progress=False)

    ckpt = tmp_path / "ckpt"
    base, killed = make_classifier(tiny_bert)
    with pytest.raises(KeyboardInterrupt):
        train(killed, train_rows, val_rows, Collate(base.tokenizer, fail_after=9), config, "accuracy",
              checkpoint_dir=ckpt, fingerprint="run", progress=False)
    assert (ckpt / "state.json").exists()

    base, resumed = make_classifier(tiny_bert)
    result = train(resumed, train_rows, val_rows, Collate(base.tokenizer), config, "accuracy",
                   checkpoint_dir=ckpt, fingerprint="run", progress=False)
    assert result.resumed_from_step == 8  # last checkpoint before the kill in step 9 (every 2 steps)
    for (name, p), (_, q) in zip(reference.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_a_checkpoint_of_another_run_is_ignored(tiny_bert, tmp_path):
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    base, model = make_classifier(tiny_bert)
    train(model, toy_rows(32, 1), toy_rows(16, 2), Collate(base.tokenizer), config, "accuracy",
          checkpoint_dir=tmp_path, fingerprint="a", progress=False)
    base, model = make_classifier(tiny_bert)
    result = train(model, toy_rows(32, 1), toy_rows(16, 2), Collate(base.tokenizer), config, "accuracy",
                   checkpoint_dir=tmp_path, fingerprint="b", progress=False)
    assert result.resumed_from_step == 0


def test_task_metrics():
    assert task_metrics([1, 0, 1, 1], [1, 0, 0, 1], "accuracy") == {"accuracy": 0.75}
    assert task_metrics([1, 0, 1, 1], [1, 0, 0, 1], "f1")["f1"] == pytest.approx(0.8)
    assert task_metrics([1, 0, 1, 0], [1, 0, 1, 0], "mcc")["mcc"] == pytest.approx(1.0)
    assert task_metrics([1, 0, 1, 0], [0, 1, 0, 1], "mcc")["mcc"] == pytest.approx(-1.0)


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
