"""The Prefect flows on the Prefect test harness (one per session), MLflow on sqlite, DVC in a temporary
git repository, tiny random BERT and toy data: caching, fan-out with retries and failures, bundles
with gates, and registering a new task without retraining the others."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tests.conftest import init_dvc_project
from ttlora_moe.errors import BadInput

WORDS = ["good", "great", "bad", "awful"]


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test harness (a temporary API server and database), started once per session."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-storage")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(storage)}), prefect_test_harness(server_startup_timeout=120):
        yield


def write_task(root: Path, name: str, template: str, rows: int = 240) -> None:
    mirror = root.parent / "mirror" / name
    mirror.mkdir(parents=True)
    pd.DataFrame([{"sentence": template.format(i=i, w=WORDS[i % 4]), "label": int(i % 4 < 2)} for i in range(rows)]
                 ).to_parquet(mirror / "train.parquet")
    pd.DataFrame([{"sentence": template.format(i=10_000 + i, w=WORDS[i % 4]), "label": int(i % 4 < 2)} for i in range(40)]
                 ).to_parquet(mirror / "validation.parquet")
    (root / "data" / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump({
        "source": name, "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "sentence",
        "label": "label", "label_names": ["neg", "pos"], "label_values": [0, 1]}))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, prefect_harness):
    """A git + DVC project with two toy tasks, tiny budgets, sqlite MLflow."""
    root = tmp_path_factory.mktemp("flows") / "project"
    (root / "data" / "tasks").mkdir(parents=True)
    init_dvc_project(root, '/outputs/\n')
    write_task(root, "toy", "the movie {i} was {w}")
    write_task(root, "toy2", "what about {i} cat {w} question")
    params = {"tasks": ["toy", "toy2"], "base_model": {"ref": tiny_bert}, "tt": {"rank": 2, "alpha": 4.0},
              "prepare": {"min_rows": 5, "validation_max_rows": 60},
              "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_train_samples": 96, "evals_per_epoch": 1},
              "router": {"max_epochs": 10}, "bundle": {"test_per_task": 40, "min_router_accuracy": 0.5, "floor_margin": 1.0},  # toy experts vs baselines: tests/moe
              "quick": {"train": {"max_train_samples": 64}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        env = {"TTLORA_PROJECT_DIR": str(root), "TTLORA_DATA_MIRROR": str(root.parent / "mirror"),
               "TTLORA_CACHE": str(root.parent / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{root.parent}/mlflow.db"}
        for k, v in env.items():
            mp.setenv(k, v)
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DVC_REMOTE", "TTLORA_S3"):
            mp.delenv(name, raising=False)
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        from ttlora_moe.pipeline.dvc_remote import configure_remote, ensure_repo

        ensure_repo()
        configure_remote()
        yield root
        mlflow.set_tracking_uri(None)


def versions(name: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


def test_train_expert_is_cached_on_data_params_and_code(project, monkeypatch):
    from mlflow import MlflowClient

    from flows.train_expert import train_expert_flow
    from ttlora_moe.moe.feature_cache import features_dir

    monkeypatch.setenv("TTLORA_WORKER_NAME", "worker-x")
    first = train_expert_flow(task="toy")
    assert first["version"] == 1 and first["model_uri"] == "models:/expert-toy/1"
    assert "artifact" not in first  # a registry version, not a folder on this machine
    assert MlflowClient().get_run(first["run_id"]).data.tags["ttlora.worker"] == "worker-x"
    assert list(features_dir().rglob("*.safetensors")), "the router features of the task were not cached"
    again = train_expert_flow(task="toy")  # same data md5, params and code: no training, same version
    assert again["version"] == 1 and again["run_id"] == first["run_id"] and versions("expert-toy") == [1]
    other = train_expert_flow(task="toy", profile="quick")  # other params: a new expert version
    assert other["version"] == 2 and versions("expert-toy") == [1, 2]
    assert train_expert_flow(task="toy", profile="quick")["version"] == 2
    with pytest.raises(BadInput, match="no profile section 'nope'"):
        train_expert_flow(task="toy", profile="nope")
    monkeypatch.setattr("ttlora_moe.provenance.git_commit", lambda: "0" * 40)  # another commit, same sources
    assert train_expert_flow(task="toy")["version"] == 1
    monkeypatch.setattr("ttlora_moe.provenance.source_digest", lambda: "an edited package")
    assert train_expert_flow(task="toy")["version"] == 3


def test_train_all_experts_fans_out_retries_reports_and_bundles(project, monkeypatch):
    from mlflow import MlflowClient

    import flows.train_all_experts as module

    calls: dict[str, int] = {}
    active, peak, lock = [0], [0], threading.Lock()
    real = module.train_expert_flow

    seen_threads = set()

    def flaky(task, profile=None, threads=None):
        with lock:
            calls[task] = calls.get(task, 0) + 1
            seen_threads.add(threads)
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.5)
            if task == "toy2" and calls[task] == 1:
                raise RuntimeError("transient: worker lost")
            return real(task=task, profile=profile, threads=threads)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(module, "train_expert_flow", flaky)
    summary = module.train_all_experts_flow(tasks=["toy", "toy2", "nope"], concurrency=2, retries=1,
                                            retry_backoff_s=0.1, threads_per_expert=1)
    assert calls == {"toy": 1, "toy2": 2, "nope": 1}  # retried once; bad input is not retried
    assert seen_threads == {1}
    assert peak[0] == 2  # in parallel, within the bound
    assert set(summary["trained"]) == {"toy", "toy2"} and "unknown task 'nope'" in summary["failed"]["nope"]
    bundle = summary["bundle"]
    assert bundle["experts"] == {"toy": summary["trained"]["toy"]["version"], "toy2": 1}
    assert bundle["gates_passed"] and bundle["aliases"] == ["candidate"]
    tags = MlflowClient().get_model_version("ttlora-moe", str(bundle["version"])).tags
    assert tags["expert.toy2"] == "1" and tags["gates_passed"] == "true"

    from flows.build_bundle import build_moe_bundle_flow

    again = build_moe_bundle_flow(versions={"toy": bundle["experts"]["toy"]}, tasks=["toy", "toy2"])
    assert again["unchanged"] and again["version"] == bundle["version"] and again["gates_passed"]


def test_train_all_experts_with_deployments_runs_one_flow_run_per_task_and_reports_a_failed_one(project, monkeypatch):
    import flows.train_all_experts as module

    calls = []
    lock = threading.Lock()

    def run_deployment(name, parameters, timeout, flow_run_name):
        with lock:
            calls.append((name, parameters, flow_run_name))
        done = parameters["task"] == "toy"
        state = SimpleNamespace(is_completed=lambda: done, name="Completed" if done else "Crashed",
                                message="" if done else "worker lost",
                                result=lambda: {"version": 7, "test_accuracy": 0.9, "model_uri": "models:/expert-toy/7"})
        return SimpleNamespace(name=flow_run_name, state=state)

    monkeypatch.setattr(module, "run_deployment", run_deployment)
    monkeypatch.setattr(module, "train_expert_flow", None)  # nothing may train in this process
    summary = module.train_all_experts_flow(tasks=["toy", "toy2"], use_deployments=True, deployment="train-expert/gpu",
                                            profile="quick", retries=1, retry_backoff_s=0.01, threads_per_expert=2,
                                            build_bundle=False)
    assert sorted(calls, key=str) == [
        ("train-expert/gpu", {"task": "toy", "profile": "quick", "threads": 2}, "train-expert-toy"),
        *[("train-expert/gpu", {"task": "toy2", "profile": "quick", "threads": 2}, "train-expert-toy2")] * 2,  # retried
    ]
    assert summary["trained"] == {"toy": {"version": 7, "test_accuracy": 0.9, "model_uri": "models:/expert-toy/7"}}
    assert summary["failed"] == {"toy2": "flow run train-expert-toy2 of train-expert/gpu ended Crashed: worker lost"}
    assert "bundle" not in summary


def test_build_bundle_with_a_missing_pinned_version_fails_with_one_line(project):
    from flows.build_bundle import build_moe_bundle_flow

    with pytest.raises(BadInput, match="expert-toy2/9 does not exist"):
        build_moe_bundle_flow(versions={"toy2": 9})


def test_register_task_from_csv_trains_only_the_new_expert(project, tmp_path):
    from flows.register_task import register_task_flow
    from tests.pipeline.conftest import project_snapshot

    csv = tmp_path / "reviews.csv"
    pd.DataFrame([{"review_text": f"dog {i} sat on mat {WORDS[i % 4]} red", "stars": "" if i % 50 == 7 else ["low", "high"][i % 4 < 2]}
                  for i in range(200)]).to_csv(csv, index=False)
    before = {t: versions(f"expert-{t}") for t in ("toy", "toy2")}
    bundles_before = versions("ttlora-moe")

    # Bad input fails the flow with one line, before anything is written (validation comes first).
    untouched = project_snapshot(project)
    with pytest.raises(BadInput, match="column 'review' is not in reviews.csv"):
        register_task_flow(name="reviews", source=str(csv), text="review", label="stars", train=True)
    with pytest.raises(BadInput, match="4 row\\(s\\) have an empty label in column 'stars'"):
        register_task_flow(name="reviews", source=str(csv), text="review_text", label="stars", train=True)
    assert project_snapshot(project) == untouched

    result = register_task_flow(name="reviews", source=str(csv), text="review_text", label="stars",
                                unlabelled_values=[""], train=True)
    assert result["registered"]["labels"] == ["high", "low"]
    assert result["registered"]["notes"] == ["dropped 4 row(s) with a label named by --unlabelled-values"]
    assert (project / "data" / "raw" / "reviews.dvc").exists() and (project / "data" / "prepared" / "reviews").is_dir()
    assert "reviews" in yaml.safe_load((project / "params.yaml").read_text())["tasks"]
    assert "prepare@reviews" in (project / "dvc.lock").read_text()
    assert result["expert"]["model_uri"] == "models:/expert-reviews/1"
    assert {t: versions(f"expert-{t}") for t in ("toy", "toy2")} == before  # nothing else retrained
    bundle = result["bundle"]
    assert bundle["version"] == max(bundles_before) + 1
    assert bundle["experts"] == {"reviews": 1, "toy": max(before["toy"]), "toy2": max(before["toy2"])}


@pytest.fixture
def gpu_limit():
    """``set(n)``: the Prefect global concurrency limit ``gpu`` at ``n`` slots (removed after the test)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )

    with get_client(sync_client=True) as client:
        def set_limit(n: int) -> None:
            try:
                client.update_global_concurrency_limit("gpu", GlobalConcurrencyLimitUpdate(limit=n))
            except Exception:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=n))

        yield set_limit
        client.delete_global_concurrency_limit_by_name("gpu")


