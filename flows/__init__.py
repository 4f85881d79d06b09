"""Prefect 3 flows: thin orchestration over :mod:`ttlora_moe` (the work lives there, tested without Prefect).

| flow | file | deployment |
|---|---|---|
| ``train-expert`` | ``train_expert.py`` | ``train-expert/local`` |
| ``train-all-experts`` | ``train_all_experts.py`` | ``train-all-experts/local`` |
| ``build-moe-bundle`` | ``build_bundle.py`` | ``build-moe-bundle/local`` |
| ``register-task`` | ``register_task.py`` | ``register-task/local`` |

Each has a ``remote`` deployment too (prefect.yaml): its flow runs clone the code from git
(``TTLORA_GIT_REPO``, ``TTLORA_GIT_BRANCH``) on any worker of the pool ``TTLORA_REMOTE_POOL``, which
shares nothing with the others but the Prefect API, MLflow, the S3 store / DVC remote and the git
repository. So no flow parameter or result is a path on one machine's disk: data comes by task name
(DVC), experts and bundles by registry version.

Every flow takes ``profile``: the name of a params.yaml section whose sub-sections override the
others for that run (``profile=demo`` applies the small ``demo:`` budgets of ``make demo``;
:func:`ttlora_moe.params.load_params` resolves it, as for the CLI's ``--profile``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ttlora_moe.paths import project_dir


def work_dir(*parts: str) -> Path:
    """``<project>/outputs/pipeline/...``: where a task keeps its local working copy (git-ignored; never a result)."""
    path = project_dir().joinpath("outputs", "pipeline", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_services() -> None:
    """Fail fast, with one line, when the MLflow server the flows log to is unreachable."""
    from ttlora_moe.pipeline.services import check_mlflow

    check_mlflow()


def worker_name() -> str:
    """Who runs this flow: ``TTLORA_WORKER_NAME`` (set per worker), else the host name."""
    return os.environ.get("TTLORA_WORKER_NAME") or socket.gethostname()
