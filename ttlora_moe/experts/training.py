"""The training loop: AdamW, evaluation on validation, early stopping, best weights, resume.

Model selection is metric-true: the kept weights and early stopping follow the task's own metric on
validation (MCC for CoLA, F1 for QQP and MRPC, accuracy otherwise), ties broken by lower loss.

Reproducible: batch order comes from a generator seeded by ``(seed, epoch)`` and the global RNG is
reseeded from ``(seed, step)`` before each step (dropout), so a run that is killed and resumed
from its last checkpoint takes exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ttlora_moe.config_fields import Section, option
from ttlora_moe.data.batching import length_batches
from ttlora_moe.devices import to_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.checkpoint import (
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from ttlora_moe.experts.classifier import HEAD_MODES
from ttlora_moe.experts.metrics import headline, task_metrics
from ttlora_moe.files import remove_dir

CLASS_WEIGHTS = ("none", "balanced")


def class_weights(rows: Sequence[dict], kind: str) -> torch.Tensor | None:
    """Per-class loss weights of the training rows: None for 'none'; for 'balanced', n / (C * n_c) for each
    class c seen in the rows (C: the number of classes seen; a class absent from the rows weighs 0)."""
    if kind == "none":
        return None
    labels = torch.tensor([int(r["label"]) for r in rows])
    counts = torch.bincount(labels).float()
    seen = counts > 0
    weights = torch.zeros_like(counts)
    weights[seen] = len(labels) / (int(seen.sum()) * counts[seen])
    return weights


@dataclass
class TrainConfig(Section):
    """Hyperparameters of one expert's training run (``train:`` in params.yaml)."""

    section: ClassVar[str] = "train"

    epochs: int = option(2, "Passes over the training sample.")
    batch_size: int = option(32, "Examples per optimisation step.")
    lr: float = option(0.01, "AdamW learning rate of the TT cores (paper: 5e-3).")
    head_lr: float = option(2e-3, "AdamW learning rate of the head.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float | None = option(1.0, "Clip the gradient norm to this (None: no clipping).")
    warmup_ratio: float = option(0.06, "Linear warm-up share of all steps, then linear decay.")
    max_length: int = option(128, "Tokens per input; longer inputs are truncated.")
    max_train_samples: int | None = option(12000, "Seeded training subsample (None: all; paper: 4000).")
    max_eval_samples: int | None = option(1000, "Validation subsample used for early stopping.")
    evals_per_epoch: int = option(2, "Validation passes per epoch.")
    patience: int = option(3, "Validation passes without improvement before stopping.")
    checkpoint_every: int = option(25, "Steps between resumable checkpoints.")
    seed: int = option(0, "Seed of data order, dropout and initialisation.")
    bf16: bool = option(False, "bfloat16 autocast on the CPU (on a CUDA device with bf16 support it is always on).")
    head_mode: str = option("trainable", "'trainable' or 'frozen' (the paper's random head).")
    class_weights: str = option(
        "none", "'none' or 'balanced': weigh each class's loss by n_rows / (n_classes * n_rows_of_class), so an "
        "imbalanced task (CoLA: 70% acceptable) cannot settle on the majority class.")
    gradient_checkpointing: bool = option(
        False, "Recompute each block's activations in the backward pass instead of keeping every block's: "
        "activation memory of about one block for about a third more compute (a decoder at a long max_length).")
    loader_workers: int = option(
        2, "On a CUDA device: DataLoader processes that tokenise the next batches while the GPU trains (0: none). "
        "On the CPU batches are always tokenised in the training loop.")

    def __post_init__(self) -> None:
        if not isinstance(self.loader_workers, int) or isinstance(self.loader_workers, bool) or self.loader_workers < 0:
            raise BadInput(f"train.loader_workers must be an integer >= 0, got {self.loader_workers!r}", "fix params.yaml")
        if self.class_weights not in CLASS_WEIGHTS:
            raise BadInput(f"unknown train.class_weights {self.class_weights!r}",
                           f"set train.class_weights to one of {', '.join(CLASS_WEIGHTS)}")
        if self.head_mode not in HEAD_MODES:
            raise BadInput(f"unknown train.head_mode {self.head_mode!r}",
                           f"set train.head_mode to one of {', '.join(HEAD_MODES)}")


@dataclass
class TrainResult:
    """What a finished run reports."""

    best_score: float  # the selection metric of the kept weights on validation
    best_step: int
    steps: int
    history: list[dict[str, float]]
    resumed_from_step: int
    seconds: float
    samples_seen: int
    selection: dict[str, Any]  # {"metric", "best", "best_loss", "best_step"}: how the kept weights were chosen
    skipped_steps: int = 0  # steps whose loss or gradient was not finite: no update was made


MAX_NONFINITE_IN_A_ROW = 10  # then training stops, keeping the best weights so far


def _autocast(enabled: bool, device: torch.device):
    """bf16 autocast when asked for, and always on a CUDA device that supports it (where it helps)."""
    on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled or on_gpu)


