"""``params.yaml``: every hyperparameter of the data pipeline, the experts and the router."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ttlora_moe.errors import BadInput


def project_dir() -> Path:
    """The project root (``TTLORA_PROJECT_DIR``, else the checkout this package lives in)."""
    env = os.environ.get("TTLORA_PROJECT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1]


def params_path() -> Path:
    """``TTLORA_PARAMS`` or ``<project>/params.yaml``."""
    return Path(os.environ.get("TTLORA_PARAMS", project_dir() / "params.yaml"))


def load_params(path: Path | None = None) -> dict[str, Any]:
    """The parsed params file; a missing or malformed file is a clear error."""
    path = Path(path) if path else params_path()
    if not path.exists():
        raise BadInput(f"{path} does not exist", "run from the project checkout or set TTLORA_PARAMS")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", "fix the file") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must be a mapping of sections", "see the README for its layout")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One section of the params (empty when absent)."""
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise BadInput(f"params section {name!r} must be a mapping", "fix params.yaml")
    return dict(value)
