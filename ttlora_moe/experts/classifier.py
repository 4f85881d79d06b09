"""A task classifier: frozen (optionally TT-adapted) base model, pooled state, linear head.

A multiple-choice task's head scores its options instead (``options=True``): one forward reads the
question and every option (``(A) ... (B) ...``), each option's tokens are mean-pooled into that
option's state, and one shared ``Linear(hidden, 1)`` scores each of them, so the logit of class ``c``
is the score of option ``c``. Saved, that head is an ordinary ``[C, hidden]`` head whose rows are
equal; :func:`class_states` gives the mixture the same per-class states.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ttlora_moe.experts.base_model import pool

HEAD_MODES = ("trainable", "frozen")
OPTIONS_HEAD = "options"  # expert.json "head" of an expert whose head scores options


def scores_options(meta: dict[str, Any]) -> bool:
    """Whether an expert (its ``expert.json``) has a head that scores multiple-choice options."""
    return meta.get("head") == OPTIONS_HEAD


def class_states(hidden: torch.Tensor, pooled: torch.Tensor, option_mask: torch.Tensor | None,
                 classes: int) -> torch.Tensor:
    """``[B, classes, H]``: the mean state of option ``c``'s tokens for class ``c``; the pooled state where
    the option has no tokens (none given, or cut off by truncation)."""
    states = pooled[:, None, :].expand(-1, classes, -1).clone()
    if option_mask is None:
        return states
    mask = option_mask[:, :classes].to(hidden.dtype)
    count = mask.sum(-1, keepdim=True)
    means = torch.einsum("bct,bth->bch", mask, hidden) / count.clamp_min(1)
    present = mask.shape[1]
    states[:, :present] = torch.where(count > 0, means, states[:, :present]).to(states.dtype)
    return states


class SequenceClassifier(nn.Module):
    """``logits = head(pool(base(input_ids)))``, or with ``options`` the score of each option's state.

    The head is a plain ``Linear(hidden, num_labels)`` with bias (``options``: ``Linear(hidden, 1)``).
    ``head_mode="frozen"`` keeps it at its seeded random initialisation (the paper's setting);
    ``"trainable"`` trains it with the cores.
    """

    def __init__(self, base: nn.Module, num_labels: int, pooling: str, head_mode: str = "trainable", seed: int = 0,
                 options: bool = False):
        super().__init__()
        if head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {', '.join(HEAD_MODES)}, got {head_mode!r}")
        self.base = base
        self.pooling = pooling
        self.num_labels = num_labels
        self.options = options
        hidden = int(base.config.hidden_size)
        outputs = 1 if options else num_labels
        generator = torch.Generator().manual_seed(seed + 1)
        self.head = nn.Linear(hidden, outputs)
        with torch.no_grad():
            bound = 1.0 / hidden**0.5
            self.head.weight.copy_((torch.rand(outputs, hidden, generator=generator) * 2 - 1) * bound)
            self.head.bias.zero_()
        self.head.requires_grad_(head_mode == "trainable")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                option_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        dtype = self.head.weight.dtype
        if not self.options:
            return self.head(pooled.to(dtype))
        if option_mask is None:
            raise ValueError("this classifier scores multiple-choice options: give option_mask "
                             "(Collator(..., options=True) or tokenize(..., options=True))")
        states = class_states(hidden, pooled, option_mask, self.num_labels)
        return self.head(states.to(dtype)).squeeze(-1)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors as ``[num_labels, hidden]`` / ``[num_labels]`` (an options head: its one row
        repeated), keyed ``head.weight`` / ``head.bias``."""
        weight, bias = self.head.weight.detach(), self.head.bias.detach()
        if self.options:
            weight, bias = weight.expand(self.num_labels, -1), bias.expand(self.num_labels)
        return {"head.weight": weight.cpu().contiguous(), "head.bias": bias.cpu().contiguous()}

    def load_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the head from :meth:`head_state_dict`'s tensors (shapes checked)."""
        expected = (self.num_labels, self.head.weight.shape[1])
        if tuple(weight.shape) != expected or tuple(bias.shape) != (self.num_labels,):
            raise ValueError(f"head of shape {tuple(weight.shape)}, expected {expected}")
        with torch.no_grad():
            self.head.weight.copy_(weight[:1] if self.options else weight)
            self.head.bias.copy_(bias[:1] if self.options else bias)
