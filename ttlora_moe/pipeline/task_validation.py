"""Validate a new task completely, in a staging folder, before anything in the project is written."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ttlora_moe.data.cards import TaskCard, normalise, validate_task_name
from ttlora_moe.data.clean import UNLABELLED
from ttlora_moe.data.prepare import prepare_task
from ttlora_moe.data.raw import RAW_SUFFIXES, import_raw, read_raw
from ttlora_moe.errors import BadInput
from ttlora_moe.params import load_params, section
from ttlora_moe.paths import data_root, tasks_dir
from ttlora_moe.pipeline.dvc import repo_root


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
        df = read_raw(probe, [file])
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
    for what, actual, expected in (("TTLORA_DATA_DIR", data_root(), root / "data"),
                                   ("TTLORA_TASKS_DIR", tasks_dir(), root / "data" / "tasks")):
        if Path(actual).resolve() != expected.resolve():
            raise BadInput(f"{what} is {actual}, but DVC-tracked data lives in {expected}",
                           f"unset {what} or set TTLORA_PROJECT_DIR to the repository")
