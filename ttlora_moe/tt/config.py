"""Configuration of a TT-LoRA adapter: one dataclass, every field with its own help text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ttlora_moe.config_fields import Section, option
from ttlora_moe.errors import BadInput

# Which linear layers to adapt when the user does not say, by Hugging Face `model_type`.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
}


@dataclass
class TTLoRAConfig(Section):
    """How a TT-LoRA adapter is shaped, initialised and attached (``tt:`` in params.yaml)."""

    section: ClassVar[str] = "tt"

    rank: int = option(4, "TT rank r: inner ranks are [1, r, ..., r, 1] (paper: 5; 4 keeps all-MiniLM-L6-v2's "
                          "adapter under 5% of LoRA r=16).")
    alpha: float = option(32.0, "Plain multiplier on the update: y = Wx + alpha * ΔW x (paper: 16; see the README's sweep).")
    target_modules: list[str] = option(
        [], "Names of the nn.Linear layers to adapt, matched against the last components of a module's path "
        "(query, or intermediate.dense); empty = per-architecture default."
    )
    factor_target: int = option(
        8, "Preferred size of each derived factor of a layer dimension (smaller -> more cores)."
    )
    shapes: dict[str, list[list[int]]] = option(
        {}, "Explicit [in_factors, out_factors] per target module name; overrides the derived factors."
    )
    init: str = option("paper", "'paper' (unit-Frobenius uniform cores) or 'zero' (ΔW = 0 at step 0).")
    layers_from: int = option(
        0, "Adapt only layers with index >= this (single-pass routing reads the base state below it)."
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise BadInput(f"TT rank must be >= 1, got {self.rank}", "set tt.rank to a positive integer")
        if self.init not in ("paper", "zero"):
            raise BadInput(f"unknown TT init {self.init!r}", "set tt.init to 'paper' or 'zero'")

    def resolved_targets(self, model_type: str) -> list[str]:
        """Target module names, falling back to the architecture default."""
        if self.target_modules:
            return list(self.target_modules)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise BadInput(
                f"no default TT-LoRA target modules for model type {model_type!r}",
                "set tt.target_modules to the names of the attention query/value linear layers",
            )
        return DEFAULT_TARGET_MODULES[model_type]
