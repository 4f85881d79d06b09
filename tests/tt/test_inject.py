"""Attaching TT-LoRA to Hugging Face models by module name, and adapter-only safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.files import load_tensors
from ttlora_moe.params import load_params
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import (
    adapter_state_dict,
    attach_tt_lora,
    factors_for,
    load_adapter_state_dict,
    lora_equivalent_params,
    save_adapter,
    trainable_tt_params,
    tt_layout,
    tt_modules,
)


@pytest.mark.parametrize("fixture,targets", [("tiny_bert", ("query", "value")), ("tiny_llama", ("q_proj", "v_proj"))])
def test_attach_adapts_default_targets_and_freezes_everything_else(request, fixture, targets):
    base = load_base_model(request.getfixturevalue(fixture))
    names = attach_tt_lora(base.model, TTLoRAConfig(rank=2))
    assert len(names) == 4 and all(n.rsplit(".", 1)[-1] in targets for n in names)
    trainable = [n for n, p in base.model.named_parameters() if p.requires_grad]
    assert trainable and all(".tt_cores." in n for n in trainable)
    assert trainable_tt_params(base.model) == sum(p.numel() for p in base.model.parameters() if p.requires_grad)


def test_adapter_state_round_trips_through_safetensors(tiny_bert, tmp_path):
    first = load_base_model(tiny_bert)
    attach_tt_lora(first.model, TTLoRAConfig(rank=2), seed=1)
    save_adapter(first.model, tmp_path / "a.safetensors")
    second = load_base_model(tiny_bert)
    attach_tt_lora(second.model, TTLoRAConfig(rank=2), seed=2)
    load_adapter_state_dict(second.model, load_tensors(tmp_path / "a.safetensors"))
    for key, value in adapter_state_dict(first.model).items():
        torch.testing.assert_close(adapter_state_dict(second.model)[key], value)


def test_mismatched_adapter_is_a_clear_error(tiny_bert, tmp_path):
    first = load_base_model(tiny_bert)
    attach_tt_lora(first.model, TTLoRAConfig(rank=2))
    state = adapter_state_dict(first.model)
    other = load_base_model(tiny_bert)
    attach_tt_lora(other.model, TTLoRAConfig(rank=3))
    with pytest.raises(BadInput, match="shape"):
        load_adapter_state_dict(other.model, state)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="not a readable safetensors"):
        load_tensors(tmp_path / "bad.safetensors")


def test_layers_from_skips_early_layers_and_unknown_targets_fail(tiny_bert):
    base = load_base_model(tiny_bert)
    names = attach_tt_lora(base.model, TTLoRAConfig(rank=2, layers_from=1))
    assert names and all(".layer.1." in n for n in names)
    with pytest.raises(BadInput, match="target modules"):
        attach_tt_lora(load_base_model(tiny_bert).model, TTLoRAConfig(target_modules=["nope"]))


def test_targets_match_the_last_components_of_a_module_path(tiny_bert):
    """``dense`` is every BERT dense layer; ``intermediate.dense`` only the FFN's input layer, as in PEFT."""
    names = attach_tt_lora(load_base_model(tiny_bert).model, TTLoRAConfig(rank=2, target_modules=["intermediate.dense"]))
    assert names and all(n.endswith(".intermediate.dense") for n in names)
    every = attach_tt_lora(load_base_model(tiny_bert).model, TTLoRAConfig(rank=2, target_modules=["dense"]))
    assert set(names) < set(every) and any(n.endswith(".attention.output.dense") for n in every)
    both = attach_tt_lora(load_base_model(tiny_bert).model, TTLoRAConfig(rank=2, target_modules=["query", "intermediate.dense"]))
    assert {n for n in both if n.endswith(".query")} and set(names) < set(both)


def test_factors_come_from_explicit_shapes_or_from_factor_target(tiny_bert):
    layer = nn.Linear(384, 96)
    assert factors_for(layer, "query", TTLoRAConfig()) == ([8, 8, 6], [12, 8])
    assert factors_for(layer, "query", TTLoRAConfig(factor_target=4)) == ([6, 4, 4, 4], [6, 4, 4])
    explicit = TTLoRAConfig(rank=2, shapes={"query": [[24, 16], [12, 8]]})
    assert factors_for(layer, "query", explicit) == ([24, 16], [12, 8])
    assert factors_for(layer, "value", explicit) == ([8, 8, 6], [12, 8])  # shapes name modules one by one
    base = load_base_model(tiny_bert)  # hidden size 24
    attach_tt_lora(base.model, TTLoRAConfig(rank=2, shapes={"query": [[2, 12], [4, 6]]}))
    layers = tt_modules(base.model)
    assert [(m.in_factors, m.out_factors) for n, m in layers.items() if n.endswith("query")] == [([2, 12], [4, 6])] * 2
    with pytest.raises(BadInput, match="do not multiply"):
        attach_tt_lora(load_base_model(tiny_bert).model, TTLoRAConfig(shapes={"value": [[5, 5], [4, 6]]}))


@pytest.mark.slow
def test_default_minilm_takes_an_adapter_under_5_percent_of_lora():
    minilm = load_base_model()
    names = attach_tt_lora(minilm.model, TTLoRAConfig(rank=4))
    assert len(names) == 12  # query and value of 6 layers
    assert trainable_tt_params(minilm.model) < 0.05 * lora_equivalent_params(minilm.model)


@pytest.mark.slow
def test_smollm2_gguf_loads_as_llama_and_takes_an_adapter():
    from ttlora_moe.experts.base_model import SMOLLM2_BASE_MODEL

    smol = load_base_model(SMOLLM2_BASE_MODEL)
    assert smol.model_type == "llama" and smol.pooling == "last"
    names = attach_tt_lora(smol.model, TTLoRAConfig(rank=5))
    assert len(names) == 2 * smol.model.config.num_hidden_layers
    ids = smol.tokenizer(["a short test"], return_tensors="pt")
    out = smol.model(**ids).last_hidden_state
    assert torch.isfinite(out).all()


def test_the_llama_3_2_1b_profile_builds_the_papers_adapter():
    """params.yaml's llama-3.2-1b profile on Llama-3.2-1B's attention geometry (2 of its 16 layers)."""
    from transformers import LlamaConfig, LlamaModel

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", profile="llama-3.2-1b")
    assert params["base_model"]["ref"] == "meta-llama/Llama-3.2-1B"
    geometry = LlamaConfig(vocab_size=16, hidden_size=2048, num_hidden_layers=2, num_attention_heads=32,
                           num_key_value_heads=8, intermediate_size=8)
    model = LlamaModel(geometry)
    assert len(attach_tt_lora(model, TTLoRAConfig.from_dict(params["tt"]))) == 4
    layout = tt_layout(model)
    assert layout["layers.1.self_attn.q_proj"] == [[16, 8, 4, 4], [16, 8, 4, 4], 5]
    assert layout["layers.1.self_attn.v_proj"] == [[16, 16, 4, 2], [16, 16, 2], 5]
    assert trainable_tt_params(model) == 2 * (960 + 1160)  # x 16 layers = the paper's 33,920
    assert trainable_tt_params(model) / lora_equivalent_params(model) == pytest.approx(0.0199, abs=5e-4)
