"""Batching rows into padded token tensors, and tokenising mixed single texts and pairs with segment ids."""

from __future__ import annotations

import torch

from tests.toys import SHORT_MIXED_ROWS
from ttlora_moe.data.batching import Collator, tokenize


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


def test_tokenize_matches_the_experts_collator_and_marks_segments(tiny_bert_base):
    from ttlora_moe.data.batching import Collator

    batch = tokenize(tiny_bert_base.tokenizer, SHORT_MIXED_ROWS, 32)
    reference = Collator(tiny_bert_base.tokenizer, 32)([{**r, "label": 0} for r in SHORT_MIXED_ROWS])
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    seg = batch["segment_ids"]
    assert (seg[0] == 1).sum() == 0 and (seg[0] == 0).sum() == 4  # 4 words, CLS/SEP are -1
    assert (seg[1] == 0).sum() == 4 and (seg[1] == 1).sum() == 6
    assert (seg[batch["attention_mask"] == 0] == -1).all()
