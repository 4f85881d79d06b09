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
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir, read_json, write_json
from ttlora_moe.tasks import TaskCard, load_task_card, normalise

if TYPE_CHECKING:  # torch is imported lazily: the prepare stage does not need it
    import torch

PREPARED_COLUMNS = ("text", "text_pair", "label")
SPLITS = ("train", "validation", "test")
RAW_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
SCHEMA = pa.schema([("text", pa.string()), ("text_pair", pa.string()), ("label", pa.int64())])
UNLABELLED_SCHEMA = pa.schema([("text", pa.string()), ("text_pair", pa.string())])
UNLABELLED_FILE = "unlabelled.parquet"  # task inputs without labels: router training only, never expert training
DEFAULT_PREPARE: dict[str, Any] = {
    "seed": 13,                   # every shuffle and carve derives from it
    "validation_fraction": 0.1,   # share of the train pool held out as validation
    "validation_max_rows": 2000,  # ... at most this many rows (the rest stays in train)
    "carve_test_fraction": 0.2,   # share of a labelled file carved as test when there is no test file
    "test_max_rows": 2000,        # cap on test rows (carved: the rest goes to train; official: recorded as unused)
    "min_rows": 20,               # a split with fewer rows after cleaning is an error
    "train_max_rows": None,       # optional cap on train rows (null: keep all)
    "unlabelled_max_rows": 2000,  # cap on unlabelled.parquet rows (inputs of the card's `unlabelled` file, for the router)
}
UNLABELLED = ("-1", "", "nan", "none", "null")


