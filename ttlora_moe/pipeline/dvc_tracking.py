"""Data under DVC: raw data tracking, ``dvc push``/``pull`` and the ``prepare`` stage.

The project root is a DVC repository (``.dvc/`` next to ``.git``). ``data/raw/<task>/`` is tracked
with ``dvc add`` (the ``data/raw/<task>.dvc`` pointer goes to git, the bytes to the DVC remote);
``dvc.yaml``'s ``prepare`` stage (``foreach`` over ``tasks`` in params.yaml) writes
``data/prepared/<task>/``. A worker without a data mirror gets exactly one task's raw bytes from the
DVC remote (:func:`ensure_raw`).

``python -m ttlora_moe.pipeline.dvc_tracking setup | import TASK...`` is what ``make demo`` runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ttlora_moe.data.cards import TaskCard, load_task_card
from ttlora_moe.data.prepared import prepared_md5
from ttlora_moe.data.raw import import_raw, raw_complete
from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir
from ttlora_moe.params import load_params
from ttlora_moe.paths import data_root, params_path
from ttlora_moe.pipeline.dvc import repo_root, run_dvc
from ttlora_moe.pipeline.dvc_remote import (
    check_remote_credentials,
    effective_remote_url,
    ensure_remote,
    ensure_repo,
)


def raw_dir(task: str, root: Path | None = None) -> Path:
    return Path(root or repo_root()) / "data" / "raw" / task


def prepared_dir(task: str, root: Path | None = None) -> Path:
    return Path(root or repo_root()) / "data" / "prepared" / task


def track_raw(task: str, root: Path | None = None) -> Path:
    """``dvc add data/raw/<task>``; return the ``.dvc`` pointer file."""
    root = Path(root or repo_root())
    folder = raw_dir(task, root)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise BadInput(f"{folder} is missing or empty", f"import the raw data of {task!r} first")
    run_dvc(["add", str(folder.relative_to(root))], root, what=f"dvc add of {task}'s raw data")
    return pointer_path(task, root)


def stage_name(task: str) -> str:
    """The foreach item of dvc.yaml's ``prepare`` stage for ``task``."""
    return f"prepare@{task}"


def push(targets: list[str] | None = None, root: Path | None = None) -> str:
    """``dvc push`` of ``targets`` (pointer files or stage names; all when None).

    Targets are named explicitly because DVC 3 does not find ``data/raw/*.dvc`` pointers that a
    ``.gitignore`` glob over ``data/raw/`` would also match.
    """
    return run_dvc(["push", *(targets or [])], root, what="dvc push")


def pull(targets: list[str] | None = None, root: Path | None = None) -> str:
    """``dvc pull`` of ``targets`` (all when None)."""
    return run_dvc(["pull", *(targets or [])], root, what="dvc pull")


def pointer_path(task: str, root: Path | None = None) -> Path:
    """``data/raw/<task>.dvc``: the DVC pointer of the task's raw data (committed to git)."""
    return raw_dir(task, root).with_name(f"{task}.dvc")


def ensure_raw(card: TaskCard, root: Path | None = None) -> str:
    """The raw data of ``card``'s task in ``data_root()/raw/<task>``; how it got there.

    ``"present"``: already complete. ``"mirror"``: a data mirror is set (``TTLORA_DATA_MIRROR``), so
    :func:`~ttlora_moe.data.prepare.ensure_prepared` imports from it. ``"pulled"``: no mirror, so the
    bytes the task's committed pointer names come from the DVC remote (:func:`fetch_raw`).
    """
    if raw_complete(card, data_root() / "raw" / card.name):
        return "present"
    if os.environ.get("TTLORA_DATA_MIRROR"):
        return "mirror"
    fetch_raw(card.name, root)
    return "pulled"


