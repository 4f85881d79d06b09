"""One adapted linear layer: a frozen ``nn.Linear`` plus a trainable tensor-train update.

``y = W x + b + alpha · ΔW x`` with ``ΔW x`` computed by :func:`ttlora_moe.tt.tensor_train.tt_apply`
(contraction, never the dense ``ΔW``) while training. A trained expert that only answers can be
merged (:meth:`~TTLoRALinear.merge`): ``W + alpha · ΔW`` is built once and every forward without gradients
is one matmul, exactly the base model's cost (the adapter_speed benchmark measures both).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ttlora_moe.tt.tensor_train import (
    check_factors,
    init_cores,
    tt_apply,
    tt_reconstruct,
)


class TTLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable tensor-train update."""

    def __init__(
        self,
        base: nn.Linear,
        in_factors: list[int],
        out_factors: list[int],
        rank: int,
        alpha: float,
        init: str = "paper",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_factors(base.in_features, in_factors, "input")
        check_factors(base.out_features, out_factors, "output")
        self.base = base
        self.in_factors = list(in_factors)
        self.out_factors = list(out_factors)
        self.rank = rank
        self.alpha = alpha
        weight = base.weight
        self.tt_cores = nn.ParameterList(
            nn.Parameter(c.to(device=weight.device, dtype=torch.float32))
            for c in init_cores(in_factors, out_factors, rank, init, generator)
        )
        self.register_buffer("merged", None, persistent=False)  # W + alpha·ΔW once merged; never saved

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha · ΔW x`` by contraction."""
        cores = [c.to(x.dtype) for c in self.tt_cores]
        return self.alpha * tt_apply(x, cores, self.in_factors, self.out_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None and not torch.is_grad_enabled():
            return F.linear(x, self.merged.to(x.dtype), self.base.bias)
        return self.base(x) + self.delta(x)

    @torch.no_grad()
    def merge(self) -> None:
        """Build ``W + alpha·ΔW`` from the current cores: forwards without gradients then cost one matmul.

        For frozen experts only (the merged weight does not follow later changes of the cores; call
        :meth:`unmerge` before training again).
        """
        self.merged = (self.base.weight.float() + self.dense_delta()).to(self.base.weight.dtype)

    def unmerge(self) -> None:
        """Back to the contraction (e.g. to train the cores again)."""
        self.merged = None

    def dense_delta(self) -> torch.Tensor:
        """``alpha · ΔW`` as a dense ``out × in`` matrix (reference and benchmark only)."""
        return self.alpha * tt_reconstruct(list(self.tt_cores), self.in_factors, self.out_factors)

    def extra_repr(self) -> str:
        return f"in={self.in_factors}, out={self.out_factors}, rank={self.rank}, alpha={self.alpha}"
