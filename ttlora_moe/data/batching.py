"""Batching: rows of text become padded token tensors, for the experts and for the router."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ttlora_moe.data.choices import option_spans
from ttlora_moe.data.surface import surface_features
from ttlora_moe.data.unknown_words import unknown_word_shares


class Collator:
    """Tokenise a list of rows with dynamic padding (to the longest in the batch) and truncation
    (:func:`tokenize`), plus ``labels`` when every row has one.

    ``options=True`` (experts whose head scores multiple-choice options) adds ``option_mask``.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128, options: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.options = options

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = tokenize(self.tokenizer, rows, self.max_length, options=self.options)
        for router_only in ("segment_ids", "word_counts"):
            del out[router_only]
        if all(r.get("label") is not None for r in rows):
            out["labels"] = torch.tensor([int(r["label"]) for r in rows])
        return out


def length_order(rows: Sequence[dict[str, Any]], indices: Iterable[int] | None = None) -> list[int]:
    """``indices`` (default: every row) shortest ``text`` + ``text_pair`` first, so that a batch of neighbours
    pads little; ties keep their order."""
    chosen = range(len(rows)) if indices is None else indices
    return sorted(chosen, key=lambda i: len(rows[i]["text"]) + len(rows[i].get("text_pair") or ""))


def length_batches(rows: Sequence[dict[str, Any]], batch_size: int,
                   indices: Iterable[int] | None = None) -> list[list[int]]:
    """:func:`length_order`'s indices cut into batches of ``batch_size``."""
    order = length_order(rows, indices)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def tokenize(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int,
             options: bool = False, surface: bool = False, unknown_words: bool = False) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (right padding, to the longest row), plus ``segment_ids``.

    ``segment_ids`` is 0 for ``text`` tokens, 1 for ``text_pair`` tokens and -1 for special and pad
    tokens; ``word_counts`` ``[B, 2]`` counts the whitespace-separated words of ``text`` and
    ``text_pair`` (before truncation; 0 for no pair). Single texts and pairs may be mixed in one call.
    With ``surface`` (router features with ``router.features.surface``), ``surface`` ``[B, S]`` holds each row's
    :func:`~ttlora_moe.data.surface.surface_features`; with ``unknown_words`` (``router.features.unknown_words``),
    ``unknown_words`` ``[B, 2]`` their :func:`~ttlora_moe.data.unknown_words.unknown_word_shares`.
    With ``options``, ``option_mask`` ``[B, C, T]`` marks the tokens of each multiple-choice option of a row's ``text_pair``
    (:func:`~ttlora_moe.data.choices.option_spans`; ``C`` = the most options of any row, at least 1;
    a row without options, or an option cut off by truncation, has no tokens).
    """
    encoded: list[tuple[list[int], list[int], list[list[int]]]] = [([], [], [])] * len(rows)
    kw = {"truncation": True, "max_length": max_length, "return_offsets_mapping": options}
    singles = [i for i, r in enumerate(rows) if r.get("text_pair") is None]
    pairs = [i for i, r in enumerate(rows) if r.get("text_pair") is not None]
    for group, args in ((singles, lambda idx: ([rows[i]["text"] for i in idx],)),
                        (pairs, lambda idx: ([rows[i]["text"] for i in idx], [rows[i]["text_pair"] for i in idx]))):
        if not group:
            continue
        enc = tokenizer(*args(group), **kw)
        for j, i in enumerate(group):
            seq = [-1 if s is None else s for s in enc.sequence_ids(j)]
            owners = _option_owners(rows[i].get("text_pair"), enc["offset_mapping"][j], seq) if options else []
            encoded[i] = (enc["input_ids"][j], seq, owners)
    width = max((len(ids) for ids, _, _ in encoded), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (ids, seq, _) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        segments[i, : len(ids)] = torch.tensor(seq)
    words = torch.tensor([[len(str(r["text"]).split()), len(str(r.get("text_pair") or "").split())] for r in rows],
                         dtype=torch.long).reshape(len(rows), 2)
    out = {"input_ids": input_ids, "attention_mask": attention, "segment_ids": segments, "word_counts": words}
    if surface:
        out["surface"] = surface_features(rows)
    if unknown_words:
        out["unknown_words"] = unknown_word_shares(tokenizer, rows)
    if options:
        count = max([1] + [max(owners, default=-1) + 1 for _, _, owners in encoded])
        mask = torch.zeros((len(rows), count, width), dtype=torch.bool)
        for i, (_, _, owners) in enumerate(encoded):
            owner = torch.tensor(owners, dtype=torch.long)
            tokens = (owner >= 0).nonzero().flatten()
            mask[i, owner[tokens], tokens] = True
        out["option_mask"] = mask
    return out


def _option_owners(text_pair: str | None, offsets: Sequence[tuple[int, int]], segments: list[int]) -> list[int]:
    """Per token: the option (0, 1, ...) of ``text_pair`` whose text holds the token's last character, or -1
    (the ``text``, the ``(A)`` markers, special tokens)."""
    spans = option_spans(text_pair)
    owners = [-1] * len(segments)
    for t, ((start, end), segment) in enumerate(zip(offsets, segments)):
        if segment != 1 or end <= start:
            continue
        owners[t] = next((c for c, (a, b) in enumerate(spans) if a <= end - 1 < b), -1)
    return owners
