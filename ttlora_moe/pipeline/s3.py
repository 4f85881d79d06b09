"""S3 through boto3: a client built from the environment, bucket creation, a credentials check.

Where things come from (the same names as the local stack, docker-compose and the Kubernetes pool):

- endpoint: ``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL`` (MLflow's own name), else AWS itself;
- credentials: boto3's normal chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and
  the shared config files, container or instance roles);
- bucket: the argument, else ``TTLORA_S3_BUCKET``.

Secret values are never printed or logged: messages name variables, never their values.

``python -m ttlora_moe.pipeline.s3 ensure-bucket [NAME]`` creates a missing bucket (exit 2 with one line on bad
input, e.g. missing credentials or an unreachable endpoint).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from ttlora_moe.errors import BadInput

CREDENTIALS_FIX = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
# S3's rules for bucket names (the common subset every S3 implementation accepts).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def _session():
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session()
    except ProfileNotFound as exc:
        raise BadInput(f"S3 credentials are missing: {exc}", CREDENTIALS_FIX) from None


def check_credentials(session: Any = None) -> None:
    """Raise :class:`BadInput` when boto3's credential chain resolves nothing (no network call)."""
    from botocore.exceptions import BotoCoreError

    session = session or _session()
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # a broken profile, an unreadable credentials file, ...
        raise BadInput(f"S3 credentials are missing or unreadable ({type(exc).__name__})", CREDENTIALS_FIX) from None
    if credentials is None:
        raise BadInput("S3 credentials are missing: boto3 found no access key in the environment or a profile",
                       CREDENTIALS_FIX)


def s3_client(endpoint: str | None = None):
    """A boto3 S3 client for ``endpoint`` (default: :func:`endpoint_url`) with short timeouts.

    A custom endpoint (Ceph RGW, MinIO, moto) gets path-style addressing, which they all serve
    without wildcard DNS.
    """
    from botocore.config import Config

    session = _session()
    check_credentials(session)
    endpoint = endpoint or endpoint_url()
    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint else {})
    return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1",
                          config=config)


def _where(client) -> str:
    return client.meta.endpoint_url


def ensure_bucket(name: str, client: Any = None) -> bool:
    """Create bucket ``name`` if it does not exist; True when this call created it."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as S3ConnectionError

    if not _BUCKET_RE.match(name or "") or ".." in name:
        raise BadInput(f"{name!r} is not a valid S3 bucket name",
                       "use 3-63 lowercase letters, digits, dots or hyphens, e.g. ttlora-moe")
    client = client or s3_client()
    try:
        try:
            client.head_bucket(Bucket=name)
            return False
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("403", "AccessDenied", "Forbidden"):
                raise BadInput(f"S3 at {_where(client)} refused access to bucket {name} (HTTP 403)",
                               "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or choose another TTLORA_S3_BUCKET") from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise _client_error(exc, client) from None
        region = client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": name}
        if endpoint_url() is None and region and region != "us-east-1":  # AWS wants the region spelled out
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":  # a concurrent creator won
                return False
            raise _client_error(exc, client) from None
        client.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        return True
    except (S3ConnectionError, HTTPClientError):  # refused, unresolvable, timed out
        raise BadInput(f"S3 endpoint {_where(client)} is unreachable",
                       "start it (`make demo-s3` starts a local Ceph RGW) or set AWS_ENDPOINT_URL") from None


def _client_error(exc: Exception, client: Any) -> Exception:
    """S3's answers about credentials or names become BadInput; anything else stays as it was."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return BadInput(f"S3 at {_where(client)} rejected the credentials ({code})", CREDENTIALS_FIX)
    if code == "BucketAlreadyExists":
        return BadInput("that S3 bucket name is taken by another account", "choose another TTLORA_S3_BUCKET")
    return exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.pipeline.s3", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ensure = sub.add_parser("ensure-bucket", help="create the bucket if it does not exist")
    ensure.add_argument("name", nargs="?", default=None, help="bucket (default: $TTLORA_S3_BUCKET)")
    args = parser.parse_args(argv)
    try:
        name = args.name or os.environ.get("TTLORA_S3_BUCKET")
        if not name:
            raise BadInput("no S3 bucket named", "pass NAME or set TTLORA_S3_BUCKET")
        created = ensure_bucket(name)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bucket {name} {'created' if created else 'exists'} at {endpoint_url() or 'AWS'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
