"""``params.yaml``: every hyperparameter of the data pipeline, the experts and the router, and its profiles.

A *profile* is a top-level section of params.yaml (``demo:``) whose sub-sections override the
others for one run: ``load_params(profile="demo")`` is params.yaml with the small ``demo`` budgets.
The flows, the CLI (``--profile``) and the benchmarks all resolve profiles here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ttlora_moe.errors import BadInput
from ttlora_moe.paths import params_path

# Sections a profile (or a run's overrides) may replace. ``prepare`` is not one of them: it is DVC's,
# and prepared data must match dvc.lock.
PROFILE_SECTIONS = ("train", "tt", "base_model", "router", "bundle", "serve")


def read_params_file(path: Path | None = None) -> dict[str, Any]:
    """The parsed params file as it is on disk; a missing or malformed file is a clear error."""
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


def load_params(path: Path | None = None, profile: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """params.yaml with the ``profile`` section's sub-sections and then ``overrides`` merged in."""
    params = read_params_file(path)
    layers = []
    if profile:
        if not isinstance(params.get(profile), dict):
            raise BadInput(f"params.yaml has no profile section {profile!r}", "add it or leave the profile empty")
        layers.append((f"profile {profile!r}", params[profile]))
    if overrides:
        layers.append(("overrides", overrides))
    merged = copy.deepcopy(params)
    for where, layer in layers:
        for name, values in layer.items():
            if name not in PROFILE_SECTIONS or not isinstance(values, dict):
                raise BadInput(f"{where} sets {name!r}", f"a profile may set only the sections {', '.join(PROFILE_SECTIONS)}")
            merged[name] = _merge(merged.get(name) or {}, values)
    return merged


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One section of the params (empty when absent)."""
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise BadInput(f"params section {name!r} must be a mapping", "fix params.yaml")
    return dict(value)
