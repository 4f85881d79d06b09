"""Surface statistics of an input's raw text: what a row looks like before any tokenizer or model sees it.

Tasks differ in form as much as in content: SST-2's sentences are lower-cased and split at punctuation,
CoLA's are short and capitalised, QQP pairs two questions, MRPC two news sentences that share most of
their words, BoolQ a question without a question mark and a long passage. An uncased base model
(all-MiniLM-L6-v2) never sees case, and mean-pooled states keep little of length, punctuation or the
overlap of a pair, so the out-of-scope detector reads these columns as a density of their own
(``router.out_of_scope.surface_weight``; README "Abstention"). Every value is cheap (one pass over the
characters) and bounded or logarithmic, so no single column dominates a covariance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

SURFACE_COLUMNS = (
    "log_words",  # log(1 + whitespace words of text)
    "log_pair_words",  # the same of text_pair (0 without one)
    "has_pair",
    "pair_overlap",  # Jaccard overlap of the two word sets (0 without a pair)
    "pair_covered",  # share of the pair's distinct words also in text
    "question",  # text ends with "?"
    "pair_question",  # text_pair ends with "?"
    "uppercase",  # share of text's letters that are upper case
    "digits",  # share of text's characters that are digits
    "log_sentences",  # log(1 + sentence ends in text)
    "capitalised",  # text starts with an upper-case letter
    "symbols",  # share of text's characters that are neither letters, digits nor spaces
)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_EDGE_PUNCTUATION = ".,;:!?\"'()"


def _words(text: str) -> set[str]:
    return {w.strip(_EDGE_PUNCTUATION).lower() for w in text.split()} - {""}


def surface_row(text: str, text_pair: str | None) -> list[float]:
    """The :data:`SURFACE_COLUMNS` of one input."""
    pair = text_pair or ""
    pair_words = _words(pair)
    words = _words(text) if pair_words else set()  # the text's words only serve the overlap
    shared = len(words & pair_words)
    chars = max(1, len(text))
    # map() of str's own predicates: every character is visited in C, not in a Python generator
    letters, upper, digits = sum(map(str.isalpha, text)), sum(map(str.isupper, text)), sum(map(str.isdigit, text))
    symbols = len(text) - sum(map(str.isalnum, text)) - sum(map(str.isspace, text))
    return [
        math.log1p(len(text.split())),
        math.log1p(len(pair.split())),
        float(text_pair is not None),
        shared / max(1, len(words | pair_words)) if pair_words else 0.0,
        shared / len(pair_words) if pair_words else 0.0,
        float(text.rstrip().endswith("?")),
        float(pair.rstrip().endswith("?")),
        upper / max(1, letters),
        digits / chars,
        math.log1p(len(_SENTENCE_END.findall(text))),
        float(text[:1].isupper()),
        symbols / chars,
    ]


def surface_features(rows: Sequence[dict[str, Any]]) -> torch.Tensor:
    """``[B, len(SURFACE_COLUMNS)]`` float32: :func:`surface_row` of each row's ``text`` and ``text_pair``."""
    values = [surface_row(str(r["text"]), None if r.get("text_pair") is None else str(r["text_pair"])) for r in rows]
    return torch.tensor(values, dtype=torch.float32).reshape(len(rows), len(SURFACE_COLUMNS))
