"""Flow ``register-task``: a new dataset becomes a task (card + raw data under DVC + prepared splits),
optionally with its expert and a new bundle. Existing experts are never retrained: the new bundle
takes every other task's latest registered version.

    prefect deployment run register-task/local --param name=reviews --param source=/data/reviews.csv \
        --param text=review --param label=stars --param train=true

The same from the command line: ``ttlora-moe tasks add reviews --source /data/reviews.csv --text review
--label stars --train``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import check_services
from flows.build_bundle import build_moe_bundle_flow
from flows.train_expert import train_expert_flow
from ttlora_moe.params import load_params
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    ensure_remote,
    ensure_repo,
)
from ttlora_moe.pipeline.registration import commit_task
from ttlora_moe.pipeline.task_validation import StagedTask, TaskSpec, stage_task


@task(cache_policy=NO_CACHE)
def validate_dataset(spec: dict[str, Any], replace: bool, params: dict[str, Any]) -> StagedTask:
    """Check name, source, columns, labels, classes and rows in a staging folder; nothing is written."""
    return stage_task(TaskSpec(**spec), replace=replace, params=params)


@task(cache_policy=NO_CACHE)
def register_data(staged: StagedTask) -> dict[str, Any]:
    """Write the card, track the raw data with DVC, prepare it (``dvc repro``) and push it (all or nothing)."""
    return commit_task(staged)


@flow(name="register-task", flow_run_name="register-task-{name}", persist_result=True, result_serializer="json")
def register_task_flow(
    name: str,
    source: str,
    text: str,
    label: str,
    text_pair: str | None = None,
    label_names: list[str] | None = None,
    metric: str = "accuracy",
    description: str = "",
    replace: bool = False,
    train: bool = False,
    build_bundle: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    """Register a new task from ``source`` (a CSV/Parquet/JSONL file or folder, or a hub id)."""
    logger = get_run_logger()
    params = load_params(profile=profile)
    check_remote_credentials()
    if train:
        check_services()
    spec = {"name": name, "source": source, "text": text, "text_pair": text_pair, "label": label,
            "label_names": label_names, "metric": metric, "description": description}
    ensure_repo()
    ensure_remote()
    staged = validate_dataset(spec, replace, params)
    result: dict[str, Any] = {"registered": register_data(staged)}
    logger.info("task %s registered: %s", name, result["registered"]["rows"])
    if train:
        result["expert"] = train_expert_flow(task=name, profile=profile)
        if build_bundle:
            result["bundle"] = build_moe_bundle_flow(versions={name: result["expert"]["version"]}, profile=profile)
    return result
