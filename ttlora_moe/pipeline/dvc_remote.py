"""The DVC repository and its remote.

The remote (``storage``) is, in order: ``TTLORA_DVC_REMOTE`` (a folder or ``s3://bucket/path``);
``s3://$TTLORA_S3_BUCKET/dvc`` when ``TTLORA_S3=1``; else the folder ``<project>/.dvc-remote``.
An S3 remote takes its endpoint from ``AWS_ENDPOINT_URL``/``MLFLOW_S3_ENDPOINT_URL`` (written to
the git-ignored ``.dvc/config.local``) and its credentials from boto3's chain, never from a file
this module writes; a missing bucket is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvc.config import Config, ConfigError
from dvc.config_schema import RelPath

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.dvc import repo_root, run_dvc

REMOTE_NAME = "storage"


# Paths DVC never needs to walk (they can be large; `.dvc-remote` is the default local remote).
DVCIGNORE = ("/.dvc-remote/", "/.run/", "/outputs/", "/.cache/", "/benchmarks/results/")


def ensure_repo(root: Path | None = None) -> bool:
    """``dvc init`` the project if it has no ``.dvc/`` yet (``--no-scm`` outside git); True if it did.

    Also makes DVC skip folders it never needs to walk (``.dvcignore``).
    """
    root = Path(root or repo_root())
    created = False
    if not (root / ".dvc").is_dir():
        run_dvc(["init"] + ([] if (root / ".git").exists() else ["--no-scm"]), root)
        created = True
    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [p for p in DVCIGNORE if p not in lines]
    if missing:
        with ignore.open("a") as fh:
            fh.write(("\n" if lines and lines[-1] else "") + "\n".join(missing) + "\n")
    return created


def explicit_remote_url() -> str | None:
    """The remote the environment asks for: ``TTLORA_DVC_REMOTE``, or the S3 bucket with ``TTLORA_S3=1``."""
    explicit = os.environ.get("TTLORA_DVC_REMOTE")
    if explicit:
        return explicit
    if os.environ.get("TTLORA_S3") == "1":
        return f"s3://{os.environ.get('TTLORA_S3_BUCKET', 'ttlora-moe')}/dvc"
    return None


def default_remote_url(root: Path | None = None) -> str:
    """Where DVC keeps the data: the environment's choice, else the folder ``<project>/.dvc-remote``."""
    return explicit_remote_url() or str(Path(root or repo_root()) / ".dvc-remote")


def configure_remote(url: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """Make ``url`` (default :func:`default_remote_url`) the default remote ``storage``; idempotent.

    A remote the environment chose (:func:`explicit_remote_url`) belongs to this machine: it goes to
    the git-ignored ``.dvc/config.local``, so the committed ``.dvc/config`` (the project's own
    folder) never changes under a user's feet. For ``s3://bucket/path``: credentials must resolve
    (boto3's chain), the bucket is created when missing, and the endpoint from the environment goes
    to ``.dvc/config.local`` too.
    """
    from ttlora_moe.pipeline.s3 import check_credentials, endpoint_url, ensure_bucket

    root = Path(root or repo_root())
    url = url or default_remote_url(root)
    info: dict[str, Any] = {"remote": REMOTE_NAME, "url": url}
    if url.startswith("s3://"):
        check_credentials()
        bucket = url[len("s3://"):].split("/", 1)[0]
        info["bucket_created"] = ensure_bucket(bucket)
    local = url == explicit_remote_url()
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    with _edit_config(root, "local" if local else "repo") as conf:
        conf["remote"][REMOTE_NAME] = {"url": _config_path(url, root)}
        conf["core"]["remote"] = REMOTE_NAME
    info["config"] = ".dvc/config.local" if local else ".dvc/config"
    endpoint = endpoint_url() if url.startswith("s3://") else None
    if endpoint:
        with _edit_config(root, "local") as conf:
            conf["remote"].setdefault(REMOTE_NAME, {})["endpointurl"] = endpoint
        info["endpoint"] = endpoint
    return info


def remote_url(root: Path | None = None) -> str | None:
    """The URL of the default remote (a local path made absolute), or None without a repository or default remote.

    Read with DVC's own config API (``.dvc/config``, then ``config.local``, over the user's and the system's).
    """
    root = Path(root or repo_root())
    if not (root / ".dvc").is_dir():
        return None
    try:
        conf = Config(dvc_dir=str(root / ".dvc"))
    except ConfigError as exc:
        raise BadInput(f"the DVC config of {root} is invalid: {exc}", "fix .dvc/config (or .dvc/config.local)") from None
    default = conf["core"].get("remote")
    url = conf["remote"].get(default, {}).get("url") if default else None
    return str(url) if url else None


def _config_path(url: str, root: Path) -> str:
    """A remote URL as DVC's config stores it: a folder inside the project relative to ``.dvc/`` (valid in any clone)."""
    if "://" in url or not Path(url).resolve().is_relative_to(root.resolve()):
        return url
    return RelPath(str(Path(url).resolve()))


@contextlib.contextmanager
def _edit_config(root: Path, level: str) -> Iterator[dict[str, Any]]:
    """Edit one level (``repo`` or ``local``) of the DVC config of ``root``; a bad config is BadInput."""
    try:
        with Config(dvc_dir=str(root / ".dvc")).edit(level) as conf:
            yield conf
    except ConfigError as exc:
        raise BadInput(f"cannot write the DVC config of {root}: {exc}", "fix .dvc/config (or .dvc/config.local)") from None


def effective_remote_url(root: Path | None = None) -> str:
    """The remote the next push goes to: the environment's choice, else the configured one, else the default."""
    return explicit_remote_url() or remote_url(root) or default_remote_url(root)


def ensure_remote(root: Path | None = None) -> dict[str, Any] | None:
    """Configure :func:`effective_remote_url` as the default remote unless it already is; idempotent."""
    url = effective_remote_url(root)
    if remote_url(root) == url:
        return None
    return configure_remote(url, root)


def check_remote_credentials(root: Path | None = None) -> None:
    """Raise one BadInput line when the remote is in S3 and no credentials resolve (no network call)."""
    if effective_remote_url(root).startswith("s3://"):
        from ttlora_moe.pipeline.s3 import check_credentials

        check_credentials()
