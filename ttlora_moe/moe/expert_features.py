"""Router features of each task's rows taken *through that task's own expert*.

A single-pass forward (:mod:`ttlora_moe.moe.single_pass`) routes after block ``k`` and adapts the blocks after
it, so at its end an input holds states ``0..k`` of the plain base and the later states of the expert it was
routed to. A detector that reads those later states for free (``router.second_look.source: adapted``,
:mod:`ttlora_moe.moe.second_look`) must be trained on what an in-scope input holds there: its rows through its
own expert. These are cached like the base model's features (:mod:`ttlora_moe.moe.feature_cache`), under the
base fingerprint joined with the expert's weights digest, so a rebuild with the same experts computes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.experts.artifact import WEIGHTS_FILE, load_expert
from ttlora_moe.experts.base_model import BaseModel, load_base_model
from ttlora_moe.files import sha256_file
from ttlora_moe.moe.feature_cache import CacheStats
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.router import RouterConfig
from ttlora_moe.moe.router_data import router_data


def expert_fingerprint(base_fingerprint: str, expert_dir: Path) -> str:
    """The feature-cache identity of the base adapted by the expert in ``expert_dir``."""
    return f"{base_fingerprint}+expert:{sha256_file(Path(expert_dir) / WEIGHTS_FILE)[:24]}"


def adapted_base(expert_dir: Path, ref: str, pooling: str | None = None,
                 device: str | torch.device | None = None) -> BaseModel:
    """A fresh base model with the expert's adapter attached (its forward is the expert's), fingerprinted as
    :func:`expert_fingerprint`."""
    base = load_base_model(ref, pooling, device=device)
    load_expert(Path(expert_dir), base)
    return dataclasses.replace(base, fingerprint=expert_fingerprint(base.fingerprint, expert_dir))


def expert_router_data(bases: Iterable[BaseModel], tasks: list[str], spec: FeatureSpec, config: RouterConfig,
                       params: dict[str, Any],
                       progress: bool = True) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], CacheStats]:
    """:func:`~ttlora_moe.moe.router_data.router_data`'s rows and labels (the same seeded samples), each task's
    through its own expert: ``bases`` yields, in the order of ``tasks``, the base adapted by that task's expert
    (:func:`adapted_base`; a generator keeps one in memory at a time)."""
    stats = CacheStats()
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"train": ([], []), "validation": ([], [])}
    for position, (base, task) in enumerate(zip(bases, tasks, strict=True)):
        data, st, _ = router_data(base, [task], spec, config, params, progress)
        stats.add(st)
        for split, (x, y) in data.items():
            out[split][0].append(x)
            out[split][1].append(torch.full_like(y, position))
    return {s: (torch.cat(x), torch.cat(y)) for s, (x, y) in out.items()}, stats
