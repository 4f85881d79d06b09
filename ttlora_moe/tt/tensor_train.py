"""Tensor-train (TT) math for a low-rank weight update ``ΔW`` of a linear map ``in -> out``.

The update is never stored densely. With ``in = m_0·…·m_{K-1}`` and ``out = n_0·…·n_{L-1}`` it is a
chain of ``K + L`` cores ``G_k`` of shape ``(r_{k-1}, s_k, r_k)`` with ``s = m + reversed(n)`` and
ranks ``[1, r, …, r, 1]``. Entry by entry (F.linear convention, ``ΔW`` is ``out × in``)::

    ΔW[j, i] = G_0[:, i_0, :] ⋯ G_{K-1}[:, i_{K-1}, :] · G_K[:, j_{L-1}, :] ⋯ G_{K+L-1}[:, j_0, :]

where ``i = Σ i_k Π_{t<k} m_t`` and ``j = Σ j_l Π_{t<l} n_t`` (little-endian digits). This is the
digit layout of the paper's reference code, so its checkpoints would map onto ours one to one.

:func:`tt_apply` computes ``x @ ΔWᵀ`` by contracting ``x`` with one core at a time. Because the
digit that is contracted next is always the least significant one left, every step is a plain
matrix product on a *view* of the running state: no transposes of activations, only of the tiny
cores. The same function takes per-sample cores (a leading batch axis on every core), which is
how a mixed-task batch runs each sample through its own expert in one pass.
:func:`tt_factors` gives the same update as two thin matrices (its rank is at most the TT rank).
:func:`tt_reconstruct` builds the dense ``ΔW`` by a different route; it is the test oracle and
the baseline of the speed benchmark, never the training path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ttlora_moe.errors import BadInput


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order (with repetition)."""
    if n < 1:
        raise BadInput(f"cannot factorise {n}", "dimensions must be positive integers")
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def balanced_factors(n: int, target: int = 8) -> list[int]:
    """Split ``n`` into factors near ``target`` whose product is ``n``, largest first.

    Primes are dealt, largest first, onto the bin with the smallest product; the number of bins is
    ``round(log(n) / log(target))``. Examples: 384 -> [8, 8, 6], 2048 -> [16, 16, 8] with target 12.
    A prime larger than ``target`` stays a factor of its own.
    """
    if n == 1:
        return [1]
    primes = prime_factors(n)
    bins = max(1, min(len(primes), round(math.log(n) / math.log(target))))
    products = [1] * bins
    for p in sorted(primes, reverse=True):
        products[products.index(min(products))] *= p
    return sorted(products, reverse=True)


def tt_shape(in_factors: Sequence[int], out_factors: Sequence[int]) -> list[int]:
    """Core mode sizes: input factors, then the output factors reversed."""
    return list(in_factors) + list(reversed(out_factors))


def tt_ranks(num_cores: int, rank: int) -> list[int]:
    """Rank list ``[1, r, …, r, 1]`` of length ``num_cores + 1``."""
    return [1] + [rank] * (num_cores - 1) + [1]


def check_factors(dim: int, factors: Sequence[int], what: str) -> None:
    """Raise :class:`BadInput` unless ``factors`` multiply to ``dim``."""
    if not factors or any(f < 1 for f in factors) or math.prod(factors) != dim:
        raise BadInput(
            f"{what} factors {list(factors)} do not multiply to {dim}",
            "give factors whose product is the layer dimension, or leave them out to derive them",
        )


