"""Unknown words: the share of an input's words that its tokenizer does not hold whole.

A tokenizer's vocabulary is a word list of the language it was trained on: English prose splits almost
every word into one piece, while invented words, Latin filler ("lorem ipsum"), keyboard noise and other
languages in the Latin alphabet split most of theirs. The pooled states and the surface statistics read
such a row as a lower-cased, unpunctuated sentence much like SST-2's; this share reads it as words nobody
writes (README "Abstention"). It asks the tokenizer itself, so it holds for any base model: a word is
known when it takes no more pieces than a common word (" the") does and none of them is the unknown token.
"""

from __future__ import annotations

import itertools
import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch

UNKNOWN_COLUMNS = 2  # text, text_pair
PRIOR_WORDS = 4  # known words every text is credited with: one strange word in a short row is not strange
MAX_WORDS = 64  # the first words of a text that count (a passage's share is settled long before its end)
MAX_WORD_CHARS = 40  # longer runs of letters are no word of any vocabulary: unknown, never asked nor cached
CACHED_WORDS = 100_000  # verdicts each tokenizer keeps (at most ~15 MB; then its cache starts over)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: digits, symbols and punctuation are the fragmentation's
# word -> known, per tokenizer: serving meets the same words again and again, and asking the tokenizer costs
# ~5 us a word. The verdicts are facts of the tokenizer, never of a call, so threads share them safely.
_VERDICTS: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()
_VERDICTS_LOCK = threading.Lock()


def _text_words(text: str | None) -> list[str]:
    return [m.group() for m in itertools.islice(_WORD.finditer(text or ""), MAX_WORDS)]


def _pieces(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's own: half the wrapper's cost
    if backend is not None:  # it may pad (a saved tokenizer.json can say so): keep the real pieces only
        return [[i for i, real in zip(e.ids, e.attention_mask) if real]
                for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def known_words(tokenizer: Any, words: Iterable[str]) -> dict[str, bool]:
    """Whether the tokenizer holds each word whole: no more pieces than a common word (" the") takes, none of them
    its unknown token, and at most :data:`MAX_WORD_CHARS` letters."""
    with _VERDICTS_LOCK:
        cache = _VERDICTS.setdefault(tokenizer, {})
    verdicts = {w: cache.get(w) if len(w) <= MAX_WORD_CHARS else False for w in words}
    new = [w for w, known in verdicts.items() if known is None]
    if new:
        pieces = _pieces(tokenizer, [" the"] + [" " + w for w in new])
        common, unk = len(pieces[0]), tokenizer.unk_token_id
        fresh = {w: len(ids) <= common and unk not in ids for w, ids in zip(new, pieces[1:])}
        verdicts.update(fresh)
        if len(cache) + len(fresh) > CACHED_WORDS:
            cache.clear()
        cache.update(fresh)
    return verdicts


def unknown_word_shares(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
    """``[B, 2]`` float32: for ``text`` and ``text_pair`` of each row, the words the tokenizer does not hold whole
    (:func:`known_words`) over the words plus :data:`PRIOR_WORDS` (0 without words)."""
    texts = [_text_words(str(r["text"])) for r in rows] + [
        _text_words(None if r.get("text_pair") is None else str(r["text_pair"])) for r in rows]
    known = known_words(tokenizer, {w for words in texts for w in words})
    shares = [sum(not known[w] for w in words) / (len(words) + PRIOR_WORDS) for words in texts]
    return torch.tensor(shares, dtype=torch.float32).reshape(2, len(rows)).T.contiguous()
