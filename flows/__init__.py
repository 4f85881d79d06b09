"""Prefect 3 flows: thin orchestration over :mod:`ttlora_moe` (the work lives there, tested without Prefect).

| flow | file | deployment |
|---|---|---|
| ``train-expert`` | ``train_expert.py`` | ``train-expert/local`` |
| ``train-all-experts`` | ``train_all_experts.py`` | ``train-all-experts/local`` |
| ``build-moe-bundle`` | ``build_bundle.py`` | ``build-moe-bundle/local`` |
| ``register-task`` | ``register_task.py`` | ``register-task/local`` |

Every flow takes ``profile``: the name of a params.yaml section whose sub-sections override the
others for that run (``profile=demo`` applies the small ``demo:`` budgets of ``make demo``;
:func:`ttlora_moe.params.load_params` resolves it, as for the CLI's ``--profile``).
"""

from __future__ import annotations

from pathlib import Path

from ttlora_moe.paths import project_dir


def work_dir(*parts: str) -> Path:
    """``<project>/outputs/pipeline/...``: where flows keep their local working copies (git-ignored)."""
    path = project_dir().joinpath("outputs", "pipeline", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_services() -> None:
    """Fail fast, with one line, when the MLflow server the flows log to is unreachable."""
    from ttlora_moe.pipeline.services import check_mlflow

    check_mlflow()
