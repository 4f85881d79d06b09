"""Cleaning: raw rows become ``(text, text_pair, label)`` rows, and every dropped row is counted by reason."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ttlora_moe.data.cards import TaskCard, normalise
from ttlora_moe.data.prepared import PREPARED_COLUMNS
from ttlora_moe.errors import BadInput


def to_rows(card: TaskCard, df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Map a raw frame to (text, text_pair, label) rows; return the rows and what was dropped."""
    inputs = [card.text] + ([card.text_pair] if card.text_pair else [])
    for column in inputs + [card.label]:
        if column not in df.columns:
            raise BadInput(f"column {column!r} of task {card.name!r} is not in {where} "
                           f"(columns: {', '.join(map(str, df.columns))})", "fix the task card")
    for column in inputs:
        values = df[column].dropna()
        bad = values[~values.map(lambda v: isinstance(v, str))]
        if len(bad):
            raise BadInput(f"input column {column!r} of task {card.name!r} in {where} is not text "
                           f"(found {type(bad.iloc[0]).__name__} {bad.iloc[0]!r})", "choose a text column in the task card")
    mapping = {normalise(v): i for i, v in enumerate(card.label_values)}
    raw = df[card.label].map(normalise)
    # Rows whose label the card names as "no label" are dropped; a value that is also a class stays a class.
    unlabelled = raw.isin({normalise(v) for v in card.unlabelled_values} - set(mapping))
    blank = int(((raw == "") & ~unlabelled).sum())
    if blank:
        raise BadInput(f"{blank} row(s) of {where} have no label in column {card.label!r}",
                       f"fill them in, or add '' to task {card.name!r}'s unlabelled_values to drop them")
    unknown = sorted(set(raw[~unlabelled]) - set(mapping))
    if unknown:
        examples = [_native(df[card.label][raw == u].iloc[0]) for u in unknown[:5]]
        raise BadInput(f"label value(s) {examples} in column {card.label!r} of {where} are not in "
                       f"task {card.name!r}'s label_values {card.label_values}",
                       "add them to the card's label_values (a class) or unlabelled_values (dropped), or fix the data")
    kept = df[~unlabelled]
    out = pd.DataFrame({
        "text": kept[card.text].astype("string"),
        "text_pair": (kept[card.text_pair].astype("string") if card.text_pair
                      else pd.Series(pd.NA, index=kept.index, dtype="string")),
        "label": raw[~unlabelled].map(mapping).astype("int64"),
    })
    columns = ["text", "text_pair"] if card.text_pair else ["text"]
    empty = pd.Series(False, index=out.index)
    for column in columns:
        empty |= out[column].isna() | (out[column].str.strip() == "")
    out = out[~empty.astype(bool)]
    before = len(out)
    out = out.drop_duplicates(subset=list(PREPARED_COLUMNS), keep="first")
    dropped = {"unlabelled": int(unlabelled.sum()), "empty_text": int(empty.sum()), "duplicates": before - len(out)}
    return out.reset_index(drop=True), dropped


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (so messages say 7, not np.int64(7))."""
    return value.item() if hasattr(value, "item") else value
