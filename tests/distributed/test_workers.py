"""Workers that share nothing: ``train-all-experts`` fans its experts out to two process workers started
from two different clones (only one with a data mirror); every flow run clones its code from git, gets
its data from the DVC remote (or the mirror) and sends its expert to the MLflow registry; the bundle
is built in a third checkout from registry downloads alone. ``make test`` and ``make test-distributed`` run this."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3_ENV
from tests.distributed.conftest import BUCKET, TASKS, Cluster, git

pytestmark = pytest.mark.distributed


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def orchestrator(cluster: Cluster, tmp_path, monkeypatch) -> Iterator[Path]:
    """This process as a third machine: a fresh clone, no data mirror, its own data and cache, the cluster's services."""
    import mlflow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", cluster.origin.as_uri(), str(checkout))
    for name in ("TTLORA_DATA_MIRROR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_S3", *S3_ENV):
        monkeypatch.delenv(name, raising=False)
    env = {"TTLORA_PROJECT_DIR": str(checkout), "TTLORA_DATA_DIR": str(tmp_path / "data"),
           "TTLORA_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": cluster.mlflow_url, **cluster.s3_env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(checkout)  # the base model reference models/tiny-bert is a path in the checkout
    mlflow.set_tracking_uri(cluster.mlflow_url)
    with temporary_settings({PREFECT_API_URL: cluster.api_url}):
        try:
            yield checkout
        finally:  # this process's events and logs reach the server before the cluster stops: none left to retry at exit
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            EventsWorker.drain_all(timeout=60)
            APILogWorker.drain_all(timeout=60)
    mlflow.set_tracking_uri(None)


def test_experts_train_on_both_workers_and_the_bundle_comes_from_the_registry(cluster, orchestrator):
    import boto3
    from mlflow import MlflowClient

    from flows.train_all_experts import train_all_experts_flow

    assert all(r["git"]["pushed_to"] == "origin" for r in cluster.registered.values())  # registered from clone A
    try:
        summary = train_all_experts_flow(tasks=list(TASKS), concurrency=3, retries=0, use_deployments=True,
                                         deployment="train-expert/remote", threads_per_expert=1)
    except Exception as exc:  # what the workers saw says why
        tails = "\n".join(f"--- {name} ---\n{worker.tail(60)}" for name, worker in cluster.workers.items())
        raise AssertionError(f"train-all-experts failed: {exc}\n{tails}") from exc
    assert summary["failed"] == {} and set(summary["trained"]) == set(TASKS), summary

    client, head = MlflowClient(), git(cluster.origin, "rev-parse", "main")
    trained_by: dict[str, list[str]] = {}
    for task, expert in summary["trained"].items():
        run = client.get_run(client.get_model_version(f"expert-{task}", str(expert["version"])).run_id)
        trained_by.setdefault(run.data.tags["ttlora.worker"], []).append(task)
        assert run.data.tags["git_commit"] == head  # the flow run's code is the branch the tasks were pushed to
    assert set(trained_by) == {"worker-a", "worker-b"}, trained_by  # both workers trained
    report = os.environ.get("TTLORA_DISTRIBUTED_REPORT")  # make test-distributed prints it
    if report:
        lines = ["| expert | version | trained by | data on that worker |", "|---|---|---|---|"]
        lines += [f"| {task} | {summary['trained'][task]['version']} | {worker} | "
                  f"{'mirror' if worker == 'worker-a' else 'dvc pull from the S3 remote'} |"
                  for worker, tasks in sorted(trained_by.items()) for task in sorted(tasks)]
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text("\n".join(lines) + f"\n\nbundle: ttlora-moe version {summary['bundle']['version']}, "
                                "built from registry downloads in a third checkout\n")

    # Worker B has no mirror: the raw data of what it trained came from the DVC remote, exactly the registered bytes.
    for task in trained_by["worker-b"]:
        assert md5s(cluster.worker_dir("worker-b") / "data" / "raw" / task) == md5s(cluster.mirror / task)
    assert not any((cluster.worker_dir("worker-b") / "data" / "raw" / t).exists() for t in trained_by["worker-a"])

    # The bundle: built here, in a checkout that never held an expert, from the versions just registered.
    bundle = summary["bundle"]
    assert bundle["experts"] == {t: e["version"] for t, e in summary["trained"].items()}
    assert bundle["model_uri"] == f"models:/ttlora-moe/{bundle['version']}"
    tags = client.get_model_version("ttlora-moe", str(bundle["version"])).tags
    assert {t: int(tags[f"expert.{t}"]) for t in TASKS} == bundle["experts"]
    assert not (orchestrator / "outputs" / "pipeline" / "experts").exists()
    assert not list((orchestrator / "outputs" / "pipeline" / "bundles").iterdir())  # its working copy went with its task
    local = [s for s in strings(summary) if s.startswith("/") or str(cluster.root) in s or str(orchestrator) in s]
    assert local == []  # no result is a path on one machine's disk

    # Flow results live in the shared store (Prefect's server default result storage), not on a worker's disk.
    s3 = boto3.client("s3", endpoint_url=cluster.s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing-secret")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="prefect-results/")["KeyCount"] >= len(TASKS)
    assert not list(cluster.worker_dir("worker-b").rglob("storage/*"))
