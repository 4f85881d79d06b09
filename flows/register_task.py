"""Flow ``register-task``: a new dataset becomes a task (card + raw data under DVC + prepared splits),
optionally with its expert and a new bundle. Existing experts are never retrained: the new bundle
takes every other task's latest registered version.

The data goes to the DVC remote and the card, pointer, params.yaml and dvc.lock are committed to the
git branch ``git_branch`` (default: the branch the flow run's checkout is on) and pushed, so every
worker can train the task. ``source`` must be readable where the flow runs: a hub id, or a path on
that worker (for a ``remote`` deployment: a path inside its checkout or a mounted volume).

    prefect deployment run register-task/local --param name=reviews --param source=/data/reviews.csv \
        --param text=review --param label=stars --param train=true

The same from the command line: ``ttlora-moe tasks add reviews --source /data/reviews.csv --text review
--label stars --train``. Both register through :func:`ttlora_moe.pipeline.registration.register_task`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import check_services
from flows.build_bundle import build_moe_bundle_flow
from flows.train_expert import train_expert_flow
from ttlora_moe.params import load_params
from ttlora_moe.pipeline.registration import register_task
from ttlora_moe.pipeline.task_validation import TaskSpec


@task(cache_policy=NO_CACHE, task_run_name="register-{spec[name]}")
def register(spec: dict[str, Any], replace: bool, params: dict[str, Any], git_branch: str | None) -> dict[str, Any]:
    """Validate the dataset, then write, track (``dvc add``, ``dvc repro``), push and commit it: all or nothing."""
    return register_task(TaskSpec(**spec), replace=replace, params=params, git_branch=git_branch)


@flow(name="register-task", flow_run_name="register-task-{name}", persist_result=True, result_serializer="json")
def register_task_flow(
    name: str,
    source: str,
    text: str,
    label: str,
    text_pair: str | None = None,
    label_names: list[str] | None = None,
    unlabelled_values: list[str] | None = None,
    metric: str = "accuracy",
    description: str = "",
    replace: bool = False,
    train: bool = False,
    build_bundle: bool = True,
    profile: str | None = None,
    git_branch: str | None = None,
) -> dict[str, Any]:
    """Register a new task from ``source`` (a CSV/Parquet/JSONL file or folder, or a hub id).

    ``unlabelled_values``: raw label values that mean "no label" (their rows are dropped; '' = a
    blank cell); any other value is a class.
    """
    logger = get_run_logger()
    params = load_params(profile=profile)
    if train:
        check_services()
    spec = {"name": name, "source": source, "text": text, "text_pair": text_pair, "label": label,
            "label_names": label_names, "unlabelled_values": list(unlabelled_values or []), "metric": metric,
            "description": description}
    result: dict[str, Any] = {"registered": register(spec, replace, params, git_branch)}
    git = result["registered"]["git"] or {}
    logger.info("task %s registered: %s; git branch %s at %s%s", name, result["registered"]["rows"], git.get("branch"),
                git.get("commit"), f", pushed to {git['pushed_to']}" if git.get("pushed_to") else "")
    for note in result["registered"]["notes"]:
        logger.info("%s: %s", name, note)
    if train:
        result["expert"] = train_expert_flow(task=name, profile=profile)
        if build_bundle:
            result["bundle"] = build_moe_bundle_flow(versions={name: result["expert"]["version"]}, profile=profile)
    return result