class _Batch:
    """Collate the rows at a list of indices (a picklable DataLoader ``collate_fn``)."""

    def __init__(self, rows: Sequence[dict], collate) -> None:
        self.rows, self.collate = rows, collate

    def __call__(self, ids: list[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.rows[i] for i in ids])


def batches(rows: Sequence[dict], id_lists: list[list[int]], collate, device: torch.device,
            workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The collated batch of each id list, in order: tokenised ahead by ``workers`` DataLoader processes into
    pinned memory on a CUDA device, in this loop otherwise."""
    make = _Batch(rows, collate)
    if device.type != "cuda" or workers == 0 or len(id_lists) < 2:
        return (make(ids) for ids in id_lists)
    return iter(DataLoader(id_lists, batch_size=None, collate_fn=make, num_workers=workers, pin_memory=True))


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The classifier's inputs of a collated batch, on ``device`` (``option_mask`` when the batch has one)."""
    keys = ("input_ids", "attention_mask", "option_mask")
    return {k: to_device(batch[k], device) for k in keys if k in batch}


def predict(
    model: nn.Module,
    rows: Sequence[dict],
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    batch_size: int = 64,
    bf16: bool = False,
    desc: str = "eval",
    progress: bool = True,
) -> tuple[list[int], torch.Tensor]:
    """Labels and class probabilities for ``rows``; batches are length-sorted to pad less."""
    device = next(model.parameters()).device
    batches = length_batches(rows, batch_size)
    probs = torch.empty(len(rows), 0)
    chunks: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode(), _autocast(bf16, device):
        for idx in tqdm(batches, desc=desc, leave=False, disable=not progress, file=sys.stderr):
            batch = collate([rows[i] for i in idx])
            logits = model(**model_inputs(batch, device))
            chunks.append(torch.softmax(logits.float(), -1).cpu())
    model.train(was_training)
    if chunks:
        probs = torch.empty(len(rows), chunks[0].shape[1])
        probs[torch.tensor([i for idx in batches for i in idx])] = torch.cat(chunks)
    return [int(r["label"]) for r in rows], probs


def evaluate(model: nn.Module, rows: Sequence[dict], collate, metric: str, batch_size: int = 64, bf16: bool = False, progress: bool = True) -> dict[str, float]:
    """Task metrics and mean cross-entropy of ``model`` on ``rows``."""
    labels, probs = predict(model, rows, collate, batch_size, bf16, progress=progress)
    out = task_metrics(labels, probs.argmax(-1).tolist(), metric)
    picked = probs[torch.arange(len(labels)), torch.tensor(labels)]
    out["loss"] = float(-(picked.clamp_min(1e-12).log()).mean())
    return out


def _loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy; with class ``weights``, the weighted mean of :func:`torch.nn.functional.cross_entropy`."""
    if weights is None:
        return nn.functional.cross_entropy(logits, labels)
    per_row = weights[labels]
    return (nn.functional.cross_entropy(logits, labels, reduction="none") * per_row).sum() / per_row.sum()


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def run_fingerprint(parts: dict[str, Any]) -> str:
    """Stable id of what a checkpoint belongs to; a resume with another id starts fresh."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(
    model: nn.Module,
    train_rows: Sequence[dict],
    val_rows: Sequence[dict],
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    config: TrainConfig,
    metric: str,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad; leave the best ones loaded.

    The selection score is the task's ``metric`` on validation (:func:`headline`: f1, mcc, else
    accuracy), ties broken by lower validation loss; early stopping counts the validation passes
    that do not improve it. With a ``checkpoint_dir`` the run saves every ``checkpoint_every`` steps
    and resumes from there (a checkpoint that selected by another metric is another run).
    """
    if not train_rows:
        raise BadInput("the training split is empty", "check the task's prepared data")
    params = _trainable(model)
    if not params:
        raise ValueError("model has no trainable parameters")
    head = [p for n, p in params.items() if n.startswith("head.")]
    cores = [p for n, p in params.items() if not n.startswith("head.")]
    groups = [g for g in ({"params": cores, "lr": config.lr}, {"params": head, "lr": config.head_lr}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, config.warmup_ratio))
    eval_points = {
        min(steps_per_epoch, round(steps_per_epoch * (i + 1) / config.evals_per_epoch))
        for i in range(max(1, config.evals_per_epoch))
    }
    device = next(iter(params.values())).device
    loss_weights = class_weights(train_rows, config.class_weights)
    loss_weights = None if loss_weights is None else loss_weights.to(device)

    step, best_score, best_step, bad_evals = 0, (-math.inf, -math.inf), 0, 0
    history: list[dict[str, float]] = []
    best_state = {n: p.detach().clone() for n, p in params.items()}
    resumed_from, stopped, skipped, nonfinite_in_a_row = 0, False, 0, 0
    saved = load_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if saved and saved[1].get("fingerprint") == fingerprint and saved[1].get("selection_metric") == metric:
        tensors, meta = saved
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[f"param.{n}"])
                best_state[n] = tensors[f"best.{n}"].clone()
        restore_optimizer(optimizer, tensors, meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        step, best_step, bad_evals = meta["step"], meta["best_step"], meta["bad_evals"]
        best_score, history, resumed_from = tuple(meta["best_score"]), meta["history"], meta["step"]
        stopped, skipped = meta.get("stopped", False), meta.get("skipped", 0)
        print(f"resuming from step {step} of {total_steps} ({checkpoint_dir})", file=sys.stderr)

    def checkpoint() -> None:
        if checkpoint_dir is None:
            return
        tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
        tensors.update({f"best.{n}": t.cpu().contiguous() for n, t in best_state.items()})
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        meta = {
            "fingerprint": fingerprint, "step": step, "best_step": best_step, "bad_evals": bad_evals,
            "best_score": list(best_score), "history": history, "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(), "stopped": stopped, "selection_metric": metric, "skipped": skipped,
        }
        save_checkpoint(checkpoint_dir, tensors, meta)

    start_time = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    running_loss, running_correct, running_seen = 0.0, 0, 0
    samples_seen = 0  # in this process (not before a resume): the throughput denominator
    while step < total_steps and not stopped:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(config.seed * 1009 + epoch))
        id_lists = [order[b * config.batch_size : (b + 1) * config.batch_size].tolist()
                    for b in range(in_epoch, steps_per_epoch)]
        for batch_index, ids, batch in zip(range(in_epoch, steps_per_epoch), id_lists,
                                           batches(train_rows, id_lists, collate, device, config.loader_workers)):
            torch.manual_seed(config.seed * 1_000_003 + step)
            labels = to_device(batch["labels"], device)
            with _autocast(config.bf16, device):
                logits = model(**model_inputs(batch, device))
            loss = _loss(logits.float(), labels, loss_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm or math.inf)
            loss_value, norm_value = torch.stack([loss.detach(), norm.detach().to(loss.dtype)]).tolist()  # one host read
            finite = math.isfinite(loss_value) and math.isfinite(norm_value)
            if finite:  # a NaN or inf gradient would poison every weight and Adam's moments for good: skip it
                optimizer.step()
                nonfinite_in_a_row = 0
            else:
                skipped += 1
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                    bar.write(f"stopping at step {step + 1}: loss or gradient not finite in {nonfinite_in_a_row} steps "
                              f"in a row (lower train.lr, or turn bf16 off); keeping the best weights so far",
                              file=sys.stderr)
                    stopped = True
            scheduler.step()
            step += 1
            if finite:
                running_loss += loss_value * len(ids)
                running_correct += int((logits.argmax(-1) == labels).sum())
                running_seen += len(ids)
            samples_seen += len(ids)
            bar.update(1)
            if running_seen:
                bar.set_postfix(epoch=epoch + 1, loss=f"{running_loss / running_seen:.3f}",
                                acc=f"{running_correct / running_seen:.3f}")
            if batch_index + 1 in eval_points:
                scores = evaluate(model, val_rows, collate, metric, bf16=config.bf16, progress=False)
                model.train()
                record = {"step": step, "epoch": step / steps_per_epoch, "train_loss": running_loss / max(running_seen, 1),
                          "train_accuracy": running_correct / max(running_seen, 1),
                          **{f"val_{k}": v for k, v in scores.items()}}
                history.append(record)
                running_loss, running_correct, running_seen = 0.0, 0, 0
                if on_eval:
                    on_eval(record)
                score = (headline(scores, metric), -scores["loss"])
                bar.write(f"step {step}: val_{metric} {score[0]:.4f} val_loss {scores['loss']:.4f}", file=sys.stderr)
                if score > best_score:
                    best_score, best_step, bad_evals = score, step, 0
                    best_state = {n: p.detach().clone() for n, p in params.items()}
                else:
                    bad_evals += 1
                    if bad_evals >= config.patience:
                        bar.write(f"early stop: no improvement in {bad_evals} validation passes", file=sys.stderr)
                        stopped = True
                checkpoint()
            elif step % config.checkpoint_every == 0:
                checkpoint()
            if stopped or step >= total_steps:
                break
    bar.close()
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(best_state[n])
    selection = {"metric": metric, "best": best_score[0], "best_loss": -best_score[1], "best_step": best_step}
    if skipped:
        print(f"{skipped} of {step - resumed_from} steps skipped: loss or gradient not finite", file=sys.stderr)
    return TrainResult(best_score[0], best_step, step, history, resumed_from, time.perf_counter() - start_time,
                       samples_seen, selection, skipped)


def clear_checkpoint(checkpoint_dir: Path) -> None:
    """Remove a finished run's checkpoint."""
    remove_dir(checkpoint_dir)
