"""DVC in a temporary git repository: init, local and S3 (moto) remotes, dvc add/push/pull, the
project's own dvc.yaml `prepare` stage, byte-identical reproduction, and the params tasks list."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import init_dvc_project
from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.dvc import run_dvc
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    configure_remote,
    default_remote_url,
    ensure_remote,
    ensure_repo,
    remote_url,
)
from ttlora_moe.pipeline.dvc_tracking import import_task, pull, repro_prepare, track_raw
from ttlora_moe.pipeline.params_file import add_to_task_list

PARAMS = """\
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
    (root / "params.yaml").write_text(PARAMS)
    mirror = root.parent / "mirror" / "toy"
    mirror.mkdir(parents=True)
    words = ["good", "great", "bad", "awful"]
    pd.DataFrame([{"sentence": f"the movie {i} was {words[i % 4]}", "label": int(i % 4 < 2)} for i in range(200)]
                 ).to_parquet(mirror / "train.parquet")
    pd.DataFrame([{"sentence": f"a film {i} is {words[i % 4]}", "label": int(i % 4 < 2)} for i in range(40)]
                 ).to_parquet(mirror / "validation.parquet")
    cards = root / "data" / "tasks"
    cards.mkdir(parents=True)
    (cards / "toy.yaml").write_text(yaml.safe_dump({
        "source": "toy", "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "sentence",
        "label": "label", "label_names": ["neg", "pos"], "label_values": [0, 1]}))
    monkeypatch.setenv("TTLORA_PROJECT_DIR", str(root))
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(mirror.parent))
    for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DVC_REMOTE", "TTLORA_S3"):
        monkeypatch.delenv(name, raising=False)
    return root


def md5s(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    return make_repo(tmp_path / "repo", monkeypatch)


def test_local_remote_add_push_and_byte_identical_repro(repo):
    assert ensure_repo() is True and ensure_repo() is False  # idempotent
    assert "/.dvc-remote/" in (repo / ".dvcignore").read_text()
    info = configure_remote()
    assert info["url"] == str(repo / ".dvc-remote") and remote_url() == info["url"]
    assert "url = ../.dvc-remote" in (repo / ".dvc" / "config").read_text()  # relative: valid in any clone
    assert ensure_remote() is None  # already the default remote

    result = import_task("toy")
    prepared = repo / "data" / "prepared" / "toy"
    assert result["imported"] and (repo / "data" / "raw" / "toy.dvc").exists()
    assert {"train.parquet", "validation.parquet", "test.parquet", "meta.json"} <= set(os.listdir(prepared))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    stage = lock["stages"]["prepare@toy"]
    assert stage["params"]["params.yaml"]["prepare"]["seed"] == 13
    assert {d["path"] for d in stage["deps"]} >= {"data/raw/toy", "data/tasks/toy.yaml"}
    assert any((repo / ".dvc-remote").rglob("*")), "dvc push wrote nothing to the remote"
    before = md5s(prepared)

    # A clean checkout: no workspace data, no cache; pull the raw data, reproduce the prepared data.
    shutil.rmtree(repo / "data" / "raw" / "toy")
    shutil.rmtree(prepared)
    shutil.rmtree(repo / ".dvc" / "cache")
    pull(["data/raw/toy.dvc"])
    assert (repo / "data" / "raw" / "toy" / "train.parquet").exists()
    repro_prepare("toy", force=True)
    assert md5s(prepared) == before
    assert "up to date" in run_dvc(["status", "prepare@toy"]).lower() or \
        run_dvc(["status", "prepare@toy"]).strip() in ("", "{}")


def test_dvc_errors_are_one_line(repo):
    with pytest.raises(BadInput, match="not a dvc repository|failed"):
        repro_prepare("toy")
    ensure_repo()
    with pytest.raises(BadInput, match="missing or empty"):
        track_raw("toy")


def test_add_to_task_list_keeps_comments(tmp_path):
    flow_style = tmp_path / "a.yaml"
    flow_style.write_text(PARAMS)
    assert add_to_task_list("reviews", flow_style) is True
    assert add_to_task_list("reviews", flow_style) is False
    text = flow_style.read_text()
    assert "tasks: [toy, reviews]   # trained by default" in text and text.startswith("# Every hyperparameter")
    block = tmp_path / "b.yaml"
    block.write_text("# top\ntasks:  # list\n  - toy\n  - cola\nprepare:\n  seed: 1\n")
    add_to_task_list("reviews", block)
    assert yaml.safe_load(block.read_text()) == {"tasks": ["toy", "cola", "reviews"], "prepare": {"seed": 1}}
    assert block.read_text().startswith("# top\ntasks:  # list\n")


# --- S3 remote on a moto server --------------------------------------------------------------------


def test_s3_remote_push_to_moto(repo, no_aws, moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("TTLORA_S3", "1")
    monkeypatch.setenv("TTLORA_S3_BUCKET", "ttlora-dvc-test")
    ensure_repo()
    assert default_remote_url() == "s3://ttlora-dvc-test/dvc"
    info = configure_remote()
    assert info["bucket_created"] is True and info["endpoint"] == moto_endpoint
    config = (repo / ".dvc" / "config").read_text() + (repo / ".dvc" / "config.local").read_text()
    assert "testing-secret" not in config and "testing" not in config  # credentials stay in the environment
    assert moto_endpoint in (repo / ".dvc" / "config.local").read_text()
    # The environment's remote is this machine's: the committed config keeps the project's folder.
    assert info["config"] == ".dvc/config.local" and "s3://" not in (repo / ".dvc" / "config").read_text()
    assert remote_url() == "s3://ttlora-dvc-test/dvc" and ensure_remote() is None
    import_task("toy")

    from ttlora_moe.pipeline.s3 import s3_client

    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="ttlora-dvc-test").get("Contents", [])]
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys)


def test_s3_remote_without_credentials_is_bad_input(repo, no_aws, monkeypatch):
    monkeypatch.setenv("TTLORA_DVC_REMOTE", "s3://ttlora-dvc-test/dvc")
    with pytest.raises(BadInput, match="S3 credentials are missing"):
        check_remote_credentials()
    with pytest.raises(BadInput, match="S3 credentials are missing"):
        configure_remote()
