"""The router's feature cache: features of prepared rows, computed once per (base, data, spec) and kept on disk.

Layout: ``cache_dir()/features/<key>/<split>.safetensors`` holding ``index`` (row numbers in the
prepared split file) and ``features``; ``<key>`` hashes the base fingerprint, the prepared data md5,
the spec (incl. max_length) and the code's feature version. Rows are added on demand, so a larger
sample reuses the rows already computed. A corrupt cache file is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ttlora_moe.experts.base_model import BaseModel
from ttlora_moe.moe.features import FEATURE_VERSION, FeatureSpec, compute_features
from ttlora_moe.paths import cache_dir


# spec options added after caches were written, at the value that changes nothing: left out of the key, so that
# those caches stay valid
ADDED_OFF = {"surface": False, "unknown_words": False}


def cache_key(base: BaseModel, data_md5: str, spec: FeatureSpec) -> str:
    """Hash of everything the cached features depend on."""
    keyed = {k: v for k, v in spec.to_dict().items() if k not in ADDED_OFF or v != ADDED_OFF[k]}
    parts = {"base": base.fingerprint, "data": data_md5, "spec": keyed, "version": FEATURE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def features_dir() -> Path:
    return cache_dir() / "features"


def sample_indices(total: int, cap: int | None, seed: int) -> list[int]:
    """A seeded random subset of ``range(total)`` (all rows, shuffled, when ``cap`` is None).

    It is a prefix of one seeded permutation, so a larger cap contains every row of a smaller one
    (and reuses their cached features).
    """
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order if cap is None else order[:cap]


@dataclass
class CacheStats:
    """What a cached lookup did: rows served from disk and rows computed."""

    hits: int = 0
    computed: int = 0

    def add(self, other: CacheStats) -> None:
        self.hits += other.hits
        self.computed += other.computed


def cached_features(
    base: BaseModel,
    prepared_dir: Path,
    split: str,
    indices: Sequence[int],
    spec: FeatureSpec,
    data_md5: str,
    rows: Sequence[dict[str, Any]] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[torch.Tensor, CacheStats]:
    """Features of rows ``indices`` of a prepared split, computing (and caching) only missing rows.

    ``rows`` (the whole split, as :func:`data.load_split` returns it) is read from disk when not given.
    """
    path = features_dir() / cache_key(base, data_md5, spec) / f"{split}.safetensors"
    known_index = torch.empty(0, dtype=torch.long)
    known = torch.empty(0, 0)
    if path.exists():
        try:
            stored = load_file(str(path))
            known_index, known = stored["index"], stored["features"]
        except Exception:  # a corrupt cache file is recomputed, never trusted
            print(f"ignoring unreadable feature cache {path}", file=sys.stderr)
    position = {int(i): p for p, i in enumerate(known_index.tolist())}
    missing = sorted({int(i) for i in indices if int(i) not in position})
    stats = CacheStats(hits=len(indices) - sum(1 for i in indices if int(i) not in position), computed=len(missing))
    if missing:
        if rows is None:
            from ttlora_moe.data.prepared import load_split

            rows = load_split(prepared_dir, split)
        new = compute_features(base, [rows[i] for i in missing], spec, batch_size, progress,
                               desc=f"features {Path(prepared_dir).name}/{split}").to(torch.float16)
        known = new if known.numel() == 0 else torch.cat([known, new])
        known_index = torch.cat([known_index, torch.tensor(missing, dtype=torch.long)])
        _atomic_save(path, {"index": known_index.contiguous(), "features": known.contiguous()},
                     {"spec": json.dumps(spec.to_dict()), "base": base.fingerprint, "data": data_md5})
        position = {int(i): p for p, i in enumerate(known_index.tolist())}
    take = torch.tensor([position[int(i)] for i in indices], dtype=torch.long)
    return known[take].float(), stats


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
