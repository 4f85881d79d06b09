"""Prepare a task: raw files -> seeded ``train``/``validation``/``test`` splits + ``meta.json``.

The official validation split becomes **test** (GLUE test labels are hidden); a seeded slice of
train becomes validation; a task without a train file is carved from its labelled file. Same raw
bytes and params give byte-identical files.

Run as a DVC stage: ``python -m ttlora_moe.data.prepare prepare TASK --raw DIR --out DIR --params params.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ttlora_moe.data.cards import TaskCard, load_task_card
from ttlora_moe.data.clean import blank_inputs, card_inputs, to_rows
from ttlora_moe.data.prepared import (
    PREPARED_COLUMNS,
    SCHEMA,
    UNLABELLED_FILE,
    UNLABELLED_SCHEMA,
    prepared_md5,
)
from ttlora_moe.data.raw import import_raw, raw_complete, raw_files, read_raw
from ttlora_moe.data.split import count_conflicts, input_key, shuffle, split_head
from ttlora_moe.errors import BadInput
from ttlora_moe.files import atomic_dir, write_json
from ttlora_moe.params import section
from ttlora_moe.paths import data_root

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


def _unlabelled_inputs(card: TaskCard, df: pd.DataFrame, splits: dict[str, pd.DataFrame],
                       p: dict[str, Any]) -> pd.DataFrame:
    """Distinct inputs of the card's ``unlabelled`` file that are in no split: a seeded sample for the router.

    Labels are ignored (GLUE test files hide them); the router only needs to know which task an
    input belongs to. Inputs already in train, validation or test are dropped (held-out hygiene).
    """
    out = card_inputs(card, df, f"its unlabelled file {card.files['unlabelled']!r}")
    out = out[~blank_inputs(card, out)].drop_duplicates().reset_index(drop=True)
    seen = set().union(*(set(input_key(s)) for s in splits.values()))
    out = shuffle(out[~input_key(out).isin(seen)].reset_index(drop=True), p["seed"] + 2)
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
        files = raw_files(card, raw_dir, role)
        used.extend(files)
        rows, why = to_rows(card, read_raw(card, files), ", ".join(f.name for f in files))
        dropped[role], conflicts[role] = why, count_conflicts(rows)
        return shuffle(rows, p["seed"])

    pool_role = "train" if "train" in card.files else "labelled"
    pool = load(pool_role)
    pool_name = card.files[pool_role]
    if "test" in card.files:
        test = load("test")
        origin = {"test": card.files["test"]}
        if p["test_max_rows"] and len(test) > p["test_max_rows"]:
            # Official held-out rows beyond the cap stay unused (never trained on); say how many.
            test, unused = split_head(test, p["test_max_rows"])
            dropped["test"]["over_test_max_rows"] = len(unused)
            notes.append(f"test is a seeded stratified sample of {len(test)} of the {len(test) + len(unused)} rows of "
                         f"{card.files['test']} (prepare.test_max_rows)")
        if pool_role == "labelled":
            notes.append(f"no train file in the source: train and validation carved from {pool_name} (seeded)")
    else:
        n_test = min(math.ceil(len(pool) * p["carve_test_fraction"]), p["test_max_rows"] or len(pool))
        test, pool = split_head(pool, n_test)
        origin = {"test": f"carved from {pool_name}"}
        what = "train/validation/test" if pool_role == "labelled" else "test"
        notes.append(f"no {'train' if pool_role == 'labelled' else 'test'} file in the source: {what} carved from "
                     f"{pool_name} (seeded, stratified)")
    # Held-out hygiene: an input that is in test may not be trained or early-stopped on.
    leaked = input_key(pool).isin(set(input_key(test)))
    pool = pool[~leaked].reset_index(drop=True)
    dropped[pool_role]["in_test"] = int(leaked.sum())
    n_val = min(math.ceil(len(pool) * p["validation_fraction"]), p["validation_max_rows"] or len(pool))
    validation, train = split_head(pool, n_val)
    train = shuffle(train, p["seed"] + 1)  # undo the stratified interleaving: training order is random
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
        unlabelled = _unlabelled_inputs(card, read_raw(card, raw_files(card, raw_dir, "unlabelled")), splits, p)
        used.extend(raw_files(card, raw_dir, "unlabelled"))
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


def ensure_prepared(card: TaskCard, params: dict[str, Any]) -> Path:
    """The task's prepared folder, importing and preparing it from the mirror when missing."""
    prepared = data_root() / "prepared" / card.name
    if all((prepared / f"{s}.parquet").exists() for s in ("train", "validation", "test")):
        return prepared
    raw = data_root() / "raw" / card.name
    if not raw_complete(card, raw):
        print(f"importing raw data for {card.name} into {raw}", file=sys.stderr)
        import_raw(card, raw)
    print(f"preparing {card.name} into {prepared}", file=sys.stderr)
    prepare_task(card, raw, prepared, section(params, "prepare"))
    return prepared


def prepare_all(task_names: list[str], raw_root: Path, prepared_root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Prepare several tasks (``raw_root/<task>`` -> ``prepared_root/<task>``); return their metas by task."""
    return {t: prepare_task(load_task_card(t), Path(raw_root) / t, Path(prepared_root) / t, params) for t in task_names}


def main(argv: list[str] | None = None) -> int:
    """``python -m ttlora_moe.data.prepare prepare TASK --raw DIR --out DIR [--params FILE]`` (the DVC stage).

    Also ``import TASK --dest DIR [--mirror DIR]``: copy a task's raw files from the mirror or the hub.
    """
    from ttlora_moe.params import load_params

    parser = argparse.ArgumentParser(prog="python -m ttlora_moe.data.prepare")
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
