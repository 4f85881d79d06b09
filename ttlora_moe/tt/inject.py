"""Attach TT-LoRA to the linear layers of any Hugging Face model, and save/load adapter weights.

Only the TT cores are trainable; every weight of the base model stays frozen. Target layers are
found by name (per-architecture defaults in :mod:`ttlora_moe.tt.config`), like PEFT's injection.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ttlora_moe.blocks import layer_index
from ttlora_moe.errors import BadInput
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.layer import TTLoRALinear
from ttlora_moe.tt.tensor_train import (
    balanced_factors,
    lora_param_count,
    tt_param_count,
)


def factors_for(module: nn.Linear, short_name: str, config: TTLoRAConfig) -> tuple[list[int], list[int]]:
    """Input and output factors for one target layer: explicit in the config, else derived."""
    if short_name in config.shapes:
        in_f, out_f = config.shapes[short_name]
        return list(in_f), list(out_f)
    return (
        balanced_factors(module.in_features, config.factor_target),
        balanced_factors(module.out_features, config.factor_target),
    )


def find_targets(model: nn.Module, config: TTLoRAConfig) -> list[str]:
    """Full names of the linear layers this config adapts, in model order: a target matches a name's last
    components (``value``, or ``intermediate.dense`` for BERT's FFN input layer), as PEFT matches them."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    targets = set(config.resolved_targets(model_type))
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not any(name == t or name.endswith(f".{t}") for t in targets):
            continue
        index = layer_index(name)
        if index is not None and index < config.layers_from:
            continue
        found.append(name)
    if not found:
        raise BadInput(
            f"none of the target modules {sorted(targets)} is an nn.Linear in this model",
            "set tt.target_modules to names that exist (see model.named_modules())",
        )
    return found


def attach_tt_lora(model: nn.Module, config: TTLoRAConfig, seed: int = 0) -> list[str]:
    """Freeze ``model`` and replace its target linears with :class:`TTLoRALinear`, in place.

    Returns the adapted module names. Cores are drawn from a generator seeded with ``seed``, so the
    same seed gives the same initial adapter.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = find_targets(model, config)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        in_f, out_f = factors_for(base, child, config)
        setattr(parent, child, TTLoRALinear(base, in_f, out_f, config.rank, config.alpha, config.init, generator))
    return names


def tt_modules(model: nn.Module) -> dict[str, TTLoRALinear]:
    """The adapted layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TTLoRALinear)}


def merge_adapters(model: nn.Module) -> int:
    """Merge every adapted layer of a frozen expert (:meth:`TTLoRALinear.merge`); return how many."""
    layers = tt_modules(model).values()
    for layer in layers:
        layer.merge()
    return len(layers)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the TT cores, keyed ``<module>.tt_cores.<k>``, detached on CPU."""
    return {
        f"{name}.tt_cores.{k}": core.detach().cpu().contiguous()
        for name, module in tt_modules(model).items()
        for k, core in enumerate(module.tt_cores)
    }


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy cores into an adapted model; any missing, extra or mis-shaped tensor is a clear error."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BadInput(
            f"{source} does not match the adapted model: missing {missing[:3]}, unexpected {extra[:3]}",
            "load it with the same base model and TT config it was trained with",
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise BadInput(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}",
                "load it with the same base model and TT config it was trained with",
            )
    for name, module in tt_modules(model).items():
        with torch.no_grad():
            for k, core in enumerate(module.tt_cores):
                core.copy_(state[f"{name}.tt_cores.{k}"])


def save_adapter(model: nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write the cores (plus optional extra tensors, e.g. a head) to a safetensors file."""
    save_file({**adapter_state_dict(model), **(extra or {})}, str(path))


def trainable_tt_params(model: nn.Module) -> int:
    """Number of TT-core parameters in ``model``."""
    return sum(tt_param_count(m.in_factors, m.out_factors, m.rank) for m in tt_modules(model).values())


def lora_equivalent_params(model: nn.Module, rank: int = 16) -> int:
    """What LoRA of rank ``rank`` on the same adapted layers would train."""
    return sum(lora_param_count(m.in_features, m.out_features, rank) for m in tt_modules(model).values())


def tt_layout(model: nn.Module) -> dict[str, list]:
    """Per adapted module: [in_factors, out_factors, rank]; two experts can share a bundle iff equal."""
    return {n: [m.in_factors, m.out_factors, m.rank] for n, m in tt_modules(model).items()}
