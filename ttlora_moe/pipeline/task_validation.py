"""Validate a new task completely, in a staging folder, before anything in the project is written.

Every class of bad input is one :class:`~ttlora_moe.errors.BadInput` line: a bad name, a source that
is not a readable data file or folder, columns that are missing, repeated or not text, and labels
that would lose or invent a class. Nothing is dropped or remapped unless the user said so.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ttlora_moe.data.cards import (
    TaskCard,
    list_tasks,
    name_skeleton,
    validate_task_name,
)
from ttlora_moe.data.choices import MULTIPLE_CHOICE, choice_template, option_columns, option_count, template_fields
from ttlora_moe.data.labels import infer_labels, infer_option_labels
from ttlora_moe.data.prepare import prepare_task
from ttlora_moe.data.raw import (
    RAW_SUFFIXES,
    data_files,
    file_kind,
    import_raw,
    is_hub_id,
    is_raw_file,
    read_raw_file,
)
from ttlora_moe.errors import BadInput
from ttlora_moe.params import load_params, section
from ttlora_moe.paths import data_root, tasks_dir
from ttlora_moe.pipeline.dvc import repo_root

KINDS = "/".join(RAW_SUFFIXES)


@dataclass
class TaskSpec:
    """What ``ttlora-moe tasks add`` was given."""

    name: str
    source: str                            # a CSV/Parquet/JSONL file, a folder of them, or a hub id
    text: str
    label: str
    text_pair: str | None = None
    label_names: list[str] | None = None   # None: the distinct raw label values, sorted
    unlabelled_values: list[Any] = field(default_factory=list)  # raw labels meaning "no label" ('' = blank)
    metric: str = "accuracy"
    description: str = ""
    # multiple choice: the option columns, or one column holding each row's list of options (column or
    # column.field of a struct column); --text is then a template of columns ("{context} {question}") or one column
    choices: list[str] | None = None
    choice_labels: list[str] | None = None  # multiple choice: the raw label value of each option (None: inferred)

    @property
    def card_choices(self) -> list[str] | str | None:
        """The card's ``choices``: the option columns, or the one list column."""
        if not self.choices:
            return None
        return self.choices if len(self.choices) > 1 else self.choices[0]

    @property
    def card_text(self) -> str:
        """The card's ``text``: the column, or for multiple choice the template."""
        return choice_template(self.text) if self.choices else self.text

    @property
    def option_columns(self) -> list[str]:
        """The raw columns of the options (:func:`~ttlora_moe.data.choices.option_columns`); none without choices."""
        return option_columns(self.card_choices) if self.choices else []

    def input_columns(self) -> list[str]:
        """The raw columns the inputs come from (the label aside): the text columns, then the option columns."""
        if not self.choices:
            return [self.text] + ([self.text_pair] if self.text_pair else [])
        return template_fields(self.card_text) + self.option_columns


@dataclass
class StagedTask:
    """A validated new task waiting to be committed: its card and raw files in a staging folder."""

    card: TaskCard
    staging: Path
    meta: dict[str, Any] = field(default_factory=dict)
    replace: bool = False
    notes: list[str] = field(default_factory=list)  # what the user should know: skipped files, dropped rows
    made_parent: bool = False                       # staging created ``data/raw``

    @property
    def raw(self) -> Path:
        return self.staging / "raw"

    def discard(self) -> None:
        """Remove the staging folder (and ``data/raw`` when staging made it and it is still empty)."""
        _discard(self.staging, self.made_parent)


