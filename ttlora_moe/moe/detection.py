"""How well a score separates out-of-scope inputs from in-scope ones: AUROC and the false-positive rate at 95% TPR.

Scores are "higher = further out of scope". Both functions are threshold-free summaries used by the
bundle evaluation, its gates and the out-of-scope benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def auroc(out_scores: Sequence[float] | torch.Tensor, in_scores: Sequence[float] | torch.Tensor) -> float:
    """P(a random out-of-scope input scores higher than a random in-scope one); ties count half."""
    out_t, in_t = torch.as_tensor(out_scores, dtype=torch.float64), torch.as_tensor(in_scores, dtype=torch.float64)
    if not len(out_t) or not len(in_t):
        raise ValueError("AUROC needs at least one score on each side")
    values = torch.cat([out_t, in_t])
    ranks = torch.empty(len(values), dtype=torch.float64)
    order = values.argsort()
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in values.unique():  # average ranks over ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    n_out, n_in = len(out_t), len(in_t)
    return float((ranks[:n_out].sum() - n_out * (n_out + 1) / 2) / (n_out * n_in))


def fpr_at_tpr(out_scores: Sequence[float] | torch.Tensor, in_scores: Sequence[float] | torch.Tensor,
               tpr: float = 0.95) -> float:
    """Share of in-scope inputs flagged when the threshold flags ``tpr`` of the out-of-scope ones."""
    out_t, in_t = torch.as_tensor(out_scores, dtype=torch.float64), torch.as_tensor(in_scores, dtype=torch.float64)
    threshold = torch.quantile(out_t, 1 - tpr)
    return float((in_t >= threshold).double().mean())
