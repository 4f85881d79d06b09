"""The head-only baseline of a multiple-choice task scores each option's state, as its experts do."""

from __future__ import annotations

import pytest
import torch

from tests.toys import add_choice_task
from ttlora_moe.data.choices import options_text
from ttlora_moe.moe.baselines import fit_option_scorer, head_only_baseline, head_only_spec, option_states
from ttlora_moe.moe.features import pool_states

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_the_head_only_baseline_reads_the_pooled_final_state_and_nothing_else(pooling):
    """The floor an expert must beat sees what the expert's head sees: no segment means, token counts or
    surface, unknown-word or fragmentation columns (which the router's features may append)."""
    spec = head_only_spec(pooling, 64)
    states = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    features = pool_states(states, mask, torch.zeros(2, 5, dtype=torch.long), spec, word_counts=torch.ones(2, 2))
    assert not (spec.lengths or spec.surface or spec.unknown_words or spec.fragmentation or spec.segment_layers)
    assert features.shape == (2, 8)
    expected = (states[-1] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) if pooling == "mean" else \
        states[-1][torch.arange(2), mask.sum(1) - 1]
    assert torch.allclose(features, expected)


def test_the_option_scorer_learns_a_shared_linear_score():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(8, generator=generator)
    states = torch.randn(400, 4, 8, generator=generator) * 3 + 1
    labels = (states @ truth).argmax(-1)
    scorer = fit_option_scorer(states[:300], labels[:300])
    assert (scorer(states[300:]).argmax(-1) == labels[300:]).float().mean() > 0.9
    # the options' order does not matter to a shared scorer
    flipped = scorer(states[300:].flip(1)).argmax(-1)
    assert torch.equal(flipped, 3 - scorer(states[300:]).argmax(-1))


def test_option_states_pool_each_options_tokens(tiny_bert_base):
    base = tiny_bert_base
    rows = [{"text": "what sat on the mat", "text_pair": options_text(["the cat", "the dog sat", "mat"])}]
    states = option_states(base, rows, 64, "mean", 3)
    assert states.shape == (1, 3, base.hidden_size)
    from ttlora_moe.data.batching import tokenize

    batch = tokenize(base.tokenizer, rows, 64, options=True)
    with torch.no_grad():
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]
    for c in range(3):
        assert torch.allclose(states[0, c], hidden[batch["option_mask"][0, c]].mean(0), atol=1e-5)


def test_a_multiple_choice_baseline_runs_on_option_states(project, tiny_bert_base):
    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared
    from ttlora_moe.data.prepared import load_split
    from ttlora_moe.params import load_params

    add_choice_task(project)
    prepared = ensure_prepared(load_task_card("quiz"), load_params())
    test = load_split(prepared, "test")
    indices = list(range(len(test)))
    labels = [int(r["label"]) for r in test]
    result = head_only_baseline(tiny_bert_base, prepared, "accuracy", indices, labels, "mean", 64, train_rows=100,
                                options=4)
    assert result["train_rows"] == 100 and 0 <= result["metric"] <= 1 and result["scores"]["accuracy"] == result["metric"]
