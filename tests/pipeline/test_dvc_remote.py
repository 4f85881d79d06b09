"""The DVC remote in S3 (a moto server), and missing credentials."""

from __future__ import annotations

import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    configure_remote,
    default_remote_url,
    ensure_remote,
    ensure_repo,
    remote_url,
)
from ttlora_moe.pipeline.dvc_tracking import import_task


def test_s3_remote_push_to_moto(dvc_repo, no_aws, moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("TTLORA_S3", "1")
    monkeypatch.setenv("TTLORA_S3_BUCKET", "ttlora-dvc-test")
    ensure_repo()
    assert default_remote_url() == "s3://ttlora-dvc-test/dvc"
    info = configure_remote()
    assert info["bucket_created"] is True and info["endpoint"] == moto_endpoint
    config = (dvc_repo / ".dvc" / "config").read_text() + (dvc_repo / ".dvc" / "config.local").read_text()
    assert "testing-secret" not in config and "testing" not in config  # credentials stay in the environment
    assert moto_endpoint in (dvc_repo / ".dvc" / "config.local").read_text()
    # The environment's remote is this machine's: the committed config keeps the project's folder.
    assert info["config"] == ".dvc/config.local" and "s3://" not in (dvc_repo / ".dvc" / "config").read_text()
    assert remote_url() == "s3://ttlora-dvc-test/dvc" and ensure_remote() is None
    import_task("toy")

    from ttlora_moe.pipeline.s3 import s3_client

    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="ttlora-dvc-test").get("Contents", [])]
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys)


def test_s3_remote_without_credentials_is_bad_input(dvc_repo, no_aws, monkeypatch):
    monkeypatch.setenv("TTLORA_DVC_REMOTE", "s3://ttlora-dvc-test/dvc")
    with pytest.raises(BadInput, match="S3 credentials are missing"):
        check_remote_credentials()
    with pytest.raises(BadInput, match="S3 credentials are missing"):
        configure_remote()


def test_remote_url_reads_dvcs_own_config(dvc_repo, monkeypatch):
    """Whatever DVC accepts: quoted section names, spacing, the local file overriding the committed one."""
    assert remote_url() is None  # no repository yet
    ensure_repo()
    (dvc_repo / ".dvc" / "config").write_text("[core]\n    remote = Storage\n['remote \"storage\"']\n    url  =  ../shared\n")
    assert remote_url() == str(dvc_repo / "shared")
    (dvc_repo / ".dvc" / "config.local").write_text('[core]\nremote = mine\n[remote "mine"]\nurl = s3://bucket/x\n')
    assert remote_url() == "s3://bucket/x"
    (dvc_repo / ".dvc" / "config.local").write_text("[core]\nno_such_option = 1\n")
    with pytest.raises(BadInput, match="the DVC config of .* is invalid") as info:
        remote_url()
    assert "\n" not in str(info.value)
