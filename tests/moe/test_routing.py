"""One loaded mixture served from many threads at once: every call gets exactly its sequential answer,
whatever the other threads send, and memory stays flat."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.toys import MIXED_ROWS, make_random_expert
from ttlora_moe.data.batching import tokenize
from ttlora_moe.experts.artifact import read_expert_meta
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.files import load_tensors
from ttlora_moe.moe.features import FeatureSpec, batch_features, feature_dim
from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
from ttlora_moe.moe.router import Router
from ttlora_moe.moe.routing import Routing
from ttlora_moe.moe.single_pass import restrict_spec

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = {"senti": ["neg", "pos"], "nli": ["entail", "neutral", "contra"], "quest": ["no", "yes"]}
WORDS = "the a movie film cat dog sat on mat good bad great awful what why who is was not very really".split()


def requests(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` requests of 1 to 16 rows, single texts and pairs mixed, 1 to 40 words each."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))

    return [[{"text": text(), "text_pair": text() if rng.random() < 0.4 else None} for _ in range(rng.randint(1, 16))]
            for _ in range(count)]


def mixture(ref: str, root: Path, k: int | None, path: str) -> MixtureOfExperts:
    """Three random experts (adapting layers >= 1) and a random router spread over MIXED_ROWS."""
    dirs = [make_random_expert(root / t, ref, t, seed=i + 1, labels=labels, layers_from=1, bias_scale=0.5)
            for i, (t, labels) in enumerate(LABELS.items())]
    metas = [read_expert_meta(d) for d in dirs]
    plain = load_base_model(ref)
    spec = restrict_spec(FeatureSpec(), k) if k is not None else FeatureSpec()
    router = Router(feature_dim(spec, plain), len(dirs), "linear")
    feats = batch_features(plain, tokenize(plain.tokenizer, MIXED_ROWS, 32, **spec.row_statistics), spec)
    with torch.no_grad():
        router.mean.copy_(feats.mean(0))
        router.scale.copy_(feats.std(0).clamp_min(1e-3))
        router.net[0].weight.copy_(torch.randn(router.net[0].weight.shape, generator=torch.Generator().manual_seed(3)))
    infos = [ExpertInfo(m["task"], "1", m["task"], m["label_names"], "accuracy") for m in metas]
    return MixtureOfExperts(load_base_model(ref), infos, [load_tensors(d / "adapter.safetensors") for d in dirs],
                            metas, router, FeatureSpec(), 32, route_after_layer=k, adapter_path=path)


@pytest.mark.parametrize("k,path", [(None, "merged"), (None, "contract"), (1, "merged"), (1, "contract"),
                                    (None, "factored"), (1, "auto")])
def test_eight_threads_get_exactly_the_sequential_answers(tiny_bert, tmp_path, k, path):
    moe = mixture(tiny_bert, tmp_path, k, path)
    assert moe.adapter_path == {"auto": "merged+factored"}.get(path, path)
    calls = requests(24)
    calls[5].append({"text": "  ", "text_pair": None})  # no text: abstains without being routed
    confidences = sorted(a["router_confidence"] for rows in calls for a in moe.predict(rows) if not a["abstained"])
    moe.router.threshold.fill_(confidences[len(confidences) // 3])  # a third of the inputs abstain
    expected = [moe.predict(rows, batch_size=8) for rows in calls]
    assert {a["abstain_reason"] for answers in expected for a in answers} == {None, "empty", "low_confidence"}
    assert {a["abstained"] for answers in expected for a in answers} == {False, True}  # both kinds of answer
    assert len({a["task"] for answers in expected for a in answers}) == 4  # three experts and None
    work = [i for i in range(len(calls)) for _ in range(4)]
    random.Random(1).shuffle(work)
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: (i, moe.predict(calls[i], batch_size=8)), work))
    for i, answers in got:
        assert answers == expected[i]
    assert moe.slot.get() is None  # nothing left behind in this thread either


def test_memory_stays_flat_over_a_thousand_concurrent_calls(tiny_bert, tmp_path):
    moe = mixture(tiny_bert, tmp_path, 1, "merged")
    calls = requests(40, seed=2)

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: moe.predict(calls[i % 40], batch_size=8), range(200)))  # warm-up: allocator, caches
        before = rss_mb()
        list(pool.map(lambda i: moe.predict(calls[i % 40], batch_size=8), range(1000)))
        after = rss_mb()
    assert after - before < 40, f"resident memory grew {after - before:.0f} MB over 1,000 calls"


def test_every_adapter_path_gives_the_same_logits(tiny_bert, tmp_path):
    paths = {p: mixture(tiny_bert, tmp_path / p, None, p) for p in ("merged", "factored", "contract", "auto")}
    batch = tokenize(paths["merged"].base.tokenizer, MIXED_ROWS, 32)
    for experts in ([0, 1, 2, 1, 0, 2, 2], [1] * 7):  # mixed, and the whole batch through one expert
        index = torch.tensor(experts)
        logits = {p: m.expert_logits(batch["input_ids"], batch["attention_mask"], index) for p, m in paths.items()}
        plain = paths["merged"].expert_logits(batch["input_ids"], batch["attention_mask"], torch.tensor([0] * 7))
        assert not torch.allclose(logits["merged"], plain, atol=1e-3)  # the experts do differ
        for p in ("factored", "contract", "auto"):
            assert torch.allclose(logits["merged"], logits[p], atol=1e-5, equal_nan=True), p


def test_routing_groups_rows_by_expert():
    mixed = Routing.of(torch.tensor([2, 0, 2, 1, 0]))
    assert mixed.single is None
    assert {e: rows.tolist() for e, rows in mixed.groups} == {0: [1, 4], 1: [3], 2: [0, 2]}
    one = Routing.of(torch.tensor([1, 1, 1]))
    assert one.single == 1 and one.groups[0][1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("bias", [True, False])
def test_every_path_of_an_adapted_linear_gives_each_row_its_experts_update(bias, monkeypatch):
    from ttlora_moe.moe.expert_linear import MERGED_AND_FACTORED, MoETTLinear
    from ttlora_moe.moe.factor_bank import build_bank, layer_factors
    from ttlora_moe.moe.routing import RoutingSlot
    from ttlora_moe.tt.tensor_train import tt_ranks, tt_reconstruct, tt_shape

    torch.manual_seed(0)
    in_f, out_f, rank, experts = [4, 6], [6, 4], 3, 3
    base = torch.nn.Linear(24, 24, bias=bias)
    sizes = tt_shape(in_f, out_f)
    ranks = tt_ranks(len(sizes), rank)
    cores = [torch.randn(experts, ranks[k], n, ranks[k + 1]) for k, n in enumerate(sizes)]
    alphas = torch.tensor([0.5, 1.0, 2.0])
    slot = RoutingSlot()
    # the layer's factors sit second in a bank of two layers (the first: the same factors, doubled)
    down, up = layer_factors(cores, alphas, in_f, out_f)
    bank, (_, part) = build_bank([(2 * down, 2 * up), (down, up)])
    layers = {path: MoETTLinear(base, cores, alphas, in_f, out_f, slot, path, part)
              for path in ("merged", "factored", "contract", MERGED_AND_FACTORED)}
    x = torch.randn(6, 5, 24)
    for index in ([2, 0, 2, 1, 0, 1], [0, 0, 1, 1, 1, 2], [2] * 6):
        expected = torch.stack([base(x[b]) + alphas[e] * x[b] @ tt_reconstruct([c[e] for c in cores], in_f, out_f).T
                                for b, e in enumerate(index)])
        for once in (True, False):  # the forward's rows of the bank gathered once, or this layer's columns alone
            monkeypatch.setattr("ttlora_moe.moe.routing.GATHER_ONCE_BYTES", 2**30 if once else 0)
            with slot.use(Routing.of(torch.tensor(index), bank)), torch.no_grad():
                for path, layer in layers.items():
                    assert torch.allclose(layer(x), expected, atol=1e-4), (path, index, once)


@pytest.mark.parametrize("path", ["merged", "factored", "contract", "merged+factored"])
def test_every_path_builds_where_the_base_is_from_experts_loaded_on_the_cpu(path):
    """A base on another device (``meta`` stands in for a GPU here) with the experts' tensors as they come
    off the disk, on the CPU: every path builds, and every buffer lands beside the base."""
    from ttlora_moe.moe.expert_linear import MoETTLinear
    from ttlora_moe.moe.factor_bank import FactorSlice
    from ttlora_moe.moe.routing import RoutingSlot
    from ttlora_moe.tt.tensor_train import tt_ranks, tt_shape

    in_f, out_f = [4, 6], [6, 4]
    sizes, base = tt_shape(in_f, out_f), torch.nn.Linear(24, 24).to("meta")
    ranks = tt_ranks(len(sizes), 3)
    cores = [torch.randn(2, ranks[k], n, ranks[k + 1]) for k, n in enumerate(sizes)]
    layer = MoETTLinear(base, cores, torch.tensor([0.5, 2.0]), in_f, out_f, RoutingSlot(), path,
                        FactorSlice(0, 24, 3, 24))
    assert {b.device.type for b in layer.buffers()} == {"meta"}
