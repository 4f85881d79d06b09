"""Hidden states read by forward pre-hooks equal those of a full forward."""

from __future__ import annotations

import pytest
import torch

from tests.toys import MIXED_ROWS
from ttlora_moe.data.batching import tokenize
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.moe.block_hooks import early_hidden_states
from ttlora_moe.moe.features import FRAGMENTATION_COLUMNS, FeatureSpec, batch_features, feature_dim

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_early_states_equal_those_of_a_full_forward(kind, tiny_bert, tiny_llama):
    base = load_base_model(tiny_bert if kind == "bert" else tiny_llama)
    batch = tokenize(base.tokenizer, MIXED_ROWS, 32)
    with torch.no_grad():
        full = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=True).hidden_states
        early = early_hidden_states(base.model, batch["input_ids"], batch["attention_mask"], 1)
        again = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert len(early) == 2
    for got, want in zip(early, full):
        assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(again, full[-1], atol=1e-6)  # the stopped forward left nothing behind
    # features of the early states only (the forward stops) equal those cut from a full forward
    plain = {"surface": False, "unknown_words": False}  # the raw text's statistics: none of the states' business
    spec = FeatureSpec(layers=(0, -2), pooling=("mean", "max"), segment_layers=(1,), **plain)
    upto_last = FeatureSpec(layers=(0, -2), pooling=("mean", "max"), segment_layers=(1, 2), **plain)
    tail = 3 + FRAGMENTATION_COLUMNS  # lengths and fragmentation: the same for both specs
    cut = batch_features(base, batch, upto_last)[:, : feature_dim(spec, base) - tail]
    assert torch.allclose(batch_features(base, batch, spec)[:, :-tail], cut, atol=1e-6)
