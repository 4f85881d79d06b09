"""The MLflow side of the pipeline: expert runs, the model registry, bundles, gates and promotion.

- Every expert is an MLflow run in experiment ``ttlora-experts`` (params, per-evaluation metrics,
  a training-curve PNG, test metrics, lineage tags) and a version of the registered model
  ``expert-<task>`` whose artifacts are the expert directory (``expert.json`` +
  ``adapter.safetensors``), wrapped as an MLflow pyfunc.
- Every bundle is a run in experiment ``ttlora-moe`` and a version of the registered model
  ``ttlora-moe`` whose tags pin each expert version and whose artifacts hold the bundle, its
  evaluation JSON and its plots. Alias ``candidate`` moves to it only when its gates pass;
  :func:`promote` moves ``champion`` (what serving loads: ``models:/ttlora-moe@champion``).

The pyfunc wrappers are "models from code": MLflow stores a three-line Python file that builds the
wrapper, never a pickle; weights stay in safetensors and load through the project's own loaders.
Registry stages are deprecated in MLflow 3; only aliases and tags are used.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from ttlora_moe import __version__
from ttlora_moe.errors import BadInput
from ttlora_moe.experts import META_FILE, code_version, read_expert_meta

EXPERT_PREFIX = "expert-"
BUNDLE_MODEL = "ttlora-moe"
EXPERTS_EXPERIMENT = "ttlora-experts"
BUNDLES_EXPERIMENT = "ttlora-moe"
CANDIDATE = "candidate"
CHAMPION = "champion"
GATES_TAG = "gates_passed"
CURVE_FILE = "training_curve.png"
EVALUATION_FILE = "evaluation.json"
# What a served model needs besides the Python it is served from (`--env-manager local`).
PIP_REQUIREMENTS = [f"ttlora-moe=={__version__}", "torch", "transformers>=5,<6", "safetensors", "pandas"]


def expert_model_name(task: str) -> str:
    """Registered-model name of a task's expert."""
    return f"{EXPERT_PREFIX}{task}"


def client() -> MlflowClient:
    """An MLflow client on the current tracking URI (``MLFLOW_TRACKING_URI``)."""
    return MlflowClient()


def tracking_uri() -> str:
    """The tracking URI in use, without any user:password part (it goes into cache keys and logs)."""
    uri = str(mlflow.get_tracking_uri())
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "RESOURCE_DOES_NOT_EXIST" in str(exc)


def _experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client().create_experiment(name)
    except Exception as exc:  # another worker created it between our two calls
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise exc
        return experiment.experiment_id


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": "0.01"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _finite(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot global state, safe in the flows' worker threads)

def plot_training_curve(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train/validation loss and accuracy against the training step, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    steps = [r["step"] for r in history]
    for ax, keys, label in ((loss_ax, ("train_loss", "val_loss"), "loss"),
                            (acc_ax, ("train_accuracy", "val_accuracy"), "accuracy")):
        for key in keys:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(steps, values, marker="o", label=key.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------
# Pyfunc wrappers (models from code)

_MODEL_CODE = """\
# Written by ttlora_moe.registry: MLflow loads the model by running this file (no pickle).
import mlflow
from ttlora_moe.registry import {cls}

mlflow.models.set_model({cls}())
"""


def _rows(model_input: Any) -> list[dict[str, Any]]:
    """Rows of ``{"text", "text_pair"}`` from what a pyfunc or the REST server hands over."""
    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        records = pd.DataFrame(model_input).to_dict(orient="records")
    elif isinstance(model_input, str):
        records = [{"text": model_input}]
    else:
        records = [r if isinstance(r, dict) else {"text": r} for r in list(model_input)]
    rows = []
    for r in records:
        text = r.get("text")
        if not isinstance(text, str):
            raise BadInput(f"input rows need a text column, got {sorted(r)}", "send {'text': ..., 'text_pair': ...}")
        pair = r.get("text_pair")
        rows.append({"text": text, "text_pair": pair if isinstance(pair, str) else None})
    return rows


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text"),
                                         ColSpec(DataType.string, "text_pair", required=False)]))


