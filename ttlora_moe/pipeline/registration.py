"""Register a new task, the one way ``ttlora-moe tasks add`` and the ``register-task`` flow both use.

:func:`register_task` goes VALIDATE -> WRITE -> TRACK -> PUSH, all or nothing:

1. validate everything in a staging folder (:func:`~ttlora_moe.pipeline.task_validation.stage_task`);
   the project is not touched;
2. write: the DVC repository and remote when missing, the card, the raw data, the params ``tasks`` list;
3. track: ``dvc add data/raw/<task>``, ``dvc repro prepare@<task>``;
4. push: ``dvc push`` of the pointer and the stage.

Any failure in 2-4 (or an interrupt) puts every file those steps touch back as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
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


def register_task(spec: TaskSpec, replace: bool = False, push_data: bool = True, root: Path | None = None,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``spec``'s dataset, then write its card and raw data, track and prepare it with DVC and push it.

    ``params`` (default: params.yaml) supplies the ``prepare`` section the validation prepares with.
    Raises one BadInput line, with the project exactly as it was, when anything is wrong.
    """
    root = Path(root or repo_root())
    check_remote_credentials(root)
    staged = stage_task(spec, replace=replace, params=params, root=root)
    name = staged.card.name
    try:
        with restored_on_failure(_touched(name, root), staged.staging / "backup"):
            prepared = _commit(staged, root, push_data)
    finally:
        staged.discard()
    return {"task": name, "card": str(tasks_dir() / f"{name}.yaml"), "raw": str(raw_dir(name, root)),
            "pointer": str(raw_dir(name, root).with_name(f"{name}.dvc")), "replaced": staged.replace,
            "labels": staged.card.label_names, "files": staged.card.files, "rows": staged.meta.get("rows"),
            "notes": staged.notes, **prepared}


def _commit(staged: StagedTask, root: Path, push_data: bool) -> dict[str, Any]:
    """WRITE, TRACK and PUSH a staged task (the caller restores the project if this raises)."""
    name = staged.card.name
    ensure_repo(root)
    ensure_remote(root)
    save_task_card(staged.card)
    raw = raw_dir(name, root)
    if raw.exists():
        shutil.rmtree(raw)
    os.replace(staged.raw, raw)
    add_to_task_list(name, params_path())
    pointer = track_raw(name, root)
    prepared = repro_prepare(name, root)
    if push_data:
        push([str(pointer.relative_to(root)), stage_name(name)], root)
    return prepared


def _touched(name: str, root: Path) -> list[Path]:
    """Every path the commit of task ``name`` may create or change (DVC's cache and temp files aside)."""
    dvc_dir = root / ".dvc"
    paths = [tasks_dir() / f"{name}.yaml", raw_dir(name, root), raw_dir(name, root).with_name(f"{name}.dvc"),
             params_path(), prepared_dir(name, root), root / "dvc.lock", root / "data" / "raw" / ".gitignore",
             root / "data" / "prepared" / ".gitignore", root / ".dvcignore",
             *([dvc_dir / "config", dvc_dir / "config.local"] if dvc_dir.is_dir() else [dvc_dir]),
             *([root / ".git" / "index"] if (root / ".git").is_dir() else [])]  # dvc init stages its files
    return [_outermost_missing(path, root) for path in paths]


def _outermost_missing(path: Path, root: Path) -> Path:
    """``path``, or its outermost missing ancestor below ``root`` (so a folder the commit makes goes too)."""
    while not path.parent.exists() and path.parent != root and root in path.parent.parents:
        path = path.parent
    return path


@contextlib.contextmanager
def restored_on_failure(paths: list[Path], keep: Path) -> Iterator[None]:
    """Copy ``paths`` into ``keep``; if the block raises, put each back as it was (removing those that were absent)."""
    saved: dict[Path, Path | None] = {}
    for i, path in enumerate(paths):
        saved[path] = None
        if path.exists() or path.is_symlink():
            saved[path] = keep / f"{i}-{path.name}"
            _copy(path, saved[path])
    try:
        yield
    except BaseException:
        for path, copy in saved.items():
            _remove(path)
            if copy is not None:
                _copy(copy, path)
        raise


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, dest, symlinks=True)
    else:
        shutil.copy2(source, dest, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
