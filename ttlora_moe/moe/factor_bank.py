"""Every adapted layer's rank-r factors of ``ΔW``, for every expert, in one ``[E, N]`` tensor.

A mixed batch needs, in each adapted layer, the factors of each sample's own expert. Gathered layer by
layer, that is two small ``index_select`` calls per layer, most of a mixture's extra cost at batches of
1-8 on a CPU. Kept in one bank, a forward gathers its samples' rows once (``[B, N]``, see
:meth:`~ttlora_moe.moe.routing.Routing.factors`) and each layer takes views of them. A forward whose
``[B, N]`` rows would exceed :data:`GATHER_ONCE_BYTES` gathers each layer's columns in turn instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ttlora_moe.tt.tensor_train import tt_factors

GATHER_ONCE_BYTES = 64 * 2**20  # MiniLM's q,v at rank 4: 147 KB a sample, so batches up to 455 gather once


@dataclass(frozen=True)
class FactorSlice:
    """Where one layer sits in a bank row: ``down`` from ``offset``, stored as its transpose (``r × in``: a
    batched matmul reads that layout about twice as fast at a few rows on a CPU), then ``up`` (``r × out``)."""

    offset: int
    in_features: int
    rank: int
    out_features: int

    @property
    def size(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def columns(self, bank: torch.Tensor) -> torch.Tensor:
        """This layer's ``[rows, size]`` columns of ``bank`` (a view)."""
        return bank[:, self.offset:self.offset + self.size]

    def split(self, rows: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``down [B, in, r]`` and ``up [B, r, out]`` from ``[B, *]`` rows whose layer columns begin at ``start``:
        one strided view each (a slice, a reshape and a transpose would be three ops, in every layer of a forward)."""
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        count, step, at = rows.shape[0], rows.stride(0), rows.storage_offset() + start
        return (rows.as_strided((count, self.in_features, self.rank), (step, 1, self.in_features), at),
                rows.as_strided((count, self.rank, self.out_features), (step, self.out_features, 1),
                                at + self.in_features * self.rank))


def layer_factors(cores: Sequence[torch.Tensor], alphas: torch.Tensor, in_factors: list[int],
                  out_factors: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked ``[E, r, s, r']`` cores of one layer as ``down [E, in, r]`` and ``up [E, r, out]``, each
    expert's ``alpha`` folded into ``up``."""
    pairs = [tt_factors([c[e].float() for c in cores], in_factors, out_factors) for e in range(len(alphas))]
    return (torch.stack([d for d, _ in pairs]),
            torch.stack([float(a) * u for a, (_, u) in zip(alphas, pairs)]))


def build_bank(factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[FactorSlice]]:
    """The ``[E, N]`` bank of every layer's ``(down, up)`` and each layer's :class:`FactorSlice` in it."""
    slices, columns, offset = [], [], 0
    for down, up in factors:
        part = FactorSlice(offset, down.shape[1], down.shape[2], up.shape[2])
        slices.append(part)
        columns += [down.transpose(1, 2).flatten(1), up.flatten(1)]
        offset += part.size
    return torch.cat(columns, dim=1), slices