def prepare_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The ``prepare`` params with defaults filled in; a typo or an out-of-range value is BadInput."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PREPARE))
    if unknown:
        raise BadInput(f"unknown prepare param(s) {unknown}", f"use only {', '.join(DEFAULT_PREPARE)} in params.yaml")
    p = {**DEFAULT_PREPARE, **params}

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(p["seed"]):
        raise BadInput(f"prepare.seed must be an integer, got {p['seed']!r}", "fix params.yaml")
    for key in ("validation_fraction", "carve_test_fraction"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise BadInput(f"prepare.{key} must be a fraction between 0 and 1 (exclusive), got {v!r}", "fix params.yaml")
    for key in ("validation_max_rows", "test_max_rows", "train_max_rows", "unlabelled_max_rows"):
        v = p[key]
        if v is not None and (not is_int(v) or v < 1):
            raise BadInput(f"prepare.{key} must be a positive integer or null, got {v!r}", "fix params.yaml")
    if not is_int(p["min_rows"]) or p["min_rows"] < 1:
        raise BadInput(f"prepare.min_rows must be an integer >= 1, got {p['min_rows']!r}", "fix params.yaml")
    return p


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


def _is_hub_id(source: str) -> bool:
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
        if not _is_hub_id(card.source):
            raise BadInput(f"no folder {card.source!r} for task {card.name!r} in the data mirror {root}",
                           "fix the card's source or point TTLORA_DATA_MIRROR at the folder holding it")
    if _is_hub_id(card.source):
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


def _read_raw(card: TaskCard, files: list[Path]) -> pd.DataFrame:
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


def _raw_files(card: TaskCard, raw_dir: Path, role: str) -> list[Path]:
    pattern = card.files[role]
    matches = sorted(p for p in raw_dir.glob(pattern) if p.suffix in RAW_SUFFIXES)
    if not matches:
        raise BadInput(f"{raw_dir} has no file matching {pattern!r} ({role} of task {card.name!r})",
                       f"import the raw data first (`ttlora-moe tasks add {card.name}` or `dvc pull {raw_dir}.dvc`)")
    return matches


def to_rows(card: TaskCard, df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Map a raw frame to (text, text_pair, label) rows; return the rows and what was dropped."""
    inputs = [card.text] + ([card.text_pair] if card.text_pair else [])
    for column in inputs + [card.label]:
        if column not in df.columns:
            raise BadInput(f"column {column!r} of task {card.name!r} is not in {where} "
                           f"(columns: {', '.join(map(str, df.columns))})", "fix the task card")
    for column in inputs:
        values = df[column].dropna()
        bad = values[~values.map(lambda v: isinstance(v, str))]
        if len(bad):
            raise BadInput(f"input column {column!r} of task {card.name!r} in {where} is not text "
                           f"(found {type(bad.iloc[0]).__name__} {bad.iloc[0]!r})", "choose a text column in the task card")
    mapping = {normalise(v): i for i, v in enumerate(card.label_values)}
    raw = df[card.label].map(lambda v: None if _is_null(v) else normalise(v))
    # GLUE-style hidden labels (-1, "", null) are dropped, unless the card uses that value as a class.
    unlabelled = raw.isna() | (raw.isin(UNLABELLED) & ~raw.isin(list(mapping)))
    unknown = sorted(set(raw[~unlabelled]) - set(mapping))
    if unknown:
        examples = [_native(df[card.label][raw == u].iloc[0]) for u in unknown[:5]]
        raise BadInput(f"label value(s) {examples} in column {card.label!r} of {where} are not in "
                       f"task {card.name!r}'s label_values {card.label_values}", "add them to the card or fix the data")
    kept = df[~unlabelled]
    out = pd.DataFrame({
        "text": kept[card.text].astype("string"),
        "text_pair": (kept[card.text_pair].astype("string") if card.text_pair
                      else pd.Series(pd.NA, index=kept.index, dtype="string")),
        "label": raw[~unlabelled].map(mapping).astype("int64"),
    })
    columns = ["text", "text_pair"] if card.text_pair else ["text"]
    empty = pd.Series(False, index=out.index)
    for column in columns:
        empty |= out[column].isna() | (out[column].str.strip() == "")
    out = out[~empty.astype(bool)]
    before = len(out)
    out = out.drop_duplicates(subset=list(PREPARED_COLUMNS), keep="first")
    dropped = {"unlabelled": int(unlabelled.sum()), "empty_text": int(empty.sum()), "duplicates": before - len(out)}
    return out.reset_index(drop=True), dropped


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (so messages say 7, not np.int64(7))."""
    return value.item() if hasattr(value, "item") else value


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _shuffle(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = list(range(len(df)))
    random.Random(seed).shuffle(order)
    return df.iloc[order].reset_index(drop=True)


def _key(df: pd.DataFrame) -> pd.Series:
    """The input of a row (text and pair): rows with one input must never straddle two splits."""
    return df["text"].fillna("") + "\x1f" + df["text_pair"].fillna("\x00")


def _stratified(df: pd.DataFrame) -> pd.DataFrame:
    """Reorder a shuffled frame so that every prefix has about the overall label proportions."""
    rank = df.groupby("label").cumcount()
    size = df.groupby("label")["label"].transform("size")
    position = (rank + 0.5) / size
    order = sorted(range(len(df)), key=lambda i: (position.iat[i], i))
    return df.iloc[order].reset_index(drop=True)


def _split_head(df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``n`` rows of a stratified order (plus any row sharing an input with them), and the rest."""
    ordered = _stratified(df)
    keys = _key(ordered)
    head = keys.isin(set(keys.iloc[:n]))
    return ordered[head].reset_index(drop=True), ordered[~head].reset_index(drop=True)


def _conflicts(df: pd.DataFrame) -> int:
    """How many inputs carry more than one label (kept, but reported: label noise in the source)."""
    return int((df.assign(key=_key(df)).groupby("key")["label"].nunique() > 1).sum())


def _unlabelled_inputs(card: TaskCard, df: pd.DataFrame, splits: dict[str, pd.DataFrame],
                       p: dict[str, Any]) -> pd.DataFrame:
    """Distinct inputs of the card's ``unlabelled`` file that are in no split: a seeded sample for the router.

    Labels are ignored (GLUE test files hide them); the router only needs to know which task an
    input belongs to. Inputs already in train, validation or test are dropped (held-out hygiene).
    """
    columns = [c for c in (card.text, card.text_pair) if c]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInput(f"column(s) {missing} of task {card.name!r} are not in its unlabelled file {card.files['unlabelled']!r}",
                       "fix the task card")
    out = pd.DataFrame({"text": df[card.text].astype("string"),
                        "text_pair": (df[card.text_pair].astype("string") if card.text_pair
                                      else pd.Series(pd.NA, index=df.index, dtype="string"))})
    keep = pd.Series(True, index=out.index)
    for column in ["text", "text_pair"] if card.text_pair else ["text"]:
        keep &= out[column].notna() & (out[column].str.strip() != "")
    out = out[keep.astype(bool)].drop_duplicates().reset_index(drop=True)
    seen = set().union(*(set(_key(s)) for s in splits.values()))
    out = _shuffle(out[~_key(out).isin(seen)].reset_index(drop=True), p["seed"] + 2)
    return out.iloc[: p["unlabelled_max_rows"] or len(out)].reset_index(drop=True)


def _write_split(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df[list(PREPARED_COLUMNS)].reset_index(drop=True), schema=SCHEMA, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), str(path))


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_task(card: TaskCard, raw_dir: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the prepared splits and ``meta.json`` of ``card`` into ``out_dir``; return the meta.

    The official test-like file (``files.test``) becomes test; validation is a seeded, stratified
    slice of the train pool (``files.train``, or ``files.labelled`` when the source has no train
    file, in which case test is carved from it too). Rows sharing an input never straddle splits.
    """
    p = prepare_params(params)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir() or not any(raw_dir.iterdir()):
        raise BadInput(f"raw data folder {raw_dir} is missing or empty",
                       f"import it first (`dvc pull` or `ttlora-moe tasks add {card.name}`)")
    notes = [card.notes] if card.notes else []
    dropped: dict[str, dict[str, int]] = {}
    conflicts: dict[str, int] = {}

    used: list[Path] = []

    def load(role: str) -> pd.DataFrame:
        files = _raw_files(card, raw_dir, role)
        used.extend(files)
        rows, why = to_rows(card, _read_raw(card, files), ", ".join(f.name for f in files))
        dropped[role], conflicts[role] = why, _conflicts(rows)
        return _shuffle(rows, p["seed"])

    pool_role = "train" if "train" in card.files else "labelled"
    pool = load(pool_role)
    pool_name = card.files[pool_role]
    if "test" in card.files:
        test = load("test")
        origin = {"test": card.files["test"]}
        if p["test_max_rows"] and len(test) > p["test_max_rows"]:
            # Official held-out rows beyond the cap stay unused (never trained on); say how many.
            test, unused = _split_head(test, p["test_max_rows"])
            dropped["test"]["over_test_max_rows"] = len(unused)
            notes.append(f"test is a seeded stratified sample of {len(test)} of the {len(test) + len(unused)} rows of "
                         f"{card.files['test']} (prepare.test_max_rows)")
        if pool_role == "labelled":
            notes.append(f"no train file in the source: train and validation carved from {pool_name} (seeded)")
    else:
        n_test = min(math.ceil(len(pool) * p["carve_test_fraction"]), p["test_max_rows"] or len(pool))
        test, pool = _split_head(pool, n_test)
        origin = {"test": f"carved from {pool_name}"}
        what = "train/validation/test" if pool_role == "labelled" else "test"
        notes.append(f"no {'train' if pool_role == 'labelled' else 'test'} file in the source: {what} carved from "
                     f"{pool_name} (seeded, stratified)")
    # Held-out hygiene: an input that is in test may not be trained or early-stopped on.
    leaked = _key(pool).isin(set(_key(test)))
    pool = pool[~leaked].reset_index(drop=True)
    dropped[pool_role]["in_test"] = int(leaked.sum())
    n_val = min(math.ceil(len(pool) * p["validation_fraction"]), p["validation_max_rows"] or len(pool))
    validation, train = _split_head(pool, n_val)
    train = _shuffle(train, p["seed"] + 1)  # undo the stratified interleaving: training order is random
    if p["train_max_rows"] and len(train) > p["train_max_rows"]:
        dropped[pool_role]["over_train_max_rows"] = len(train) - p["train_max_rows"]
        train = train.iloc[: p["train_max_rows"]]
    origin.update(validation=f"seeded stratified slice of {pool_name}", train=f"rest of {pool_name}")
    splits = {"train": train, "validation": validation, "test": test}
    for name, df in splits.items():
        if len(df) < p["min_rows"]:
            raise BadInput(f"task {card.name!r}: the {name} split has {len(df)} rows after cleaning "
                           f"(minimum {p['min_rows']}; dropped: {dropped})", "provide more labelled data or lower prepare.min_rows")
    if train["label"].nunique() < 2:
        raise BadInput(f"task {card.name!r}: the training split has a single class "
                       f"({card.label_names[int(train['label'].iloc[0])]})", "provide examples of every label")
    meta: dict[str, Any] = {
        "task": card.name,
        "source": card.source,
        "label_names": list(card.label_names),
        "metric": card.metric,
        "rows": {k: len(v) for k, v in splits.items()},
        "labels": {k: {card.label_names[i]: int(c) for i, c in sorted(v["label"].value_counts().items())}
                   for k, v in splits.items()},
        "origin": origin,
        "dropped": dropped,
        "dropped_test_overlap": int(leaked.sum()),
        "conflicting_labels": conflicts,
        "notes": notes,
        "params": p,
    }
    unlabelled = None
    if "unlabelled" in card.files:
        unlabelled = _unlabelled_inputs(card, _read_raw(card, _raw_files(card, raw_dir, "unlabelled")), splits, p)
        used.extend(_raw_files(card, raw_dir, "unlabelled"))
        meta["rows"]["unlabelled"] = len(unlabelled)
        origin["unlabelled"] = f"inputs of {card.files['unlabelled']} (labels ignored; for the router only)"
    with atomic_dir(Path(out_dir)) as tmp:
        for name, df in splits.items():
            _write_split(df, tmp / f"{name}.parquet")
        if unlabelled is not None:
            table = pa.Table.from_pandas(unlabelled, schema=UNLABELLED_SCHEMA, preserve_index=False)
            pq.write_table(table.replace_schema_metadata(None), str(tmp / UNLABELLED_FILE))
        meta["raw_files"] = {f.name: _md5_file(f) for f in sorted(set(used))}
        meta["md5"] = prepared_md5(tmp)
        write_json(tmp / "meta.json", meta)
    return meta


def num_rows(prepared: Path, split: str) -> int:
    """Rows of a prepared split, from the parquet footer (the file is not read)."""
    path = Path(prepared) / f"{split}.parquet"
    if not path.exists():
        raise BadInput(f"{path} does not exist", "prepare the task first (`ttlora-moe train-expert` or `dvc repro`)")
    return int(pq.ParquetFile(str(path)).metadata.num_rows)


def load_split(prepared_dir: Path, split: str, max_samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of a prepared split as dicts; a seeded subsample (in file order) when ``max_samples`` is set."""
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise BadInput(f"max_samples must be a positive integer or None, got {max_samples!r}", "fix the sample limit")
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.exists():
        raise BadInput(f"{path} does not exist",
                       "prepare the task first (`python -m ttlora_moe.data prepare TASK ...`, `dvc repro` or `ttlora-moe train-expert`)")
    table = pq.read_table(str(path))
    missing = [c for c in PREPARED_COLUMNS if c not in table.column_names]
    if missing:
        raise BadInput(f"{path} lacks column(s) {missing}", "re-run prepare for this task")
    rows = table.select(list(PREPARED_COLUMNS)).to_pylist()
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
        import torch

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
        if all(r.get("label") is not None for r in rows):
            out["labels"] = torch.tensor([int(r["label"]) for r in rows])
        return out


def prepare_all(task_names: list[str], raw_root: Path, prepared_root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Prepare several tasks (``raw_root/<task>`` -> ``prepared_root/<task>``); return their metas by task."""
    return {t: prepare_task(load_task_card(t), Path(raw_root) / t, Path(prepared_root) / t, params) for t in task_names}


def main(argv: list[str] | None = None) -> int:
    """``python -m ttlora_moe.data prepare TASK --raw DIR --out DIR [--params FILE]`` (the DVC stage).

    Also ``import TASK --dest DIR [--mirror DIR]``: copy a task's raw files from the mirror or the hub.
    """
    from ttlora_moe.params import load_params, section

    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.data")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write data/prepared/TASK from data/raw/TASK")
    prep.add_argument("task")
    prep.add_argument("--raw", type=Path, required=True, help="raw folder, e.g. data/raw/TASK")
    prep.add_argument("--out", type=Path, required=True, help="prepared folder, e.g. data/prepared/TASK")
    prep.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml or TTLORA_PARAMS)")
    imp = sub.add_parser("import", help="copy a task's raw files into data/raw/TASK")
    imp.add_argument("task")
    imp.add_argument("--dest", type=Path, required=True, help="raw folder, e.g. data/raw/TASK")
    imp.add_argument("--mirror", type=Path, default=None, help="data mirror (default: TTLORA_DATA_MIRROR)")
    args = parser.parse_args(argv)
    try:
        card = load_task_card(args.task)
        if args.command == "import":
            dest = import_raw(card, args.dest, args.mirror)
            print(f"{args.task}: imported {', '.join(sorted(p.name for p in dest.iterdir()))} into {dest}")
            return 0
        meta = prepare_task(card, args.raw, args.out, section(load_params(args.params), "prepare"))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unused = ("over_test_max_rows", "over_train_max_rows")
    cleaned = sum(n for why in meta["dropped"].values() for k, n in why.items() if k not in unused)
    capped = sum(n for why in meta["dropped"].values() for k, n in why.items() if k in unused)
    print(f"{args.task}: " + ", ".join(f"{k} {v}" for k, v in meta["rows"].items())
          + f" rows; {cleaned} dropped in cleaning, {capped} unused over the row caps "
          + f"(see {args.out / 'meta.json'}); md5 {meta['md5']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
