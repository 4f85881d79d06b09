"""S3 through boto3 on a moto server: buckets, endpoints, credentials never in messages."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from ttlora_moe.errors import BadInput


@pytest.fixture
def s3_env(no_aws, monkeypatch, moto_endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


def test_ensure_bucket_creates_then_is_idempotent(s3_env):
    from ttlora_moe.pipeline.s3 import ensure_bucket, s3_client

    assert ensure_bucket("ttlora-test") is True
    assert ensure_bucket("ttlora-test") is False
    client = s3_client()
    assert client.meta.endpoint_url == s3_env  # MLFLOW_S3_ENDPOINT_URL is honoured
    assert "ttlora-test" in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_cli_ensure_bucket_uses_env_bucket(s3_env, monkeypatch, capsys):
    from ttlora_moe.pipeline.s3 import main

    monkeypatch.setenv("TTLORA_S3_BUCKET", "ttlora-cli")
    assert main(["ensure-bucket"]) == 0
    assert "created" in capsys.readouterr().err
    assert main(["ensure-bucket"]) == 0
    assert "exists" in capsys.readouterr().err


def test_aws_endpoint_url_wins(s3_env, monkeypatch):
    from ttlora_moe.pipeline.s3 import endpoint_url

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert endpoint_url() == "http://127.0.0.1:1"


def test_missing_credentials_is_bad_input(no_aws, monkeypatch, capsys):
    from ttlora_moe.pipeline.s3 import check_credentials, ensure_bucket, main

    with pytest.raises(BadInput, match="S3 credentials are missing"):
        check_credentials()
    with pytest.raises(BadInput, match="AWS_ACCESS_KEY_ID"):
        ensure_bucket("ttlora-test")
    assert main(["ensure-bucket", "ttlora-test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "S3 credentials are missing" in err


def test_missing_profile_is_bad_input(no_aws, monkeypatch):
    from ttlora_moe.pipeline.s3 import check_credentials

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(BadInput, match="S3 credentials are missing"):
        check_credentials()


def test_secret_is_never_in_messages(s3_env, monkeypatch):
    from ttlora_moe.pipeline.s3 import ensure_bucket

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(BadInput, match="unreachable") as info:
        ensure_bucket("ttlora-test")
    assert "testing-secret" not in str(info.value)


def test_bad_bucket_name(s3_env):
    from ttlora_moe.pipeline.s3 import ensure_bucket

    with pytest.raises(BadInput, match="not a valid S3 bucket name"):
        ensure_bucket("Bad_Name")
