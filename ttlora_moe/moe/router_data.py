"""The router's training data: cached base features of a task-balanced mix of the experts' tasks.

Per task: a seeded sample of training rows (plus unlabelled inputs when the task has them) and of
validation rows; the label of a row is its task's position in the bundle's expert list.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import load_split, num_rows, prepared_md5, unlabelled_rows
from ttlora_moe.devices import params_device
from ttlora_moe.experts.base_model import BaseModel, load_base_model
from ttlora_moe.moe.feature_cache import CacheStats, cached_features, sample_indices
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.router import RouterConfig
from ttlora_moe.moe.second_look import every_state_spec, second_look_config, second_look_source
from ttlora_moe.moe.single_pass import router_feature_spec


def _task_data(task: str, params: dict[str, Any]) -> tuple[Path, str]:

    prepared = ensure_prepared(load_task_card(task), params)
    return prepared, prepared_md5(prepared)


def router_data(
    base: BaseModel,
    tasks: list[str],
    spec: FeatureSpec,
    config: RouterConfig,
    params: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], CacheStats, dict[str, str]]:
    """Cached features and router labels (task positions) of the train and validation mixes.

    Per task: a seeded sample of ``train_per_task`` training rows (plus ``unlabelled_per_task``
    unlabelled inputs when the task has them) and ``validation_per_task`` validation rows.
    """
    stats = CacheStats()
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"train": ([], []), "validation": ([], [])}
    versions: dict[str, str] = {}
    for position, task in enumerate(tasks):
        prepared, md5 = _task_data(task, params)
        versions[task] = md5
        # (mix, split, rows or None = read only if some are not cached, number of rows, cap, data version)
        sources: list[tuple[str, str, list[dict[str, Any]] | None, int, int, str]] = [
            ("train", "train", None, num_rows(prepared, "train"), config.train_per_task, md5),
            ("validation", "validation", None, num_rows(prepared, "validation"), config.validation_per_task, md5),
        ]
        extra = unlabelled_rows(prepared) if config.unlabelled_per_task else None
        if extra:
            rows, digest = extra
            sources.append(("train", "unlabelled", rows, len(rows), config.unlabelled_per_task, digest))
            versions[f"{task}/unlabelled"] = digest
        for mix, split, rows, total, cap, version in sources:
            indices = sample_indices(total, cap, config.seed)
            feats, st = cached_features(base, prepared, split, indices, spec, version, rows=rows,
                                        batch_size=config.batch_size_features, progress=progress)
            stats.add(st)
            out[mix][0].append(feats)
            out[mix][1].append(torch.full((len(indices),), position, dtype=torch.long))
    return {s: (torch.cat(x), torch.cat(y)) for s, (x, y) in out.items()}, stats, versions


def validation_rows(task: str, config: RouterConfig, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's validation rows whose features :func:`router_data` gives, in the same order."""
    prepared, _ = _task_data(task, params)
    rows = load_split(prepared, "validation")
    return [rows[i] for i in sample_indices(num_rows(prepared, "validation"), config.validation_per_task, config.seed)]


def _test_sample(task: str, params: dict[str, Any], cap: int, seed: int) -> tuple[Path, str, list[int]]:
    prepared, md5 = _task_data(task, params)
    return prepared, md5, sorted(sample_indices(num_rows(prepared, "test"), cap, seed))


def test_features(base: BaseModel, task: str, spec: FeatureSpec, params: dict[str, Any], cap: int, seed: int,
                  batch_size: int = 64) -> torch.Tensor:
    """Router features of the seeded sample of ``cap`` test rows that a bundle evaluation scores (cached)."""
    prepared, md5, indices = _test_sample(task, params, cap, seed)
    feats, _ = cached_features(base, prepared, "test", indices, spec, md5, batch_size=batch_size, progress=False)
    return feats


def test_rows(task: str, params: dict[str, Any], cap: int, seed: int) -> list[dict[str, Any]]:
    """The rows whose features :func:`test_features` gives, in the same order."""
    prepared, _, indices = _test_sample(task, params, cap, seed)
    rows = load_split(prepared, "test")
    return [rows[i] for i in indices]


def cache_task_features(task: str, *, params: dict[str, Any] | None = None, base_model: str | None = None,
                        progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Compute and cache the router features of one task now (e.g. right after its expert is trained).

    A later ``build_bundle`` with this task then trains only the router. Uses the params' base model,
    ``router`` section and ``train.max_length`` (what the expert and the bundle will use).
    """
    from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL
    from ttlora_moe.params import load_params, section

    start = time.perf_counter()
    params = load_params() if params is None else params
    config = RouterConfig.from_dict(section(params, "router"))
    max_length = int(section(params, "train").get("max_length", 128))
    specs = [router_feature_spec(config.features, max_length, config.route_after_layer)]
    if second_look_config(config) is not None and second_look_source(config) == "plain":
        specs.append(every_state_spec(config, max_length))  # the second router reads every state of the same rows
        # (an adapted look reads them through the task's expert: the bundle build computes and caches those)
    base_section = section(params, "base_model")
    base = load_base_model(base_model or base_section.get("ref", DEFAULT_BASE_MODEL), base_section.get("pooling"),
                           device=params_device(params, device))
    stats = CacheStats()
    for spec in specs:
        stats.add(router_data(base, [task], spec, config, params, progress)[1])
    return {"task": task, "cache_hits": stats.hits, "cache_misses": stats.computed,
            "seconds": round(time.perf_counter() - start, 2)}
