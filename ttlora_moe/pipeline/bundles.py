"""Bundles in the registry: register a version (alias ``candidate`` when its gates pass), promote it
to ``champion`` (what serving loads: ``models:/ttlora-moe@champion``), and summarise a version.

Every bundle is a run in experiment ``ttlora-moe`` and a version of the registered model
``ttlora-moe`` whose tags pin each expert version and whose artifacts hold the bundle, its
evaluation JSON and its plots.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.gates import describe_failed_gates
from ttlora_moe.pipeline.mlflow_client import client, experiment_id, tracking_uri
from ttlora_moe.pipeline.models import (
    BUNDLE_MODEL,
    CANDIDATE,
    CHAMPION,
    latest_version,
    model_exists,
    model_version,
    model_versions,
    register_version,
)
from ttlora_moe.pipeline.pyfunc import BundlePyfunc, bundle_artifacts, log_pyfunc
from ttlora_moe.pipeline.tracking import finite_metrics, flatten, metric_objects
from ttlora_moe.provenance import code_version

BUNDLES_EXPERIMENT = "ttlora-moe"


GATES_TAG = "gates_passed"


EVALUATION_FILE = "evaluation.json"


def bundle_key(experts: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """What determines a bundle: its expert versions, the router/bundle/base params and the code."""
    import hashlib

    parts = {"experts": sorted((e["task"], int(e["version"])) for e in experts),
             "params": {k: params.get(k) for k in ("base_model", "router", "bundle")},
             "code": code_version(), "registry": tracking_uri()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_bundle(key: str) -> int | None:
    """The newest ``ttlora-moe`` version registered with ``bundle_key`` ``key``, or None."""
    if not model_exists(BUNDLE_MODEL):
        return None
    found = [int(v.version) for v in model_versions(BUNDLE_MODEL) if (v.tags or {}).get("bundle_key") == key]
    return max(found) if found else None


def register_bundle(
    bundle_dir: Path,
    evaluation: dict[str, Any],
    gates: dict[str, Any],
    experts: list[dict[str, Any]],
    evaluation_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Log a bundle run and register it as a new ``ttlora-moe`` version; alias ``candidate`` if the gates pass.

    ``evaluation_dir`` holds the PNG plots (default: ``bundle_dir``); ``evaluation`` is stored as ``evaluation.json``.
    The version's tags pin every expert (``expert.<task>`` = version) and record the gates.
    """
    bundle_dir = Path(bundle_dir)
    evaluation_dir = Path(evaluation_dir or bundle_dir)
    c = client()
    manifest = _read_manifest(bundle_dir)
    tags: dict[str, str] = {f"expert.{e['task']}": str(e["version"]) for e in experts}
    tags.update({
        "experts": ",".join(f"{e['task']}:{e['version']}" for e in experts),
        GATES_TAG: str(bool(gates["passed"])).lower(),
        "gates_failed": describe_failed_gates(gates),
        "git_commit": str(code_version().get("git_commit") or "unknown"),
        "base_fingerprint": str(manifest.get("base_model", {}).get("fingerprint", "")
                                if isinstance(manifest.get("base_model"), dict) else ""),
    })
    if key:
        tags["bundle_key"] = key
    for check in gates.get("checks", []):
        key = f"gate.{check['gate']}"
        tags[key] = ("pass" if check["passed"] else "fail") + (f" ({float(check['value']):.4f})" if check["value"] is not None else "")
    metrics = finite_metrics({k: v for k, v in evaluation.items() if not isinstance(v, (dict, list))})
    for task, row in (evaluation.get("per_task") or {}).items():
        metrics.update(finite_metrics(row, f"{task}."))
    run = c.create_run(experiment_id(BUNDLES_EXPERIMENT), run_name=f"bundle-{len(experts)}-experts", tags=tags)
    run_id = run.info.run_id
    try:
        from mlflow.entities import Param

        flat = flatten({"experts": {e["task"]: e["version"] for e in experts},
                        **{k: v for k, v in (params or {}).items() if k in ("router", "bundle")}})
        c.log_batch(run_id, metrics=metric_objects(metrics, 0), params=[Param(k, v[:6000]) for k, v in flat.items()])
        with tempfile.TemporaryDirectory() as tmp:
            eval_copy = Path(tmp) / "evaluation"
            eval_copy.mkdir()
            for file in sorted(evaluation_dir.glob("*.png")):
                shutil.copy2(file, eval_copy / file.name)
            # the evaluation the gates were computed from (with the champion comparison), not a file written before it
            (eval_copy / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, sort_keys=True, default=str))
            (eval_copy / "gates.json").write_text(json.dumps(gates, indent=2, sort_keys=True, default=str))
            for file in sorted(eval_copy.iterdir()):
                c.log_artifact(run_id, str(file), "evaluation")
            with mlflow.start_run(run_id=run_id):
                info = log_pyfunc("bundle", BundlePyfunc, {**bundle_artifacts(bundle_dir), "evaluation": str(eval_copy)})
        version = register_version(info.model_uri, BUNDLE_MODEL, {**tags, "run_id": run_id},
                                   description=_description(experts, gates, evaluation))
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    if gates["passed"]:
        c.set_registered_model_alias(BUNDLE_MODEL, CANDIDATE, str(version.version))
    return {"model": BUNDLE_MODEL, "version": int(version.version), "run_id": run_id,
            "model_uri": f"models:/{BUNDLE_MODEL}/{version.version}", "gates_passed": bool(gates["passed"]),
            "aliases": [CANDIDATE] if gates["passed"] else [], "experts": {e["task"]: e["version"] for e in experts},
            "gates": gates, "tracking_uri": tracking_uri()}


