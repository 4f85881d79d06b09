"""One adapted linear of a mixture: a frozen ``W`` plus, for each sample, the update of its own expert.

Two ways compute the same ``y_b = W x_b + b + alpha_e · ΔW_e x_b`` for sample ``b`` of expert ``e``:

- ``merged``: every expert's ``W + alpha_e · ΔW_e`` is built once at load time; each expert's rows of
  the batch go through their own merged weight (one matmul per expert present, none when the whole
  batch has one expert). No extra FLOPs over the base model; memory ``E × out × in`` per layer.
- ``contract``: the stacked ``[E, r, s, r']`` cores are gathered per sample and contracted with ``x``
  (:func:`~ttlora_moe.tt.tensor_train.tt_apply`); memory is only the cores, the cost is six small
  matmuls per layer on top of the base one.

``auto`` (the default) merges when the merged weights of all layers fit ``merged_cache_mb`` and
contracts otherwise (a 17-expert Llama-3.2-1B bundle would need 5.7 GB merged); the adapter_speed
and moe_throughput benchmarks measure both. The routing of a forward comes from the mixture's
:class:`~ttlora_moe.moe.routing.RoutingSlot`, never from an attribute of this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ttlora_moe.errors import BadInput
from ttlora_moe.moe.routing import Routing, RoutingSlot
from ttlora_moe.tt.tensor_train import tt_apply, tt_reconstruct

ADAPTER_PATHS = ("auto", "merged", "contract")


def merged_bytes(layout: dict[str, list], num_experts: int, bytes_per_value: int = 4) -> int:
    """Memory of every expert's merged weight for every adapted layer of ``layout`` (in, out factors)."""
    size = sum(_prod(in_f) * _prod(out_f) for in_f, out_f, *_ in layout.values())
    return size * num_experts * bytes_per_value


def choose_path(path: str, layout: dict[str, list], num_experts: int, merged_cache_mb: float) -> str:
    """``merged`` or ``contract`` for ``path`` (``auto``: merged iff it fits ``merged_cache_mb``)."""
    if path not in ADAPTER_PATHS:
        raise BadInput(f"unknown adapter path {path!r}", f"use one of {', '.join(ADAPTER_PATHS)}")
    if path != "auto":
        return path
    return "merged" if merged_bytes(layout, num_experts) <= merged_cache_mb * 2**20 else "contract"


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class MoETTLinear(nn.Module):
    """A frozen linear plus, per sample, the TT update of that sample's expert (merged or contracted)."""

    def __init__(self, base: nn.Linear, cores: Sequence[torch.Tensor], alphas: torch.Tensor,
                 in_factors: list[int], out_factors: list[int], slot: RoutingSlot, path: str) -> None:
        super().__init__()
        self.base = base
        self.in_factors, self.out_factors = list(in_factors), list(out_factors)
        self.slot = slot
        self.path = path
        device = base.weight.device
        if path == "merged":
            with torch.no_grad():
                deltas = [alphas[e] * tt_reconstruct([c[e] for c in cores], in_factors, out_factors)
                          for e in range(len(alphas))]
                merged = torch.stack([base.weight.float() + d for d in deltas]).to(base.weight.dtype)
            self.register_buffer("merged_weight", merged.to(device))
            self.num_cores = 0
        else:
            self.num_cores = len(cores)
            for k, core in enumerate(cores):  # [E, r, s, r'] each
                self.register_buffer(f"core_{k}", core.to(device=device, dtype=torch.float32))
        self.register_buffer("alpha", alphas.to(device=device, dtype=torch.float32))

    def cores(self) -> list[torch.Tensor]:
        return [getattr(self, f"core_{k}") for k in range(self.num_cores)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.slot.get()
        if routing is None:
            return self.base(x)
        if self.path == "merged":
            return self._merged(x, routing)
        return self._contracted(x, routing.index)

    def _merged(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        weights, bias = self.merged_weight, self.base.bias
        if routing.single is not None:
            return F.linear(x, weights[routing.single].to(x.dtype), bias)
        out = x.new_empty(*x.shape[:-1], weights.shape[1])
        for expert, rows in routing.groups:
            out[rows] = F.linear(x[rows], weights[expert].to(x.dtype), bias).to(out.dtype)
        return out

    def _contracted(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        picked = [core[index].to(x.dtype) for core in self.cores()]  # [B, r, s, r'] per sample
        scale = self.alpha[index].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self.base(x) + scale * tt_apply(x, picked, self.in_factors, self.out_factors)

    def extra_repr(self) -> str:
        return f"experts={self.alpha.numel()}, in={self.in_factors}, out={self.out_factors}, path={self.path}"
