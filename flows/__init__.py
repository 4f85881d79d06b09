"""Prefect 3 flows: thin orchestration over :mod:`ttlora_moe` (the work lives there, tested without Prefect).

| flow | file | deployment |
|---|---|---|
| ``train-expert`` | ``train_expert.py`` | ``train-expert/local`` |
| ``train-all-experts`` | ``train_all_experts.py`` | ``train-all-experts/local`` |
| ``build-moe-bundle`` | ``build_bundle.py`` | ``build-moe-bundle/local`` |
| ``register-task`` | ``register_task.py`` | ``register-task/local`` |

Every flow takes ``profile``: the name of a params.yaml section whose sub-sections override the
others for that run (``profile=demo`` applies the small ``demo:`` budgets of ``make demo``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ttlora_moe.errors import BadInput
from ttlora_moe.params import load_params, project_dir

PROFILE_SECTIONS = ("train", "tt", "base_model", "router", "bundle")


def pipeline_params(profile: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """params.yaml with the ``profile`` section's sub-sections and then ``overrides`` merged in.

    ``prepare`` cannot be overridden here: it is DVC's, and prepared data must match dvc.lock.
    """
    params = load_params()
    layers = []
    if profile:
        if not isinstance(params.get(profile), dict):
            raise BadInput(f"params.yaml has no profile section {profile!r}", "add it or leave profile empty")
        layers.append((f"profile {profile!r}", params[profile]))
    if overrides:
        layers.append(("overrides", overrides))
    merged = copy.deepcopy(params)
    for where, layer in layers:
        for name, values in layer.items():
            if name not in PROFILE_SECTIONS or not isinstance(values, dict):
                raise BadInput(f"{where} sets {name!r}", f"a profile may set only the sections {', '.join(PROFILE_SECTIONS)}")
            merged[name] = _merge(merged.get(name) or {}, values)
    return merged


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def work_dir(*parts: str) -> Path:
    """``<project>/outputs/pipeline/...``: where flows keep their local working copies (git-ignored)."""
    path = project_dir().joinpath("outputs", "pipeline", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_services() -> None:
    """Fail fast, with one line, when the MLflow server the flows log to is unreachable."""
    from ttlora_moe.services import check_mlflow

    check_mlflow()