@pytest.mark.parametrize("slots", [1, 2])
def test_the_gpu_limit_decides_how_many_experts_train_at_once(project, monkeypatch, gpu_limit, slots):
    """N experts share M GPUs: two train-expert runs at once train one after the other with ``gpu`` at 1
    slot, side by side with 2. The first training holds its slot until the second one starts training
    (no timing luck: with 2 slots they must overlap) or 3 s pass (with 1 slot the second cannot start)."""
    from concurrent.futures import ThreadPoolExecutor

    import flows.train_expert as module

    intervals, real, entered, lock = [], module.train_expert, [], threading.Lock()

    def timed(*args, **kwargs):
        start = time.monotonic()
        with lock:
            entered.append(start)
            first = len(entered) == 1
        try:
            if first:  # hold the slot until the second run enters training, if the limit lets it
                deadline = start + (120 if slots == 2 else 3)
                while len(entered) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            intervals.append((start, time.monotonic()))

    monkeypatch.setattr(module, "train_expert", timed)
    gpu_limit(slots)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: module.train_expert_flow(task=t, force=True), ["toy", "toy2"]))
    assert [r["model"] for r in results] == ["expert-toy", "expert-toy2"]
    (_, first_end), (second_start, _) = sorted(intervals)
    assert (first_end <= second_start) == (slots == 1)


def test_without_a_gpu_limit_training_starts_at_once_and_says_how_to_set_one(prefect_harness, monkeypatch, gpu_limit):
    """No limit named ``gpu``: the block runs without asking Prefect for a slot, and one info line (no warning)
    names the command that creates the limit; with the limit, the slot is taken through Prefect's ``concurrency``."""
    import flows.train_expert as module

    asked, real = [], module.concurrency

    def recording(*args, **kwargs):
        asked.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "concurrency", recording)
    seen: list[tuple[str, str]] = []
    logger = SimpleNamespace(**{level: (lambda msg, *a, level=level: seen.append((level, msg % a)))
                                for level in ("debug", "info", "warning", "error")})
    with module.training_slot(logger):
        ran = True
    assert ran and asked == []
    assert [level for level, _ in seen] == ["info"] and "prefect gcl create gpu --limit M" in seen[0][1]

    gpu_limit(1)
    with module.training_slot(logger):
        pass
    assert asked == [("gpu",)] and len(seen) == 1
