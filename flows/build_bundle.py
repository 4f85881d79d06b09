"""Flow ``build-moe-bundle``: registered experts -> router -> evaluation -> gates -> ``ttlora-moe`` version.

Experts come from the registry (downloaded, never a local folder): every registered
``expert-<task>`` (or ``tasks``) at its latest version, at an ``alias``, or at ``versions`` pinned
per task; the result is the registered ``ttlora-moe`` version. The new ``ttlora-moe`` version's tags
pin each expert version; alias ``candidate`` moves to it only if the gates pass (params.yaml
``bundle``: router accuracy, out-of-scope AUROC, per-task floors, and no task worse than the
``champion`` on the same rows; see ttlora_moe/moe/gates.py). Promotion to
``champion`` is a person's decision (MLflow UI or ``ttlora-moe promote VERSION``). A bundle of the
same expert versions, params and code is built once: asking again returns the registered version.

    prefect deployment run build-moe-bundle/local
    prefect deployment run build-moe-bundle/local --param versions='{"sst2": 3}'
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import check_services, work_dir
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.params import load_params
from ttlora_moe.pipeline import gates as gate_checks
from ttlora_moe.pipeline import models
from ttlora_moe.pipeline.bundle_report import evaluation_table
from ttlora_moe.pipeline.bundles import (
    bundle_key,
    bundle_summary,
    find_bundle,
    register_bundle,
)
from ttlora_moe.pipeline.champion import compare_with_champion
from ttlora_moe.pipeline.dvc_tracking import ensure_raw
from ttlora_moe.pipeline.mlflow_client import tracking_uri

LOCAL_KEYS = ("bundle", "output", "plots")  # where a build wrote its files: on the machine that built it only


@task(cache_policy=NO_CACHE)
def choose_experts(tasks: list[str] | None, versions: dict[str, int] | None, alias: str | None) -> list[dict[str, Any]]:
    """One registered version per task: pinned, at ``alias``, or the latest."""
    return models.select_experts(tasks, versions, alias)


@task(cache_policy=NO_CACHE, task_run_name="bundle-{key}")
def bundle(chosen: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
    """Download the chosen expert versions from the registry, train the router on cached base-model
    features, evaluate on the experts' mixed test sets, check the gates and register the bundle.

    All of it happens in one temporary working folder that does not outlive this task: what leaves
    it is the registered version and its evaluation.
    """
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.bundle import bundle_params
    from ttlora_moe.moe.evaluate import evaluate_bundle
    from ttlora_moe.params import section

    logger = get_run_logger()
    for expert in chosen:  # the router trains and the bundle is evaluated on the tasks' data: pull what is missing
        ensure_raw(load_task_card(expert["task"]))
    _pull_out_of_scope_task(params, [e["task"] for e in chosen], logger)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=work_dir("bundles")) as tmp:
        root = Path(tmp)
        experts = models.download_experts(chosen, root / "experts")
        built = build_bundle([Path(e["dir"]) for e in experts], root / "bundle", params=params,
                             versions={e["task"]: str(e["version"]) for e in experts}, progress=False)
        sec = built["seconds"]
        logger.info("bundle of %d experts built in %.1f s: router trained in %.1f s on features of %d inputs "
                    "(%d from the cache, %d computed in %.1f s)", len(experts), sec["total"], sec["router"],
                    built["cache_hits"] + built["cache_misses"], built["cache_hits"], built["cache_misses"],
                    sec["features"])
        if built["second_look"]:
            look = built["second_look"]
            logger.info("second look: %.1f%% of the validation inputs (early score above %.3f) get every state of the "
                        "plain base and a second router (%.1f s, features included)",
                        100 * look["validation_share_looked"], look["band"], look["seconds"])
        evaluation = evaluate_bundle(root / "bundle", params=params, output=root / "evaluation", progress=False)
        evaluation = compare_with_champion(evaluation, bundle_params(section(params, "bundle")))
        gates = gate_checks.check_gates(evaluation)
        result = register_bundle(root / "bundle", evaluation, gates, experts, root / "evaluation", params, key)
    return {**result, "evaluation": evaluation}


def _pull_out_of_scope_task(params: dict[str, Any], tasks: list[str], logger) -> None:
    """The raw data of the out-of-scope task the evaluation prefers, if this worker can get it (else the
    evaluation records why its out-of-scope gate could not be measured)."""
    from ttlora_moe.errors import BadInput
    from ttlora_moe.params import section

    wanted = section(params, "bundle").get("out_of_scope_task")
    if not wanted or wanted in tasks:
        return
    try:
        ensure_raw(load_task_card(wanted))
    except BadInput as exc:
        logger.warning("out-of-scope task %s: no data on this worker (%s)", wanted, exc)


@flow(name="build-moe-bundle", flow_run_name="build-moe-bundle", persist_result=True, result_serializer="json")
def build_moe_bundle_flow(tasks: list[str] | None = None, versions: dict[str, int] | None = None,
                          alias: str | None = None, profile: str | None = None, force: bool = False) -> dict[str, Any]:
    """Bundle registered experts, evaluate, gate and register the bundle.

    A bundle of the same expert versions, params and code that is already registered is returned
    as it is (``unchanged: true``) unless ``force``.
    """
    logger = get_run_logger()
    params = load_params(profile=profile)
    check_services()
    chosen = choose_experts(tasks, versions, alias)
    key = bundle_key(chosen, params)
    existing = None if force else find_bundle(key)
    if existing is not None:
        logger.info("ttlora-moe version %s already bundles %s with these params and code: nothing to do", existing,
                    ", ".join(f"{e['task']} v{e['version']}" for e in chosen))
        return unchanged(existing)
    result = bundle(chosen, params, key)
    evaluation, gates = result.pop("evaluation"), result["gates"]
    if gates["passed"]:
        logger.info("%s version %s: gates passed, alias candidate", result["model"], result["version"])
    else:
        logger.warning("%s version %s: gates failed (%s); no alias set", result["model"], result["version"],
                       gate_checks.describe_failed_gates(gates))
    create_markdown_artifact(key="bundle-evaluation", markdown=evaluation_table(evaluation, gates, result["model"],
                                                                         result["version"], result["experts"]),
                             description=f"ttlora-moe version {result['version']}")
    return {**result, "unchanged": False, **_headline(evaluation)}


def unchanged(version: int) -> dict[str, Any]:
    """The result of a bundle version registered earlier, in the shape of a fresh one."""
    summary = bundle_summary(version)
    gates = gate_checks.check_gates(summary["evaluation"])
    return {"model": summary["model"], "version": summary["version"], "run_id": summary["run_id"],
            "model_uri": f"models:/{summary['model']}/{summary['version']}", "gates_passed": summary["gates_passed"],
            "aliases": summary["aliases"], "experts": summary["experts"], "gates": gates,
            "tracking_uri": tracking_uri(), "unchanged": True, **_headline(summary["evaluation"])}


def _headline(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {"evaluation": {k: v for k, v in evaluation.items() if not isinstance(v, (dict, list)) and k not in LOCAL_KEYS},
            "per_task": {t: {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
                         for t, row in (evaluation.get("per_task") or {}).items()}}