class ExpertPyfunc(PythonModel):
    """One expert alone: ``predict(DataFrame[text, text_pair?]) -> DataFrame[label, probabilities]``."""

    def load_context(self, context) -> None:
        from ttlora_moe.base_model import load_base_model
        from ttlora_moe.data import Collator
        from ttlora_moe.experts import load_expert

        directory = _find_expert_dir(Path(context.artifacts["expert"]))
        meta = read_expert_meta(directory)
        base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"))
        self.expert = load_expert(directory, base)
        self.collate = Collator(base.tokenizer, int(meta.get("max_length", 128)))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from ttlora_moe.training import predict

        rows = [{**r, "label": 0} for r in _rows(model_input)]
        _, probs = predict(self.expert.model, rows, self.collate, progress=False)
        names = self.expert.label_names
        return pd.DataFrame([{"task": self.expert.task, "label": names[int(p.argmax())],
                              "probabilities": {n: float(x) for n, x in zip(names, p.tolist())}} for p in probs])


class BundlePyfunc(PythonModel):
    """The routed mixture: ``predict(DataFrame[text, text_pair?])`` -> one row per input with the
    chosen task, label, class probabilities, router confidence and expert version (or abstained)."""

    def load_context(self, context) -> None:
        from ttlora_moe.bundle import load_moe

        self.moe = load_moe(Path(context.artifacts["bundle"]))  # verifies every checksum

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        answers = self.moe.predict(_rows(model_input))
        return pd.DataFrame([{
            "task": a["task"], "label": a["label"], "probabilities": a["probabilities"],
            "router_confidence": a["router_confidence"], "abstained": a["abstained"],
            "expert": (a.get("expert") or {}).get("name"), "expert_version": (a.get("expert") or {}).get("version"),
        } for a in answers])


def _log_pyfunc(name: str, cls: type, artifacts: dict[str, str]):
    """Log a models-from-code pyfunc in the active run; return MLflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example.*")  # the signature says it all
        code = Path(tmp) / f"{name.replace('-', '_')}_model.py"
        code.write_text(_MODEL_CODE.format(cls=cls.__name__))
        return mlflow.pyfunc.log_model(name=name, python_model=str(code), artifacts=artifacts,
                                       pip_requirements=PIP_REQUIREMENTS, signature=_signature())


def _find_expert_dir(root: Path) -> Path:
    """The directory holding ``expert.json`` at or under ``root``."""
    if (root / META_FILE).exists():
        return root
    found = sorted(root.rglob(META_FILE))
    if not found:
        raise BadInput(f"no {META_FILE} under {root}", "the registered artifact is not a ttlora-moe expert")
    return found[0].parent


# ---------------------------------------------------------------------------------------------
# Experts

@dataclass
class ExpertRun:
    """An open MLflow run for one expert: log evaluations as they come, then :meth:`register`."""

    task: str
    run_id: str
    logged_steps: set[int] = field(default_factory=set)

    def log_eval(self, record: dict[str, Any]) -> None:
        """``on_eval`` callback of :func:`ttlora_moe.train_expert.train_expert`: one point per evaluation."""
        step = int(record["step"])
        client().log_batch(self.run_id, metrics=_metric_objects(_finite(record), step))
        self.logged_steps.add(step)

    def register(self, summary: dict[str, Any], expert_dir: Path | None = None) -> dict[str, Any]:
        """Log the trained expert's results and artifacts; register a new ``expert-<task>`` version."""
        expert_dir = Path(expert_dir or summary["artifact"])
        meta = read_expert_meta(expert_dir)
        history = meta.get("history") or []
        missed = [r for r in history if int(r["step"]) not in self.logged_steps]  # before a resume
        for record in missed:
            self.log_eval(record)
        test = meta.get("metrics", {}).get("test", summary.get("test_metrics", {}))
        metrics = {**_finite(test, "test_"),
                   **_finite(meta.get("metrics", {}).get("validation", {}), "best_val_"),
                   **_finite({k: summary.get(k) for k in ("trainable_params", "head_params", "lora_r16_params",
                                                          "train_seconds", "train_samples_per_second")})}
        client().log_batch(self.run_id, metrics=_metric_objects(metrics, int(meta.get("steps") or 0)))
        tags = lineage_tags(meta)
        client().log_batch(self.run_id, tags=_tag_objects(tags))
        with tempfile.TemporaryDirectory() as tmp:
            curve = plot_training_curve(history, Path(tmp) / CURVE_FILE,
                                        f"{self.task}: TT-LoRA expert (test accuracy {test.get('accuracy', float('nan')):.3f})")
            client().log_artifact(self.run_id, str(curve))
            client().log_artifact(self.run_id, str(expert_dir / META_FILE))
        name = expert_model_name(self.task)
        with mlflow.start_run(run_id=self.run_id):
            info = _log_pyfunc("expert", ExpertPyfunc, {"expert": str(expert_dir)})
        version = _register(info.model_uri, name, {**tags, **_finite(test, "test_"), "run_id": self.run_id},
                            description=meta.get("description") or f"TT-LoRA expert for task {self.task}")
        return {**summary, "model": name, "version": int(version.version), "run_id": self.run_id,
                "model_uri": f"models:/{name}/{version.version}", "tracking_uri": tracking_uri()}


