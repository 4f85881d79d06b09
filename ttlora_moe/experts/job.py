"""Train one task's expert end to end: prepared data -> TT-LoRA training -> test -> artifact.

This is the function the CLI's ``train-expert`` and the Prefect ``train-expert`` flow both call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ttlora_moe.data.batching import Collator
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.choices import MULTIPLE_CHOICE
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import load_split, prepared_md5
from ttlora_moe.devices import params_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import save_expert
from ttlora_moe.experts.base_model import (
    DEFAULT_BASE_MODEL,
    enable_gradient_checkpointing,
    load_base_model,
)
from ttlora_moe.experts.classifier import OPTIONS_HEAD, SequenceClassifier
from ttlora_moe.experts.training import (
    TrainConfig,
    clear_checkpoint,
    evaluate,
    run_fingerprint,
    train,
)
from ttlora_moe.params import load_params, section
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora, lora_equivalent_params, tt_modules

ADAPTERS = ("ttlora", "head-only", "lora")


def attach_peft_lora(model: nn.Module, tt_config: TTLoRAConfig, rank: int = 16, alpha: float = 8.0) -> None:
    """PEFT LoRA (the paper's baseline: r=16, alpha=8) on the modules TT-LoRA would adapt."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = tt_config.resolved_targets(str(model.config.model_type))
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0), model)


def train_expert(
    task: str,
    output: Path,
    *,
    params: dict[str, Any] | None = None,
    base_model: str | None = None,
    overrides: dict[str, Any] | None = None,
    tt_overrides: dict[str, Any] | None = None,
    adapter: str = "ttlora",
    progress: bool = True,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train, test and save the expert for ``task`` into ``output``; return a JSON-able summary.

    It trains on ``device`` (default params.yaml ``device``: auto); the saved expert is on the CPU.
    ``overrides`` and ``tt_overrides`` replace keys of the ``train`` and ``tt`` sections of the
    params. ``adapter`` is ``ttlora`` (the expert), ``head-only`` (only the head on the frozen base:
    the baseline an expert must beat) or ``lora`` (PEFT LoRA r=16, alpha=8 on the same modules:
    the paper's baseline; benchmarks only, its artifact is not a loadable expert).
    A killed run resumes from its checkpoint next to ``output`` when re-run with the same inputs.
    """
    params = load_params() if params is None else params
    card = load_task_card(task)
    config = TrainConfig.from_dict({**section(params, "train"), **(overrides or {})})
    tt_config = TTLoRAConfig.from_dict({**section(params, "tt"), **(tt_overrides or {})})
    base_section = section(params, "base_model")
    ref = base_model or base_section.get("ref", DEFAULT_BASE_MODEL)

    prepared = ensure_prepared(card, params)
    data_md5 = prepared_md5(prepared)
    train_rows = load_split(prepared, "train", config.max_train_samples, config.seed)
    val_rows = load_split(prepared, "validation", config.max_eval_samples, config.seed)
    test_rows = load_split(prepared, "test")

    if adapter not in ADAPTERS:
        raise BadInput(f"unknown adapter {adapter!r}", f"use one of {', '.join(ADAPTERS)}")
    target = params_device(params, device)
    base = load_base_model(ref, base_section.get("pooling"), device=target)
    if adapter == "ttlora":
        attach_tt_lora(base.model, tt_config, seed=config.seed)
    elif adapter == "lora":
        attach_peft_lora(base.model, tt_config)
    head_only = adapter == "head-only"
    if config.gradient_checkpointing and not head_only:  # head-only: no gradient goes through the base
        enable_gradient_checkpointing(base.model)
    head_mode = "trainable" if head_only else config.head_mode
    options = card.kind == MULTIPLE_CHOICE  # the head scores each option's tokens (experts/classifier.py)
    classifier = SequenceClassifier(base.model, card.num_labels, base.pooling, head_mode, config.seed,
                                    options=options).to(target)
    collate = Collator(base.tokenizer, config.max_length, options=options)

    output = Path(output)
    checkpoint_dir = output.parent / f".{output.name}.checkpoint"
    fingerprint = run_fingerprint({
        "task": task, "data": data_md5, "train": config.to_dict(), "tt": tt_config.to_dict(),
        "base": base.fingerprint, "adapter": adapter,
    })
    result = train(classifier, train_rows, val_rows, collate, config, card.metric, checkpoint_dir,
                   fingerprint, progress, on_eval)
    test = evaluate(classifier, test_rows, collate, card.metric, bf16=config.bf16, progress=progress)
    validation = evaluate(classifier, val_rows, collate, card.metric, bf16=config.bf16, progress=False)

    adapted = bool(tt_modules(base.model))
    trainable = sum(p.numel() for n, p in base.model.named_parameters() if p.requires_grad)
    head_params = sum(p.numel() for p in classifier.head.parameters())
    meta = {
        "task": task,
        "kind": adapter,
        "task_kind": card.kind,
        "label_names": card.label_names,
        "metric": card.metric,
        "selection": result.selection,
        "base_model": {"ref": ref, "fingerprint": base.fingerprint, "model_type": base.model_type,
                       "hidden_size": base.hidden_size},
        "tt": tt_config.to_dict(),
        "head_mode": head_mode,
        "head": OPTIONS_HEAD if options else "pooled",
        "max_length": config.max_length,
        "train": config.to_dict(),
        "data": {"prepared_md5": data_md5, "train_rows": len(train_rows), "validation_rows": len(val_rows),
                 "test_rows": len(test_rows)},
        "metrics": {"test": test, "validation": validation},
        "history": result.history,
        "trainable_params": trainable,
        "head_params": head_params,
        "lora_r16_params": lora_equivalent_params(base.model) if adapted else 0,
        "train_samples_per_second": round(result.samples_seen / max(result.seconds, 1e-9), 2),
        "train_seconds": round(result.seconds, 2),
        "best_step": result.best_step,
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
    }
    save_expert(output, classifier, meta)
    clear_checkpoint(checkpoint_dir)
    return {
        "task": task,
        "kind": meta["kind"],
        "test_accuracy": test["accuracy"],
        "test_metrics": test,
        "validation_accuracy": validation["accuracy"],
        "selection": result.selection,
        "trainable_params": trainable,
        "head_params": head_params,
        "lora_r16_params": meta["lora_r16_params"],
        "trainable_ratio_vs_lora": (trainable / meta["lora_r16_params"]) if meta["lora_r16_params"] else None,
        "train_seconds": meta["train_seconds"],
        "train_samples_per_second": meta["train_samples_per_second"],
        "resumed_from_step": result.resumed_from_step,
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "artifact": str(output.resolve()),
        "data_md5": data_md5,
        "base_fingerprint": base.fingerprint,
    }
