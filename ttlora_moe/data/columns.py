"""Checks on the raw columns a task card reads: present, and holding text where the model reads text."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ttlora_moe.errors import BadInput


def require_columns(task: str, df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Every column in ``columns`` is in ``df`` (``where`` names the file in the error)."""
    for column in columns:
        if column not in df.columns:
            raise BadInput(f"column {column!r} of task {task!r} is not in {where} "
                           f"(columns: {', '.join(map(str, df.columns))})", "fix the task card")


def require_text(task: str, values: pd.Series, column: str, where: str) -> None:
    """Every non-missing cell of ``values`` (the input ``column``) is a string."""
    present = values.dropna()
    bad = present[~present.map(lambda v: isinstance(v, str))]
    if len(bad):
        raise BadInput(f"input column {column!r} of task {task!r} in {where} is not text "
                       f"(found {type(bad.iloc[0]).__name__} {bad.iloc[0]!r})", "choose a text column in the task card")
