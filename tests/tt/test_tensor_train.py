"""TT math against an independent oracle: contraction vs a dense product built entry by entry from the cores."""

from __future__ import annotations

import math

import pytest
import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.tt.tensor_train import (
    balanced_factors,
    check_factors,
    init_cores,
    lora_param_count,
    tt_apply,
    tt_factors,
    tt_param_count,
    tt_reconstruct,
    tt_shape,
)

SHAPES = [
    ([4, 3], [3, 4]),  # square 12 -> 12
    ([8, 8, 6], [8, 8, 6]),  # 384 -> 384 (all-MiniLM-L6-v2)
    ([16, 16, 4, 2], [16, 16, 2]),  # 2048 -> 512 (LLaMA-3.2-1B v_proj)
    ([2, 3, 2], [5]),  # odd factor counts, 12 -> 5
    ([5], [7, 3]),  # one input core
]


def random_cores(in_f, out_f, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c.shape, generator=g, dtype=torch.float64) / math.sqrt(c.shape[1] * c.shape[0])
            for c in init_cores(in_f, out_f, rank)]


@pytest.mark.parametrize("in_f,out_f", SHAPES)
def test_contraction_equals_dense_reconstruction(in_f, out_f):
    cores = random_cores(in_f, out_f, rank=3)
    x = torch.randn(2, 5, math.prod(in_f), dtype=torch.float64)
    dense = tt_reconstruct(cores, in_f, out_f)
    assert dense.shape == (math.prod(out_f), math.prod(in_f))
    torch.testing.assert_close(tt_apply(x, cores, in_f, out_f), x @ dense.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_f,out_f", SHAPES)
@pytest.mark.parametrize("rank", [1, 3])
def test_factors_are_the_dense_update_at_the_tt_rank(in_f, out_f, rank):
    cores = random_cores(in_f, out_f, rank=rank)
    down, up = tt_factors(cores, in_f, out_f)
    assert down.shape == (math.prod(in_f), rank) and up.shape == (rank, math.prod(out_f))
    torch.testing.assert_close(down @ up, tt_reconstruct(cores, in_f, out_f).T, rtol=1e-10, atol=1e-10)
    x = torch.randn(3, math.prod(in_f), dtype=torch.float64)
    torch.testing.assert_close((x @ down) @ up, tt_apply(x, cores, in_f, out_f), rtol=1e-10, atol=1e-10)


def test_digit_layout_matches_the_reference_formula():
    # ΔW[j, i] = G0[:, i0] G1[:, i1] · G2[:, j1] G3[:, j0] with little-endian digits (REFERENCE §1.5)
    in_f, out_f = [2, 3], [3, 2]
    cores = random_cores(in_f, out_f, rank=2)
    dense = tt_reconstruct(cores, in_f, out_f)
    for i0 in range(2):
        for i1 in range(3):
            for j0 in range(3):
                for j1 in range(2):
                    chain = cores[0][:, i0] @ cores[1][:, i1] @ cores[2][:, j1] @ cores[3][:, j0]
                    assert dense[j0 + 3 * j1, i0 + 2 * i1].item() == pytest.approx(chain.item(), abs=1e-12)


def test_per_sample_cores_equal_one_sample_at_a_time():
    in_f, out_f = [4, 3], [3, 4]
    experts = [random_cores(in_f, out_f, 2, seed=s) for s in range(3)]
    choice = torch.tensor([2, 0, 1, 2])
    stacked = [torch.stack([e[k] for e in experts])[choice] for k in range(len(experts[0]))]
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    mixed = tt_apply(x, stacked, in_f, out_f)
    for b, e in enumerate(choice.tolist()):
        torch.testing.assert_close(mixed[b], tt_apply(x[b], experts[e], in_f, out_f))


@pytest.mark.parametrize("in_f,out_f", SHAPES[:1] + SHAPES[3:])
def test_gradients_of_the_contraction_equal_those_of_the_dense_product(in_f, out_f):
    # the backward pass the training uses, against autograd through the independent dense route
    cores = random_cores(in_f, out_f, rank=2)
    x = torch.randn(3, math.prod(in_f), dtype=torch.float64)
    target = torch.randn(3, math.prod(out_f), dtype=torch.float64)

    def grads(apply):
        leaves = [c.clone().requires_grad_() for c in cores] + [x.clone().requires_grad_()]
        (apply(leaves[-1], leaves[:-1]) - target).pow(2).sum().backward()
        return [t.grad for t in leaves]

    got = grads(lambda x, cs: tt_apply(x, cs, in_f, out_f))
    want = grads(lambda x, cs: x @ tt_reconstruct(cs, in_f, out_f).T)
    assert all(g is not None and g.abs().sum() > 0 for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_paper_init_has_unit_frobenius_cores_and_zero_init_gives_zero_delta():
    cores = init_cores([8, 8, 6], [8, 8, 6], 5)
    assert [tuple(c.shape) for c in cores][0] == (1, 8, 5)
    assert all(abs(c.norm().item() - 1.0) < 1e-4 for c in cores)
    zero = init_cores([8, 8, 6], [8, 8, 6], 5, init="zero")
    assert tt_reconstruct(zero, [8, 8, 6], [8, 8, 6]).abs().max() == 0
    with pytest.raises(BadInput):
        init_cores([4], [4], 2, init="orthogonal")


def test_paper_parameter_count_for_llama_3_2_1b():
    q_shapes, v_shapes = ([16, 8, 4, 4], [16, 8, 4, 4]), ([16, 16, 4, 2], [16, 16, 2])
    q, v = tt_param_count(*q_shapes, 5), tt_param_count(*v_shapes, 5)
    assert (q, v) == (960, 1160)
    # the count is the size of the cores init_cores actually builds, summed over 16 layers of q and v
    built = sum(c.numel() for _ in range(16) for shapes in (q_shapes, v_shapes) for c in init_cores(*shapes, 5))
    assert built == 33_920
    assert 16 * (lora_param_count(2048, 2048) + lora_param_count(2048, 512)) == 1_703_936
    assert tt_shape([16, 8, 4, 4], [16, 8, 4, 4]) == [16, 8, 4, 4, 4, 4, 8, 16]


@pytest.mark.parametrize("n", [384, 512, 768, 1536, 2048, 576, 30, 7, 1])
def test_balanced_factors_multiply_back(n):
    factors = balanced_factors(n)
    assert math.prod(factors) == n
    assert factors == sorted(factors, reverse=True)
    assert balanced_factors(384) == [8, 8, 6]


def test_bad_factors_are_refused():
    with pytest.raises(BadInput, match="do not multiply"):
        check_factors(384, [8, 8, 8], "input")
