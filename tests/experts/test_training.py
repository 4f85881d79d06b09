"""The training loop: learning, best weights by the task's own metric, early stopping, resume after a kill."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from tests.toys import Collate, make_classifier, toy_rows
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.training import (
    TrainConfig,
    batches,
    class_weights,
    evaluate,
    train,
)

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


@pytest.mark.parametrize("fingerprint, metric", [("b", "accuracy"), ("a", "mcc")])
def test_a_checkpoint_of_another_run_is_ignored(tiny_bert, tmp_path, fingerprint, metric):
    """Another fingerprint, or the same run selecting by another metric, starts afresh."""
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    base, model = make_classifier(tiny_bert)
    train(model, toy_rows(32, 1), toy_rows(16, 2), Collate(base.tokenizer), config, "accuracy",
          checkpoint_dir=tmp_path, fingerprint="a", progress=False)
    base, model = make_classifier(tiny_bert)
    result = train(model, toy_rows(32, 1), toy_rows(16, 2), Collate(base.tokenizer), config, metric,
                   checkpoint_dir=tmp_path, fingerprint=fingerprint, progress=False)
    assert result.resumed_from_step == 0 and result.selection["metric"] == metric


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


def test_loader_workers_give_the_batches_of_the_loop_in_order(tiny_bert):
    """On a CUDA device DataLoader processes tokenise ahead; the batches are the loop's own, in order
    (run here with the device named cuda: without a GPU the DataLoader only skips the pinning)."""
    from transformers import AutoTokenizer

    rows, collate = toy_rows(40, seed=3), Collate(AutoTokenizer.from_pretrained(tiny_bert))
    id_lists = [list(range(i, min(i + 6, 40))) for i in range(0, 40, 6)][::-1]
    here = list(batches(rows, id_lists, collate, torch.device("cpu"), workers=2))
    with pytest.warns(UserWarning, match="pin_memory") if not torch.cuda.is_available() else contextlib.nullcontext():
        ahead = list(batches(rows, id_lists, collate, torch.device("cuda"), workers=2))
    assert len(here) == len(ahead) == len(id_lists)
    for a, b, ids in zip(here, ahead, id_lists):
        assert all(torch.equal(a[k], b[k]) for k in a) and a["labels"].tolist() == [rows[i]["label"] for i in ids]
    with pytest.raises(BadInput, match="loader_workers"):
        TrainConfig(loader_workers=-1)


def poison(model: nn.Module, steps: set[int] | None) -> None:
    """Make the model's training forwards number ``steps`` (1-based; ``None``: every one from the 4th) give NaN."""
    calls = [0]

    def hook(module, inputs, logits):
        if not module.training:
            return logits
        calls[0] += 1
        return logits * math.nan if (calls[0] >= 4 if steps is None else calls[0] in steps) else logits

    model.register_forward_hook(hook)


def test_a_step_whose_loss_is_not_finite_is_skipped_and_training_goes_on(tiny_bert, capsys):
    base, model = make_classifier(tiny_bert)
    poison(model, {3, 5})
    collate = Collate(base.tokenizer)
    result = train(model, toy_rows(160, 1), toy_rows(64, 2), collate, TrainConfig(**CONFIG), "accuracy", progress=False)
    assert result.skipped_steps == 2 and result.steps == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert evaluate(model, toy_rows(64, 2), collate, "accuracy", progress=False)["accuracy"] >= 0.7  # it still learns
    assert "2 of 30 steps skipped: loss or gradient not finite" in capsys.readouterr().err


def test_a_run_that_stays_non_finite_stops_and_keeps_its_best_finite_weights(tiny_bert, capsys):
    base, model = make_classifier(tiny_bert)
    poison(model, None)  # from the 4th step on
    config = TrainConfig(**{**CONFIG, "evals_per_epoch": 5})  # a validation pass every 2 steps
    result = train(model, toy_rows(160, 1), toy_rows(64, 2), Collate(base.tokenizer), config, "accuracy", progress=False)
    assert result.skipped_steps == 10 and result.steps == 13 and result.best_step <= 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "stopping at step 13: loss or gradient not finite in 10 steps in a row" in capsys.readouterr().err


def test_a_typo_in_head_mode_is_bad_input():
    with pytest.raises(BadInput, match="unknown train.head_mode 'froze'.*trainable, frozen"):
        TrainConfig.from_dict({"head_mode": "froze"})


