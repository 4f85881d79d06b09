"""Register a new task, the one way ``ttlora-moe tasks add`` and the ``register-task`` flow both use.

:func:`register_task` goes VALIDATE -> WRITE -> TRACK -> PUSH -> COMMIT, all or nothing:

1. validate everything in a staging folder (:func:`~ttlora_moe.pipeline.task_validation.stage_task`);
   the project is not touched;
2. write: the DVC repository and remote when missing, the card, the raw data, the params ``tasks`` list;
3. track: ``dvc add data/raw/<task>``, ``dvc repro prepare@<task>``;
4. push: ``dvc push`` of the pointer and the stage;
5. commit: the card, the pointer, params.yaml and dvc.lock (and what ``dvc init`` made) on a git
   branch (default: the checked-out one), pushed when the repository has a remote. Then a worker
   that clones the branch finds the task and pulls its data from the DVC remote.

Any failure in 2-5 (or an interrupt) puts every file those steps touch, and the branch, back as
they were. Data already pushed to the DVC remote stays there: content-addressed, unreferenced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttlora_moe.data.cards import save_task_card
from ttlora_moe.errors import BadInput
from ttlora_moe.paths import params_path, tasks_dir
from ttlora_moe.pipeline import git_repo
from ttlora_moe.pipeline.dvc import repo_root
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    ensure_remote,
    ensure_repo,
)
from ttlora_moe.pipeline.dvc_tracking import (
    pointer_path,
    prepared_dir,
    push,
    raw_dir,
    repro_prepare,
    stage_name,
    track_raw,
)
from ttlora_moe.pipeline.params_file import add_to_task_list
from ttlora_moe.pipeline.task_validation import StagedTask, TaskSpec, stage_task


def register_task(spec: TaskSpec, replace: bool = False, publish: bool = True, root: Path | None = None,
                  params: dict[str, Any] | None = None, git_branch: str | None = None) -> dict[str, Any]:
    """Validate ``spec``'s dataset, then write its card and raw data, track and prepare it with DVC, push the
    data, and commit the task to git on ``git_branch`` (default: the checked-out branch), pushed to the
    branch's remote when there is one (``publish=False``: neither the data nor the commit is pushed).

    ``params`` (default: params.yaml) supplies the ``prepare`` section the validation prepares with.
    Raises one BadInput line, with the project and its branches exactly as they were, when anything is
    wrong. Paths in the result are relative to the project root (``root``).
    """
    root = Path(root or repo_root())
    check_remote_credentials(root)
    use_git = git_repo.is_repo(root)
    if not use_git and git_branch:
        raise BadInput(f"{root} is not a git repository: no branch {git_branch!r} to commit the task to",
                       "run `git init` there, or leave out --git-branch")
    branch = git_repo.target_branch(root, git_branch) if use_git else None
    staged = stage_task(spec, replace=replace, params=params, root=root)
    name = staged.card.name
    try:
        with restored_on_failure(_touched(name, root), staged.staging / "backup"):
            prepared = _track(staged, root, publish)
            commit = _commit_to_git(name, root, branch, publish) if branch else None
    finally:
        staged.discard()

    def rel(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    return {"task": name, "card": rel(_card(name)), "raw": rel(raw_dir(name, root)), "pointer": rel(pointer_path(name, root)),
            "replaced": staged.replace, "labels": staged.card.label_names, "files": staged.card.files,
            "rows": staged.meta.get("rows"), "notes": staged.notes, "data_md5": prepared["data_md5"],
            "prepared": rel(Path(prepared["prepared"])), "git": commit.to_dict() if commit else None}


def _track(staged: StagedTask, root: Path, publish: bool) -> dict[str, Any]:
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
    if publish:
        push([str(pointer.relative_to(root)), stage_name(name)], root)
    return prepared


def _commit_to_git(name: str, root: Path, branch: str, publish: bool) -> git_repo.Commit:
    """COMMIT what a worker needs to train task ``name`` on ``branch`` and push it (undone if the push fails)."""
    with git_repo.committed(_versioned(name, root), f"Register task {name} (ttlora-moe tasks add)", branch, root) as commit:
        if publish and commit.sha:
            git_repo.push(commit, root)
    return commit


def _card(name: str) -> Path:
    return tasks_dir() / f"{name}.yaml"


def _versioned(name: str, root: Path) -> list[Path]:
    """The files of task ``name`` that go to git: card, DVC pointer, params, dvc.lock, and what ``dvc init`` wrote."""
    return [_card(name), pointer_path(name, root), params_path(), root / "dvc.lock", root / ".dvcignore",
            root / ".dvc" / "config", root / ".dvc" / ".gitignore", root / "data" / "raw" / ".gitignore",
            root / "data" / "prepared" / ".gitignore"]


def _touched(name: str, root: Path) -> list[Path]:
    """Every path the commit of task ``name`` may create or change (DVC's cache and temp files aside)."""
    dvc_dir = root / ".dvc"
    paths = [_card(name), raw_dir(name, root), pointer_path(name, root),
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