def _description(experts: list[dict[str, Any]], gates: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """The version page's text: its experts, its gates and, when a champion existed, the comparison with it."""
    from ttlora_moe.pipeline.champion import comparison_markdown

    lines = ["TT-LoRA experts + task router: " + ", ".join(f"{e['task']} v{e['version']}" for e in experts), "",
             "Gates " + ("passed." if gates["passed"] else "FAILED: " + describe_failed_gates(gates) + ".")]
    champion = evaluation.get("champion")
    if champion and champion.get("rows"):
        lines += ["", f"Against the champion (version {champion['version']}), on the same test rows:", "",
                  comparison_markdown(champion["rows"], "this version", champion["version"])]
    return "\n".join(lines)


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / "manifest.json"
    if not path.exists():
        raise BadInput(f"{path} does not exist", "build the bundle first (`ttlora-moe build-bundle`)")
    return json.loads(path.read_text())


def promote(version: int | str, force: bool = False, alias: str = CHAMPION) -> dict[str, Any]:
    """Move alias ``champion`` to bundle ``version``; refuse a version whose gates failed unless ``force``."""
    mv = model_version(BUNDLE_MODEL, version)
    tags = mv.tags or {}
    passed = tags.get(GATES_TAG) == "true"
    if not passed and not force:
        why = tags.get("gates_failed") or "no gate record"
        raise BadInput(f"{BUNDLE_MODEL} version {mv.version} failed its gates ({why})",
                       "promote a version that passed, or pass --force to override")
    c = client()
    previous = None
    with contextlib.suppress(Exception):
        previous = int(c.get_model_version_by_alias(BUNDLE_MODEL, alias).version)
    comparison = _comparison(int(mv.version), previous)
    c.set_registered_model_alias(BUNDLE_MODEL, alias, str(mv.version))
    if force and not passed:
        c.set_model_version_tag(BUNDLE_MODEL, str(mv.version), "forced_promotion", "true")
    return {"model": BUNDLE_MODEL, "alias": alias, "version": int(mv.version), "previous": previous,
            "gates_passed": passed, "forced": bool(force and not passed), "model_uri": f"models:/{BUNDLE_MODEL}@{alias}",
            "comparison": comparison}


def _comparison(version: int, previous: int | None) -> list[dict[str, Any]]:
    """Per task, ``version``'s metric next to the one it replaces (empty without a different previous version)."""
    from ttlora_moe.pipeline.champion import comparison_rows

    if previous is None or previous == version:
        return []
    try:
        return comparison_rows(bundle_summary(version)["evaluation"], bundle_summary(previous)["evaluation"])
    except Exception:  # a version registered without an evaluation (by hand): nothing to compare, still promotable
        return []


def bundle_summary(version: int | str | None = None) -> dict[str, Any]:
    """A registered bundle version (default: the latest) with its tags, aliases and evaluation JSON."""
    if version is None:
        version = latest_version(BUNDLE_MODEL)
        if version is None:
            raise BadInput(f"no version of {BUNDLE_MODEL} is registered", "run the build-moe-bundle flow first")
    mv = model_version(BUNDLE_MODEL, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"evaluation/{EVALUATION_FILE}",
                                                      dst_path=tmp)
        evaluation = json.loads(Path(path).read_text())
    tags = dict(mv.tags or {})
    return {"model": BUNDLE_MODEL, "version": int(mv.version), "aliases": list(getattr(mv, "aliases", []) or []),
            "run_id": mv.run_id, "tags": tags, "gates_passed": tags.get(GATES_TAG) == "true",
            "experts": {k[len("expert."):]: int(v) for k, v in tags.items() if k.startswith("expert.")},
            "evaluation": evaluation}