# Validation: 7 rows of class 0, 3 of class 1. Each model state is a table of validation logits.
VAL_LABELS = [0] * 7 + [1] * 3
MAJORITY = [[2.0, 0.0]] * 10  # all class 0: accuracy 0.7, MCC 0
# 4 of 7 zeros and 2 of 3 ones right: accuracy 0.6 (lower) but MCC 0.22 (higher)
INFORMED = [[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3 + [[0.0, 1.0]] * 2 + [[1.0, 0.0]]
CONFIDENT = [[3 * a, 3 * b] if i < 4 or 6 < i < 9 else [a, b] for i, (a, b) in enumerate(INFORMED)]  # same MCC, lower loss


class ScriptedModel(nn.Module):
    """A 'model' whose state after training step s is ``schedule[s - 1]``: its parameter is the state's index.

    Inputs are row indices; the logits of row i are ``tables[state][i]``, so each validation pass sees
    exactly the predictions the test chose. lr 0 keeps the parameter where the schedule put it.
    """

    def __init__(self, schedule: list[int], tables: list[list[list[float]]]):
        super().__init__()
        self.state = nn.Parameter(torch.zeros(1))
        self.schedule, self.steps = schedule, 0
        self.register_buffer("tables", torch.tensor(tables))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.state.fill_(self.schedule[self.steps])
            self.steps += 1
        return self.tables[int(self.state.item())][input_ids[:, 0]] + 0 * self.state


def index_collate(rows):
    ids = torch.tensor([[r["index"]] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([r["label"] for r in rows])}


def run_scripted(schedule: list[int], metric: str, patience: int = 2):
    rows = [{"index": i, "text": str(i), "label": y} for i, y in enumerate(VAL_LABELS)]
    model = ScriptedModel(schedule, [MAJORITY, INFORMED, CONFIDENT])
    config = TrainConfig(epochs=len(schedule), batch_size=len(rows), lr=0.0, head_lr=0.0, evals_per_epoch=1,
                         patience=patience, warmup_ratio=0.0)
    return model, train(model, rows, rows, index_collate, config, metric, progress=False)


def test_selection_and_early_stopping_follow_the_task_metric_with_loss_breaking_ties():
    schedule = [0, 1, 2, 0, 0, 0, 0, 0]  # majority, informed, informed but more confident, then majority
    model, result = run_scripted(schedule, "mcc")
    # MCC: 0, 0.22, 0.22 with lower loss (a tie broken by loss: an improvement), then two worse passes stop it
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5] and result.steps == 5
    assert result.best_step == 3 and model.state.item() == 2.0  # the confident informed state is the one kept
    assert [round(h["val_accuracy"], 2) for h in result.history] == [0.7, 0.6, 0.6, 0.7, 0.7]
    assert result.selection["metric"] == "mcc" and result.best_score == pytest.approx(result.history[2]["val_mcc"])
    assert result.selection["best"] == pytest.approx(5 / 525**0.5)
    assert result.selection["best_loss"] == pytest.approx(result.history[2]["val_loss"])
    assert result.history[2]["val_loss"] < result.history[1]["val_loss"]

    # The same run selected by accuracy keeps the majority state and stops two passes after it.
    model, result = run_scripted(schedule, "accuracy")
    assert result.best_step == 1 and model.state.item() == 0.0 and result.steps == 3
    assert result.selection == {"metric": "accuracy", "best": pytest.approx(0.7), "best_step": 1,
                                "best_loss": pytest.approx(result.history[0]["val_loss"])}



def test_balanced_class_weights_weigh_each_seen_class_by_its_rarity():
    rows = [{"label": y} for y in [0] * 6 + [2] * 2]
    assert class_weights(rows, "none") is None
    assert class_weights(rows, "balanced").tolist() == pytest.approx([8 / 12, 0.0, 2.0])
    with pytest.raises(BadInput, match="unknown train.class_weights 'balance'.*none, balanced"):
        TrainConfig.from_dict({"class_weights": "balance"})


class PriorOnly(nn.Module):
    """Logits that ignore the input, starting at P(class 1) = 0.3: all such a model can learn is a class prior."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, math.log(0.3 / 0.7)]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(input_ids), 2)


@pytest.mark.parametrize(("kind", "moves"), [("none", -1), ("balanced", 1)])
def test_balanced_class_weights_pull_a_signal_free_model_towards_even_odds(kind, moves):
    """10% of the rows are class 1. Plain cross-entropy pulls P(class 1) from 0.3 down towards 0.1, the
    balanced one up towards 0.5 (its optimum): one full-batch step shows which loss was trained."""
    rows = [{"index": i, "text": str(i), "label": int(i % 10 == 0)} for i in range(100)]
    model = PriorOnly()
    config = TrainConfig(epochs=1, batch_size=100, lr=0.1, evals_per_epoch=1, warmup_ratio=0.0, max_grad_norm=None,
                         class_weights=kind)
    train(model, rows, rows, index_collate, config, "accuracy", progress=False)
    p_minority = torch.softmax(model.bias.detach(), 0)[1].item()
    assert (p_minority - 0.3) * moves > 0.02


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_gradient_checkpointing_recomputes_the_same_gradients(kind, tiny_bert, tiny_llama):
    """Dropout included (the BERT is in training mode): the recomputed forward replays the same random state."""
    from ttlora_moe.experts.base_model import enable_gradient_checkpointing
    from ttlora_moe.tt.inject import tt_modules

    grads = []
    for checkpointing in (False, True):
        base, model = make_classifier(tiny_bert if kind == "bert" else tiny_llama)
        if checkpointing:
            enable_gradient_checkpointing(base.model)
        model.train()
        calls = []
        next(iter(tt_modules(base.model).values())).register_forward_pre_hook(lambda *_: calls.append(1))
        batch = Collate(base.tokenizer)(toy_rows(8, 1))
        torch.manual_seed(0)
        logits = model(batch["input_ids"], batch["attention_mask"])
        nn.functional.cross_entropy(logits, batch["labels"]).backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointed: the block's forward runs again in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any(".tt_cores." in n for n in grads[0])
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0 and torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_gradient_checkpointing_on_a_model_without_it_is_bad_input():
    from ttlora_moe.experts.base_model import enable_gradient_checkpointing

    with pytest.raises(BadInput, match="does not support gradient checkpointing"):
        enable_gradient_checkpointing(nn.Linear(2, 2))
