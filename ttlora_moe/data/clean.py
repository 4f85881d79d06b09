"""Cleaning: raw rows become ``(text, text_pair, label)`` rows, and every dropped row is counted by reason."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ttlora_moe.data.cards import TaskCard, normalise
from ttlora_moe.data.choices import MULTIPLE_CHOICE, choice_inputs
from ttlora_moe.data.columns import require_columns, require_text
from ttlora_moe.data.prepared import PREPARED_COLUMNS
from ttlora_moe.errors import BadInput


def card_inputs(card: TaskCard, df: pd.DataFrame, where: str) -> pd.DataFrame:
    """The ``text`` and ``text_pair`` (string columns; missing: NA) the card makes of each raw row."""
    if card.kind == MULTIPLE_CHOICE:
        return choice_inputs(card, df, where)
    columns = [card.text] + ([card.text_pair] if card.text_pair else [])
    require_columns(card.name, df, columns, where)
    for column in columns:
        require_text(card.name, df[column], column, where)
    return pd.DataFrame({
        "text": df[card.text].astype("string"),
        "text_pair": (df[card.text_pair].astype("string") if card.text_pair
                      else pd.Series(pd.NA, index=df.index, dtype="string")),
    })


def blank_inputs(card: TaskCard, inputs: pd.DataFrame) -> pd.Series:
    """Rows whose text (or, when the card has pairs, pair) is missing or blank."""
    blank = pd.Series(False, index=inputs.index)
    for column in ["text", "text_pair"] if card.has_pair else ["text"]:
        blank |= inputs[column].isna() | (inputs[column].str.strip() == "")
    return blank.astype(bool)


def to_rows(card: TaskCard, df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Map a raw frame to (text, text_pair, label) rows; return the rows and what was dropped."""
    inputs = card_inputs(card, df, where)
    require_columns(card.name, df, [card.label], where)
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
    out = inputs[~unlabelled].assign(label=raw[~unlabelled].map(mapping).astype("int64"))
    empty = blank_inputs(card, out)
    out = out[~empty]
    before = len(out)
    out = out.drop_duplicates(subset=list(PREPARED_COLUMNS), keep="first")
    dropped = {"unlabelled": int(unlabelled.sum()), "empty_text": int(empty.sum()), "duplicates": before - len(out)}
    return out.reset_index(drop=True), dropped


def _native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (so messages say 7, not np.int64(7))."""
    return value.item() if hasattr(value, "item") else value
