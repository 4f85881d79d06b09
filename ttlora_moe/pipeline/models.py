"""The MLflow model registry: expert versions per task, choosing and downloading them.

Registry stages are deprecated in MLflow 3; only aliases and tags are used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.mlflow_client import client, is_not_found
from ttlora_moe.pipeline.pyfunc import find_expert_dir

EXPERT_PREFIX = "expert-"


BUNDLE_MODEL = "ttlora-moe"


CANDIDATE = "candidate"


CHAMPION = "champion"


def expert_model_name(task: str) -> str:
    """Registered-model name of a task's expert."""
    return f"{EXPERT_PREFIX}{task}"


def register_version(model_uri: str, name: str, tags: dict[str, Any], description: str | None = None):
    """A new version of ``name`` (the model is created with the first) with its tags set at creation."""
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if description:
        client().update_model_version(name, version.version, description=description)
    return version


def registered_tasks() -> list[str]:
    """Tasks that have a registered ``expert-<task>`` model (with at least one version)."""
    found = client().search_registered_models(filter_string=f"name LIKE '{EXPERT_PREFIX}%'", max_results=1000)
    return sorted(m.name[len(EXPERT_PREFIX):] for m in found if m.latest_versions or model_versions(m.name))


def model_versions(name: str) -> list[Any]:
    return list(client().search_model_versions(f"name='{name}'", max_results=10000))


def latest_version(name: str) -> int | None:
    """Highest version number of a registered model, or None."""
    versions = [int(v.version) for v in model_versions(name)]
    return max(versions) if versions else None


def has_version(name: str, version: int | str) -> bool:
    """Whether ``name`` has version ``version``."""
    try:
        client().get_model_version(name, str(version))
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise


def model_version(name: str, version: int | str):
    """The ModelVersion, or one BadInput line when it does not exist."""
    try:
        return client().get_model_version(name, str(version))
    except Exception as exc:
        if not is_not_found(exc):
            raise
        known = sorted(int(v.version) for v in model_versions(name)) if model_exists(name) else []
        listing = f"known versions: {', '.join(map(str, known))}" if known else f"{name} has no versions"
        raise BadInput(f"model version {name}/{version} does not exist ({listing})",
                       "pick an existing version (MLflow UI, Models tab)") from None


def model_exists(name: str) -> bool:
    try:
        client().get_registered_model(name)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise


def select_experts(
    tasks: list[str] | None = None,
    versions: dict[str, int | str] | None = None,
    alias: str | None = None,
) -> list[dict[str, Any]]:
    """Choose one registered version per task (nothing is downloaded).

    ``versions`` pins versions per task; tasks not pinned take ``alias`` when given, else their
    latest version. ``tasks`` defaults to every registered expert plus the pinned ones. Returns one
    dict per task, sorted: task, name, version, run_id, data_md5.
    """
    versions = {k: v for k, v in (versions or {}).items() if v is not None}
    chosen = sorted(set(tasks if tasks is not None else registered_tasks()) | set(versions))
    if not chosen:
        raise BadInput("no registered experts to bundle", "train some first (`prefect deployment run train-all-experts/local`)")
    c = client()
    out = []
    for task in chosen:
        name = expert_model_name(task)
        if task in versions:
            mv = model_version(name, versions[task])
        elif alias:
            try:
                mv = c.get_model_version_by_alias(name, alias)
            except Exception as exc:
                if not is_not_found(exc) and "alias" not in str(exc).lower():
                    raise
                raise BadInput(f"{name} has no version with alias {alias!r}", "set it in the MLflow UI or pin a version") from None
        else:
            latest = latest_version(name)
            if latest is None:
                raise BadInput(f"task {task!r} has no registered expert ({name})", f"train it first (train-expert flow for {task})")
            mv = c.get_model_version(name, str(latest))
        out.append({"task": task, "name": name, "version": int(mv.version), "run_id": mv.run_id,
                    "data_md5": (mv.tags or {}).get("data_md5")})
    return out


def download_experts(selected: list[dict[str, Any]], dest: Path) -> list[dict[str, Any]]:
    """Download each selected expert version into ``dest/<task>``; add its directory as ``dir``."""
    out = []
    for entry in selected:
        target = Path(dest) / entry["task"]
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{entry['name']}/{entry['version']}",
                                                      dst_path=str(target))
        out.append({**entry, "dir": str(find_expert_dir(Path(local)))})
    return out


def resolve_experts(
    dest: Path,
    tasks: list[str] | None = None,
    versions: dict[str, int | str] | None = None,
    alias: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`select_experts` then :func:`download_experts` into ``dest``."""
    return download_experts(select_experts(tasks, versions, alias), dest)