def fetch_raw(task: str, root: Path | None = None) -> Path:
    """Exactly ``task``'s raw data from the DVC remote into ``data_root()/raw/<task>``.

    ``dvc pull data/raw/<task>.dvc`` into the checkout (the remote is the one
    :func:`~ttlora_moe.pipeline.dvc_remote.ensure_remote` settles: the environment's
    ``TTLORA_DVC_REMOTE``/``TTLORA_S3`` first), then, for a data folder of the worker's own
    (``TTLORA_DATA_DIR``), a copy there, written atomically. (``dvc get`` would skip the checkout but
    cannot see outputs that the project's ``/data/raw/*`` gitignore rule hides.)
    """
    root = Path(root or repo_root())
    pointer = pointer_path(task, root)
    if not pointer.exists():
        raise BadInput(f"task {task!r} has no DVC pointer {pointer} and no data mirror is set",
                       "register it with `ttlora-moe tasks add` (it commits the pointer), or set TTLORA_DATA_MIRROR")
    check_remote_credentials(root)
    ensure_remote(root)
    pull([str(pointer.relative_to(root))], root)
    pulled, dest = raw_dir(task, root), data_root() / "raw" / task
    if dest.resolve() != pulled.resolve():
        with atomic_dir(dest) as tmp:
            shutil.copytree(pulled, tmp, dirs_exist_ok=True)
    return dest


def repro_prepare(task: str, root: Path | None = None, force: bool = False) -> dict[str, Any]:
    """``dvc repro prepare@<task>``: (re)write ``data/prepared/<task>`` when its inputs changed."""
    root = Path(root or repo_root())
    run_dvc(["repro", *(["--force"] if force else []), stage_name(task)], root,
            what=f"dvc repro {stage_name(task)}")
    folder = prepared_dir(task, root)
    return {"task": task, "prepared": str(folder), "data_md5": prepared_md5(folder)}


def import_task(task: str, root: Path | None = None, push_data: bool = True) -> dict[str, Any]:
    """Import a task's raw data from its card's source (the mirror, a path or the hub) under DVC.

    Already-present raw data is kept when it has a file for every role of the card (re-tracking
    unchanged bytes is a no-op). Then ``dvc add``,
    ``dvc repro prepare@<task>`` and ``dvc push``. The task must be listed in params.yaml ``tasks``
    (dvc.yaml's ``prepare`` stage iterates over that list).
    """
    root = Path(root or repo_root())
    card = load_task_card(task)
    if task not in (load_params().get("tasks") or []):
        raise BadInput(f"task {task!r} is not in the tasks list of {params_path()} (dvc.yaml prepares those)",
                       "add it to `tasks`, or register it with `ttlora-moe tasks add`")
    folder = raw_dir(task, root)
    imported = False
    if not raw_complete(card, folder):  # missing, or the card gained a file role since
        import_raw(card, folder)
        imported = True
    pointer = track_raw(task, root)
    prepared = repro_prepare(task, root)
    if push_data:
        push([str(pointer.relative_to(root)), stage_name(task)], root)
    return {"task": task, "imported": imported, "pointer": str(pointer), **prepared}


def main(argv: list[str] | None = None) -> int:
    """``python -m ttlora_moe.pipeline.dvc_tracking setup | import TASK...`` (what ``make demo`` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.pipeline.dvc_tracking", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="dvc init (if needed) and the default remote (idempotent)")
    imp = sub.add_parser("import", help="import tasks' raw data under DVC, prepare and push them")
    imp.add_argument("tasks", nargs="+")
    imp.add_argument("--no-push", action="store_true", help="skip dvc push")
    args = parser.parse_args(argv)
    try:
        root = repo_root()
        check_remote_credentials(root)
        created = ensure_repo(root)
        remote = ensure_remote(root)
        print(f"dvc: {'initialised' if created else 'repository'} {root}; remote {effective_remote_url(root)}"
              + (" (configured now)" if remote else ""), file=sys.stderr)
        if args.command == "import":
            for task in args.tasks:
                result = import_task(task, root, push_data=not args.no_push)
                print(f"{task}: {'imported' if result['imported'] else 'raw data present'}, tracked by "
                      f"{Path(result['pointer']).relative_to(root)}, prepared (md5 {result['data_md5'][:12]})",
                      file=sys.stderr)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
