"""Resumable training checkpoints without pickle: tensors in safetensors, the rest in JSON.

A checkpoint folder holds ``state.safetensors`` (trainable parameters, optimizer moments, best
parameters so far) and ``state.json`` (counters, history, best score, the run's fingerprint).
It is replaced by :func:`~ttlora_moe.files.atomic_dir`, so a kill at any moment leaves the old or the new
checkpoint (after a kill between its two renames, the old one under ``.<folder>.old``, where
:func:`load_checkpoint` looks); a torn or unreadable checkpoint is no checkpoint: the run starts fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ttlora_moe.files import atomic_dir, read_json, settled_dir, write_json


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors and JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, slots in meta["scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically replace ``folder`` with a checkpoint of ``tensors`` and ``meta``."""
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", meta)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint in ``folder``, or None when there is none (or it is unreadable)."""
    folder = settled_dir(folder)
    try:
        return load_file(str(folder / "state.safetensors")), read_json(folder / "state.json")
    except Exception:  # a missing or torn checkpoint means: start from scratch
        return None
