"""The share of a row's words its tokenizer does not hold whole: split words and unknown-token words count, a
common word's own pieces are the bar, digits and symbols are not words, and a short row is shrunk toward none."""

from __future__ import annotations

import pytest
import torch

from ttlora_moe.data.batching import tokenize
from ttlora_moe.data.unknown_words import MAX_WORDS, PRIOR_WORDS, unknown_word_shares


@pytest.fixture(scope="module")
def word_level(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)  # a whole-word vocabulary: an unknown word is [UNK]


@pytest.fixture(scope="module")
def word_piece(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("wordpiece")
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "lo", "##rem", "ip", "##sum", "l", "##o"]
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return BertTokenizerFast(str(folder / "vocab.txt"))


def test_words_the_vocabulary_lacks_count_over_the_words_plus_the_prior(word_level):
    rows = [{"text": "the cat xyzzy", "text_pair": None},
            {"text": "good movie", "text_pair": "plugh frotz the"},
            {"text": "cat 42 !!! 3.14 :-)", "text_pair": ""}]
    shares = unknown_word_shares(word_level, rows)
    assert shares.shape == (3, 2) and shares.dtype == torch.float32
    want = [[1 / (3 + PRIOR_WORDS), 0.0], [0.0, 2 / (3 + PRIOR_WORDS)], [0.0, 0.0]]  # digits and symbols are no words
    assert torch.allclose(shares, torch.tensor(want))


def test_a_word_split_into_more_pieces_than_a_common_word_is_unknown(word_piece):
    rows = [{"text": "the cat sat", "text_pair": None}, {"text": "Lorem ipsum the", "text_pair": None}]
    shares = unknown_word_shares(word_piece, rows)[:, 0]
    assert shares.tolist() == [0.0, pytest.approx(2 / (3 + PRIOR_WORDS))]  # lo ##rem, ip ##sum (lower-cased)


def test_a_tokenizer_that_pads_on_its_own_gives_the_same_shares(word_piece, tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json turns padding on in the backend: padded pieces are no pieces."""
    from transformers import BertTokenizerFast

    word_piece.save_pretrained(tmp_path)
    padding = BertTokenizerFast.from_pretrained(tmp_path)
    padding.backend_tokenizer.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    rows = [{"text": "Lorem ipsum the cat", "text_pair": "sat"}]
    assert torch.equal(unknown_word_shares(padding, rows), unknown_word_shares(word_piece, rows))
    assert float(unknown_word_shares(padding, rows)[0, 0]) == pytest.approx(2 / (4 + PRIOR_WORDS))


def test_only_the_first_words_of_a_long_text_count(word_level):
    long = " ".join(["xyzzy"] * MAX_WORDS + ["cat"] * 1000)
    assert float(unknown_word_shares(word_level, [{"text": long, "text_pair": None}])[0, 0]) == pytest.approx(
        MAX_WORDS / (MAX_WORDS + PRIOR_WORDS))


def test_tokenize_carries_them_only_when_asked(word_level):
    rows = [{"text": "the cat xyzzy", "text_pair": "good"}]
    assert "unknown_words" not in tokenize(word_level, rows, 16)
    assert torch.equal(tokenize(word_level, rows, 16, unknown_words=True)["unknown_words"],
                       unknown_word_shares(word_level, rows))


def test_verdicts_are_cached_per_tokenizer_bounded_and_shared_by_threads(word_level, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from ttlora_moe.data import unknown_words

    rows = [{"text": f"the cat w{i} sat", "text_pair": "good x{i}" if i % 2 else None} for i in range(40)]
    want = unknown_word_shares(word_level, rows)
    monkeypatch.setattr(unknown_words, "CACHED_WORDS", 10)  # a full cache starts over; answers do not change
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: unknown_word_shares(word_level, rows[i:] + rows[:i]), range(40)))
    for i, shares in enumerate(got):
        assert torch.equal(shares, torch.cat([want[i:], want[:i]]))
    unknown_word_shares(word_level, [{"text": "zebra yak", "text_pair": None}])  # two new words: over the bound
    assert set(unknown_words._VERDICTS[word_level]) == {"zebra", "yak"}
    # a run of letters longer than any word is unknown without asking the tokenizer, and takes no cache
    shares = unknown_word_shares(word_level, [{"text": "zebra " + "cat" * 5000, "text_pair": None}])
    assert float(shares[0, 0]) == pytest.approx(2 / (2 + PRIOR_WORDS))  # zebra is no word of this vocabulary either
    assert set(unknown_words._VERDICTS[word_level]) == {"zebra", "yak"}
