"""Which code made an artifact: the package version, the git commit and a digest of the package's
sources, recorded in every artifact."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from ttlora_moe import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """The git commit of the code: the checkout's HEAD, else ``TTLORA_GIT_COMMIT`` (set in images)."""
    env = os.environ.get("TTLORA_GIT_COMMIT")
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or env
    except (OSError, subprocess.SubprocessError):
        return env


def source_digest(root: Path = PACKAGE_ROOT) -> str:
    """sha256 (16 hex digits) of the Python sources under ``root``: the code as it runs, with or without
    git (an uncommitted edit changes it; a commit that touches only docs does not)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_version() -> dict[str, str | None]:
    """Package version, git commit and source digest, recorded in every artifact."""
    return {"package": __version__, "git_commit": git_commit(), "source_digest": source_digest()}


def code_cache_key() -> dict[str, str]:
    """The code part of a cache key: package version and source digest, not the commit (a README
    commit retrains nothing, an uncommitted change to the package does)."""
    return {"package": __version__, "source_digest": source_digest()}