def lineage_tags(meta: dict[str, Any]) -> dict[str, str]:
    """The tags that trace an expert to its data bytes, base model and code."""
    code = meta.get("code_version") or code_version()
    return {
        "task": str(meta["task"]),
        "data_md5": str(meta.get("data", {}).get("prepared_md5", "")),
        "base_fingerprint": str(meta.get("base_model", {}).get("fingerprint", "")),
        "base_model": str(meta.get("base_model", {}).get("ref", "")),
        "git_commit": str(code.get("git_commit") or "unknown"),
        "code_version": str(code.get("package") or __version__),
        "adapter": str(meta.get("kind", "ttlora")),
    }


def _metric_objects(metrics: dict[str, float], step: int):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step) for k, v in metrics.items()]


def _tag_objects(tags: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def _register(model_uri: str, name: str, tags: dict[str, Any], description: str | None = None):
    """A new version of ``name`` (the model is created with the first) with its tags set at creation."""
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if description:
        client().update_model_version(name, version.version, description=description)
    return version


@contextlib.contextmanager
def expert_run(task: str, params: dict[str, Any], run_name: str | None = None) -> Iterator[ExpertRun]:
    """Open an MLflow run for ``task``'s expert with its parameters; FAILED if the body raises.

    Uses the client API with an explicit run id, so several experts can train in threads of one
    process (the fluent API's active run is per thread; it is only entered around ``log_model``).
    """
    c = client()
    run = c.create_run(_experiment_id(EXPERTS_EXPERIMENT), run_name=run_name or f"{task}",
                       tags={"task": task, "mlflow.runName": run_name or task})
    run_id = run.info.run_id
    flat = flatten({k: v for k, v in params.items() if k in ("train", "tt", "base_model", "prepare")})
    items = list(flat.items())
    from mlflow.entities import Param

    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[start:start + 100]])
    try:
        yield ExpertRun(task, run_id)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")


# ---------------------------------------------------------------------------------------------
# Resolving registered experts

def registered_tasks() -> list[str]:
    """Tasks that have a registered ``expert-<task>`` model (with at least one version)."""
    found = client().search_registered_models(filter_string=f"name LIKE '{EXPERT_PREFIX}%'", max_results=1000)
    return sorted(m.name[len(EXPERT_PREFIX):] for m in found if m.latest_versions or _versions(m.name))


def _versions(name: str) -> list[Any]:
    return list(client().search_model_versions(f"name='{name}'", max_results=10000))


def latest_version(name: str) -> int | None:
    """Highest version number of a registered model, or None."""
    versions = [int(v.version) for v in _versions(name)]
    return max(versions) if versions else None


def has_version(name: str, version: int | str) -> bool:
    """Whether ``name`` has version ``version``."""
    try:
        client().get_model_version(name, str(version))
        return True
    except Exception as exc:
        if _not_found(exc):
            return False
        raise


def model_version(name: str, version: int | str):
    """The ModelVersion, or one BadInput line when it does not exist."""
    try:
        return client().get_model_version(name, str(version))
    except Exception as exc:
        if not _not_found(exc):
            raise
        known = sorted(int(v.version) for v in _versions(name)) if _model_exists(name) else []
        listing = f"known versions: {', '.join(map(str, known))}" if known else f"{name} has no versions"
        raise BadInput(f"model version {name}/{version} does not exist ({listing})",
                       "pick an existing version (MLflow UI, Models tab)") from None


def _model_exists(name: str) -> bool:
    try:
        client().get_registered_model(name)
        return True
    except Exception as exc:
        if _not_found(exc):
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
                if not _not_found(exc) and "alias" not in str(exc).lower():
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
        out.append({**entry, "dir": str(_find_expert_dir(Path(local)))})
    return out


