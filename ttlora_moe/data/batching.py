"""Batching: rows of text become padded token tensors, for the experts and for the router."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Collator:
    """Tokenise a list of rows with dynamic padding (to the longest in the batch) and truncation."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        texts = [r["text"] for r in rows]
        pairs = [r.get("text_pair") for r in rows]
        kw = {"truncation": True, "max_length": self.max_length}
        if all(p is None for p in pairs):
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", **kw)
        elif all(p is not None for p in pairs):
            enc = self.tokenizer(texts, pairs, padding=True, return_tensors="pt", **kw)
        else:  # a mixed batch of single texts and pairs (MoE serving)
            single = [self.tokenizer(t, p, **kw) if p is not None else self.tokenizer(t, **kw) for t, p in zip(texts, pairs)]
            enc = self.tokenizer.pad(single, return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if all(r.get("label") is not None for r in rows):
            out["labels"] = torch.tensor([int(r["label"]) for r in rows])
        return out


def tokenize(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids as the experts' collator makes them (right padding), plus ``segment_ids``.

    ``segment_ids`` is 0 for ``text`` tokens, 1 for ``text_pair`` tokens and -1 for special and pad
    tokens. Single texts and pairs may be mixed in one call.
    """
    encoded: list[tuple[list[int], list[int]]] = [([], [])] * len(rows)
    kw = {"truncation": True, "max_length": max_length}
    singles = [i for i, r in enumerate(rows) if r.get("text_pair") is None]
    pairs = [i for i, r in enumerate(rows) if r.get("text_pair") is not None]
    for group, args in ((singles, lambda idx: ([rows[i]["text"] for i in idx],)),
                        (pairs, lambda idx: ([rows[i]["text"] for i in idx], [rows[i]["text_pair"] for i in idx]))):
        if not group:
            continue
        enc = tokenizer(*args(group), **kw)
        for j, i in enumerate(group):
            seq = enc.sequence_ids(j)
            encoded[i] = (enc["input_ids"][j], [-1 if s is None else s for s in seq])
    width = max((len(ids) for ids, _ in encoded), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (ids, seq) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        segments[i, : len(ids)] = torch.tensor(seq)
    return {"input_ids": input_ids, "attention_mask": attention, "segment_ids": segments}
