"""A task classifier: frozen (optionally TT-adapted) base model, pooled state, linear head."""

from __future__ import annotations

import torch
from torch import nn

from ttlora_moe.experts.base_model import pool

HEAD_MODES = ("trainable", "frozen")


class SequenceClassifier(nn.Module):
    """``logits = head(pool(base(input_ids)))``.

    The head is a plain ``Linear(hidden, num_labels)`` with bias. ``head_mode="frozen"`` keeps it at
    its seeded random initialisation (the paper's setting); ``"trainable"`` trains it with the cores.
    """

    def __init__(self, base: nn.Module, num_labels: int, pooling: str, head_mode: str = "trainable", seed: int = 0):
        super().__init__()
        if head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {', '.join(HEAD_MODES)}, got {head_mode!r}")
        self.base = base
        self.pooling = pooling
        hidden = int(base.config.hidden_size)
        generator = torch.Generator().manual_seed(seed + 1)
        self.head = nn.Linear(hidden, num_labels)
        with torch.no_grad():
            bound = 1.0 / hidden**0.5
            self.head.weight.copy_((torch.rand(num_labels, hidden, generator=generator) * 2 - 1) * bound)
            self.head.bias.zero_()
        self.head.requires_grad_(head_mode == "trainable")

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled final hidden state ``[B, H]``."""
        out = self.base(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.features(input_ids, attention_mask)
        return self.head(features.to(self.head.weight.dtype))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors, keyed ``head.weight`` / ``head.bias``."""
        return {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
