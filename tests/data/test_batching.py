"""Batching rows into padded token tensors, and tokenising mixed single texts and pairs with segment ids;
every option of a multiple-choice row reaches the tokens."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.toys import SHORT_MIXED_ROWS, choice_card, choice_frame
from ttlora_moe.data.batching import Collator, length_batches, length_order, tokenize
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.choices import choice_inputs
from ttlora_moe.data.clean import card_inputs


def test_collator_pads_to_the_batch_and_truncates(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    collate = Collator(tokenizer, max_length=6)
    batch = collate([{"text": "good movie", "text_pair": None, "label": 1},
                     {"text": "the cat sat on the mat and it was very good", "text_pair": None, "label": 0}])
    assert batch["input_ids"].shape == (2, 6)  # truncated to max_length
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [1, 0] and str(batch["labels"].dtype) == "torch.int64"
    short = collate([{"text": "good", "text_pair": None, "label": 1}, {"text": "bad movie", "text_pair": None, "label": 0}])
    assert short["input_ids"].shape == (2, 4)  # padded only to the longest in this batch
    pairs = collate([{"text": "good", "text_pair": "yes", "label": 1}, {"text": "bad", "text_pair": "no no", "label": 0}])
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert pairs["input_ids"][0].tolist() == [cls, tokenizer.convert_tokens_to_ids("good"), sep,
                                              tokenizer.convert_tokens_to_ids("yes"), sep, tokenizer.pad_token_id]
    mixed = collate([{"text": "good", "text_pair": "yes", "label": 1}, {"text": "bad", "text_pair": None, "label": 0}])
    assert mixed["input_ids"].shape == (2, 5) and mixed["labels"].tolist() == [1, 0]
    unlabelled = collate([{"text": "good", "text_pair": None}])
    assert set(unlabelled) == {"input_ids", "attention_mask"}


def test_tokenize_matches_the_tokenizers_own_padding_and_marks_segments(tiny_bert_base):
    tokenizer = tiny_bert_base.tokenizer
    batch = tokenize(tokenizer, SHORT_MIXED_ROWS, 32)
    encoded = [tokenizer(r["text"], r["text_pair"], truncation=True, max_length=32) if r["text_pair"] is not None
               else tokenizer(r["text"], truncation=True, max_length=32) for r in SHORT_MIXED_ROWS]
    reference = tokenizer.pad(encoded, return_tensors="pt")  # right padding, to the longest row
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    seg = batch["segment_ids"]
    assert (seg[0] == 1).sum() == 0 and (seg[0] == 0).sum() == 4  # 4 words, CLS/SEP are -1
    assert (seg[1] == 0).sum() == 4 and (seg[1] == 1).sum() == 6
    assert (seg[batch["attention_mask"] == 0] == -1).all()


def _contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def _options_kept(tokenizer, inputs, options: list[list[str]], max_length: int) -> list[bool]:
    """Per row: whether every option's tokens are in the text_pair segment of the tokenized input."""
    rows = [{"text": t, "text_pair": p} for t, p in zip(inputs["text"], inputs["text_pair"])]
    batch = tokenize(tokenizer, rows, max_length)
    kept = []
    for ids, seg, row_options in zip(batch["input_ids"].tolist(), batch["segment_ids"].tolist(), options):
        pair = [i for i, s in zip(ids, seg) if s == 1]
        kept.append(all(_contains(pair, tokenizer(o, add_special_tokens=False)["input_ids"]) for o in row_options))
    return kept


def test_every_option_of_a_multiple_choice_row_is_in_the_tokenized_input(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    frame = choice_frame(12)
    inputs = choice_inputs(choice_card(), frame, "toy")
    options = [[row[f"answer{k}"] for k in range(4)] for _, row in frame.iterrows()]
    assert all(_options_kept(tokenizer, inputs, options, 64))
    batch = Collator(tokenizer, 64)([{"text": t, "text_pair": p, "label": 0} for t, p in zip(inputs["text"], inputs["text_pair"])])
    first = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    context = tokenizer(frame.loc[0, "context"], add_special_tokens=False)["input_ids"]
    assert _contains(first, context) and all(_contains(first, tokenizer(o, add_special_tokens=False)["input_ids"])
                                             for o in options[0])


@pytest.mark.parametrize("task, max_length", [("csqa", 128), ("winogrande_l", 128), ("socialiqa", 128), ("cosmosqa", 256)])
def test_real_options_survive_truncation_with_the_default_base_model(mirror, task, max_length):
    if mirror is None:
        pytest.skip("no dataset mirror (TTLORA_DATA_MIRROR or ../shared/datasets)")
    from transformers import AutoTokenizer

    from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, resolve_reference

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_reference(DEFAULT_BASE_MODEL)))
    card = load_task_card(task)
    frame = pd.read_parquet(mirror / card.source / "validation.parquet").head(400)
    inputs = card_inputs(card, frame, task)
    if isinstance(card.choices, list):
        options = frame[card.choices].values.tolist()
    else:
        options = [list(c["text"]) for c in frame["choices"]]
    kept = _options_kept(tokenizer, inputs, options, max_length)
    assert all(kept), f"{task}: {len(kept) - sum(kept)} of {len(kept)} rows lose an option at {max_length} tokens"


def test_option_spans_invert_options_text():
    from ttlora_moe.data.choices import option_spans, options_text

    options = ["bank", "a (B) bracket", "(C)", "last one"]
    text = options_text(options)
    assert [text[a:b] for a, b in option_spans(text)] == options
    assert option_spans("no markers here") == [] and option_spans(None) == [] and option_spans("") == []


def test_option_mask_marks_each_options_tokens(tiny_bert_base):
    from ttlora_moe.data.choices import options_text

    tokenizer = tiny_bert_base.tokenizer
    rows = [{"text": "what sat on the mat", "text_pair": options_text(["the cat", "the dog sat", "mat"])},
            {"text": "good movie", "text_pair": None}, {"text": "the cat", "text_pair": "the dog"}]
    batch = tokenize(tokenizer, rows, 64, options=True)
    mask = batch["option_mask"]
    assert mask.shape == (3, 3, batch["input_ids"].shape[1]) and not mask[1:].any()
    for c, option in enumerate(["the cat", "the dog sat", "mat"]):
        picked = batch["input_ids"][0][mask[0, c]].tolist()
        assert picked == tokenizer(option, add_special_tokens=False)["input_ids"]
    assert (batch["segment_ids"][0][mask[0].any(0)] == 1).all()  # only text_pair tokens, never the markers' own
    assert "option_mask" not in tokenize(tokenizer, rows, 64)


def test_length_order_puts_short_rows_first_and_keeps_ties_in_order():
    rows = [{"text": "ccc"}, {"text": "a", "text_pair": "bb"}, {"text": "dd", "text_pair": None}, {"text": "e"}]
    assert length_order(rows) == [3, 2, 0, 1]  # lengths 3, 3, 2, 1: rows 0 and 1 tie and keep their order
    assert length_order(rows, [0, 1, 2]) == [2, 0, 1]
    assert length_batches(rows, 3) == [[3, 2, 0], [1]] and length_batches(rows, 2, [0, 1, 2]) == [[2, 0], [1]]