@dataclass
class _Source:
    """Where a new task's data is: the card's ``source`` and ``files``, the local files, notes."""

    source: str
    files: dict[str, str] | None = None   # None: a hub dataset, settled once downloaded
    local: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stage_task(spec: TaskSpec, replace: bool = False, params: dict[str, Any] | None = None,
               root: Path | None = None) -> StagedTask:
    """Validate a new task completely without touching the project: name, source, columns,
    labels, classes and row counts. Raises one BadInput line; on success the caller commits or
    discards the returned staging folder."""
    root = Path(root or repo_root())
    card_path = _check_name(spec.name, replace)
    _check_layout(root)
    _check_column_options(spec)
    found = _locate(spec.source)
    parent = root / "data" / "raw"  # staging there makes the commit a rename on one file system
    made_parent = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{spec.name}-", dir=parent))
    try:
        raw = staging / "raw"
        hub = found.files is None
        if hub:  # download it, then read what it gave
            import_raw(_card(spec, found.source, {"labelled": "*"}), raw)
            found.local = data_files(raw.iterdir())
            found.files, found.notes = _role_patterns(found.local)
        used = [f for f in found.local if any(fnmatch.fnmatchcase(f.name, p) for p in found.files.values())]
        df = pd.concat([_read_inputs(spec, f, f"{found.source} file {f.name}" if hub else str(f)) for f in used],
                       ignore_index=True)
        if spec.choices:
            count = option_count(spec.name, df, spec.card_choices, spec.source)
            names, values, label_notes = infer_option_labels(df[spec.label], spec.label, count, spec.choice_labels,
                                                             spec.unlabelled_values)
        else:
            names, values, label_notes = infer_labels(df[spec.label], spec.label, spec.label_names, spec.unlabelled_values)
        p = section(params if params is not None else load_params(), "prepare")
        minimum = int(p.get("min_rows", 20))
        if len(df) < minimum * 3:
            raise BadInput(f"dataset {spec.source} has {len(df)} rows; at least {minimum * 3} are needed "
                           f"(train, validation and test of at least {minimum} each)", "provide more labelled rows")
        card = _card(spec, found.source, found.files, names, values)
        card.validate()
        if not raw.exists():
            import_raw(card, raw)
        meta = prepare_task(card, raw, staging / "prepared", p)
        if not spec.choices:  # one head row per class; a multiple-choice head scores every option with one row
            _check_every_class_trains(meta, names)
        return StagedTask(card, staging, meta, replace=card_path.exists(),
                          notes=found.notes + label_notes + _dropped_notes(meta), made_parent=made_parent)
    except BaseException:
        _discard(staging, made_parent)
        raise


def _discard(staging: Path, made_parent: bool) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if made_parent:
        with contextlib.suppress(OSError):  # not empty: a task was committed into it
            staging.parent.rmdir()


def _card(spec: TaskSpec, source: str, files: dict[str, str], names: list[str] | None = None,
          values: list[Any] | None = None) -> TaskCard:
    local = Path(source).name if Path(source).is_absolute() else source
    kind = {"kind": MULTIPLE_CHOICE, "choices": spec.card_choices} if spec.choices else {}
    return TaskCard(name=spec.name, source=source, text=spec.card_text, text_pair=spec.text_pair, label=spec.label,
                    label_names=names or ["A", "B"], label_values=values or [0, 1],
                    unlabelled_values=list(spec.unlabelled_values), metric=spec.metric, files=files,
                    description=spec.description or f"{spec.name}: registered from {local}", **kind)


def _check_name(name: str, replace: bool) -> Path:
    """The new task's card path; the name is well formed, unlike any other task's, and free (or replaced)."""
    if isinstance(name, str):
        for other in list_tasks():
            if other != name and name_skeleton(other) == name_skeleton(name):
                raise BadInput(f"task name {name!r} looks like the existing task {other!r}",
                               f"pick a clearly different name (or {other} with --replace to replace that task)")
    validate_task_name(name)
    card_path = tasks_dir() / f"{name}.yaml"
    if card_path.exists() and not replace:
        raise BadInput(f"task {name!r} is already registered ({card_path})",
                       "pick another name, or pass --replace to replace its data (its expert is retrained)")
    return card_path


def _check_column_options(spec: TaskSpec) -> None:
    """--text, --text-pair and --label name three different, non-empty columns; with --choices, the
    template's columns, the option columns and the label are all different, and there is no --text-pair."""
    options = [("--text", spec.text), ("--label", spec.label)] + ([("--text-pair", spec.text_pair)]
                                                                 if spec.text_pair is not None else [])
    for option, column in options:
        if not isinstance(column, str) or not column.strip():
            raise BadInput(f"{option} is empty", f"pass the name of a column with {option}")
    if spec.choices is not None or spec.choice_labels is not None:
        options = _check_choice_options(spec)
    seen: dict[str, str] = {}
    for option, column in options:
        if column in seen:
            raise BadInput(f"{seen[column]} and {option} both name the column {column!r}",
                           "give different columns for the text, the text pair and the label")
        seen[column] = option


