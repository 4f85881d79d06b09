"""Which code made an artifact: the package version and the git commit, recorded in every artifact."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ttlora_moe import __version__


def git_commit() -> str | None:
    """The git commit of the code: the checkout's HEAD, else ``TTLORA_GIT_COMMIT`` (set in images)."""
    env = os.environ.get("TTLORA_GIT_COMMIT")
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or env
    except (OSError, subprocess.SubprocessError):
        return env


def code_version() -> dict[str, str | None]:
    """Package version and git commit, recorded in every artifact."""
    return {"package": __version__, "git_commit": git_commit()}
