"""One adapted linear of a mixture: a frozen ``W`` plus, for each sample, the update of its own expert.

Three ways compute the same ``y_b = W x_b + b + alpha_e · ΔW_e x_b`` for sample ``b`` of expert ``e``:

- ``merged``: every expert's ``W + alpha_e · ΔW_e`` is built once at load time; each expert's rows of
  the batch go through their own merged weight (one matmul per expert present, none extra when the
  whole batch has one expert). Memory ``E × out × in`` per layer.
- ``factored``: ``ΔW_e`` has matrix rank at most the TT rank ``r``
  (:func:`~ttlora_moe.tt.tensor_train.tt_factors`), so each expert is kept as ``down_e`` (``in × r``)
  and ``up_e`` (``r × out``), in the mixture's factor bank (:mod:`~ttlora_moe.moe.factor_bank`); a
  mixed batch takes each sample's factors from the rows its forward gathered once, and adds
  ``(x_b down_e) up_e`` to the base output with two batched matmuls, whatever the number of experts
  present. Memory ``E × r × (in + out)`` per layer.
- ``contract``: the stacked ``[E, r, s, r']`` cores are gathered per sample and contracted with ``x``
  (:func:`~ttlora_moe.tt.tensor_train.tt_apply`), one small matmul per core: the paper's form, kept
  as the reference.

``auto`` (the default) serves a batch that goes to one expert through that expert's merged weight
(the base model's cost) and a mixed batch through the factors, when the merged weights of all layers
fit ``merged_cache_mb`` (a 17-expert Llama-3.2-1B bundle would need 5.7 GB merged); otherwise
``factored`` alone. The adapter_speed benchmark measures each. The routing of a forward comes from
the mixture's :class:`~ttlora_moe.moe.routing.RoutingSlot`, never from an attribute of this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ttlora_moe.errors import BadInput
from ttlora_moe.moe.factor_bank import FactorSlice
from ttlora_moe.moe.routing import Routing, RoutingSlot
from ttlora_moe.tt.tensor_train import tt_apply, tt_reconstruct

ADAPTER_PATHS = ("auto", "merged", "factored", "contract")
MERGED_AND_FACTORED = "merged+factored"  # what ``auto`` resolves to when the merged weights fit
FACTORED_PATHS = ("factored", MERGED_AND_FACTORED)  # the paths that read the mixture's factor bank


def merged_bytes(layout: dict[str, list], num_experts: int, bytes_per_value: int = 4) -> int:
    """Memory of every expert's merged weight for every adapted layer of ``layout`` (in, out factors)."""
    size = sum(_prod(in_f) * _prod(out_f) for in_f, out_f, *_ in layout.values())
    return size * num_experts * bytes_per_value


def choose_path(path: str, layout: dict[str, list], num_experts: int, merged_cache_mb: float) -> str:
    """The path a mixture's layers take: ``path`` itself, or for ``auto`` :data:`MERGED_AND_FACTORED` when
    every merged weight fits ``merged_cache_mb`` and ``factored`` otherwise."""
    if path not in ADAPTER_PATHS:
        raise BadInput(f"unknown adapter path {path!r}", f"use one of {', '.join(ADAPTER_PATHS)}")
    if path != "auto":
        return path
    return MERGED_AND_FACTORED if merged_bytes(layout, num_experts) <= merged_cache_mb * 2**20 else "factored"


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class MoETTLinear(nn.Module):
    """A frozen linear plus, per sample, the TT update of that sample's expert (see the module's paths)."""

    def __init__(self, base: nn.Linear, cores: Sequence[torch.Tensor], alphas: torch.Tensor,
                 in_factors: list[int], out_factors: list[int], slot: RoutingSlot, path: str,
                 factors: FactorSlice | None = None) -> None:
        """``factors``: where this layer sits in the mixture's factor bank (the ``factored`` paths)."""
        super().__init__()
        if path not in ADAPTER_PATHS[1:] + (MERGED_AND_FACTORED,):
            raise BadInput(f"unknown adapter path {path!r}", "resolve it with choose_path")
        self.factors = factors if path in FACTORED_PATHS else None
        if path in FACTORED_PATHS and factors is None:
            raise ValueError(f"path {path} reads a factor bank: give the layer its FactorSlice")
        self.base = base
        self.plain = type(base) is nn.Linear  # then F.linear on its weight skips a module call per layer
        self.in_factors, self.out_factors = list(in_factors), list(out_factors)
        self.slot = slot
        self.path = path
        device = base.weight.device  # the expert tensors arrive from disk on the CPU: work where the base is
        cores, alphas = [c.to(device) for c in cores], alphas.to(device)
        self.register_buffer("alpha", alphas.to(device=device, dtype=torch.float32))
        self.register_buffer("merged_weight", None)
        self.num_cores = 0
        if path in ("merged", MERGED_AND_FACTORED):
            with torch.no_grad():
                merged = torch.stack([base.weight.float() + alphas[e] * tt_reconstruct([c[e] for c in cores],
                                                                                       in_factors, out_factors)
                                      for e in range(len(alphas))])
            self.register_buffer("merged_weight", merged.to(device=device, dtype=base.weight.dtype))
        if path == "contract":
            self.num_cores = len(cores)
            for k, core in enumerate(cores):  # [E, r, s, r'] each
                self.register_buffer(f"core_{k}", core.to(device=device, dtype=torch.float32))

    def cores(self) -> list[torch.Tensor]:
        return [getattr(self, f"core_{k}") for k in range(self.num_cores)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.slot.get()
        if routing is None:
            return self._base(x)
        if self.merged_weight is not None and (routing.single is not None or self.factors is None):
            return self._merged(x, routing)
        if self.factors is not None:
            return self._factored(x, routing)
        return self._contracted(x, routing.index)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight, self.base.bias) if self.plain else self.base(x)

    def _merged(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        weights, bias = self.merged_weight, self.base.bias
        if routing.single is not None:
            return F.linear(x, _as(weights[routing.single], x.dtype), bias)
        out = x.new_empty(*x.shape[:-1], weights.shape[1])
        for expert, rows in routing.groups:
            out[rows] = F.linear(x[rows], _as(weights[expert], x.dtype), bias).to(out.dtype)
        return out

    def _factored(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        down, up = routing.factors(self.factors)
        rows = x if x.dim() == 3 else x.reshape(len(routing.index), -1, x.shape[-1])  # [B, tokens, in]
        low = torch.bmm(rows, _as(down, x.dtype))  # [B, tokens, r]
        out = self._base(rows)
        out.baddbmm_(low, _as(up, out.dtype))  # in place: the base output is this call's own tensor
        return out if out.dim() == x.dim() else out.reshape(*x.shape[:-1], -1)

    def _contracted(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        picked = [core.index_select(0, index).to(x.dtype) for core in self.cores()]  # [B, r, s, r'] per sample
        scale = self.alpha.index_select(0, index).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self._base(x) + scale * tt_apply(x, picked, self.in_factors, self.out_factors)

    def extra_repr(self) -> str:
        return f"experts={self.alpha.numel()}, in={self.in_factors}, out={self.out_factors}, path={self.path}"


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype`` (no call at all when it already is: these run in every layer of a forward)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)
