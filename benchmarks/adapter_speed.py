"""Adapter cost: frozen base vs TT contraction vs dense reconstruction vs merged weights.

Three levels, batch sizes 1..128: one adapted linear layer (384 -> 384, the default base model's
query); the whole default base model with query and value adapted by one expert, on SST-2 sentences
(what an expert alone serves: merged, ``TTLoRALinear.merge``); and a mixture of six experts with the
batch's rows spread over all six (what a bundle serves: each expert's rows through its merged
weight, each sample's rank-r factors of ``ΔW``, the per-sample contraction, or ``auto``: merged for a
one-expert batch, factors for a mixed one; ``ttlora_moe.moe.expert_linear``), each sample's head
included; its ``auto`` is also given against the base as one task's classifier (the base, mean
pooling and one linear head: what one fine-tuned model serves), and its adapted forward alone
(``auto_forward``: no pooling, no heads) against the base's forward; ``base_again`` times the base's forward a
second time in the same rounds, so its ratio (1 but for noise) shows how far this machine's noise moves a ratio at
each batch size. Forward
latency is the median of several rounds after warm-up (288 at batch 1, down to 15 from batch 32: a
small batch is fast and noisy), the modes timed in turn within each round, in a shuffled order (so they
share the machine's drift); a ratio is the median over rounds of the ratio within a round. Memory is
the bytes the forward allocates beyond the frozen base (torch profiler), a proxy for peak memory
on CPU (on a GPU, the true peak from ``torch.cuda.max_memory_allocated``).

    python -m benchmarks.adapter_speed [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchmarks.common import interleaved_times, markdown_table, paired_ratios, run_benchmark, write_results
from ttlora_moe.devices import resolve_device
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, load_base_model, pool
from ttlora_moe.params import load_params, section
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import (
    adapter_state_dict,
    attach_tt_lora,
    tt_layout,
    tt_modules,
)
from ttlora_moe.tt.layer import TTLoRALinear
from ttlora_moe.tt.tensor_train import balanced_factors

MODES = ("base", "contraction", "reconstruction", "merged")


def mode_forwards(layer: TTLoRALinear) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The layer's forward in each of :data:`MODES` (the merged weight computed once, here)."""
    merged = (layer.base.weight + layer.dense_delta()).detach()
    return {
        "base": layer.base.forward,
        "contraction": layer.forward,
        "reconstruction": lambda x: nn.functional.linear(x, layer.base.weight + layer.dense_delta().to(x.dtype),
                                                         layer.base.bias),
        "merged": lambda x: nn.functional.linear(x, merged, layer.base.bias),
    }


@contextlib.contextmanager
def mode(forwards: dict[TTLoRALinear, dict[str, Callable]], name: str) -> Iterator[None]:
    """Run every TT layer in one of :data:`MODES` (``forwards``: :func:`mode_forwards` per layer) within the block."""
    for layer, by_mode in forwards.items():
        layer.forward = by_mode[name]
    try:
        yield
    finally:
        for layer in forwards:
            del layer.forward  # back to the class's forward (the contraction)


def timed_modes(forwards: dict[TTLoRALinear, dict[str, Callable]], call: Callable[[], Any], rounds: int,
                inner: int = 1) -> dict[str, float]:
    """``<mode>_ms`` (median milliseconds of ``call``) and ``<mode>_x`` (against ``base``, paired by round) for each
    mode; one timed block of ``inner`` calls per mode per round."""
    def block(name: str) -> Callable[[], None]:
        def run() -> None:
            with mode(forwards, name):
                for _ in range(inner):
                    call()
        return run

    return timing_columns(interleaved_times({name: block(name) for name in MODES}, rounds, warmup=2), inner)


def timing_columns(times: dict[str, list[float]], inner: int = 1) -> dict[str, float]:
    """``<name>_ms``: the median milliseconds of one call; ``<name>_x``: its time over ``base``'s, the median of
    the ratios within a round (:func:`~benchmarks.common.paired_ratios`)."""
    ratios = paired_ratios(times, "base")
    columns = {f"{name}_ms": 1000 * statistics.median(t) / inner for name, t in times.items()}
    return {**columns, **{f"{name}_x": ratios[name] for name in times if name != "base"}}


