"""One adapted linear: y = W x + b + alpha * ΔW x."""

from __future__ import annotations

import torch

from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import (
    attach_tt_lora,
    tt_modules,
)
from ttlora_moe.tt.tensor_train import tt_reconstruct


def test_forward_adds_alpha_times_delta(tiny_bert):
    base = load_base_model(tiny_bert)
    attach_tt_lora(base.model, TTLoRAConfig(rank=2, alpha=3.0))
    layer = next(iter(tt_modules(base.model).values()))
    x = torch.randn(2, 4, layer.in_features)
    delta = tt_reconstruct(list(layer.tt_cores), layer.in_factors, layer.out_factors)
    torch.testing.assert_close(layer(x), layer.base(x) + 3.0 * x @ delta.T, rtol=1e-5, atol=1e-5)


def test_zero_init_leaves_the_model_unchanged(tiny_llama):
    base = load_base_model(tiny_llama)
    ids = torch.tensor([[2, 5, 6, 7]])
    before = base.model(input_ids=ids).last_hidden_state
    attach_tt_lora(base.model, TTLoRAConfig(rank=2, init="zero"))
    torch.testing.assert_close(base.model(input_ids=ids).last_hidden_state, before)


def test_a_merged_layer_answers_like_the_contraction_in_one_matmul():
    import torch
    from torch import nn

    from ttlora_moe.tt.layer import TTLoRALinear

    torch.manual_seed(0)
    layer = TTLoRALinear(nn.Linear(24, 12), [4, 6], [3, 4], rank=3, alpha=4.0)
    x = torch.randn(5, 7, 24)
    with torch.no_grad():
        contracted = layer(x)
        layer.merge()
        merged = layer(x)
    assert torch.allclose(merged, contracted, atol=1e-5) and not torch.allclose(merged, layer.base(x), atol=1e-3)
    assert "merged" not in layer.state_dict()  # never saved with the adapter
    with torch.enable_grad():  # training ignores the merged weight: gradients reach the cores
        layer(x).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.tt_cores)
    layer.unmerge()
    assert layer.merged is None
