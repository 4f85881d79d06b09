"""One adapted linear layer: a frozen ``nn.Linear`` plus a trainable tensor-train update.

``y = W x + b + alpha · ΔW x`` with ``ΔW x`` computed by :func:`ttlora_moe.tt.tensor_train.tt_apply`
(contraction, never the dense ``ΔW``).
"""

from __future__ import annotations

import torch
from torch import nn

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
        return self.base(x) + self.delta(x)

    def dense_delta(self) -> torch.Tensor:
        """``alpha · ΔW`` as a dense ``out × in`` matrix (reference and benchmark only)."""
        return self.alpha * tt_reconstruct(list(self.tt_cores), self.in_factors, self.out_factors)

    def extra_repr(self) -> str:
        return f"in={self.in_factors}, out={self.out_factors}, rank={self.rank}, alpha={self.alpha}"
