"""The expert artifact: ``expert.json`` (metadata) + ``adapter.safetensors`` (TT cores + head).

An expert directory is written to a temporary sibling and renamed into place, so it either exists
whole or not at all. Loading checks the file format, the base-model fingerprint and every tensor
shape, and rebuilds a :class:`SequenceClassifier` that reproduces the recorded test metric.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import BaseModel, load_base_model
from ttlora_moe.experts.classifier import SequenceClassifier, scores_options
from ttlora_moe.files import atomic_dir, load_tensors, read_format_json, write_json
from ttlora_moe.provenance import code_version
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import (
    attach_tt_lora,
    load_adapter_state_dict,
    save_adapter,
    tt_layout,
)

EXPERT_FORMAT = "ttlora-moe/expert@1"
META_FILE = "expert.json"
WEIGHTS_FILE = "adapter.safetensors"
# Kinds of artifact load_expert rebuilds; a `lora` artifact (benchmarks) keeps only its head, not its LoRA weights.
LOADABLE_KINDS = ("ttlora", "head-only")


@dataclass
class Expert:
    """A loaded expert: its classifier (sharing the base model) and its metadata."""

    path: Path
    meta: dict[str, Any]
    model: SequenceClassifier

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])


def save_expert(directory: Path, classifier: SequenceClassifier, meta: dict[str, Any]) -> Path:
    """Write an expert directory atomically. ``meta`` must hold task, label_names, base_model, tt."""
    for key in ("task", "label_names", "base_model", "tt"):
        if key not in meta:
            raise ValueError(f"expert metadata lacks {key!r}")
    full = {
        "format": EXPERT_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "pooling": classifier.pooling,
        "num_labels": len(meta["label_names"]),
        "layout": tt_layout(classifier.base),
        **meta,
    }
    with atomic_dir(Path(directory)) as tmp:
        save_adapter(classifier.base, tmp / WEIGHTS_FILE, extra=classifier.head_state_dict())
        write_json(tmp / META_FILE, full)
    return Path(directory)


def read_expert_meta(directory: Path) -> dict[str, Any]:
    """``expert.json`` of a directory, checked for format and required keys."""
    return read_format_json(Path(directory) / META_FILE, EXPERT_FORMAT, "re-create the expert",
                            "point to a directory written by `ttlora-moe train-expert`")


def build_classifier(base: BaseModel, meta: dict[str, Any], seed: int = 0) -> SequenceClassifier:
    """An empty classifier with the expert's TT layout attached to ``base`` (weights not loaded)."""
    if meta.get("layout"):
        attach_tt_lora(base.model, TTLoRAConfig.from_dict(meta["tt"]), seed=seed)
    return SequenceClassifier(base.model, int(meta["num_labels"]), meta.get("pooling", base.pooling), "frozen", seed,
                              options=scores_options(meta))


def load_expert(directory: Path, base: BaseModel | None = None) -> Expert:
    """Load an expert onto ``base`` (loaded from the recorded reference when not given).

    ``base.model`` is modified in place (TT layers attached), so pass a fresh base per expert.
    """
    directory = Path(directory)
    meta = read_expert_meta(directory)
    kind = meta.get("kind", "ttlora")
    if kind not in LOADABLE_KINDS:
        raise BadInput(f"{directory / META_FILE} is a {kind!r} artifact, which cannot be loaded as an expert",
                       f"load an expert of kind {' or '.join(LOADABLE_KINDS)} (ttlora-moe train-expert writes one)")
    tensors = load_tensors(directory / WEIGHTS_FILE)
    if base is None:
        base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"))
    if base.fingerprint != meta["base_model"]["fingerprint"]:
        raise BadInput(
            f"{directory} was trained on base model {meta['base_model']['fingerprint'][:12]}, "
            f"not on {base.ref} ({base.fingerprint[:12]})",
            "load it with the base model it was trained on",
        )
    classifier = build_classifier(base, meta)
    head = {k: tensors.pop(k) for k in ("head.weight", "head.bias") if k in tensors}
    try:
        classifier.load_head(head["head.weight"], head["head.bias"])
    except (KeyError, ValueError):
        raise BadInput(f"{directory / WEIGHTS_FILE} has no head matching {meta['num_labels']} labels",
                       "re-create the expert") from None
    load_adapter_state_dict(classifier.base, tensors, source=str(directory / WEIGHTS_FILE))
    classifier.to(next(base.model.parameters()).device).eval()  # the head joins the base on its device
    return Expert(directory, meta, classifier)


def expert_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Raw tensors of an expert (cores and head) without building a model."""
    return load_tensors(Path(directory) / WEIGHTS_FILE)

