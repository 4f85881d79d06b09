"""Where things live: the project checkout, params.yaml, task cards, data and caches.

Every location can be moved by an environment variable, so a worker, a test or a container can point
the library elsewhere without editing code.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The project root (``TTLORA_PROJECT_DIR``, else the checkout this package lives in)."""
    env = os.environ.get("TTLORA_PROJECT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1]


def params_path() -> Path:
    """``TTLORA_PARAMS`` or ``<project>/params.yaml``."""
    return Path(os.environ.get("TTLORA_PARAMS", project_dir() / "params.yaml"))


def tasks_dir() -> Path:
    """``TTLORA_TASKS_DIR`` or ``<project>/data/tasks``."""
    return Path(os.environ.get("TTLORA_TASKS_DIR", project_dir() / "data" / "tasks"))


def data_root() -> Path:
    """``TTLORA_DATA_DIR`` or ``<project>/data``: holds ``raw/`` and ``prepared/``."""
    return Path(os.environ.get("TTLORA_DATA_DIR", project_dir() / "data"))


def cache_dir() -> Path:
    """Where converted models and feature caches live (``TTLORA_CACHE``, default ~/.cache/ttlora-moe)."""
    return Path(os.environ.get("TTLORA_CACHE", Path.home() / ".cache" / "ttlora-moe"))
