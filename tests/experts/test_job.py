"""The end-to-end expert job: a multiple-choice task trains on the tiny BERT, selects by its metric, and reloads."""

from __future__ import annotations

import pytest
import torch

from tests.toys import add_choice_task
from ttlora_moe.data.batching import Collator
from ttlora_moe.data.prepared import load_split
from ttlora_moe.experts.artifact import load_expert, read_expert_meta
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.job import train_expert
from ttlora_moe.experts.training import evaluate


def test_a_multiple_choice_expert_trains_end_to_end_and_reloads(project):
    add_choice_task(project)
    out = project / "experts" / "quiz"
    summary = train_expert("quiz", out, progress=False)
    meta = read_expert_meta(out)
    assert meta["task_kind"] == "multiple_choice" and meta["label_names"] == ["A", "B", "C", "D"]
    assert meta["num_labels"] == 4 and summary["steps"] >= 1 and meta["head"] == "options"
    assert summary["skipped_steps"] == meta["skipped_steps"] == 0  # every step's loss was finite
    assert summary["selection"] == meta["selection"] and meta["selection"]["metric"] == "accuracy"
    assert meta["selection"]["best_step"] == meta["best_step"] and meta["selection"]["best"] == max(
        h["val_accuracy"] for h in meta["history"])

    test_rows = load_split(project / "data" / "prepared" / "quiz", "test")
    assert all(r["text_pair"].startswith("(A) the ") and "(D) the " in r["text_pair"] for r in test_rows)
    base = load_base_model(meta["base_model"]["ref"])
    expert = load_expert(out, base)
    assert expert.model.options and tuple(expert.model.head.weight.shape) == (1, base.hidden_size)
    plain = Collator(base.tokenizer, meta["max_length"])(test_rows[:2])
    with pytest.raises(ValueError, match="option_mask"):
        expert.model(plain["input_ids"], plain["attention_mask"])
    collate = Collator(base.tokenizer, meta["max_length"], options=True)
    again = evaluate(expert.model, test_rows, collate, "accuracy", progress=False)
    assert again["accuracy"] == meta["metrics"]["test"]["accuracy"]
    logits = expert.model(**{k: v for k, v in collate(test_rows[:3]).items() if k != "labels"})
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
