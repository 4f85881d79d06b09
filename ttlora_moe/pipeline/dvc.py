"""Run the ``dvc`` command: the one of this virtualenv, in the project, with failures as one line.

Every DVC operation runs ``dvc`` in a subprocess (the same thing a person types); a failure becomes
one :class:`~ttlora_moe.errors.BadInput` line with the informative part of DVC's output, secrets masked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ttlora_moe.errors import BadInput
from ttlora_moe.paths import project_dir

DVC_TIMEOUT_S = 1800


def repo_root() -> Path:
    """The DVC (and git) repository: the project directory."""
    return project_dir()


def dvc_command() -> list[str]:
    """The ``dvc`` executable beside this Python (the project's virtualenv), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    if local.exists():
        return [str(local)]
    found = shutil.which("dvc")
    if not found:
        raise BadInput("the dvc command is not installed", "run `make setup` (it installs dvc and dvc-s3)")
    return [found]


def _env() -> dict[str, str]:
    """The environment for dvc: this virtualenv first on PATH, so the stage's ``python`` is ours."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_dvc(args: list[str], root: Path | None = None, what: str | None = None) -> str:
    """Run ``dvc ARGS`` in ``root``; return stdout, or raise one BadInput line on failure.

    Never pass ``-q``: DVC's quiet mode drops its ``ERROR:`` line too, the line the failure reports
    (the output is captured anyway).
    """
    root = Path(root or project_dir())
    try:
        done = subprocess.run(dvc_command() + args, cwd=root, env=_env(), capture_output=True, text=True,
                              timeout=DVC_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"`dvc {' '.join(args)}` did not finish in {DVC_TIMEOUT_S} s", "check the DVC remote") from None
    if done.returncode != 0:
        raise BadInput(f"{what or '`dvc ' + ' '.join(args) + '`'} failed: {_dvc_error(done.stderr or done.stdout)}",
                       _dvc_fix(done.stderr or done.stdout))
    return done.stdout


def _dvc_error(output: str) -> str:
    """The informative line of dvc's output (its ``ERROR:`` line), secrets never included."""
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("ERROR")]
    line = (errors[0] if errors else (lines[-1] if lines else "no output"))
    line = re.sub(r"^ERROR:\s*", "", line)
    return re.sub(r"(?i)(secret|password|token)[^\s,;]*\s*[=:]\s*\S+", r"\1=***", line)[:400]


def _dvc_fix(output: str) -> str:
    text = output.lower()
    if "unable to locate credentials" in text or "no credentials" in text or "invalidaccesskeyid" in text:
        return "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if "not a dvc repository" in text:
        return "run `dvc init` in the project (make demo does) or use ttlora_moe.pipeline.dvc_remote.ensure_repo()"
    if "could not connect" in text or "connection" in text and "refused" in text:
        return "check that the S3 endpoint (AWS_ENDPOINT_URL) is up"
    return "see `dvc doctor` and the message above"