def _check_choice_options(spec: TaskSpec) -> list[tuple[str, str]]:
    """The options of a multiple-choice task, checked, as (option, column) pairs for the clash check."""
    if spec.choices is None:
        raise BadInput("--choice-labels without --choices", "name the option columns with --choices (or drop --choice-labels)")
    if spec.text_pair is not None:
        raise BadInput("--text-pair and --choices both give the second input",
                       "drop --text-pair: a multiple-choice task's second input is its options")
    if spec.label_names is not None:
        raise BadInput("--label-names with --choices: a multiple-choice task's classes are its options A, B, ...",
                       "drop --label-names; give the label value of each option with --choice-labels if needed")
    if (not spec.choices or any(not isinstance(c, str) or not c.strip() for c in spec.choices)
            or len(set(spec.choices)) != len(spec.choices)):
        raise BadInput(f"--choices {spec.choices} must name distinct columns",
                       "list the option columns (--choices answerA,answerB,answerC) or one column of lists")
    fields = template_fields(spec.card_text)
    if len(set(fields)) != len(fields):
        raise BadInput(f"--text {spec.text!r} names a column twice", "name each column once")
    options = [("--text", f) for f in fields] + [("--label", spec.label)]
    return options + [("--choices", c) for c in spec.option_columns]


def _locate(source: str) -> _Source:
    """Resolve ``--source``: a local data file, a folder of them, or a hub id."""
    if not isinstance(source, str) or not source.strip():
        raise BadInput("--source is empty", "give a CSV/Parquet/JSONL file, a folder of them, or a hub id owner/name")
    path = Path(source).expanduser()
    if not (path.exists() or path.is_symlink() or _looks_like_path(source)) and is_hub_id(source):
        return _Source(source)
    if not path.exists():
        what = "is a broken symbolic link" if path.is_symlink() else "does not exist"
        raise BadInput(f"dataset path {source} {what}", f"give an existing {KINDS} file, a folder of them, or a hub id owner/name")
    absolute = Path(os.path.abspath(path))  # a symbolic link keeps its own name
    if path.is_dir():
        files, notes = _folder_files(absolute)
        patterns, more = _role_patterns(files)
        return _Source(_card_source(absolute), patterns, files, notes + more)
    if not path.is_file():
        raise BadInput(f"dataset path {source} is {file_kind(path)}, not a regular file", f"give a regular {KINDS} file")
    if not is_raw_file(path):
        raise BadInput(f"{source} is not a {KINDS} file", "convert it to CSV, Parquet or JSONL (and name it so)")
    return _Source(_card_source(absolute), {"labelled": glob.escape(absolute.name)}, [absolute])


def _card_source(path: Path) -> str:
    """What the card records for a local source: its path inside the data mirror when it lies there, so
    that any machine with the mirror finds it; else the absolute path, as provenance (other machines
    get the raw data from DVC). A path inside the mirror shaped like a hub id (``folder/file``) stays
    absolute: the card would read it as one."""
    mirror = os.environ.get("TTLORA_DATA_MIRROR")
    if mirror:
        with contextlib.suppress(ValueError):  # not inside the mirror
            inside = path.resolve().relative_to(Path(mirror).expanduser().resolve()).as_posix()
            if inside != "." and not is_hub_id(inside):
                return inside
    return str(path)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or is_raw_file(Path(source)) or (os.sep in source and not is_hub_id(source))


