"""Flow ``train-expert``: prepared data -> TT-LoRA expert -> MLflow run -> ``expert-<task>`` version
-> the task's router features cached (so a bundle with this expert only trains the router).

The data comes from the worker's data mirror or, on a worker without one, from the DVC remote
(exactly the task's committed pointer, :func:`~ttlora_moe.pipeline.dvc_tracking.ensure_raw`); the
expert goes to the MLflow registry. Nothing else leaves the flow run: its result is the registered
version (``model_uri``), and the working copy of the expert stays inside the training task.

Training and registration form one cached task, keyed on exactly what determines the expert: the
task, the md5 of its prepared data, the ``train``/``tt``/``base_model`` params (with the base
model's fingerprint), the code (package version + a digest of its sources: a docs-only commit
retrains nothing, an uncommitted code change does) and the MLflow registry it goes to.
Re-running with the same inputs returns the registered version without training again (Prefect
persists the JSON result in its result storage); ``force=True`` retrains. While it trains, the task
holds one slot of the Prefect global concurrency limit ``gpu`` when one exists (``prefect gcl create
gpu --limit M``: M experts train at once, however many workers run them); without it, one info line
says so (instead of Prefect's warning on every run). The MLflow run records
the worker that trained it (tag ``ttlora.worker``: ``TTLORA_WORKER_NAME``, else the host name) and
the flow run (``prefect.flow_run_id``).

    prefect deployment run train-expert/local --param task=sst2
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from flows import check_services, work_dir, worker_name
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import prepared_md5
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, fingerprint
from ttlora_moe.experts.job import train_expert
from ttlora_moe.moe.router_data import cache_task_features
from ttlora_moe.params import load_params, section
from ttlora_moe.pipeline.dvc_tracking import ensure_raw
from ttlora_moe.pipeline.mlflow_client import client, tracking_uri
from ttlora_moe.pipeline.models import has_version
from ttlora_moe.pipeline.tracking import expert_run
from ttlora_moe.provenance import code_cache_key


TRAINING_SLOTS = "gpu"  # the Prefect global concurrency limit a training run holds one slot of (when it exists)


@contextlib.contextmanager
def training_slot(logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``gpu`` while the block runs; without that limit, run at
    once and say how to create it (Prefect's own ``concurrency`` would warn on every run)."""
    with get_client(sync_client=True) as prefect_client:
        try:
            prefect_client.read_global_concurrency_limit_by_name(TRAINING_SLOTS)
        except ObjectNotFound:
            logger.info("no Prefect global concurrency limit %r: training without waiting for a slot "
                        "(`prefect gcl create %s --limit M` lets M experts train at once)", TRAINING_SLOTS, TRAINING_SLOTS)
            yield
            return
    with concurrency(TRAINING_SLOTS, occupy=1):
        yield


@task(cache_policy=NO_CACHE, task_run_name="prepare-{task_name}")
def prepare_data(task_name: str, params: dict[str, Any]) -> str:
    """The md5 of the task's prepared splits, pulled (no mirror) or imported (mirror) and prepared when missing."""
    card = load_task_card(task_name)
    how = ensure_raw(card)
    get_run_logger().info("%s: raw data %s", task_name, {"pulled": "pulled from the DVC remote",
                                                         "mirror": "from the data mirror"}.get(how, "present"))
    return prepared_md5(ensure_prepared(card, params))


def expert_config(params: dict[str, Any]) -> dict[str, Any]:
    """The params that shape an expert, with the base model's fingerprint (a cache-key input)."""
    base = section(params, "base_model")
    ref = base.get("ref") or DEFAULT_BASE_MODEL
    return {"train": section(params, "train"), "tt": section(params, "tt"),
            "base_model": {**base, "ref": ref, "fingerprint": fingerprint(ref)}}


@task(cache_policy=INPUTS, persist_result=True, result_serializer="json", task_run_name="train-and-register-{task_name}")
def train_and_register(task_name: str, data_md5: str, config: dict[str, Any], code: dict[str, Any],
                       registry_uri: str) -> dict[str, Any]:
    """Train the expert in an MLflow run and register it as a new ``expert-<task>`` version (a registry
    reference is returned; the local working copy is not)."""
    key = hashlib.sha256(json.dumps([data_md5, config, code], sort_keys=True).encode()).hexdigest()[:12]
    output = work_dir("experts") / f"{task_name}-{key}"
    params = {"train": config["train"], "tt": config["tt"], "base_model": config["base_model"]}
    with training_slot(get_run_logger()), expert_run(task_name, params, run_name=f"{task_name}-{key}") as run:
        client().set_tag(run.run_id, "ttlora.worker", worker_name())
        client().set_tag(run.run_id, "prefect.flow_run_id", str(flow_run.get_id()))
        summary = train_expert(task_name, output, params=params, progress=False, on_eval=run.log_eval)
        registered = run.register(summary)
    return {k: v for k, v in registered.items() if k != "artifact"}


@task(cache_policy=NO_CACHE, task_run_name="router-features-{task_name}")
def cache_router_features(task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Compute the task's router features now, so a bundle build with this expert trains only the router."""
    return cache_task_features(task_name, params=params, progress=False)


@flow(name="train-expert", flow_run_name="train-expert-{task}", persist_result=True, result_serializer="json")
def train_expert_flow(task: str, profile: str | None = None, overrides: dict[str, Any] | None = None,
                      force: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Train, test, log and register the expert of ``task`` (cached on data, params and code).

    ``threads``: torch intra-op threads for this run (None: torch's default, all cores).
    """
    logger = get_run_logger()
    if threads is not None:
        if threads < 1:
            raise BadInput(f"threads must be at least 1, got {threads}", "pass threads=1 or more, or leave it empty")
        torch.set_num_threads(threads)
    params = load_params(profile=profile, overrides=overrides)
    check_services()
    data_md5 = prepare_data(task, params)
    inputs = (task, data_md5, expert_config(params), code_cache_key(), tracking_uri())
    result = train_and_register.with_options(refresh_cache=force)(*inputs)
    if not has_version(result["model"], result["version"]):  # the cache outlived its registry
        logger.warning("%s version %s is gone from the registry: training again", result["model"], result["version"])
        result = train_and_register.with_options(refresh_cache=True)(*inputs)
    logger.info("%s: test accuracy %.4f -> %s", task, result["test_accuracy"], result["model_uri"])
    features = cache_router_features(task, params)
    logger.info("%s: router features cached (%d computed, %d from cache, %.1f s)", task,
                features["cache_misses"], features["cache_hits"], features["seconds"])
    return result
