"""Data under DVC: the repository and its remote, raw data tracking, the ``prepare`` stage, new tasks.

The project root is a DVC repository (``.dvc/`` next to ``.git``). ``data/raw/<task>/`` is tracked
with ``dvc add`` (the ``data/raw/<task>.dvc`` pointer goes to git, the bytes to the DVC remote);
``dvc.yaml``'s ``prepare`` stage (``foreach`` over ``tasks`` in params.yaml) writes
``data/prepared/<task>/``. Every DVC operation runs the ``dvc`` command of this virtualenv in a
subprocess (the same thing a person types); a failure becomes one :class:`BadInput` line.

The remote (``storage``) is, in order: ``TTLORA_DVC_REMOTE`` (a folder or ``s3://bucket/path``);
``s3://$TTLORA_S3_BUCKET/dvc`` when ``TTLORA_S3=1``; else the folder ``<project>/.dvc-remote``.
An S3 remote takes its endpoint from ``AWS_ENDPOINT_URL``/``MLFLOW_S3_ENDPOINT_URL`` (written to
the git-ignored ``.dvc/config.local``) and its credentials from boto3's chain, never from a file
this module writes; a missing bucket is created.

New tasks (``ttlora-moe tasks add``, the ``register-task`` flow) are validated completely in a
staging folder before anything is written (:func:`stage_task`), then committed in one step that
undoes itself on failure (:func:`commit_task`): card, raw data, params ``tasks`` list, ``dvc add``,
``dvc push``, ``dvc repro prepare@<task>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ttlora_moe.data import RAW_SUFFIXES, _read_raw, import_raw, prepare_task, prepared_md5, raw_complete
from ttlora_moe.errors import BadInput
from ttlora_moe.params import load_params, params_path, project_dir, section
from ttlora_moe.tasks import TaskCard, load_task_card, normalise, save_task_card, tasks_dir, validate_task_name

REMOTE_NAME = "storage"
DVC_TIMEOUT_S = 1800
# Paths DVC never needs to walk (they can be large; `.dvc-remote` is the default local remote).
DVCIGNORE = ("/.dvc-remote/", "/.run/", "/outputs/", "/.cache/", "/benchmarks/results/")


# ---------------------------------------------------------------------------------------------
# Running dvc

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
    """Run ``dvc ARGS`` in ``root``; return stdout, or raise one BadInput line on failure."""
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
        return "run `dvc init` in the project (make demo does) or use ttlora_moe.dvc_data.ensure_repo()"
    if "could not connect" in text or "connection" in text and "refused" in text:
        return "check that the S3 endpoint (AWS_ENDPOINT_URL) is up"
    return "see `dvc doctor` and the message above"


# ---------------------------------------------------------------------------------------------
# Repository and remote

def repo_root() -> Path:
    """The DVC (and git) repository: the project directory."""
    return project_dir()


def ensure_repo(root: Path | None = None) -> bool:
    """``dvc init`` the project if it has no ``.dvc/`` yet (``--no-scm`` outside git); True if it did.

    Also makes DVC skip folders it never needs to walk (``.dvcignore``).
    """
    root = Path(root or repo_root())
    created = False
    if not (root / ".dvc").is_dir():
        run_dvc(["init", "-q"] + ([] if (root / ".git").exists() else ["--no-scm"]), root)
        created = True
    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [p for p in DVCIGNORE if p not in lines]
    if missing:
        with ignore.open("a") as fh:
            fh.write(("\n" if lines and lines[-1] else "") + "\n".join(missing) + "\n")
    return created


def explicit_remote_url() -> str | None:
    """The remote the environment asks for: ``TTLORA_DVC_REMOTE``, or the S3 bucket with ``TTLORA_S3=1``."""
    explicit = os.environ.get("TTLORA_DVC_REMOTE")
    if explicit:
        return explicit
    if os.environ.get("TTLORA_S3") == "1":
        return f"s3://{os.environ.get('TTLORA_S3_BUCKET', 'ttlora-moe')}/dvc"
    return None


def default_remote_url(root: Path | None = None) -> str:
    """Where DVC keeps the data: the environment's choice, else the folder ``<project>/.dvc-remote``."""
    return explicit_remote_url() or str(Path(root or repo_root()) / ".dvc-remote")