def _folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The data files directly in ``folder``, and a note for each entry skipped."""
    notes, candidates = [], []
    for entry in sorted(folder.iterdir()):
        if is_raw_file(entry):
            candidates.append(entry)
        else:
            kind = "a folder: only files directly in the source folder are read" if entry.is_dir() else file_kind(entry)
            notes.append(f"skipped {entry.name} ({kind}; not a {KINDS} file)")
    files = data_files(candidates)
    if not files:
        raise BadInput(f"{folder} holds no {KINDS} files", "point --source at a data file or a folder of them")
    return files, notes


def _role_patterns(files: list[Path]) -> tuple[dict[str, str], list[str]]:
    """Card ``files`` for a folder: train + test (validation, dev or test) when named so, else all labelled.

    Returns the patterns and a note for each data file no role uses.
    """
    names = [f.name for f in files]

    def named(*prefixes: str) -> list[str]:
        for prefix in prefixes:
            matches = [n for n in names if n.lower().startswith(prefix)]
            if matches:
                return matches
        return []

    train, test = named("train"), named("validation", "dev", "test")
    roles = {"train": train, "test": test} if train and test else {"train": train} if train else {"labelled": names}
    patterns = {role: _pattern(matched, names) for role, matched in roles.items()}
    used = {n for matched in roles.values() for n in matched}
    notes = [f"{n} is not used (train files start with 'train', test files with 'validation', 'dev' or 'test')"
             for n in names if n not in used]
    return patterns, notes


def _pattern(matched: list[str], names: list[str]) -> str:
    """A glob that matches exactly ``matched`` among ``names``."""
    if len(matched) == len(names):
        return "*"
    if len(matched) == 1:
        return glob.escape(matched[0])
    pattern = glob.escape(os.path.commonprefix(matched)) + "*"
    if sorted(n for n in names if fnmatch.fnmatchcase(n, pattern)) != sorted(matched):
        raise BadInput(f"cannot tell the files {matched} from the others ({', '.join(sorted(set(names) - set(matched)))})",
                       "name train files train*, test files validation*/test*, or register one file")
    return pattern


def _read_inputs(spec: TaskSpec, path: Path, shown: str) -> pd.DataFrame:
    """Read one file of the new task; its columns exist and its inputs are text."""
    df = read_raw_file(path, shown)
    inputs = spec.input_columns()
    for column in inputs + [spec.label]:
        if column not in df.columns:
            raise BadInput(f"column {column!r} is not in {path.name} (columns: {', '.join(map(str, df.columns))})",
                           _column_fix(column, [str(c) for c in df.columns]))
    texts = len(inputs) - len(spec.option_columns)
    for i, column in enumerate(inputs):
        if i < texts:
            _check_text_column(path, column, df[column])
        elif len(spec.choices or []) > 1:  # an option may be a number ("(A) 4 (B) 5"); a list column is checked when prepared
            _check_text_column(path, column, df[column], numbers_ok=True)
    return df


def _column_fix(column: str, columns: list[str]) -> str:
    close = [c for c in columns if c.strip().lower() == column.strip().lower()]
    return f"did you mean {close[0]!r}?" if close else "pass --text/--text-pair/--label/--choices with existing column names"


def _check_text_column(file: Path, column: str, values: pd.Series, numbers_ok: bool = False) -> None:
    """An input column holds text: not empty in every row, and (unless ``numbers_ok``) not only numbers."""
    present = values.dropna()
    strings = present[present.map(lambda v: isinstance(v, str))]
    if len(strings) < len(present):
        bad = present[~present.map(lambda v: isinstance(v, str))].iloc[0]
        raise BadInput(f"input column {column!r} of {file.name} is not text (found {type(bad).__name__} {bad!r})",
                       "choose a text column for --text/--text-pair/--choices")
    filled = strings[strings.str.strip() != ""]
    if filled.empty:
        raise BadInput(f"input column {column!r} of {file.name} is empty in every row", "choose a column that holds the text")
    if not numbers_ok and pd.to_numeric(filled, errors="coerce").notna().all():
        raise BadInput(f"input column {column!r} of {file.name} is not text (its values are numbers, e.g. {filled.iloc[0]!r})",
                       "choose a text column for --text/--text-pair/--choices")


def _check_every_class_trains(meta: dict[str, Any], names: list[str]) -> None:
    """Every class reaches the train split (a class only in validation or test could never be learnt)."""
    missing = [n for n in names if not meta["labels"]["train"].get(n)]
    if missing:
        counts = {n: sum(meta["labels"][s].get(n, 0) for s in meta["labels"]) for n in missing}
        raise BadInput(f"class(es) {missing} have no row in the train split (rows elsewhere: {counts})",
                       "add training examples of every class (or leave that class out of the data)")


def _dropped_notes(meta: dict[str, Any]) -> list[str]:
    """One note per kind of row that cleaning dropped (see the prepared meta.json)."""
    why = {"unlabelled": "with a label named by --unlabelled-values", "empty_text": "with an empty input",
           "duplicates": "repeated exactly", "in_test": "whose input is also in test (kept there only)"}
    totals: dict[str, int] = {}
    for counts in meta["dropped"].values():
        for reason, n in counts.items():
            if reason in why:
                totals[reason] = totals.get(reason, 0) + n
    return [f"dropped {n} row(s) {why[reason]}" for reason, n in totals.items() if n]


def _check_layout(root: Path) -> None:
    """DVC tracks ``<root>/data``: the data and task-card folders must be the project's own."""
    for what, actual, expected in (("TTLORA_DATA_DIR", data_root(), root / "data"),
                                   ("TTLORA_TASKS_DIR", tasks_dir(), root / "data" / "tasks")):
        if Path(actual).resolve() != expected.resolve():
            raise BadInput(f"{what} is {actual}, but DVC-tracked data lives in {expected}",
                           f"unset {what} or set TTLORA_PROJECT_DIR to the repository")