def allocated_bytes(fn) -> int:
    """Bytes allocated during ``fn`` (GPU: peak increase; CPU: profiler's total of allocations)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return int(sum(max(0, e.self_cpu_memory_usage) for e in prof.key_averages()))


def layer_rows(batch_sizes: list[int], seq_len: int, repeats: int, device: torch.device) -> list[dict]:
    """One 384 -> 384 linear, tokens = batch x seq_len."""
    rows = []
    factors = balanced_factors(384)
    layer = TTLoRALinear(nn.Linear(384, 384), factors, factors, rank=4, alpha=32.0).eval().to(device)
    for bs in batch_sizes:
        x = torch.randn(bs, seq_len, 384, device=device)
        row: dict[str, Any] = {"level": "layer", "batch": bs}
        with torch.inference_mode():
            forwards = {layer: mode_forwards(layer)}
            row.update(timed_modes(forwards, lambda: layer(x), repeats, inner=20))  # one call is too short alone
            for name in MODES:
                with mode(forwards, name):
                    row[f"{name}_bytes"] = allocated_bytes(lambda: layer(x))
        rows.append(row)
    return rows


def model_rows(rounds: dict[int, int], device: torch.device) -> list[dict]:
    """The configured base model (default all-MiniLM-L6-v2), q and v adapted, on SST-2 sentences."""
    from benchmarks.sst2_sentences import sst2_sentences

    params = load_params()
    base = load_base_model(section(params, "base_model").get("ref", DEFAULT_BASE_MODEL))
    attach_tt_lora(base.model, TTLoRAConfig.from_dict(section(params, "tt")))
    base.model.to(device)
    sentences = sst2_sentences(max(rounds))
    rows = []
    for bs, repeats in rounds.items():
        enc = base.tokenizer(sentences[:bs], padding=True, return_tensors="pt").to(device)
        row: dict[str, Any] = {"level": "model", "batch": bs, "tokens": int(enc["input_ids"].shape[1])}
        with torch.inference_mode():
            forwards = {layer: mode_forwards(layer) for layer in tt_modules(base.model).values()}
            row.update(timed_modes(forwards, lambda: base.model(**enc), repeats))
            for name in MODES:
                with mode(forwards, name):
                    row[f"{name}_bytes"] = allocated_bytes(lambda: base.model(**enc))
        rows.append(row)
    return rows


MIXTURE_MODES = ("base", "merged", "factored", "contract", "auto")


def random_experts(base_ref: str, tt: TTLoRAConfig, count: int) -> tuple[list[dict], list[dict]]:
    """``count`` experts with random cores and two-label heads (speed does not depend on training)."""
    tensors, metas = [], []
    for e in range(count):
        base = load_base_model(base_ref)
        attach_tt_lora(base.model, tt, seed=e + 1)
        head = {"head.weight": 0.01 * torch.randn(2, base.hidden_size), "head.bias": torch.zeros(2)}
        tensors.append({**adapter_state_dict(base.model), **head})
        metas.append({"layout": tt_layout(base.model), "tt": tt.to_dict(), "pooling": base.pooling})
    return tensors, metas


def mixture_rows(rounds: dict[int, int], device: torch.device, experts: int = 6) -> list[dict]:
    """A bundle's adapted pass: the batch's rows spread round-robin over ``experts`` experts."""
    from benchmarks.sst2_sentences import sst2_sentences
    from ttlora_moe.moe.features import FeatureSpec, feature_dim
    from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
    from ttlora_moe.moe.router import Router

    params = load_params()
    ref = section(params, "base_model").get("ref", DEFAULT_BASE_MODEL)
    tensors, metas = random_experts(ref, TTLoRAConfig.from_dict(section(params, "tt")), experts)
    infos = [ExpertInfo(f"e{e}", None, f"e{e}", ["a", "b"], "accuracy") for e in range(experts)]
    plain = load_base_model(ref, device=device)
    head = nn.Linear(plain.hidden_size, 2).to(device)  # the base as one task's classifier: pooled state, one head
    spec = FeatureSpec()
    mixtures = {path: MixtureOfExperts(load_base_model(ref, device=device), infos, tensors, metas,
                                       Router(feature_dim(spec, plain), experts, "linear"), spec, 128,
                                       adapter_path=path).to(device) for path in MIXTURE_MODES[1:]}
    sentences = sst2_sentences(max(rounds))
    rows = []
    for bs, repeats in rounds.items():
        enc = plain.tokenizer(sentences[:bs], padding=True, return_tensors="pt").to(device)
        index = torch.arange(bs, device=device) % experts
        calls = {"base": lambda: plain.model(**enc),
                 "base_again": lambda: plain.model(**enc),  # the same call twice: what this machine's noise reads as
                 "classifier": lambda: head(pool(plain.model(**enc).last_hidden_state, enc["attention_mask"],
                                                 plain.pooling))}
        calls.update({path: (lambda m=moe: m.expert_logits(enc["input_ids"], enc["attention_mask"], index))
                      for path, moe in mixtures.items()})
        calls["auto_forward"] = lambda: adapted_forward(mixtures["auto"], enc, index)
        with torch.inference_mode():
            times = interleaved_times(calls, repeats, warmup=2)
        row: dict[str, Any] = {"level": f"mixture of {experts}", "batch": bs, "tokens": int(enc["input_ids"].shape[1])}
        row.update(timing_columns(times))
        row["auto_vs_classifier_x"] = paired_ratios(times, "classifier")["auto"]
        rows.append(row)
    return rows


def adapted_forward(moe: Any, enc: dict[str, torch.Tensor], index: torch.Tensor) -> Any:
    """The mixture's adapted forward alone, on the base's own inputs: each sample through its expert's layers,
    no pooling and no heads (what the ``base`` column runs, adapted)."""
    with moe.routing(index):
        return moe.base.model(**enc)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    batch_sizes = [1, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    repeats = 3 if args.quick else 9
    # small batches are fast and noisy: more rounds (about the same seconds per batch size) steady their medians;
    # at least 15 rounds for the large ones, where a slow stretch of a shared machine lasts several calls
    rounds = {bs: repeats if args.quick else max(15, repeats * 32 // bs) for bs in batch_sizes}
    rows = (layer_rows(batch_sizes, 32, repeats, device) + model_rows(rounds, device)
            + mixture_rows(rounds, device, 2 if args.quick else 6))
    for row in rows:
        row["device"] = str(device)
    columns = ["level", "batch", "base_ms", "contraction_x", "reconstruction_x", "merged_x", "factored_x", "contract_x",
               "auto_x", "auto_forward_x", "auto_vs_classifier_x", "base_again_x",
               "base_bytes", "contraction_bytes", "reconstruction_bytes"]
    table = markdown_table(rows, columns)
    write_results("adapter_speed", {"rows": rows, "quick": args.quick, "device": str(device)}, table)
    return {"rows": rows}


if __name__ == "__main__":
    run_benchmark(main)
