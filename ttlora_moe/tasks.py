"""Task cards: ``data/tasks/<task>.yaml`` says where a task's data is and how to read it."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ttlora_moe.errors import BadInput

METRICS = ("accuracy", "f1", "mcc")
FILE_ROLES = ("train", "test", "labelled")


@dataclass(frozen=True)
class TaskCard:
    """How to turn a raw dataset into (text, text_pair, label) rows."""

    name: str
    source: str
    text: str
    text_pair: str | None
    label: str
    label_names: list[str]
    label_values: list[Any]
    metric: str = "accuracy"
    files: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    description: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def validate(self) -> None:
        """Raise :class:`BadInput` when the card is inconsistent."""
        validate_task_name(self.name)
        where = f"task card {self.name!r}"
        if len(self.label_names) < 2:
            raise BadInput(f"{where} has fewer than two labels", "list at least two label_names")
        if len(self.label_values) != len(self.label_names):
            raise BadInput(f"{where}: {len(self.label_values)} label_values for {len(self.label_names)} label_names",
                           "give one raw value per label name, in the same order")
        if len({normalise(v) for v in self.label_values}) != len(self.label_values):
            raise BadInput(f"{where} repeats a label value", "make label_values unique")
        if self.metric not in METRICS:
            raise BadInput(f"{where} has metric {self.metric!r}", f"use one of {', '.join(METRICS)}")
        unknown = sorted(set(self.files) - set(FILE_ROLES))
        if unknown or not ({"train", "labelled"} & set(self.files)):
            raise BadInput(f"{where} has files {self.files}",
                           "map 'train' (and 'test') or 'labelled' to file patterns in the source folder")


def normalise(value: Any) -> str:
    """Raw label values compare as strings: 1, '1' and 1.0 are one value; True is 'true'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def validate_task_name(name: str) -> None:
    """A task name must be a lowercase Python identifier (it names files, models and flows)."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise BadInput(f"task name {name!r} is not a valid identifier",
                       "use lowercase letters, digits and underscores, not starting with a digit")


def tasks_dir() -> Path:
    """``TTLORA_TASKS_DIR`` or ``<project>/data/tasks``."""
    from ttlora_moe.params import project_dir

    return Path(os.environ.get("TTLORA_TASKS_DIR", project_dir() / "data" / "tasks"))


def list_tasks(directory: Path | None = None) -> list[str]:
    """Names of the task cards in ``directory``."""
    directory = Path(directory or tasks_dir())
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_task_card(name: str, directory: Path | None = None) -> TaskCard:
    """The card for ``name``; an unknown task lists the known ones."""
    directory = Path(directory or tasks_dir())
    path = directory / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(list_tasks(directory)) or "none"
        raise BadInput(f"unknown task {name!r} (known: {known})", "pick a listed task or add one with `ttlora-moe tasks add`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", "fix the card") from None
    known_keys = {f.name for f in fields(TaskCard)}
    unknown = sorted(set(data) - known_keys)
    missing = sorted({"source", "text", "label", "label_names", "label_values"} - set(data))
    if unknown or missing:
        raise BadInput(f"{path}: unknown keys {unknown}, missing keys {missing}", f"use the keys {sorted(known_keys)}")
    data.setdefault("name", name)
    data.setdefault("text_pair", None)
    card = TaskCard(**data)
    card.validate()
    return card


def save_task_card(card: TaskCard, directory: Path | None = None) -> Path:
    """Write ``<directory>/<name>.yaml`` atomically."""
    card.validate()
    directory = Path(directory or tasks_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card.name}.yaml"
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as fh:
        yaml.safe_dump(asdict(card), fh, sort_keys=False, allow_unicode=True)
    os.replace(fh.name, path)
    return path
