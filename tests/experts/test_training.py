"""The training loop: learning, best weights, resume after a kill."""

from __future__ import annotations

import pytest
import torch

from tests.toys import Collate, make_classifier, toy_rows
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.training import TrainConfig, evaluate, train

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


def test_early_stopping_stops_and_a_resumed_stopped_run_trains_no_further(tiny_bert, tmp_path):
    # lr 0: the validation score never improves, so patience 1 stops at the second validation pass
    config = TrainConfig(**{**CONFIG, "lr": 0.0, "head_lr": 0.0, "evals_per_epoch": 2, "patience": 1})
    train_rows, val_rows = toy_rows(64, 1), toy_rows(16, 2)
    base, model = make_classifier(tiny_bert)
    first = train(model, train_rows, val_rows, Collate(base.tokenizer), config, "accuracy",
                  checkpoint_dir=tmp_path, fingerprint="run", progress=False)
    assert [h["step"] for h in first.history] == [2, 4] and first.steps == 4  # of 3 epochs x 4 steps
    assert first.best_step == 2

    def no_batch(rows):
        raise AssertionError("a run whose checkpoint says stopped trained or evaluated again")

    _, model = make_classifier(tiny_bert)
    again = train(model, train_rows, val_rows, no_batch, config, "accuracy", checkpoint_dir=tmp_path,
                  fingerprint="run", progress=False)
    assert (again.resumed_from_step, again.steps, again.history) == (4, 4, first.history)


@pytest.mark.parametrize("torn", ["state.safetensors", "state.json"])
def test_a_torn_checkpoint_starts_a_fresh_run(tiny_bert, tmp_path, torn):
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    rows = toy_rows(32, 1), toy_rows(16, 2)
    base, model = make_classifier(tiny_bert)
    train(model, *rows, Collate(base.tokenizer), config, "accuracy", checkpoint_dir=tmp_path, fingerprint="a",
          progress=False)
    path = tmp_path / torn
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # half written
    base, model = make_classifier(tiny_bert)
    result = train(model, *rows, Collate(base.tokenizer), config, "accuracy", checkpoint_dir=tmp_path,
                   fingerprint="a", progress=False)
    assert result.resumed_from_step == 0 and result.steps == 2


def test_a_typo_in_head_mode_is_bad_input():
    with pytest.raises(BadInput, match="unknown train.head_mode 'froze'.*trainable, frozen"):
        TrainConfig.from_dict({"head_mode": "froze"})
