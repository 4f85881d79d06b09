"""Where the transformer blocks of a Hugging Face model are, and which block a module belongs to."""

from __future__ import annotations

import re

from torch import nn

from ttlora_moe.errors import BadInput

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks: its first ``ModuleList`` with one entry per layer."""
    count = int(model.config.num_hidden_layers)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise BadInput(f"found no list of {count} transformer blocks in {type(model).__name__}",
                   "use a Hugging Face model whose blocks sit in one ModuleList (BERT, LLaMA, ...)")


def layer_index(module_name: str) -> int | None:
    """The transformer block index in a module path like ``encoder.layer.3.attention.self.query``."""
    match = _LAYER_INDEX.search(f".{module_name}.")
    return int(match.group(1)) if match else None
