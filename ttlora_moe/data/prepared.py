"""Prepared splits: read ``data/prepared/<task>/{train,validation,test}.parquet`` and make sure they exist.

Columns ``text``, ``text_pair`` (null for single-text tasks) and ``label`` (class id), plus
``meta.json`` (what :mod:`ttlora_moe.data.prepare` kept, dropped and why) and, for some tasks,
``unlabelled.parquet`` (task inputs without labels, for the router only).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttlora_moe.errors import BadInput
from ttlora_moe.files import read_json, sha256_file

PREPARED_COLUMNS = ("text", "text_pair", "label")


SPLITS = ("train", "validation", "test")


SCHEMA = pa.schema([("text", pa.string()), ("text_pair", pa.string()), ("label", pa.int64())])


UNLABELLED_SCHEMA = pa.schema([("text", pa.string()), ("text_pair", pa.string())])


UNLABELLED_FILE = "unlabelled.parquet"  # task inputs without labels: router training only, never expert training


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
                       "prepare the task first (`python -m ttlora_moe.data.prepare prepare TASK ...`, `dvc repro` or `ttlora-moe train-expert`)")
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


def unlabelled_rows(prepared: Path) -> tuple[list[dict[str, Any]], str] | None:
    """Rows of ``<prepared>/unlabelled.parquet`` (task inputs without labels) and the file's sha256, if any.

    Inputs of a task need no label to teach the router what the task looks like. GLUE's test files
    (labels hidden) are such inputs and come from the same distribution as our test split (GLUE's
    validation files), while our train split may not: MNLI's train here is the mismatched genres,
    SST-2's train is mostly short phrases. See docs/router.md.
    """
    path = Path(prepared) / UNLABELLED_FILE
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    if "text" not in table.column_names:
        raise BadInput(f"{path} has no text column", "re-run prepare for this task")
    texts = table.column("text").to_pylist()
    pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else [None] * len(texts)
    return [{"text": t, "text_pair": p} for t, p in zip(texts, pairs)], sha256_file(path)
