"""Router features: pooling, the feature spec, independence from batch composition."""

from __future__ import annotations

import pytest
import torch

from tests.toys import SHORT_MIXED_ROWS
from ttlora_moe.data.surface import SURFACE_COLUMNS, surface_features
from ttlora_moe.data.unknown_words import unknown_word_shares
from ttlora_moe.errors import BadInput
from ttlora_moe.moe.features import (
    FeatureSpec,
    compute_features,
    feature_dim,
    pool_states,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pooling_ignores_pads_and_segments_pool_separately():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    seg = torch.tensor([[-1, 0, 1, -1], [-1, 0, -1, -1]])
    spec = FeatureSpec(layers=[0], pooling=("mean", "max", "cls", "last"), segment_layers=[0], lengths=True,
                       surface=False, unknown_words=False, fragmentation=False)
    f = pool_states([h], mask, seg, spec)
    assert f.shape == (2, 3 * 6 + 3)
    assert torch.allclose(f[1, 0:3], h[1, :2].mean(0))          # mean over real tokens only
    assert torch.allclose(f[1, 3:6], h[1, 1])                   # max over real tokens only
    assert torch.allclose(f[1, 9:12], h[1, 1])                  # last non-pad token
    assert torch.allclose(f[0, 12:15], h[0, 1]) and torch.allclose(f[0, 15:18], h[0, 2])
    assert torch.allclose(f[1, 15:18], torch.zeros(3))          # no pair: zero segment B
    assert torch.allclose(f[:, -1], torch.tensor([1.0, 0.0]))   # has-pair flag


def test_feature_spec_checks_and_dimensions(tiny_bert_base):
    # default: text and text_pair mean-pooled apart on all 3 hidden states, plus 3 length features, 12 surface
    # statistics, 2 unknown-word shares and 2 of fragmentation
    assert feature_dim(FeatureSpec(), tiny_bert_base) == 24 * 3 * 2 + 3 + 12 + 2 + 2
    assert compute_features(tiny_bert_base, SHORT_MIXED_ROWS, FeatureSpec(), batch_size=3,
                            progress=False).shape == (4, 24 * 6 + 19)
    assert feature_dim(FeatureSpec(surface=False, unknown_words=False), tiny_bert_base) == 24 * 3 * 2 + 3 + 2
    spec = FeatureSpec(layers="all", pooling=("mean", "max"), segment_layers=[-1], lengths=False, surface=False,
                       unknown_words=False, fragmentation=False)
    assert compute_features(tiny_bert_base, SHORT_MIXED_ROWS, spec, progress=False).shape == (4, 24 * (3 * 2 + 2))
    with pytest.raises(BadInput, match="pools no hidden state"):
        FeatureSpec(segment_layers=())
    with pytest.raises(BadInput, match="unknown router feature pooling"):
        FeatureSpec(pooling=("median",))
    with pytest.raises(BadInput, match=r"unknown router.features key\(s\) \[.layer.\]"):
        FeatureSpec.from_dict({"layer": [1]})
    with pytest.raises(BadInput, match="does not exist"):
        FeatureSpec(layers=[7]).resolve(3)


def test_features_do_not_depend_on_batch_composition(tiny_bert_base):
    spec = FeatureSpec(segment_layers="all")
    together = compute_features(tiny_bert_base, SHORT_MIXED_ROWS, spec, batch_size=4, progress=False)
    alone = torch.cat([compute_features(tiny_bert_base, [r], spec, progress=False) for r in SHORT_MIXED_ROWS])
    assert torch.allclose(together, alone, atol=1e-5)


def test_fragmentation_counts_tokens_per_word_of_each_segment(tiny_bert_base):
    h = torch.zeros(2, 6, 3)
    mask = torch.ones(2, 6, dtype=torch.long)
    seg = torch.tensor([[-1, 0, 0, 0, 0, -1], [-1, 0, -1, 1, 1, -1]])
    spec = FeatureSpec(segment_layers=[0], lengths=False, surface=False, unknown_words=False, fragmentation=True)
    f = pool_states([h], mask, seg, spec, word_counts=torch.tensor([[1, 0], [1, 3]]))
    # row 0: 4 tokens for 1 word, no pair; row 1: 1 token for 1 word, 2 tokens for 3 words
    want = torch.log(torch.tensor([[5 / 2, 1.0], [1.0, 3 / 4]]))
    assert f.shape == (2, 3 * 2 + 2) and torch.allclose(f[:, -2:], want)
    with pytest.raises(BadInput, match="no word_counts"):
        pool_states([h], mask, seg, spec)
    # a router saved before the fragmentation existed names no such key: its spec has none
    assert not FeatureSpec.saved({"segment_layers": "all"}).fragmentation and FeatureSpec.saved({}).lengths
    # through the tokenizer: code breaks into more pieces per word than a plain sentence
    rows = [{"text": "the cat sat on the mat", "text_pair": None}, {"text": "x = [[1, 0], [0, 1]]", "text_pair": None}]
    spec = FeatureSpec(surface=False, unknown_words=False, fragmentation=True)
    feats = compute_features(tiny_bert_base, rows, spec, progress=False)
    assert feats.shape[1] == feature_dim(spec, tiny_bert_base) == 24 * 6 + 3 + 2
    assert feats[1, -2] > feats[0, -2] and torch.all(feats[:, -1] == 0)


def test_the_surface_columns_come_from_the_raw_text_before_the_fragmentation(tiny_bert_base):
    rows = [{"text": "Is it raining in Paris?", "text_pair": "is it raining in paris today?"},
            {"text": "the movie 's 2 hours felt long .", "text_pair": None}]
    want = surface_features(rows)
    by_name = dict(zip(SURFACE_COLUMNS, want.T))
    assert torch.equal(by_name["has_pair"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(by_name["pair_overlap"], torch.tensor([5 / 6, 0.0]))  # five shared words of six in all
    assert torch.equal(by_name["pair_covered"], torch.tensor([5 / 6, 0.0]))  # of the pair's six distinct words
    assert torch.equal(by_name["question"], torch.tensor([1.0, 0.0]))
    assert torch.equal(by_name["pair_question"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(by_name["uppercase"], torch.tensor([2 / 18, 0.0])) and by_name["digits"][1] > 0
    assert torch.equal(by_name["capitalised"], torch.tensor([1.0, 0.0]))
    # in the features: after the blocks and the lengths, before the two fragmentation columns
    feats = compute_features(tiny_bert_base, rows, FeatureSpec(unknown_words=False), progress=False)
    assert torch.allclose(feats[:, -2 - len(SURFACE_COLUMNS):-2], want)
    alone = compute_features(tiny_bert_base, rows, FeatureSpec(unknown_words=False, fragmentation=False), progress=False)
    assert torch.allclose(alone[:, -len(SURFACE_COLUMNS):], want)
    without = compute_features(tiny_bert_base, rows, FeatureSpec(surface=False, unknown_words=False), progress=False)
    assert torch.equal(torch.cat([without[:, :-2], want, without[:, -2:]], 1), feats)
    # a router saved before the surface existed has none; a batch without the statistics is a clear error
    assert not FeatureSpec.saved({"segment_layers": "all"}).surface
    with pytest.raises(BadInput, match="surface statistics"):
        pool_states([torch.zeros(1, 3, 24)], torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                    FeatureSpec(segment_layers=[0], unknown_words=False, fragmentation=False))


def test_the_unknown_word_columns_lie_between_the_surface_and_the_fragmentation(tiny_bert_base):
    rows = [{"text": "the cat xyzzy", "text_pair": "plugh movie"}, {"text": "good movie", "text_pair": None}]
    want = unknown_word_shares(tiny_bert_base.tokenizer, rows)
    assert float(want.sum()) > 0
    both = compute_features(tiny_bert_base, rows, FeatureSpec(), progress=False)
    surface = compute_features(tiny_bert_base, rows, FeatureSpec(unknown_words=False), progress=False)
    assert torch.equal(both, torch.cat([surface[:, :-2], want, surface[:, -2:]], 1))
    alone = compute_features(tiny_bert_base, rows, FeatureSpec(surface=False, fragmentation=False), progress=False)
    assert torch.equal(alone[:, -2:], want)
    assert feature_dim(FeatureSpec(surface=False), tiny_bert_base) == 24 * 3 * 2 + 3 + 2 + 2
    assert not FeatureSpec.saved({"segment_layers": "all"}).unknown_words  # routers saved before it: none
    with pytest.raises(BadInput, match="unknown words"):
        pool_states([torch.zeros(1, 3, 24)], torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                    FeatureSpec(segment_layers=[0], surface=False, fragmentation=False))
