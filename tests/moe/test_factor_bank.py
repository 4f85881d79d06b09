"""The factor bank: every layer's factors of every expert in one tensor, read back per layer and per sample."""

import pytest
import torch

from ttlora_moe.moe.factor_bank import build_bank, layer_factors
from ttlora_moe.moe.routing import Routing
from ttlora_moe.tt.tensor_train import tt_ranks, tt_reconstruct, tt_shape


def random_cores(experts: int, in_f: list[int], out_f: list[int], rank: int) -> list[torch.Tensor]:
    sizes = tt_shape(in_f, out_f)
    ranks = tt_ranks(len(sizes), rank)
    return [torch.randn(experts, ranks[k], n, ranks[k + 1]) for k, n in enumerate(sizes)]


def test_layer_factors_carry_each_experts_scaled_update():
    torch.manual_seed(0)
    in_f, out_f, alphas = [4, 6], [2, 4], torch.tensor([0.5, 3.0])
    cores = random_cores(2, in_f, out_f, 3)
    down, up = layer_factors(cores, alphas, in_f, out_f)
    assert down.shape == (2, 24, 3) and up.shape == (2, 3, 8)
    for e in range(2):
        delta = alphas[e] * tt_reconstruct([c[e] for c in cores], in_f, out_f)  # [out, in]
        assert torch.allclose(down[e] @ up[e], delta.T, atol=1e-5)


@pytest.mark.parametrize("budget", [2**30, 0])  # the forward's rows gathered once, or each layer's columns
def test_routing_reads_each_samples_factors_of_every_layer_of_any_shape(budget, monkeypatch):
    monkeypatch.setattr("ttlora_moe.moe.routing.GATHER_ONCE_BYTES", budget)
    torch.manual_seed(1)
    layers = [(torch.randn(3, 24, 2), torch.randn(3, 2, 8)), (torch.randn(3, 8, 4), torch.randn(3, 4, 24))]
    bank, slices = build_bank(layers)
    assert bank.shape == (3, 24 * 2 + 2 * 8 + 8 * 4 + 4 * 24)
    index = torch.tensor([2, 0, 2, 1])
    routing = Routing.of(index, bank)
    for (down, up), part in zip(layers, slices):
        got_down, got_up = routing.factors(part)
        assert torch.equal(got_down, down[index]) and torch.equal(got_up, up[index])


def test_split_reads_rows_of_any_layout():
    torch.manual_seed(2)
    layers = [(torch.randn(3, 6, 2), torch.randn(3, 2, 5))]
    bank, (part,) = build_bank(layers)
    padded = torch.randn(3, bank.shape[1] + 7)
    padded[:, 7:] = bank
    for rows, start in [(bank, 0), (padded[:, 7:], 0), (padded, 7), (bank.T.contiguous().T, 0), (bank[1:], 0)]:
        down, up = part.split(rows, start)
        first = 1 if rows.shape[0] == 2 else 0
        assert torch.equal(down, layers[0][0][first:]) and torch.equal(up, layers[0][1][first:])
