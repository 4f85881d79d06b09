"""Which device a model runs on: ``auto`` (CUDA, else Apple MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

params.yaml's ``device`` and every command's ``--device`` go through :func:`resolve_device`; a device
this machine does not have is one :class:`~ttlora_moe.errors.BadInput` line (exit 2), never a CUDA
error deep inside a forward. The ``TTLORA_DEVICE`` variable sets the device of served models.
"""

from __future__ import annotations

import os
import re

import torch

from ttlora_moe.errors import BadInput

CHOICES = "auto, cpu, cuda, cuda:N or mps"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The torch device ``spec`` names (default ``auto``), checked against this machine."""
    if isinstance(spec, torch.device):
        return spec
    name = (spec or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise BadInput("device 'mps' is not available on this machine", f"use --device auto or cpu ({CHOICES})")
        return torch.device("mps")
    match = _CUDA.fullmatch(name)
    if not match:
        raise BadInput(f"unknown device {spec!r}", f"use one of {CHOICES}")
    if not torch.cuda.is_available():
        raise BadInput(f"device {name!r} is not available: torch sees no CUDA device here",
                       "use --device auto or cpu, or install a CUDA build of torch on a machine with a GPU")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise BadInput(f"device {name!r} is not available: this machine has {torch.cuda.device_count()} CUDA device(s)",
                       f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}, or auto")
    return torch.device("cuda", index)


def params_device(params: dict | None, override: str | None = None) -> torch.device:
    """The device of a command: ``override`` (its ``--device``), else params.yaml ``device``, else ``auto``."""
    return resolve_device(override or (params or {}).get("device") or "auto")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for CUDA goes through pinned memory, asynchronously."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def serving_device() -> torch.device:
    """The device served models run on: ``TTLORA_DEVICE`` (default ``auto``)."""
    return resolve_device(os.environ.get("TTLORA_DEVICE"))