def resolve_experts(
    dest: Path,
    tasks: list[str] | None = None,
    versions: dict[str, int | str] | None = None,
    alias: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`select_experts` then :func:`download_experts` into ``dest``."""
    return download_experts(select_experts(tasks, versions, alias), dest)


# ---------------------------------------------------------------------------------------------
# Gates, bundles, promotion

def check_gates(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gates of a bundle evaluation (:func:`ttlora_moe.evaluate.evaluate_bundle` computes them
    from params.yaml ``bundle``: ``min_router_accuracy``, ``max_retention_drop``), as
    ``{"passed": bool, "checks": [{"gate", "value", "threshold", "kind", "passed"}]}``.
    An evaluation without gates does not pass."""
    checks = []
    for name, gate in sorted((evaluation.get("gates") or {}).items()):
        kind = "min" if "min" in gate else "max"
        checks.append({"gate": name, "value": gate.get("value"), "threshold": gate.get(kind), "kind": kind,
                       "passed": bool(gate.get("passed"))})
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks}


def describe_failed_gates(gates: dict[str, Any]) -> str:
    """One line naming the failed gates, e.g. ``router_test_accuracy 0.912 < 0.950``."""
    if not gates.get("checks"):
        return "no gates were evaluated"
    parts = []
    for c in gates["checks"]:
        if c["passed"]:
            continue
        value = "missing" if c["value"] is None else f"{float(c['value']):.3f}"
        threshold = "?" if c["threshold"] is None else f"{float(c['threshold']):.3f}"
        parts.append(f"{c['gate']} {value} {'<' if c['kind'] == 'min' else '>'} {threshold}")
    return "; ".join(parts) or "none"


def bundle_key(experts: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """What determines a bundle: its expert versions, the router/bundle/base params and the code."""
    import hashlib

    parts = {"experts": sorted((e["task"], int(e["version"])) for e in experts),
             "params": {k: params.get(k) for k in ("base_model", "router", "bundle")},
             "code": code_version(), "registry": tracking_uri()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_bundle(key: str) -> int | None:
    """The newest ``ttlora-moe`` version registered with ``bundle_key`` ``key``, or None."""
    if not _model_exists(BUNDLE_MODEL):
        return None
    found = [int(v.version) for v in _versions(BUNDLE_MODEL) if (v.tags or {}).get("bundle_key") == key]
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

    ``evaluation_dir`` holds ``evaluation.json`` and the PNG plots (default: ``bundle_dir``).
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
    metrics = _finite({k: v for k, v in evaluation.items() if not isinstance(v, (dict, list))})
    for task, row in (evaluation.get("per_task") or {}).items():
        metrics.update(_finite(row, f"{task}."))
    run = c.create_run(_experiment_id(BUNDLES_EXPERIMENT), run_name=f"bundle-{len(experts)}-experts", tags=tags)
    run_id = run.info.run_id
    try:
        from mlflow.entities import Param

        flat = flatten({"experts": {e["task"]: e["version"] for e in experts},
                        **{k: v for k, v in (params or {}).items() if k in ("router", "bundle")}})
        c.log_batch(run_id, metrics=_metric_objects(metrics, 0), params=[Param(k, v[:6000]) for k, v in flat.items()])
        with tempfile.TemporaryDirectory() as tmp:
            eval_copy = Path(tmp) / "evaluation"
            eval_copy.mkdir()
            for file in sorted(evaluation_dir.glob("*.png")) + [evaluation_dir / EVALUATION_FILE]:
                if file.exists():
                    shutil.copy2(file, eval_copy / file.name)
            if not (eval_copy / EVALUATION_FILE).exists():
                (eval_copy / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, sort_keys=True, default=str))
            (eval_copy / "gates.json").write_text(json.dumps(gates, indent=2, sort_keys=True, default=str))
            for file in sorted(eval_copy.iterdir()):
                c.log_artifact(run_id, str(file), "evaluation")
            with mlflow.start_run(run_id=run_id):
                info = _log_pyfunc("bundle", BundlePyfunc, {"bundle": str(bundle_dir), "evaluation": str(eval_copy)})
        version = _register(info.model_uri, BUNDLE_MODEL, {**tags, "run_id": run_id},
                            description="TT-LoRA experts + task router: " + ", ".join(
                                f"{e['task']} v{e['version']}" for e in experts))
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
    c.set_registered_model_alias(BUNDLE_MODEL, alias, str(mv.version))
    if force and not passed:
        c.set_model_version_tag(BUNDLE_MODEL, str(mv.version), "forced_promotion", "true")
    return {"model": BUNDLE_MODEL, "alias": alias, "version": int(mv.version), "previous": previous,
            "gates_passed": passed, "forced": bool(force and not passed), "model_uri": f"models:/{BUNDLE_MODEL}@{alias}"}


def bundle_summary(version: int | str | None = None) -> dict[str, Any]:
    """A registered bundle version (default: the latest) with its tags, aliases and evaluation JSON."""
    c = client()
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
