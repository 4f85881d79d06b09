"""Adapter cost: frozen base vs TT contraction vs dense reconstruction vs merged weights.

Two levels: one adapted linear layer (384 -> 384, the default base model's query) and the whole
default base model with query and value adapted, on SST-2 sentences, batch sizes 1..128. Forward
latency is the median of several rounds after warm-up, the four modes timed in turn within each
round (so they share the machine's drift); ratios are taken within one run. Memory is
the bytes the forward allocates beyond the frozen base (torch profiler), a proxy for peak memory
on CPU (on a GPU, the true peak from ``torch.cuda.max_memory_allocated``).

    python -m benchmarks.adapter_speed [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchmarks.common import interleaved_medians, markdown_table, write_results
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, load_base_model
from ttlora_moe.params import load_params, section
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora, tt_modules
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
    """Median milliseconds of ``call`` in each mode; one timed block of ``inner`` calls per mode per round."""
    def block(name: str) -> Callable[[], None]:
        def run() -> None:
            with mode(forwards, name):
                for _ in range(inner):
                    call()
        return run

    seconds = interleaved_medians({name: block(name) for name in MODES}, rounds, warmup=2)
    return {name: 1000 * s / inner for name, s in seconds.items()}


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


def layer_rows(batch_sizes: list[int], seq_len: int, repeats: int) -> list[dict]:
    """One 384 -> 384 linear, tokens = batch x seq_len."""
    rows = []
    factors = balanced_factors(384)
    layer = TTLoRALinear(nn.Linear(384, 384), factors, factors, rank=4, alpha=32.0).eval()
    for bs in batch_sizes:
        x = torch.randn(bs, seq_len, 384)
        row: dict[str, Any] = {"level": "layer", "batch": bs}
        with torch.inference_mode():
            forwards = {layer: mode_forwards(layer)}
            ms = timed_modes(forwards, lambda: layer(x), repeats, inner=20)  # one call is too short to time alone
            for name in MODES:
                row[f"{name}_ms"] = ms[name]
                with mode(forwards, name):
                    row[f"{name}_bytes"] = allocated_bytes(lambda: layer(x))
        rows.append(row)
    return rows


def model_rows(batch_sizes: list[int], repeats: int) -> list[dict]:
    """The configured base model (default all-MiniLM-L6-v2), q and v adapted, on SST-2 sentences."""
    from benchmarks.sst2_sentences import sst2_sentences

    params = load_params()
    base = load_base_model(section(params, "base_model").get("ref", DEFAULT_BASE_MODEL))
    attach_tt_lora(base.model, TTLoRAConfig.from_dict(section(params, "tt")))
    sentences = sst2_sentences(max(batch_sizes))
    rows = []
    for bs in batch_sizes:
        enc = base.tokenizer(sentences[:bs], padding=True, return_tensors="pt")
        row: dict[str, Any] = {"level": "model", "batch": bs, "tokens": int(enc["input_ids"].shape[1])}
        with torch.inference_mode():
            forwards = {layer: mode_forwards(layer) for layer in tt_modules(base.model).values()}
            ms = timed_modes(forwards, lambda: base.model(**enc), repeats)
            for name in MODES:
                row[f"{name}_ms"] = ms[name]
                with mode(forwards, name):
                    row[f"{name}_bytes"] = allocated_bytes(lambda: base.model(**enc))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats")
    args = parser.parse_args(argv)
    batch_sizes = [1, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    repeats = 3 if args.quick else 9
    rows = layer_rows(batch_sizes, 32, repeats) + model_rows(batch_sizes, repeats)
    for row in rows:
        for name in MODES[1:]:
            row[f"{name}_x"] = row[f"{name}_ms"] / row["base_ms"]
    columns = ["level", "batch", "base_ms", "contraction_x", "reconstruction_x", "merged_x",
               "base_bytes", "contraction_bytes", "reconstruction_bytes"]
    table = markdown_table(rows, columns)
    write_results("adapter_speed", {"rows": rows, "quick": args.quick}, table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
