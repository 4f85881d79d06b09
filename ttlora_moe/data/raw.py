"""Raw data: find a task's source (a local mirror, a path or the hub), copy its files, read them.

``data/raw/<task>/`` holds the task's files as they came (DVC-tracked); nothing here interprets rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ttlora_moe.data.cards import TaskCard
from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir

RAW_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
_UNREADABLE_FIX = "make it readable (e.g. chmod a+r), or copy it somewhere readable"


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
            raise BadInput(f"dataset path {card.source} of task {card.name!r} does not exist here",
                           "it is where the task was registered from: get its raw data with `dvc pull "
                           f"data/raw/{card.name}.dvc`, or point the card's source at an existing file or folder")
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
            copy_raw_file(source, tmp / source.name)
            return Path(dest)
        if not source.is_dir():
            raise BadInput(f"dataset path {source} of task {card.name!r} is {file_kind(source)}",
                           "give a regular CSV/Parquet/JSONL file or a folder of them")
        for role, pattern in card.files.items():
            matches = data_files(source.glob(pattern))
            if not matches:
                present = ", ".join(sorted(p.name for p in source.iterdir())) or "nothing"
                raise BadInput(f"{source} has no file matching {pattern!r} ({role} of task {card.name!r}; it holds {present})",
                               "fix the card's files or the mirror")
            for file in matches:
                if file.parent != tmp:
                    copy_raw_file(file, tmp / file.name)
    return Path(dest)


def is_raw_file(path: Path) -> bool:
    """Whether ``path`` is named like a data file (``.csv``, ``.Parquet``, ...: any case)."""
    return Path(path).suffix.lower() in RAW_SUFFIXES


def data_files(paths: Iterable[Path]) -> list[Path]:
    """The data files among ``paths``, sorted; one named like data but not a regular file is BadInput."""
    files = []
    for path in sorted(paths):
        if not is_raw_file(path):
            continue
        if not path.is_file():
            raise BadInput(f"{path} is {file_kind(path)}, not a regular file",
                           "replace it with a regular CSV/Parquet/JSONL file, or move it out of the folder")
        files.append(path)
    return files


def file_kind(path: Path) -> str:
    """What ``path`` is, in words ("a named pipe", "a folder", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def copy_raw_file(file: Path, dest: Path) -> None:
    """Copy one raw file (following a symbolic link); an unreadable one is BadInput."""
    try:
        shutil.copyfile(file, dest)
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror or exc}", _UNREADABLE_FIX) from None


def raw_complete(card: TaskCard, raw_dir: Path) -> bool:
    """Whether ``raw_dir`` holds a file for every role of the card (else it needs a fresh import)."""
    raw_dir = Path(raw_dir)
    return raw_dir.is_dir() and all(
        any(is_raw_file(p) for p in raw_dir.glob(pattern)) for pattern in card.files.values())


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
        raise BadInput(f"cannot load hub dataset {dataset_id!r}: {_first_line(exc)}",
                       "check the id and the network, or use a local mirror (TTLORA_DATA_MIRROR)") from None
    for split, ds in loaded.items():
        ds.to_parquet(str(dest / f"{split}-00000-of-00001.parquet"))


