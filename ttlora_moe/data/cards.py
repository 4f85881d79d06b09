"""Task cards: ``data/tasks/<task>.yaml`` says where a task's data is and how to read it."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ttlora_moe.data.choices import MULTIPLE_CHOICE, check_choice_card
from ttlora_moe.errors import BadInput
from ttlora_moe.paths import tasks_dir

METRICS = ("accuracy", "f1", "mcc")
CLASSIFICATION = "classification"
KINDS = (CLASSIFICATION, MULTIPLE_CHOICE)
# What a card without ``unlabelled_values`` drops: GLUE's hidden-label marker and blank labels
# (cards written before the field existed; ``tasks add`` always writes the field).
LEGACY_UNLABELLED = (-1, "", "nan", "none", "null")
MAX_NAME_LENGTH = 40
# YAML 1.1 reads these as booleans or null: a task so named would not survive params.yaml's list.
YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})

FILE_ROLES = ("train", "test", "labelled", "unlabelled")


@dataclass(frozen=True)
class TaskCard:
    """How to turn a raw dataset into (text, text_pair, label) rows."""

    name: str                   # identifier: names the card file, the prepared folder and the expert
    source: str                 # folder under the data mirror, a local path, or a hub id ("owner/name[:config]")
    text: str                   # input text column; multiple_choice: a template of columns, "{context} {question}"
    text_pair: str | None       # second text column of a pair task, else None (multiple_choice: None, the options)
    label: str                  # raw label column
    label_names: list[str]      # human names; index = class id
    label_values: list[Any]     # raw values in the data (ints, strings or bools), aligned with label_names
    # Raw label values meaning "no label": their rows are dropped and counted ('' or null: a blank cell).
    unlabelled_values: list[Any] = field(default_factory=lambda: list(LEGACY_UNLABELLED))
    metric: str = "accuracy"    # headline metric besides accuracy: accuracy | f1 (binary, class 1) | mcc
    files: dict[str, str] = field(default_factory=dict)  # role (train | test | labelled | unlabelled) -> glob in the source
    notes: str = ""             # data quirks, copied into the prepared meta.json
    description: str = ""       # one line for `ttlora-moe tasks list` and the model card
    kind: str = CLASSIFICATION  # classification | multiple_choice (see ttlora_moe/data/choices.py)
    # multiple_choice: the option columns ([answerA, answerB]) or one list column ("choices.text": a struct's field)
    choices: list[str] | str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def has_pair(self) -> bool:
        """Whether every input is a pair (a pair task, or multiple choice: the options are the pair)."""
        return self.text_pair is not None or self.kind == MULTIPLE_CHOICE

    def validate(self) -> None:
        """Raise :class:`BadInput` when the card is inconsistent."""
        validate_task_name(self.name)
        where = f"task card {self.name!r}"
        for key in ("source", "text", "label"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise BadInput(f"{where}: {key} must be a non-empty string, got {getattr(self, key)!r}", f"set {key}")
        if self.text_pair is not None and (not isinstance(self.text_pair, str) or not self.text_pair.strip()):
            raise BadInput(f"{where}: text_pair must be a column name or null, got {self.text_pair!r}", "fix text_pair")
        if not isinstance(self.label_names, list) or not all(isinstance(n, str) and n for n in self.label_names):
            raise BadInput(f"{where}: label_names must be a list of names, got {self.label_names!r}",
                           "list one name per class, e.g. [negative, positive]")
        if not isinstance(self.label_values, list):
            raise BadInput(f"{where}: label_values must be a list, got {self.label_values!r}",
                           "list the raw label values in the data, aligned with label_names")
        if len(self.label_names) < 2:
            raise BadInput(f"{where} has fewer than two labels", "list at least two label_names")
        if len(set(self.label_names)) != len(self.label_names):
            raise BadInput(f"{where} repeats a label name in {self.label_names}", "make label_names unique")
        if len(self.label_values) != len(self.label_names):
            raise BadInput(f"{where}: {len(self.label_values)} label_values for {len(self.label_names)} label_names",
                           "give one raw value per label name, in the same order")
        if len({normalise(v) for v in self.label_values}) != len(self.label_values):
            raise BadInput(f"{where} repeats a label value in {self.label_values}", "make label_values unique")
        if not isinstance(self.unlabelled_values, list):
            raise BadInput(f"{where}: unlabelled_values must be a list, got {self.unlabelled_values!r}",
                           "list the raw label values that mean 'no label' (or [] to drop nothing)")
        if self.metric not in METRICS:
            raise BadInput(f"{where} has metric {self.metric!r}", f"use one of {', '.join(METRICS)}")
        if self.metric == "f1" and self.num_labels != 2:
            raise BadInput(f"{where}: metric 'f1' (binary F1 of class 1) needs two labels, the card has {self.num_labels}",
                           "use accuracy or mcc")
        if not isinstance(self.files, dict) or not all(isinstance(v, str) and v for v in self.files.values()):
            raise BadInput(f"{where}: files must map roles to file patterns, got {self.files!r}",
                           "e.g. files: {train: 'train-*.parquet', test: 'validation-*.parquet'}")
        unknown = sorted(set(self.files) - set(FILE_ROLES))
        if unknown or not ({"train", "labelled"} & set(self.files)):
            raise BadInput(f"{where} has files {self.files}",
                           f"map 'train' (and 'test') or 'labelled' to file patterns in the source folder (roles: {', '.join(FILE_ROLES)})")
        if "train" in self.files and "labelled" in self.files:
            raise BadInput(f"{where} has both a 'train' and a 'labelled' file", "use 'labelled' only when there is no train file")
        if self.kind not in KINDS:
            raise BadInput(f"{where} has kind {self.kind!r}", f"use one of {', '.join(KINDS)}")
        if self.kind == MULTIPLE_CHOICE:
            check_choice_card(self)
        elif self.choices is not None:
            raise BadInput(f"{where} lists choices but is not multiple choice", f"set kind: {MULTIPLE_CHOICE} or remove choices")


def normalise(value: Any) -> str:
    """Raw label values compare as text: 1, '1', 1.0 and ' 1.0' are one value; True is 'true'; a blank
    or missing cell is ''."""
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    if "_" not in text:  # int() and float() accept 1_000
        with contextlib.suppress(ValueError):
            return str(int(text))
        with contextlib.suppress(ValueError):
            number = float(text)
            if math.isfinite(number) and number.is_integer():
                return str(int(number))
    return text.lower()


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT or pd.NA (a scalar cell with no value)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # not a scalar
        return False


def validate_task_name(name: str) -> None:
    """A task name is a short ASCII lowercase identifier (it names files, models, flows and a YAML list item)."""
    shown = name if not isinstance(name, str) or len(name) <= MAX_NAME_LENGTH else name[:MAX_NAME_LENGTH] + "..."
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise BadInput(f"task name {shown!r} is not a valid identifier",
                       "use lowercase ASCII letters, digits and underscores, starting with a letter")
    if len(name) > MAX_NAME_LENGTH:
        raise BadInput(f"task name {shown!r} has {len(name)} characters (at most {MAX_NAME_LENGTH})", "pick a shorter name")
    if name in YAML_WORDS:
        raise BadInput(f"task name {name!r} is a YAML keyword (it would read back as a boolean or null)",
                       "pick another name")


# Letters that look alike: non-ASCII lookalikes (Cyrillic, Greek, ...) and ASCII digit/letter pairs.
_LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ɡ": "g", "ο": "o", "α": "a", "ν": "v", "ρ": "p", "τ": "t",
    "ι": "i", "κ": "k", "μ": "u", "υ": "u", "ı": "i", "0": "o", "1": "l", "_": None, "-": None})


def name_skeleton(name: str) -> str:
    """``name`` with lookalike characters folded together: two names with one skeleton are confusable."""
    folded = unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKES)
    return folded.replace("rn", "m").replace("vv", "w")


def list_tasks(directory: Path | None = None) -> list[str]:
    """Names of the task cards in ``directory``."""
    directory = Path(directory or tasks_dir())
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_task_card(name: str, directory: Path | None = None) -> TaskCard:
    """The card for ``name``; an unknown task lists the known ones."""
    directory = Path(directory or tasks_dir())
    path = directory / f"{name}.yaml"
    if not isinstance(name, str) or not name.isidentifier() or not path.is_file():
        known = ", ".join(list_tasks(directory)) or "none"
        raise BadInput(f"unknown task {name!r} (known: {known}; cards in {directory})",
                       "pick a listed task or add one with `ttlora-moe tasks add`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", "fix the card") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a mapping of card fields", "see data/tasks/sst2.yaml for the layout")
    known_keys = {f.name for f in fields(TaskCard)}
    unknown = sorted(map(str, set(data) - known_keys))
    missing = sorted({"source", "text", "label", "label_names", "label_values"} - set(data))
    if unknown or missing:
        raise BadInput(f"{path}: unknown keys {unknown}, missing keys {missing}", f"use the keys {sorted(known_keys)}")
    data.setdefault("name", name)
    if data["name"] != name:
        raise BadInput(f"{path} names task {data['name']!r}", f"rename the file to {data['name']}.yaml or set name: {name}")
    data.setdefault("text_pair", None)
    data.setdefault("files", {})
    data.setdefault("notes", "")
    data.setdefault("description", "")
    if data["notes"] is None:
        data["notes"] = ""
    card = TaskCard(**data)
    card.validate()
    return card


def save_task_card(card: TaskCard, directory: Path | None = None) -> Path:
    """Write ``<directory>/<name>.yaml`` atomically (a classification card without the kind and choices keys)."""
    card.validate()
    directory = Path(directory or tasks_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card.name}.yaml"
    data = asdict(card)
    if card.kind == CLASSIFICATION:
        del data["kind"], data["choices"]
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{card.name}.", suffix=".tmp", delete=False) as fh:
        try:
            yaml.safe_dump(data, fh, sort_keys=False, allow_unicode=True)
        except BaseException:
            fh.close()
            os.unlink(fh.name)
            raise
    os.replace(fh.name, path)
    return path
