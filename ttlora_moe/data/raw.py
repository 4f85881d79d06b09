"""Raw data: find a task's source (a local mirror, a path or the hub), copy its files, read them.

``data/raw/<task>/`` holds the task's files as they came (DVC-tracked); nothing here interprets rows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ttlora_moe.data.cards import TaskCard
from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir

RAW_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def mirror_dir() -> Path:
    """The local mirror of raw datasets (``TTLORA_DATA_MIRROR``)."""
    value = os.environ.get("TTLORA_DATA_MIRROR")
    if not value:
        raise BadInput("TTLORA_DATA_MIRROR is not set",
                       "point it at a folder of <task>/*.parquet, e.g. export TTLORA_DATA_MIRROR=../shared/datasets")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise BadInput(f"data mirror {path} (TTLORA_DATA_MIRROR) does not exist",
                       "set TTLORA_DATA_MIRROR to an existing folder, e.g. ../shared/datasets")
    return path


def is_hub_id(source: str) -> bool:
    """``owner/name`` or ``owner/name:config``: the shape of a Hugging Face dataset id."""
    name = source.partition(":")[0]
    return name.count("/") == 1 and all(part and not part.startswith(".") for part in name.split("/"))


def _source_folder(card: TaskCard, mirror: Path | None) -> Path | None:
    """The local folder (or file) a card's source names, or None for a hub id."""
    if card.source.startswith(("/", ".", "~")):
        path = Path(card.source).expanduser()
        if not path.exists():
            raise BadInput(f"dataset path {card.source} of task {card.name!r} does not exist", "give an existing file or folder")
        return path
    if mirror is not None or os.environ.get("TTLORA_DATA_MIRROR"):
        root = Path(mirror) if mirror is not None else mirror_dir()
        if (root / card.source).exists():
            return root / card.source
        if not is_hub_id(card.source):
            raise BadInput(f"no folder {card.source!r} for task {card.name!r} in the data mirror {root}",
                           "fix the card's source or point TTLORA_DATA_MIRROR at the folder holding it")
    if is_hub_id(card.source):
        return None
    mirror_dir()  # raises: the mirror is not configured
    raise AssertionError("unreachable")


def import_raw(card: TaskCard, dest: Path, mirror: Path | None = None) -> Path:
    """Copy the card's raw files into ``dest`` (atomically) from a local source or the hub."""
    source = _source_folder(card, mirror)
    with atomic_dir(Path(dest)) as tmp:
        if source is None:
            _download_hub(card.source, tmp)
            source = tmp  # check below that the card's patterns match what the hub gave
        if source.is_file():
            shutil.copy2(source, tmp / source.name)
            return Path(dest)
        for role, pattern in card.files.items():
            matches = sorted(source.glob(pattern))
            if not matches:
                present = ", ".join(sorted(p.name for p in source.iterdir())) or "nothing"
                raise BadInput(f"{source} has no file matching {pattern!r} ({role} of task {card.name!r}; it holds {present})",
                               "fix the card's files or the mirror")
            for file in matches:
                if file.parent != tmp:
                    shutil.copy2(file, tmp / file.name)
    return Path(dest)


def raw_complete(card: TaskCard, raw_dir: Path) -> bool:
    """Whether ``raw_dir`` holds a file for every role of the card (else it needs a fresh import)."""
    raw_dir = Path(raw_dir)
    return raw_dir.is_dir() and all(
        any(p.suffix in RAW_SUFFIXES for p in raw_dir.glob(pattern)) for pattern in card.files.values())


def _download_hub(dataset_id: str, dest: Path) -> None:
    """Write every split of a hub dataset (``owner/name[:config]``) as ``<split>-00000-of-00001.parquet``.

    That is the hub's own parquet naming, so a card's ``train-*.parquet`` pattern fits both the hub
    and a mirror of it.
    """
    import datasets

    name, _, config = dataset_id.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise BadInput(f"cannot load hub dataset {dataset_id!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                       "check the id and the network, or use a local mirror (TTLORA_DATA_MIRROR)") from None
    for split, ds in loaded.items():
        ds.to_parquet(str(dest / f"{split}-00000-of-00001.parquet"))


def read_raw(card: TaskCard, files: list[Path]) -> pd.DataFrame:
    """Concatenate raw files; CSV/JSON text columns are read as text, never guessed into numbers or NaN."""
    text_columns = {c: str for c in (card.text, card.text_pair) if c}
    frames = []
    for file in files:
        try:
            if file.suffix == ".parquet":
                frames.append(pd.read_parquet(file))
            elif file.suffix == ".csv":
                frames.append(pd.read_csv(file, dtype=text_columns, keep_default_na=False))
            else:
                frames.append(pd.read_json(file, lines=file.suffix == ".jsonl", dtype=False, convert_dates=False))
        except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
            raise BadInput(f"cannot read {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                           "re-import the raw data") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def raw_files(card: TaskCard, raw_dir: Path, role: str) -> list[Path]:
    pattern = card.files[role]
    matches = sorted(p for p in raw_dir.glob(pattern) if p.suffix in RAW_SUFFIXES)
    if not matches:
        raise BadInput(f"{raw_dir} has no file matching {pattern!r} ({role} of task {card.name!r})",
                       f"import the raw data first (`ttlora-moe tasks add {card.name}` or `dvc pull {raw_dir}.dvc`)")
    return matches