def read_raw(card: TaskCard, files: list[Path]) -> pd.DataFrame:
    """Concatenate a task's raw files (see :func:`read_raw_file`)."""
    frames = [read_raw_file(file, f"{file.name} of task {card.name!r}") for file in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_raw_file(file: Path, shown: str | None = None) -> pd.DataFrame:
    """One raw file as a frame; CSV cells are text, never guessed into numbers or NaN.

    ``shown`` names the file in error messages (default: its path), each one line that says how to fix it.
    """
    shown = shown or str(file)
    suffix = Path(file).suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(file)
        except OSError as exc:
            if exc.strerror:  # the file system's error (permission denied, ...), not a bad Parquet file
                raise BadInput(f"cannot read {shown}: {exc.strerror}", _UNREADABLE_FIX) from None
            raise BadInput(f"{shown} is not a readable Parquet file ({_first_line(exc)})",
                           "export it again as Parquet, or give it the suffix of its real format") from None
        except (ValueError, pa.ArrowException) as exc:  # a corrupt or foreign file
            raise BadInput(f"{shown} is not a readable Parquet file ({_first_line(exc)})",
                           "export it again as Parquet, or give it the suffix of its real format") from None
    text = _utf8_text(file, shown)
    if suffix == ".csv":
        return read_csv_text(text, shown)
    try:
        return pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=False)
    except ValueError as exc:
        raise BadInput(f"{shown} is not valid {'JSON Lines' if suffix == '.jsonl' else 'JSON'} ({_json_problem(text, suffix, exc)})",
                       "write one JSON object per line (.jsonl) or a list of objects (.json)") from None


def read_csv_text(text: str, shown: str) -> pd.DataFrame:
    """Comma-separated text, the first non-blank line its header, as a frame of text cells.

    Blank lines are skipped, header names are stripped, empty fields from a trailing comma are ignored,
    a short row is padded with empty cells; a repeated header, a row with more values than the header
    and a file that is not comma-separated are errors that name the line.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    line = 1  # where the next record starts (a quoted value may span lines)
    try:
        for record in reader:
            here, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = _csv_header(record, shown)
                continue
            if len(record) > len(header):
                if any(cell.strip() for cell in record[len(header):]):
                    raise BadInput(f"line {here} of {shown} has {len(record)} values but the header has "
                                   f"{len(header)}", 'quote every value that contains a comma ("a, b"), or fix that line')
                record = record[:len(header)]
            rows.append(record + [""] * (len(header) - len(record)))
    except csv.Error as exc:
        raise BadInput(f"line {line} of {shown} is not valid CSV ({exc})",
                       'close every quote ("..."), or double a quote inside a quoted value ("")') from None
    if header is None:
        raise BadInput(f"{shown} is empty", "give a CSV file with a header line and rows")
    return pd.DataFrame(rows, columns=header, dtype=object)


def _csv_header(record: list[str], shown: str) -> list[str]:
    names = [cell.strip() for cell in record]
    while names and not names[-1]:  # a trailing comma
        names.pop()
    if len(names) == 1:
        for delimiter, what in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if delimiter in names[0]:
                raise BadInput(f"{shown} has one column {names[0]!r}: its values look separated by {what}, not commas",
                               "save it as comma-separated CSV")
    names = [name or f"Unnamed: {i}" for i, name in enumerate(names)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise BadInput(f"{shown} has the column {name!r} twice (columns {seen[name] + 1} and {i + 1})",
                           "rename one of them so every header is distinct")
        seen[name] = i
    return names


def _utf8_text(file: Path, shown: str) -> str:
    """The file's text: UTF-8 (a byte-order mark is skipped); anything else is BadInput naming the line."""
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {shown}: {exc.strerror or exc}", _UNREADABLE_FIX) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BadInput(f"{shown} is UTF-16 text", "re-save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise BadInput(f"{shown} is not a text file (a NUL byte on line {line})",
                       "give a CSV/JSONL text file, or name a Parquet file *.parquet")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInput(f"{shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
                       "re-save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 -t utf-8)") from None


def _json_problem(text: str, suffix: str, exc: Exception) -> str:
    """Where a JSON Lines file breaks (the first bad line), else pandas' own words."""
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as bad:
                return f"line {number}: {bad.msg}"
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def raw_files(card: TaskCard, raw_dir: Path, role: str) -> list[Path]:
    pattern = card.files[role]
    matches = data_files(raw_dir.glob(pattern))
    if not matches:
        raise BadInput(f"{raw_dir} has no file matching {pattern!r} ({role} of task {card.name!r})",
                       f"import the raw data first (`ttlora-moe tasks add {card.name}` or `dvc pull {raw_dir}.dvc`)")
    return matches