def configure_remote(url: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """Make ``url`` (default :func:`default_remote_url`) the default remote ``storage``; idempotent.

    A remote the environment chose (:func:`explicit_remote_url`) belongs to this machine: it goes to
    the git-ignored ``.dvc/config.local``, so the committed ``.dvc/config`` (the project's own
    folder) never changes under a user's feet. For ``s3://bucket/path``: credentials must resolve
    (boto3's chain), the bucket is created when missing, and the endpoint from the environment goes
    to ``.dvc/config.local`` too.
    """
    from ttlora_moe.s3 import check_credentials, endpoint_url, ensure_bucket

    root = Path(root or repo_root())
    url = url or default_remote_url(root)
    info: dict[str, Any] = {"remote": REMOTE_NAME, "url": url}
    if url.startswith("s3://"):
        check_credentials()
        bucket = url[len("s3://"):].split("/", 1)[0]
        info["bucket_created"] = ensure_bucket(bucket)
    arg = url
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
        if Path(url).resolve().is_relative_to(root.resolve()):  # stored relative: the config stays valid in any clone
            arg = os.path.relpath(Path(url).resolve(), root.resolve())
    scope = ["--local"] if url == explicit_remote_url() else []
    run_dvc(["remote", "add", *scope, "--default", "--force", REMOTE_NAME, arg], root)
    info["config"] = ".dvc/config.local" if scope else ".dvc/config"
    if url.startswith("s3://"):
        endpoint = endpoint_url()
        if endpoint:
            run_dvc(["remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint], root)
            info["endpoint"] = endpoint
    return info


def remote_url(root: Path | None = None) -> str | None:
    """The URL of the default remote, or None when there is no repository or no default remote.

    Read from ``.dvc/config`` (then ``config.local``) rather than by running dvc: it is asked often.
    """
    root = Path(root or repo_root())
    default, urls = None, {}
    for name in ("config", "config.local"):  # the local file overrides the committed one
        path = root / ".dvc" / name
        if not path.exists():
            continue
        section_name = None
        for line in path.read_text().splitlines():
            line = line.strip()
            header = re.fullmatch(r"\[\s*'?(.*?)'?\s*\]", line)
            if header:
                section_name = header.group(1).replace('"', "").strip()
                continue
            key, _, value = (part.strip() for part in line.partition("="))
            if section_name == "core" and key == "remote":
                default = value
            elif section_name and section_name.startswith("remote ") and key == "url":
                urls[section_name[len("remote "):].strip()] = value
    url = urls.get(default) if default else None
    if url and "://" not in url and not Path(url).is_absolute():  # DVC keeps local paths relative to .dvc/
        url = str((root / ".dvc" / url).resolve())
    return url


def effective_remote_url(root: Path | None = None) -> str:
    """The remote the next push goes to: the environment's choice, else the configured one, else the default."""
    return explicit_remote_url() or remote_url(root) or default_remote_url(root)


def ensure_remote(root: Path | None = None) -> dict[str, Any] | None:
    """Configure :func:`effective_remote_url` as the default remote unless it already is; idempotent."""
    url = effective_remote_url(root)
    if remote_url(root) == url:
        return None
    return configure_remote(url, root)


def check_remote_credentials(root: Path | None = None) -> None:
    """Raise one BadInput line when the remote is in S3 and no credentials resolve (no network call)."""
    if effective_remote_url(root).startswith("s3://"):
        from ttlora_moe.s3 import check_credentials

        check_credentials()


# ---------------------------------------------------------------------------------------------
# Tracking, pushing, reproducing

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
    run_dvc(["add", "-q", str(folder.relative_to(root))], root, what=f"dvc add of {task}'s raw data")
    return folder.with_name(f"{task}.dvc")


def stage_name(task: str) -> str:
    """The foreach item of dvc.yaml's ``prepare`` stage for ``task``."""
    return f"prepare@{task}"


def push(targets: list[str] | None = None, root: Path | None = None) -> str:
    """``dvc push`` of ``targets`` (pointer files or stage names; all when None).

    Targets are named explicitly because DVC 3 does not find ``data/raw/*.dvc`` pointers that a
    ``.gitignore`` glob over ``data/raw/`` would also match.
    """
    return run_dvc(["push", "-q", *(targets or [])], root, what="dvc push")


def pull(targets: list[str] | None = None, root: Path | None = None) -> str:
    """``dvc pull`` of ``targets`` (all when None)."""
    return run_dvc(["pull", "-q", *(targets or [])], root, what="dvc pull")


def repro_prepare(task: str, root: Path | None = None, force: bool = False) -> dict[str, Any]:
    """``dvc repro prepare@<task>``: (re)write ``data/prepared/<task>`` when its inputs changed."""
    root = Path(root or repo_root())
    run_dvc(["repro", "-q", *(["--force"] if force else []), stage_name(task)], root,
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
                       f"add it to `tasks`, or register it with `ttlora-moe tasks add`")
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


# ---------------------------------------------------------------------------------------------
# New tasks: validate in a staging folder, then commit (all or nothing)

@dataclass
class TaskSpec:
    """What ``ttlora-moe tasks add`` was given."""

    name: str
    source: str                            # a CSV/Parquet/JSONL file, a folder of them, or a hub id
    text: str
    label: str
    text_pair: str | None = None
    label_names: list[str] | None = None   # None: the distinct raw label values, sorted
    metric: str = "accuracy"
    description: str = ""


@dataclass
class StagedTask:
    """A validated new task waiting to be committed: its card and raw files in a staging folder."""

    card: TaskCard
    staging: Path
    meta: dict[str, Any] = field(default_factory=dict)
    replace: bool = False

    @property
    def raw(self) -> Path:
        return self.staging / "raw"

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~")) or Path(source).suffix.lower() in RAW_SUFFIXES
            or (os.sep in source and not _hub_like(source)))


def _hub_like(source: str) -> bool:
    name = source.partition(":")[0]
    return name.count("/") == 1 and all(part and not part.startswith(".") for part in name.split("/"))


def _role_patterns(files: list[str]) -> dict[str, str]:
    """Card ``files`` for a folder of raw files: train + (validation or test) when named so, else all labelled."""
    def pattern(prefix: str) -> str | None:
        matches = sorted(f for f in files if Path(f).name.lower().startswith(prefix))
        if not matches:
            return None
        suffixes = {Path(f).suffix for f in matches}
        return f"{prefix}*{suffixes.pop()}" if len(suffixes) == 1 else f"{prefix}*"

    train = pattern("train")
    test = pattern("validation") or pattern("dev") or pattern("test")
    if train and test:
        return {"train": train, "test": test}
    if train:
        return {"train": train}
    return {"labelled": "*"}


def _check_columns(spec: TaskSpec, files: list[Path]) -> pd.DataFrame:
    """Read the staged files; check the columns exist and the inputs are text. Return all rows."""
    probe = TaskCard(name=spec.name, source=spec.source, text=spec.text, text_pair=spec.text_pair, label=spec.label,
                     label_names=["_"], label_values=["_"])
    frames = []
    for file in files:
        df = _read_raw(probe, [file])
        inputs = [spec.text] + ([spec.text_pair] if spec.text_pair else [])
        for column in inputs + [spec.label]:
            if column not in df.columns:
                raise BadInput(f"column {column!r} is not in {file.name} (columns: {', '.join(map(str, df.columns))})",
                               "pass --text/--text-pair/--label with existing column names")
        for column in inputs:
            _check_text_column(file, column, df[column])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _check_text_column(file: Path, column: str, values: pd.Series) -> None:
    values = values.dropna()
    if file.suffix == ".csv":  # the reader keeps text columns as strings: look at what they would parse as
        numeric = pd.to_numeric(values[values.str.strip() != ""], errors="coerce")
        if len(numeric) and numeric.notna().all():
            raise BadInput(f"input column {column!r} of {file.name} is not text (its values are numbers, e.g. {values.iloc[0]!r})",
                           "choose a text column for --text/--text-pair")
        return
    bad = values[~values.map(lambda v: isinstance(v, str))]
    if len(bad):
        raise BadInput(f"input column {column!r} of {file.name} is not text (found {type(bad.iloc[0]).__name__} {bad.iloc[0]!r})",
                       "choose a text column for --text/--text-pair")


def _labels(spec: TaskSpec, column: pd.Series) -> tuple[list[str], list[Any]]:
    """Label names and the raw values they map from, checked against ``--label-names``."""
    from ttlora_moe.data import UNLABELLED

    present: dict[str, Any] = {}
    for value in column.dropna().tolist():
        key = normalise(value)
        if key not in UNLABELLED:
            present.setdefault(key, value.item() if hasattr(value, "item") else value)
    if len(present) < 2:
        only = f" (only {next(iter(present.values()))!r})" if present else " (no labelled rows)"
        raise BadInput(f"dataset {spec.source} has a single class in column {spec.label!r}{only}",
                       "a classifier needs examples of at least two labels")
    if spec.label_names:
        names = [str(n) for n in spec.label_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise BadInput(f"--label-names {names} must list at least two distinct names", "fix --label-names")
        by_name = {normalise(n): n for n in names}
        not_names = set(present) - set(by_name)
        if not not_names:  # the data holds the names themselves
            return names, names
        if set(present) <= {str(i) for i in range(len(names))}:  # the data holds class ids 0..k-1
            return names, list(range(len(names)))
        unknown = sorted(str(present[k]) for k in not_names)
        raise BadInput(f"labels {unknown[:5]} in column {spec.label!r} are not in --label-names {names}",
                       "list every label value in --label-names (or give class ids 0..k-1)")
    keys = sorted(present, key=lambda k: (not _is_number(k), float(k) if _is_number(k) else 0.0, k))
    return [str(present[k]) for k in keys], [present[k] for k in keys]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def stage_task(spec: TaskSpec, replace: bool = False, params: dict[str, Any] | None = None,
               root: Path | None = None) -> StagedTask:
    """Validate a new task completely without touching the project: name, source, columns,
    labels, classes and row counts. Raises one BadInput line; on success the caller commits or
    discards the returned staging folder."""
    root = Path(root or repo_root())
    validate_task_name(spec.name)
    _check_layout(root)
    card_path = tasks_dir() / f"{spec.name}.yaml"
    if card_path.exists() and not replace:
        raise BadInput(f"task {spec.name!r} is already registered ({card_path})",
                       "pick another name, or pass --replace to replace its data (its expert is retrained)")
    source = spec.source
    if _looks_like_path(source) or Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if not path.exists():
            raise BadInput(f"dataset path {source} does not exist", "give an existing CSV/Parquet/JSONL file or folder")
        source = str(path.resolve())
        if path.is_dir():
            names = [p.name for p in sorted(path.iterdir()) if p.suffix.lower() in RAW_SUFFIXES]
            if not names:
                raise BadInput(f"{path} holds no {'/'.join(RAW_SUFFIXES)} files", "point --source at a data file or a folder of them")
            files = _role_patterns(names)
        else:
            if path.suffix.lower() not in RAW_SUFFIXES:
                raise BadInput(f"{path} is not a {'/'.join(RAW_SUFFIXES)} file", "convert it to CSV, Parquet or JSONL")
            files = {"labelled": path.name}
    elif _hub_like(source):
        files = {"labelled": "*"}  # settled below from the files the hub gives
    else:
        raise BadInput(f"dataset path {source} does not exist", "give an existing file or folder, or a hub id owner/name")
    staging_parent = root / "data" / "raw"
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{spec.name}-", dir=staging_parent))
    try:
        probe = TaskCard(name=spec.name, source=source, text=spec.text, text_pair=spec.text_pair, label=spec.label,
                         label_names=["a", "b"], label_values=[0, 1], files=files)
        import_raw(probe, staging / "raw")
        staged_files = sorted(p for p in (staging / "raw").iterdir() if p.suffix.lower() in RAW_SUFFIXES)
        if files == {"labelled": "*"} and not Path(source).exists():
            files = _role_patterns([p.name for p in staged_files])
        df = _check_columns(spec, staged_files)
        names, values = _labels(spec, df[spec.label])
        p = section(params if params is not None else load_params(), "prepare")
        minimum = int(p.get("min_rows", 20))
        if len(df) < minimum * 3:
            raise BadInput(f"dataset {spec.source} has {len(df)} rows; at least {minimum * 3} are needed "
                           f"(train, validation and test of at least {minimum} each)", "provide more labelled rows")
        card = TaskCard(name=spec.name, source=source, text=spec.text, text_pair=spec.text_pair, label=spec.label,
                        label_names=names, label_values=values, metric=spec.metric, files=files,
                        description=spec.description or f"{spec.name}: registered from {Path(source).name if Path(source).exists() else source}")
        card.validate()
        meta = prepare_task(card, staging / "raw", staging / "prepared", p)
        return StagedTask(card, staging, meta, replace=card_path.exists())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_layout(root: Path) -> None:
    """DVC tracks ``<root>/data``: the data and task-card folders must be the project's own."""
    from ttlora_moe.train_expert import data_root

    for what, actual, expected in (("TTLORA_DATA_DIR", data_root(), root / "data"),
                                   ("TTLORA_TASKS_DIR", tasks_dir(), root / "data" / "tasks")):
        if Path(actual).resolve() != expected.resolve():
            raise BadInput(f"{what} is {actual}, but DVC-tracked data lives in {expected}",
                           f"unset {what} or set TTLORA_PROJECT_DIR to the repository")


def add_to_task_list(name: str, path: Path | None = None) -> bool:
    """Append ``name`` to the ``tasks:`` list of params.yaml, keeping the file's comments; True if added.

    The list feeds dvc.yaml's ``prepare`` foreach and train-all-experts' default tasks.
    """
    path = Path(path or params_path())
    text = path.read_text()
    current = (load_params(path).get("tasks") or [])
    if name in current:
        return False
    flow = re.compile(r"^(tasks:\s*\[)([^\]]*)(\].*)$", re.M)
    match = flow.search(text)
    if match:
        items = [i.strip() for i in match.group(2).split(",") if i.strip()]
        text = text[:match.start()] + match.group(1) + ", ".join(items + [name]) + match.group(3) + text[match.end():]
    else:
        block = re.compile(r"^tasks:[ \t]*(#.*)?\n((?:[ \t]*-[^\n]*\n)+)", re.M)
        match = block.search(text if text.endswith("\n") else text + "\n")
        if not match:
            if re.search(r"^tasks:", text, re.M):
                raise BadInput(f"cannot edit the tasks list of {path}", "write it as `tasks: [a, b]` or a block list")
            text = text.rstrip("\n") + f"\n\ntasks: [{name}]\n"
        else:
            text = text if text.endswith("\n") else text + "\n"
            indent = re.match(r"[ \t]*", match.group(2)).group(0)
            text = text[:match.end()] + f"{indent}- {name}\n" + text[match.end():]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    if name not in (load_params(tmp).get("tasks") or []):
        tmp.unlink()
        raise BadInput(f"could not add {name!r} to the tasks list of {path}", "add it by hand")
    os.replace(tmp, path)
    return True


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


def main(argv: list[str] | None = None) -> int:
    """``python -m ttlora_moe.dvc_data setup | import TASK...`` (what ``make demo`` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.dvc_data", description=__doc__.splitlines()[0])
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
