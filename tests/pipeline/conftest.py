"""A DVC repository laid out like the project (``dvc_repo``), and a project with two toy tasks whose experts are trained and registered in a sqlite MLflow store, and a
bundle of them built and evaluated (module-scoped: each test module gets its own store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import init_dvc_project
from tests.toys import write_toy_task
from ttlora_moe.pipeline.models import resolve_experts


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, tiny_bert):
    """A DVC repository laid out like the project (``dvc_repo``), and a project with two toy tasks, tiny budgets, the tiny BERT and a fresh sqlite MLflow store."""
    root = tmp_path_factory.mktemp("registry-project")
    write_toy_task(root, "toy", "the movie {i} was {w}")
    write_toy_task(root, "toy2", "what about {i} cat {w} question")
    params = {"tasks": ["toy", "toy2"], "base_model": {"ref": tiny_bert}, "tt": {"rank": 2, "alpha": 4.0},
              "prepare": {"min_rows": 5, "validation_max_rows": 60},
              "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_train_samples": 96, "evals_per_epoch": 2},
              "router": {"max_epochs": 10, "false_abstain_rate": 0.0},  # abstention has tests of its own
              # experts of 96 rows lose to their head-only baselines: the floor gate has tests of its own
              "bundle": {"test_per_task": 40, "min_router_accuracy": 0.5, "floor_margin": 1.0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTLORA_PROJECT_DIR", str(root))
        mp.setenv("TTLORA_DATA_MIRROR", str(root / "mirror"))
        mp.setenv("TTLORA_CACHE", str(root / "cache"))
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        yield {"root": root, "params": params}
        mlflow.set_tracking_uri(None)


def train_registered(task: str, params: dict) -> dict:
    from ttlora_moe.experts.job import train_expert
    from ttlora_moe.pipeline.tracking import expert_run

    with expert_run(task, params) as run:
        summary = train_expert(task, Path(os.environ["TTLORA_PROJECT_DIR"]) / "experts" / task, params=params,
                               progress=False, on_eval=run.log_eval)
        return run.register(summary)


@pytest.fixture(scope="module")
def registered_experts(registry_env):
    return {t: train_registered(t, registry_env["params"]) for t in ("toy", "toy2")}


@pytest.fixture(scope="module")
def evaluated_bundle(registry_env, registered_experts, tmp_path_factory):
    """Build and evaluate a bundle of the two registered experts."""
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.evaluate import evaluate_bundle

    work = tmp_path_factory.mktemp("bundle")
    resolved = resolve_experts(work / "experts")
    build_bundle([Path(e["dir"]) for e in resolved], work / "bundle", params=registry_env["params"],
                 versions={e["task"]: str(e["version"]) for e in resolved}, progress=False)
    evaluation = evaluate_bundle(work / "bundle", params=registry_env["params"], output=work / "evaluation", progress=False)
    return {"dir": work / "bundle", "evaluation_dir": work / "evaluation", "evaluation": evaluation, "experts": resolved}


# --- a git + DVC repository laid out like the project, with one toy task ----------------------------

DVC_PARAMS = """\
# Every hyperparameter (a comment that must survive edits).
tasks: [toy]   # trained by default

prepare:
  seed: 13
  min_rows: 5
  validation_max_rows: 60
"""


def make_repo(root: Path, monkeypatch) -> Path:
    """A git repository laid out like the project: dvc.yaml, params.yaml, one task card and its mirror."""
    root.mkdir(parents=True)
    init_dvc_project(root)
    (root / "params.yaml").write_text(DVC_PARAMS)
    mirror = write_toy_task(root, "toy", rows=200, mirror=root.parent / "mirror")
    monkeypatch.setenv("TTLORA_PROJECT_DIR", str(root))
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(mirror.parent))
    for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DVC_REMOTE", "TTLORA_S3"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch) -> Path:
    return make_repo(tmp_path / "repo", monkeypatch)


# --- what registering a task may change ----------------------------------------------------------

SNAPSHOT_SKIP = (".git", ".dvc/cache", ".dvc/tmp", ".dvc-remote", "ttlora_moe")


def project_snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder of a project, and git's index; DVC's cache and temp files, git's
    objects, the local remote and the linked code aside. Equal snapshots: byte-for-byte the same project."""
    import hashlib

    out = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        dirs[:] = [d for d in dirs if f"{rel}/{d}".removeprefix("./") not in SNAPSHOT_SKIP]
        out[rel] = "dir"
        for name in files:
            path = Path(folder) / name
            out[path.relative_to(root).as_posix()] = (f"-> {os.readlink(path)}" if path.is_symlink()
                                                      else hashlib.sha256(path.read_bytes()).hexdigest())
    index = root / ".git" / "index"
    out[".git/index"] = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else "absent"
    return out
