"""Experts trained on a benchmark budget, kept so that a later benchmark (or a re-run) reuses them.

`peft_quality` trains our TT-LoRA experts and its PEFT LoRA and head-only peers into
`outputs/bench_experts/{quick,full}/<method>/<task>` (``TTLORA_BENCH_OUTPUTS`` moves `outputs`); `fusion_vs_moe` then builds our bundle from
the TT-LoRA ones, so AdapterFusion and the bundle are compared on experts of the same budget as the
Pfeiffer adapters. A saved expert is reused only when its recorded training settings, TT settings,
base model and data md5 are the ones asked for; otherwise it is trained again. Delete the folder to
force retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.common import kept_models_dir
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import prepared_md5
from ttlora_moe.experts.artifact import META_FILE, read_expert_meta
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL
from ttlora_moe.experts.job import train_expert
from ttlora_moe.experts.training import TrainConfig
from ttlora_moe.params import section
from ttlora_moe.tt.config import TTLoRAConfig


def default_experts_dir(quick: bool) -> Path:
    """Where the benchmarks keep (and reuse) their experts."""
    return kept_models_dir("bench_experts", quick)


def wanted(task: str, adapter: str, params: dict[str, Any], budget: dict[str, Any],
           tt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an expert trained now would record: the fields a saved one must match to be reused."""
    return {"task": task, "kind": adapter,
            "train": TrainConfig.from_dict({**section(params, "train"), **budget}).to_dict(),
            "tt": TTLoRAConfig.from_dict({**section(params, "tt"), **(tt or {})}).to_dict(),
            "base_ref": section(params, "base_model").get("ref", DEFAULT_BASE_MODEL),
            "prepared_md5": prepared_md5(ensure_prepared(load_task_card(task), params))}


def recorded(meta: dict[str, Any]) -> dict[str, Any]:
    """The same fields as :func:`wanted`, read from a saved expert's metadata."""
    return {"task": meta.get("task"), "kind": meta.get("kind"), "train": meta.get("train"), "tt": meta.get("tt"),
            "base_ref": (meta.get("base_model") or {}).get("ref"),
            "prepared_md5": (meta.get("data") or {}).get("prepared_md5")}


def bench_expert(task: str, adapter: str, folder: Path, params: dict[str, Any], budget: dict[str, Any],
                 tt: dict[str, Any] | None = None) -> Path:
    """``folder/<adapter>/<task>``, trained there with ``budget`` (``train`` overrides) and ``tt`` (``tt``
    overrides) unless already there."""
    out = folder / adapter / task
    if (out / META_FILE).exists() and recorded(read_expert_meta(out)) == wanted(task, adapter, params, budget, tt):
        print(f"== {adapter} {task}: reusing {out} (same budget and data)", file=sys.stderr, flush=True)
        return out
    train_expert(task, out, params=params, overrides=budget, tt_overrides=tt, adapter=adapter, progress=False)
    return out
