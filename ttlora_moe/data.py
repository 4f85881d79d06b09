"""Raw data import, prepared splits, and batching.

``data/raw/<task>/`` holds the task's files as they came (DVC-tracked). ``prepare_task`` turns them
into ``data/prepared/<task>/{train,validation,test}.parquet`` with the columns ``text``,
``text_pair`` (null for single-text tasks) and ``label`` (class id), plus ``meta.json`` saying
what was kept, dropped and why. The official validation split becomes **test** (GLUE test labels
are hidden); a seeded slice of train becomes validation; a task without a train file is carved
from its labelled file. Same raw bytes and params give byte-identical files.

Run as a DVC stage: ``python -m ttlora_moe.data prepare TASK --raw DIR --out DIR --params params.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir, read_json, write_json
from ttlora_moe.tasks import TaskCard, load_task_card, normalise

PREPARED_COLUMNS = ("text", "text_pair", "label")
SPLITS = ("train", "validation", "test")
RAW_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
SCHEMA = pa.schema([("text", pa.string()), ("text_pair", pa.string()), ("label", pa.int64())])
DEFAULT_PREPARE = {
    "seed": 13,
    "validation_fraction": 0.1,
    "validation_max_rows": 2000,
    "carve_test_fraction": 0.2,
    "test_max_rows": 2000,
    "min_rows": 20,
}


def mirror_dir() -> Path:
    """The local mirror of raw datasets (``TTLORA_DATA_MIRROR``)."""
    value = os.environ.get("TTLORA_DATA_MIRROR")
    if not value:
        raise BadInput("TTLORA_DATA_MIRROR is not set", "point it at a folder of <task>/*.parquet, e.g. ../shared/datasets")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise BadInput(f"data mirror {path} does not exist", "set TTLORA_DATA_MIRROR to an existing folder")
    return path


def _source_folder(card: TaskCard, mirror: Path | None) -> Path | None:
    """The local folder (or file) a card's source names, or None for a hub id."""
    direct = Path(card.source).expanduser()
    if direct.exists():
        return direct
    if card.source.startswith(("/", ".", "~")):
        raise BadInput(f"dataset path {card.source} does not exist", "give an existing file or folder")
    env_set = mirror is not None or os.environ.get("TTLORA_DATA_MIRROR")
    if env_set:
        folder = (mirror or mirror_dir()) / card.source
        if folder.exists():
            return folder
    if "/" in card.source:
        return None  # a hub dataset id
    raise BadInput(f"no folder {card.source!r} for task {card.name!r} in the data mirror "
                   f"{mirror or os.environ.get('TTLORA_DATA_MIRROR', '(TTLORA_DATA_MIRROR unset)')}",
                   "set TTLORA_DATA_MIRROR to the folder holding <task>/*.parquet")


def import_raw(card: TaskCard, dest: Path, mirror: Path | None = None) -> Path:
    """Copy the card's raw files into ``dest`` (atomically) from a local source or the hub."""
    source = _source_folder(card, mirror)
    with atomic_dir(Path(dest)) as tmp:
        if source is None:
            _download_hub(card.source, tmp)
        elif source.is_file():
            shutil.copy2(source, tmp / source.name)
        else:
            for role, pattern in card.files.items():
                matches = sorted(source.glob(pattern))
                if not matches:
                    raise BadInput(f"{source} has no file matching {pattern!r} ({role} of task {card.name!r})",
                                   "fix the card's files or the mirror")
                for file in matches:
                    shutil.copy2(file, tmp / file.name)
    return Path(dest)


def _download_hub(dataset_id: str, dest: Path) -> None:
    """Write every split of a hub dataset (``owner/name[:config]``) as ``<split>.parquet``."""
    import datasets

    name, _, config = dataset_id.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise BadInput(f"cannot load hub dataset {dataset_id!r}: {str(exc).splitlines()[0]}",
                       "check the id and network, or use a local mirror") from None
    for split, ds in loaded.items():
        ds.to_parquet(str(dest / f"{split}.parquet"))