def init_cores(
    in_factors: Sequence[int],
    out_factors: Sequence[int],
    rank: int,
    init: str = "paper",
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """New TT cores.

    ``init="paper"``: uniform entries (Kaiming-uniform with ``a=√8``), each core rescaled to unit
    Frobenius norm, as in the paper. ``init="zero"``: the same, but the last core is zero so that
    ``ΔW = 0`` at step 0 (like LoRA's ``B = 0``); gradients still reach every core after one step.
    """
    if init not in ("paper", "zero"):
        raise BadInput(f"unknown TT init {init!r}", "use 'paper' or 'zero'")
    shape = tt_shape(in_factors, out_factors)
    ranks = tt_ranks(len(shape), rank)
    cores = []
    for k, s in enumerate(shape):
        fan_in = s * ranks[k + 1]
        bound = math.sqrt(6.0 / ((1 + 8.0) * fan_in))  # kaiming_uniform_ with a = sqrt(8)
        core = (torch.rand(ranks[k], s, ranks[k + 1], generator=generator) * 2 - 1) * bound
        cores.append(core / (core.norm() + 1e-6))
    if init == "zero":
        cores[-1].zero_()
    return cores


def tt_apply(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    in_factors: Sequence[int],
    out_factors: Sequence[int],
) -> torch.Tensor:
    """``x @ ΔWᵀ`` by sequential contraction, never forming ``ΔW``.

    Shared cores: every core is ``(r, s, r')`` and ``x`` is ``[..., in]``.
    Per-sample cores: every core is ``(B, r, s, r')`` and ``x`` is ``[B, ..., in]``; sample ``b``
    is multiplied by the update built from ``cores[k][b]``.
    Returns ``[..., out]`` with the leading shape of ``x``.
    """
    num_in = len(in_factors)
    groups = x.shape[0] if cores[0].dim() == 4 else 1
    state = _contract_inputs(x.reshape(groups, -1, x.shape[-1]), cores[:num_in], in_factors)
    return _contract_outputs(state, cores[num_in:]).reshape(*x.shape[:-1], -1)


def _contract_inputs(x: torch.Tensor, cores: Sequence[torch.Tensor], in_factors: Sequence[int]) -> torch.Tensor:
    """``[G, tokens, in]`` through the input cores: ``[G, tokens, r_K]``."""
    groups = x.shape[0]
    # state rows: [tokens, m_{K-1}, …, m_k] flattened, columns: (m_k, r_k) flattened, m_k major.
    state = x.reshape(groups, -1, in_factors[0])
    for k, core in enumerate(cores):
        r, m, r_next = core.shape[-3:]
        mat = core.movedim(-3, -2).reshape(*core.shape[:-3], m * r, r_next)
        state = torch.matmul(state, mat)  # [G, rows, r_next]
        if k + 1 < len(cores):
            state = state.reshape(groups, -1, in_factors[k + 1] * r_next)
    return state


def _contract_outputs(state: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[G, tokens, r_K]`` through the output cores (each appends one output digit, most significant
    first): ``[G, tokens, out]``."""
    groups = state.shape[0]
    for core in cores:
        r, n, r_next = core.shape[-3:]
        mat = core.reshape(*core.shape[:-3], r, n * r_next)
        state = torch.matmul(state, mat).reshape(groups, -1, r_next)
    return state


def tt_factors(
    cores: Sequence[torch.Tensor], in_factors: Sequence[int], out_factors: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(down, up)`` with ``x @ ΔWᵀ == (x @ down) @ up``: ``down`` is ``in × r_K``, ``up`` is ``r_K × out``.

    The input digits come before the output digits in the chain, so ``ΔW`` has matrix rank at most
    the TT rank ``r_K`` between them: two thin matrices carry it exactly (a LoRA-shaped view of the
    same update, for serving many experts at once). Shared cores only.
    """
    num_in = len(in_factors)
    dtype, device = cores[0].dtype, cores[0].device
    down = _contract_inputs(torch.eye(math.prod(in_factors), dtype=dtype, device=device)[None], cores[:num_in],
                            in_factors)[0]
    rank = down.shape[-1]
    up = _contract_outputs(torch.eye(rank, dtype=dtype, device=device)[None], cores[num_in:]).reshape(rank, -1)
    return down, up


def tt_reconstruct(
    cores: Sequence[torch.Tensor], in_factors: Sequence[int], out_factors: Sequence[int]
) -> torch.Tensor:
    """The dense ``ΔW`` (``out × in``) of the same cores; reference and benchmark only."""
    full = cores[0].reshape(-1, cores[0].shape[-1])  # rows: digits so far, first digit major
    for core in cores[1:]:
        r = core.shape[0]
        full = (full @ core.reshape(r, -1)).reshape(-1, core.shape[-1])
    shape = tt_shape(in_factors, out_factors)
    full = full.reshape(shape)
    num_in = len(in_factors)
    # Input digits are little-endian (i_0 least significant): reverse them before flattening.
    # Output axes are already n_{L-1} … n_0, i.e. most significant first.
    order = list(reversed(range(num_in))) + list(range(num_in, len(shape)))
    in_dim, out_dim = math.prod(in_factors), math.prod(out_factors)
    return full.permute(order).reshape(in_dim, out_dim).T


def tt_param_count(in_factors: Sequence[int], out_factors: Sequence[int], rank: int) -> int:
    """Number of TT parameters: ``Σ r_{k-1}·s_k·r_k``."""
    shape = tt_shape(in_factors, out_factors)
    ranks = tt_ranks(len(shape), rank)
    return sum(ranks[k] * s * ranks[k + 1] for k, s in enumerate(shape))


def lora_param_count(in_features: int, out_features: int, rank: int = 16) -> int:
    """What LoRA of rank ``rank`` trains on the same matrix: ``r·(in + out)``."""
    return rank * (in_features + out_features)
