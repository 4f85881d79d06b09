"""Seeded, stratified splitting that never lets one input straddle two splits."""

from __future__ import annotations

import random

import pandas as pd


def shuffle(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = list(range(len(df)))
    random.Random(seed).shuffle(order)
    return df.iloc[order].reset_index(drop=True)


def input_key(df: pd.DataFrame) -> pd.Series:
    """The input of a row (text and pair): rows with one input must never straddle two splits."""
    return df["text"].fillna("") + "\x1f" + df["text_pair"].fillna("\x00")


def stratified(df: pd.DataFrame) -> pd.DataFrame:
    """Reorder a shuffled frame so that every prefix has about the overall label proportions."""
    rank = df.groupby("label").cumcount()
    size = df.groupby("label")["label"].transform("size")
    position = (rank + 0.5) / size
    order = sorted(range(len(df)), key=lambda i: (position.iat[i], i))
    return df.iloc[order].reset_index(drop=True)


def split_head(df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``n`` rows of a stratified order (plus any row sharing an input with them), and the rest."""
    ordered = stratified(df)
    keys = input_key(ordered)
    head = keys.isin(set(keys.iloc[:n]))
    return ordered[head].reset_index(drop=True), ordered[~head].reset_index(drop=True)


def count_conflicts(df: pd.DataFrame) -> int:
    """How many inputs carry more than one label (kept, but reported: label noise in the source)."""
    return int((df.assign(key=input_key(df)).groupby("key")["label"].nunique() > 1).sum())
