"""Register a new task: validate, write, track, push; all or nothing.

New tasks (``ttlora-moe tasks add``, the ``register-task`` flow) are validated completely in a
staging folder before anything is written (:func:`~ttlora_moe.pipeline.task_validation.stage_task`),
then committed in one step that undoes itself on failure (:func:`commit_task`): card, raw data,
params ``tasks`` list, ``dvc add``, ``dvc repro prepare@<task>``, ``dvc push``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from ttlora_moe.data.cards import save_task_card
from ttlora_moe.paths import params_path, tasks_dir
from ttlora_moe.pipeline.dvc import repo_root
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    ensure_remote,
    ensure_repo,
)
from ttlora_moe.pipeline.dvc_tracking import (
    prepared_dir,
    push,
    raw_dir,
    repro_prepare,
    stage_name,
    track_raw,
)
from ttlora_moe.pipeline.params_file import add_to_task_list
from ttlora_moe.pipeline.task_validation import StagedTask, TaskSpec, stage_task


def commit_task(staged: StagedTask, root: Path | None = None, push_data: bool = True) -> dict[str, Any]:
    """Write the card, move the raw data in, list the task in params.yaml, ``dvc add``, ``dvc repro``
    and ``dvc push``. All or nothing: on any failure the project is put back as it was."""
    root = Path(root or repo_root())
    name = staged.card.name
    card_path = tasks_dir() / f"{name}.yaml"
    raw = raw_dir(name, root)
    pointer = raw.with_name(f"{name}.dvc")
    params_file = params_path()
    backups: dict[Path, Path] = {}
    created: list[Path] = []

    def backup(path: Path) -> None:
        if path.exists():
            keep = staged.staging / "backup" / f"{len(backups)}-{path.name}"
            keep.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, keep)
            else:
                shutil.copy2(path, keep)
            backups[path] = keep
        else:
            created.append(path)

    for path in (card_path, raw, pointer, params_file, prepared_dir(name, root), root / "dvc.lock"):
        backup(path)
    try:
        save_task_card(staged.card)
        if raw.exists():
            shutil.rmtree(raw)
        os.replace(staged.raw, raw)
        add_to_task_list(name, params_file)
        track_raw(name, root)
        prepared = repro_prepare(name, root)
        if push_data:
            push([str(pointer.relative_to(root)), stage_name(name)], root)
    except BaseException:
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for path, keep in backups.items():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(keep, path)
            else:
                shutil.copy2(keep, path)
        raise
    finally:
        staged.discard()
    return {"task": name, "card": str(card_path), "raw": str(raw), "pointer": str(pointer),
            "replaced": staged.replace, "labels": staged.card.label_names, "files": staged.card.files,
            "rows": staged.meta.get("rows"), **prepared}


def add_task(spec: TaskSpec, replace: bool = False, root: Path | None = None, push_data: bool = True) -> dict[str, Any]:
    """Validate and register a new task under DVC (what ``ttlora-moe tasks add`` does without ``--train``)."""
    root = Path(root or repo_root())
    check_remote_credentials(root)
    staged = stage_task(spec, replace=replace, root=root)  # nothing is written before the data is valid
    try:
        ensure_repo(root)
        ensure_remote(root)
    except BaseException:
        staged.discard()
        raise
    return commit_task(staged, root, push_data=push_data)
