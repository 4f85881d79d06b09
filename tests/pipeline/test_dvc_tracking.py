"""DVC in a temporary git repository: init, local remote, dvc add/push/pull, the project's own
dvc.yaml `prepare` stage and byte-identical reproduction."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.dvc import run_dvc
from ttlora_moe.pipeline.dvc_remote import (
    configure_remote,
    ensure_remote,
    ensure_repo,
    remote_url,
)
from ttlora_moe.pipeline.dvc_tracking import import_task, pull, repro_prepare, track_raw


def md5s(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_local_remote_add_push_and_byte_identical_repro(dvc_repo):
    assert ensure_repo() is True and ensure_repo() is False  # idempotent
    assert "/.dvc-remote/" in (dvc_repo / ".dvcignore").read_text()
    info = configure_remote()
    assert info["url"] == str(dvc_repo / ".dvc-remote") and remote_url() == info["url"]
    assert "url = ../.dvc-remote" in (dvc_repo / ".dvc" / "config").read_text()  # relative: valid in any clone
    assert ensure_remote() is None  # already the default remote

    result = import_task("toy")
    prepared = dvc_repo / "data" / "prepared" / "toy"
    assert result["imported"] and (dvc_repo / "data" / "raw" / "toy.dvc").exists()
    assert {"train.parquet", "validation.parquet", "test.parquet", "meta.json"} <= set(os.listdir(prepared))
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    stage = lock["stages"]["prepare@toy"]
    assert stage["params"]["params.yaml"]["prepare"]["seed"] == 13
    assert {d["path"] for d in stage["deps"]} >= {"data/raw/toy", "data/tasks/toy.yaml"}
    assert any((dvc_repo / ".dvc-remote").rglob("*")), "dvc push wrote nothing to the remote"
    before = md5s(prepared)

    # A clean checkout: no workspace data, no cache; pull the raw data, reproduce the prepared data.
    shutil.rmtree(dvc_repo / "data" / "raw" / "toy")
    shutil.rmtree(prepared)
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    pull(["data/raw/toy.dvc"])
    assert (dvc_repo / "data" / "raw" / "toy" / "train.parquet").exists()
    repro_prepare("toy", force=True)
    assert md5s(prepared) == before
    assert "up to date" in run_dvc(["status", "prepare@toy"]).lower() or \
        run_dvc(["status", "prepare@toy"]).strip() in ("", "{}")


def test_dvc_errors_are_one_line(dvc_repo):
    with pytest.raises(BadInput, match="not a dvc repository|failed"):
        repro_prepare("toy")
    ensure_repo()
    with pytest.raises(BadInput, match="missing or empty"):
        track_raw("toy")
    configure_remote()
    import_task("toy")
    for folder in (dvc_repo / ".dvc-remote", dvc_repo / ".dvc" / "cache", dvc_repo / "data" / "raw" / "toy"):
        shutil.rmtree(folder)
    with pytest.raises(BadInput) as error:  # DVC's own reason, not its "Having any troubles?" footer
        pull(["data/raw/toy.dvc"])
    assert "dvc pull failed: failed to pull data from the cloud" in str(error.value), error.value


def test_a_worker_without_a_mirror_gets_exactly_the_tasks_bytes_from_the_remote(dvc_repo, tmp_path, monkeypatch):
    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.pipeline.dvc_tracking import ensure_raw

    with (dvc_repo / ".gitignore").open("a") as fh:
        fh.write("/data/raw/*\n!/data/raw/*.dvc\n")  # the project's own rule (it hides outputs from `dvc get`)
    ensure_repo()
    configure_remote()
    import_task("toy")
    raw = dvc_repo / "data" / "raw" / "toy"
    pushed = md5s(raw)
    card = load_task_card("toy")
    assert ensure_raw(card) == "present"
    shutil.rmtree(raw)
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    assert ensure_raw(card) == "mirror"  # a mirror is set: ensure_prepared imports from it
    monkeypatch.delenv("TTLORA_DATA_MIRROR")

    assert ensure_raw(card) == "pulled" and md5s(raw) == pushed  # dvc pull data/raw/toy.dvc into the checkout
    monkeypatch.setenv("TTLORA_DATA_DIR", str(tmp_path / "worker-data"))  # a data folder of the worker's own
    assert ensure_raw(card) == "pulled" and md5s(tmp_path / "worker-data" / "raw" / "toy") == pushed
    assert ensure_raw(card) == "present"

    (dvc_repo / "data" / "raw" / "toy.dvc").unlink()
    shutil.rmtree(tmp_path / "worker-data")
    with pytest.raises(BadInput, match="no DVC pointer .* and no data mirror is set"):
        ensure_raw(card)