def _read_raw(files: list[Path]) -> pd.DataFrame:
    frames = []
    for file in files:
        if file.suffix == ".parquet":
            frames.append(pd.read_parquet(file))
        elif file.suffix == ".csv":
            frames.append(pd.read_csv(file))
        else:
            frames.append(pd.read_json(file, lines=file.suffix == ".jsonl"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _raw_files(card: TaskCard, raw_dir: Path, role: str) -> list[Path]:
    pattern = card.files.get(role)
    files = [p for p in raw_dir.iterdir() if p.suffix in RAW_SUFFIXES] if raw_dir.is_dir() else []
    if pattern is None and role == "labelled" and not card.files:
        return sorted(files)
    matches = sorted(raw_dir.glob(pattern)) if pattern else []
    if pattern and not matches:
        raise BadInput(f"{raw_dir} has no file matching {pattern!r} for task {card.name!r}",
                       f"import the raw data first (`ttlora-moe tasks add` or `dvc pull {raw_dir}.dvc`)")
    return matches


def to_rows(card: TaskCard, df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Map a raw frame to (text, text_pair, label) rows; return the rows and what was dropped."""
    columns = [card.text, card.label] + ([card.text_pair] if card.text_pair else [])
    for column in columns:
        if column not in df.columns:
            raise BadInput(f"column {column!r} of task {card.name!r} is not in {where} "
                           f"(columns: {', '.join(map(str, df.columns))})", "fix the task card")
    for column in columns[:1] + columns[2:]:
        values = df[column].dropna()
        if len(values) and not values.map(lambda v: isinstance(v, str)).all():
            raise BadInput(f"input column {column!r} of task {card.name!r} in {where} is not text "
                           f"(found {type(values.iloc[0]).__name__})", "choose a text column")
    mapping = {normalise(v): i for i, v in enumerate(card.label_values)}
    raw = df[card.label]
    unlabelled = raw.isna() | raw.map(lambda v: normalise(v) in ("-1", "", "nan", "none"))
    labels = raw[~unlabelled].map(normalise)
    unknown = sorted(set(labels) - set(mapping))
    if unknown:
        raise BadInput(f"label value(s) {unknown[:5]} in column {card.label!r} of {where} are not in "
                       f"task {card.name!r}'s label_values {card.label_values}", "add them to the card or fix the data")
    kept = df[~unlabelled]
    out = pd.DataFrame({
        "text": kept[card.text].astype("string"),
        "text_pair": kept[card.text_pair].astype("string") if card.text_pair else pd.Series(pd.NA, index=kept.index, dtype="string"),
        "label": labels.map(mapping).astype("int64"),
    })
    missing_text = out["text"].isna() | (out["text"].str.strip() == "")
    out = out[~missing_text]
    before = len(out)
    out = out.drop_duplicates(subset=list(PREPARED_COLUMNS), keep="first")
    dropped = {"unlabelled": int(unlabelled.sum()), "empty_text": int(missing_text.sum()),
               "duplicates": before - len(out)}
    return out.reset_index(drop=True), dropped


def _shuffle(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = list(range(len(df)))
    random.Random(seed).shuffle(order)
    return df.iloc[order].reset_index(drop=True)


def _cap(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    return df if not limit or len(df) <= limit else df.iloc[:limit]


def _key(df: pd.DataFrame) -> pd.Series:
    return df["text"].fillna("") + "\x1f" + df["text_pair"].fillna("")


def _write_split(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df[list(PREPARED_COLUMNS)], schema=SCHEMA, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), str(path))


def prepare_task(card: TaskCard, raw_dir: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the prepared splits and ``meta.json`` of ``card`` into ``out_dir``; return the meta."""
    p = {**DEFAULT_PREPARE, **(params or {})}
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir() or not any(raw_dir.iterdir()):
        raise BadInput(f"raw data folder {raw_dir} is missing or empty", f"import it first (`dvc pull` or `ttlora-moe tasks add {card.name}`)")
    notes, dropped = [card.notes] if card.notes else [], {}

    def load(role: str) -> pd.DataFrame:
        files = _raw_files(card, raw_dir, role)
        rows, why = to_rows(card, _read_raw(files), ", ".join(f.name for f in files))
        dropped[role] = why
        return _shuffle(rows, p["seed"])

    seed_rng = p["seed"]
    if "train" in card.files:
        pool = load("train")
        test = load("test") if "test" in card.files else None
        if test is None:
            n_test = math.ceil(len(pool) * p["carve_test_fraction"])
            test, pool = pool.iloc[:n_test], pool.iloc[n_test:]
            notes.append("no test file: test carved from train (seeded)")
    else:
        pool = load("labelled")
        if "test" in card.files:
            test = load("test")
            notes.append("no train file in the source: train/validation carved from "
                         f"{card.files['labelled']} (seeded)")
        else:
            n_test = math.ceil(len(pool) * p["carve_test_fraction"])
            test, pool = pool.iloc[:n_test], pool.iloc[n_test:]
            notes.append(f"no train file in the source: train/validation/test carved from {card.files['labelled']} (seeded)")
    # Held-out hygiene: nothing in train/validation may also be a test input.
    leaked = _key(pool).isin(set(_key(test)))
    pool = pool[~leaked].reset_index(drop=True)
    n_val = min(math.ceil(len(pool) * p["validation_fraction"]), p["validation_max_rows"] or len(pool))
    validation, train = pool.iloc[:n_val], pool.iloc[n_val:]
    test = _cap(_shuffle(test.reset_index(drop=True), seed_rng + 1), p["test_max_rows"])
    if p.get("train_max_rows"):
        train = _cap(train, p["train_max_rows"])
    splits = {"train": train, "validation": validation, "test": test}
    for name, df in splits.items():
        if len(df) < p["min_rows"]:
            raise BadInput(f"task {card.name!r}: the {name} split has {len(df)} rows after cleaning "
                           f"(minimum {p['min_rows']})", "provide more labelled data")
        if df["label"].nunique() < 2 and name == "train":
            raise BadInput(f"task {card.name!r}: the training split has a single class", "provide examples of every label")
    meta = {
        "task": card.name,
        "rows": {k: len(v) for k, v in splits.items()},
        "labels": {k: {card.label_names[i]: int(c) for i, c in sorted(v["label"].value_counts().items())}
                   for k, v in splits.items()},
        "dropped": dropped,
        "dropped_test_overlap": int(leaked.sum()),
        "notes": notes,
        "params": p,
        "raw_files": sorted(f.name for f in raw_dir.iterdir() if f.suffix in RAW_SUFFIXES),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        for name, df in splits.items():
            _write_split(df, tmp / f"{name}.parquet")
        write_json(tmp / "meta.json", meta)
    return meta


def load_split(prepared_dir: Path, split: str, max_samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of a prepared split as dicts; a seeded subsample when ``max_samples`` is set."""
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.exists():
        raise BadInput(f"{path} does not exist", "prepare the task first (`dvc repro` or `ttlora-moe train-expert`)")
    rows = pq.read_table(str(path)).to_pylist()
    if max_samples is not None and len(rows) > max_samples:
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), max_samples))]
    return rows


def prepared_meta(prepared_dir: Path) -> dict[str, Any]:
    """``meta.json`` of a prepared task."""
    return read_json(Path(prepared_dir) / "meta.json")


def prepared_md5(prepared_dir: Path) -> str:
    """md5 over the three split files' bytes in a fixed order: the data version of an expert."""
    digest = hashlib.md5()
    for split in SPLITS:
        path = Path(prepared_dir) / f"{split}.parquet"
        if not path.exists():
            raise BadInput(f"{path} does not exist", "prepare the task first")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Collator:
    """Tokenise a list of rows with dynamic padding (to the longest in the batch) and truncation."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["text"] for r in rows]
        pairs = [r.get("text_pair") for r in rows]
        kw = {"truncation": True, "max_length": self.max_length}
        if all(p is None for p in pairs):
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", **kw)
        elif all(p is not None for p in pairs):
            enc = self.tokenizer(texts, pairs, padding=True, return_tensors="pt", **kw)
        else:  # a mixed batch of single texts and pairs (MoE serving)
            single = [self.tokenizer(t, p, **kw) if p is not None else self.tokenizer(t, **kw) for t, p in zip(texts, pairs)]
            enc = self.tokenizer.pad(single, return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if all("label" in r for r in rows):
            out["labels"] = torch.tensor([int(r["label"]) for r in rows])
        return out


def prepare_all(task_names: list[str], raw_root: Path, prepared_root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Prepare several tasks; return their metas by task."""
    return {t: prepare_task(load_task_card(t), Path(raw_root) / t, Path(prepared_root) / t, params) for t in task_names}


def main(argv: list[str] | None = None) -> int:
    """``python -m ttlora_moe.data prepare TASK --raw DIR --out DIR [--params FILE]`` (the DVC stage)."""
    from ttlora_moe.params import load_params, section

    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.data")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write data/prepared/TASK from data/raw/TASK")
    prep.add_argument("task")
    prep.add_argument("--raw", type=Path, required=True)
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--params", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        meta = prepare_task(load_task_card(args.task), args.raw, args.out, section(load_params(args.params), "prepare"))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.task}: " + ", ".join(f"{k} {v}" for k, v in meta["rows"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
