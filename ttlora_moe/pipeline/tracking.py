"""MLflow runs of experts: parameters, one metric point per evaluation, the training curve, lineage tags.

Every expert is an MLflow run in experiment ``ttlora-experts`` and, once trained, a version of the
registered model ``expert-<task>`` (:meth:`ExpertRun.register`).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from ttlora_moe import __version__
from ttlora_moe.experts.artifact import META_FILE, read_expert_meta
from ttlora_moe.experts.plots import plot_training_curve
from ttlora_moe.pipeline.mlflow_client import client, experiment_id, tracking_uri
from ttlora_moe.pipeline.models import expert_model_name, register_version
from ttlora_moe.pipeline.pyfunc import ExpertPyfunc, log_pyfunc
from ttlora_moe.provenance import code_version

EXPERTS_EXPERIMENT = "ttlora-experts"


CURVE_FILE = "training_curve.png"


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


def finite_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


@dataclass
class ExpertRun:
    """An open MLflow run for one expert: log evaluations as they come, then :meth:`register`."""

    task: str
    run_id: str
    logged_steps: set[int] = field(default_factory=set)

    def log_eval(self, record: dict[str, Any]) -> None:
        """``on_eval`` callback of :func:`ttlora_moe.experts.job.train_expert`: one point per evaluation."""
        step = int(record["step"])
        client().log_batch(self.run_id, metrics=metric_objects(finite_metrics(record), step))
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
        metrics = {**finite_metrics(test, "test_"),
                   **finite_metrics(meta.get("metrics", {}).get("validation", {}), "best_val_"),
                   **finite_metrics({k: summary.get(k) for k in ("trainable_params", "head_params", "lora_r16_params",
                                                          "train_seconds", "train_samples_per_second")})}
        client().log_batch(self.run_id, metrics=metric_objects(metrics, int(meta.get("steps") or 0)))
        tags = lineage_tags(meta)
        client().log_batch(self.run_id, tags=tag_objects(tags))
        with tempfile.TemporaryDirectory() as tmp:
            curve = plot_training_curve(history, Path(tmp) / CURVE_FILE,
                                        f"{self.task}: TT-LoRA expert (test accuracy {test.get('accuracy', float('nan')):.3f})")
            client().log_artifact(self.run_id, str(curve))
            client().log_artifact(self.run_id, str(expert_dir / META_FILE))
        name = expert_model_name(self.task)
        with mlflow.start_run(run_id=self.run_id):
            info = log_pyfunc("expert", ExpertPyfunc, {"expert": str(expert_dir)})
        version = register_version(info.model_uri, name, {**tags, **finite_metrics(test, "test_"), "run_id": self.run_id},
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


def metric_objects(metrics: dict[str, float], step: int):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step) for k, v in metrics.items()]


def tag_objects(tags: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


@contextlib.contextmanager
def expert_run(task: str, params: dict[str, Any], run_name: str | None = None) -> Iterator[ExpertRun]:
    """Open an MLflow run for ``task``'s expert with its parameters; FAILED if the body raises.

    Uses the client API with an explicit run id, so several experts can train in threads of one
    process (the fluent API's active run is per thread; it is only entered around ``log_model``).
    """
    c = client()
    run = c.create_run(experiment_id(EXPERTS_EXPERIMENT), run_name=run_name or f"{task}",
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
