"""Mixed-batch serving: samples/s of our bundle vs the frozen base alone, PEFT mixed-adapter LoRA and a naive loop.

A stream of mixed batches (the tasks' test rows in file order, interleaved task by task, default
batch 32, the experts' max_length, default 128) runs through:

- ``base``: the frozen base model alone (tokenise, forward, pool): the limit;
- ``bundle``: our mixture of experts as a user calls it (``MixtureOfExperts.predict``: routing
  pass on the base, router, adapted pass with each sample's own expert, answers); the router's
  feature cost is included;
- ``bundle, routing pass only`` and ``bundle, adapted pass only (task given)`` (``force_expert``):
  where the bundle's time goes;
- ``peft``: PEFT LoRA (r=16, alpha=8, the experts' target modules), one adapter per task added with
  ``add_adapter``, one forward per batch with ``adapter_names`` per sample (PEFT's mixed-batch
  inference), pooled, each sample's own head; the task is given (no router);
- ``naive``: each sample alone through its own adapted model (one ``SequenceClassifier`` with its
  expert's TT cores per task), one forward per sample; the task is given (no router);
- ``base model alone, one sample at a time``: the naive loop's own limit. One sample at a time
  pads nothing, so on a CPU it can beat a padded batch: the table's header gives the share of
  padding tokens in the stream's batches.

Without ``--bundle`` / ``--experts`` the experts have random (non-zero) TT cores and heads and the
router is untrained (it never abstains, so every sample takes the adapted pass); PEFT's LoRA weights
are random too (``init_lora_weights=False``). Speed does not depend on training. Every method is
timed in the same run, in rounds (one pass of the stream per method per round, after one warm-up
pass each), and the median pass is reported; ratios are to the base model of the same run.
``weights_mb`` is the memory the method's weights (parameters and buffers) take.

    python -m benchmarks.moe_throughput [--quick] [--bundle DIR | --experts DIR...] [--tasks ...]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import interleaved_medians, markdown_table, run_benchmark, write_results
from ttlora_moe.data.batching import tokenize
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import load_split
from ttlora_moe.experts.artifact import (
    expert_tensors,
    load_expert,
    read_expert_meta,
    save_expert,
)
from ttlora_moe.experts.base_model import (
    DEFAULT_BASE_MODEL,
    BaseModel,
    load_base_model,
    pool,
)
from ttlora_moe.experts.classifier import SequenceClassifier
from ttlora_moe.moe.features import FeatureSpec, feature_dim
from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts
from ttlora_moe.moe.router import Router, RouterConfig
from ttlora_moe.params import load_params, section
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora

DEFAULT_TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
COLUMNS = ["method", "samples_per_s", "ms_per_batch", "time_x_base", "weights_mb"]
Runner = Callable[[list[dict[str, Any]], torch.Tensor], Any]


# --- experts and data -----------------------------------------------------------------------------

def random_expert(directory: Path, base: BaseModel, task: str, tt: TTLoRAConfig, max_length: int, seed: int) -> Path:
    """Save an expert for ``task`` with random (non-zero, ``init=paper``) TT cores and head on ``base`` (modified)."""
    card = load_task_card(task)
    attach_tt_lora(base.model, tt, seed=seed)
    classifier = SequenceClassifier(base.model, len(card.label_names), base.pooling, "trainable", seed)
    meta = {"task": task, "kind": "ttlora", "label_names": card.label_names, "metric": card.metric,
            "base_model": {"ref": base.ref, "fingerprint": base.fingerprint, "model_type": base.model_type,
                           "hidden_size": base.hidden_size},
            "tt": tt.to_dict(), "max_length": max_length, "untrained": True}
    return save_expert(directory, classifier, meta)


def mixed_stream(tasks: list[str], total: int, params: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """``total`` test rows interleaved task by task (first rows of each test split) and each row's task position."""
    per_task = math.ceil(total / len(tasks))
    splits = [load_split(ensure_prepared(load_task_card(t), params), "test")[:per_task] for t in tasks]
    stream = [(split[i], e) for i in range(per_task) for e, split in enumerate(splits) if i < len(split)][:total]
    if len(stream) < total:
        print(f"warning: only {len(stream)} test rows for a stream of {total}", file=sys.stderr)
    return [row for row, _ in stream], [e for _, e in stream]


def stream_batches(tasks: list[str], batches: int, batch_size: int,
                   params: dict[str, Any]) -> list[tuple[list[dict[str, Any]], torch.Tensor]]:
    """The mixed stream cut into batches: (rows, each row's task position)."""
    rows, index = mixed_stream(tasks, batches * batch_size, params)
    return [(rows[i : i + batch_size], torch.tensor(index[i : i + batch_size])) for i in range(0, len(rows), batch_size)]


def padding_share(chunks: list[tuple[list[dict[str, Any]], torch.Tensor]], tokenizer: Any, max_length: int) -> float:
    """Share of pad tokens in the tokenised batches of the stream."""
    masks = [tokenize(tokenizer, rows, max_length)["attention_mask"] for rows, _ in chunks]
    return 1 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def weights_mb(*modules: nn.Module) -> float:
    """MB of the distinct parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / 2**20


# --- the methods ----------------------------------------------------------------------------------

def encoder_runner(model: nn.Module, base: BaseModel, max_length: int, adapters: list[str] | None = None,
                   heads: tuple[torch.Tensor, torch.Tensor] | None = None) -> Runner:
    """Tokenise, one forward, pool; ``adapters``: PEFT's per-sample ``adapter_names``; ``heads``: each sample's head."""
    device = next(model.parameters()).device

    def run(rows: list[dict[str, Any]], index: torch.Tensor) -> torch.Tensor:
        batch = tokenize(base.tokenizer, rows, max_length)
        mask = batch["attention_mask"].to(device)
        extra = {"adapter_names": [adapters[i] for i in index.tolist()]} if adapters else {}
        with torch.inference_mode():
            hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, **extra).last_hidden_state
            pooled = pool(hidden, mask, base.pooling).float()
            if heads is None:
                return pooled
            idx = index.to(device)
            return torch.einsum("bh,bch->bc", pooled, heads[0][idx]) + heads[1][idx]
    return run


def per_sample_runner(models: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], tokenizer: Any,
                      max_length: int, device: torch.device) -> Runner:
    """Each sample alone (no padding) through ``models[its task]``, called with ``(input_ids, attention_mask)``."""
    def run(rows: list[dict[str, Any]], index: torch.Tensor) -> list[torch.Tensor]:
        out = []
        with torch.inference_mode():
            for row, e in zip(rows, index.tolist()):
                batch = tokenize(tokenizer, [row], max_length)
                out.append(models[e](batch["input_ids"].to(device), batch["attention_mask"].to(device)))
        return out
    return run


def peft_model(base: BaseModel, tasks: list[str], tt: TTLoRAConfig) -> nn.Module:
    """``base.model`` with one random PEFT LoRA adapter (r=16, alpha=8) per task on the experts' target modules."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=tt.resolved_targets(base.model_type))
    model = get_peft_model(base.model, config, adapter_name=tasks[0])
    for task in tasks[1:]:
        model.add_adapter(task, config)
    return model.eval()


def random_moe(base: BaseModel, expert_dirs: list[Path], spec: FeatureSpec, router_kind: str,
               max_length: int) -> MixtureOfExperts:
    """A mixture of the experts in ``expert_dirs`` with an untrained router (threshold 0: it never abstains)."""
    metas = [read_expert_meta(d) for d in expert_dirs]
    infos = [ExpertInfo(m["task"], None, m["task"], list(m["label_names"]), m.get("metric", "accuracy")) for m in metas]
    torch.manual_seed(0)
    router = Router(feature_dim(spec, base), len(metas), router_kind)
    return MixtureOfExperts(base, infos, [expert_tensors(d) for d in expert_dirs], metas, router, spec, max_length)


def load_mixture(args: argparse.Namespace, params: dict[str, Any], workdir: Path,
                 device: torch.device) -> tuple[MixtureOfExperts, list[Path], str]:
    """The bundle's mixture (or ``--experts`` / random experts with an untrained router), its expert dirs, a label."""
    if args.bundle:
        from ttlora_moe.moe.bundle import load_bundle, load_moe

        bundle = load_bundle(args.bundle)
        recorded = bundle.manifest["base_model"]
        moe = load_moe(bundle, load_base_model(recorded["ref"], recorded.get("pooling")), device)
        return moe, [bundle.path / e["path"] for e in bundle.manifest["experts"]], f"bundle {args.bundle}"
    ref = args.base_model or section(params, "base_model").get("ref", DEFAULT_BASE_MODEL)
    pooling = section(params, "base_model").get("pooling")
    max_length = int(section(params, "train").get("max_length", 128))
    if args.experts:
        dirs, source = list(args.experts), "experts " + " ".join(map(str, args.experts)) + ", untrained router"
    else:
        tt = TTLoRAConfig.from_dict(section(params, "tt"))
        dirs = [random_expert(workdir / t, load_base_model(ref, pooling), t, tt, max_length, seed=i + 1)
                for i, t in enumerate(args.tasks)]
        source = "random experts, untrained router"
    first = read_expert_meta(dirs[0])
    router_config = RouterConfig.from_dict(section(params, "router"))
    spec = FeatureSpec.from_dict({"max_length": int(first.get("max_length", max_length)), **router_config.features})
    base = load_base_model(first["base_model"]["ref"], first.get("pooling"))
    base.model.to(device)
    return random_moe(base, dirs, spec, router_config.kind, spec.max_length).to(device), dirs, source


def build_methods(moe: MixtureOfExperts, dirs: list[Path],
                  device: torch.device) -> tuple[dict[str, Runner], dict[str, float]]:
    """Every method's runner and the MB its weights take; the competitors load their own copies of the base."""
    ref, pooling, max_length = moe.base.ref, moe.base.pooling, moe.max_length
    tasks = [e.task for e in moe.experts]
    plain = load_base_model(ref, pooling)
    plain.model.to(device).eval()
    peft_base = load_base_model(ref, pooling)
    peft = peft_model(peft_base, tasks, TTLoRAConfig.from_dict(read_expert_meta(dirs[0])["tt"])).to(device)
    experts = [load_expert(d, load_base_model(ref, pooling)).model.to(device) for d in dirs]

    def plain_forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = plain.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, pooling)

    def route_only(rows: list[dict[str, Any]], index: torch.Tensor) -> Any:
        return moe.route(moe.tokenize_rows(rows))

    moe_mb = weights_mb(moe.base.model, moe)
    methods: dict[str, tuple[Runner, float]] = {
        "base model alone": (encoder_runner(plain.model, plain, max_length), weights_mb(plain.model)),
        "bundle (routing + adapted pass)": (lambda rows, index: moe.predict(rows, batch_size=len(rows)), moe_mb),
        "bundle, routing pass only": (route_only, moe_mb),
        "bundle, adapted pass only (task given)": (
            lambda rows, index: moe.predict(rows, batch_size=len(rows), force_expert=index.tolist()), moe_mb),
        "peft mixed-adapter LoRA (task given)": (
            encoder_runner(peft, peft_base, max_length, tasks, (moe.head_weight, moe.head_bias)), weights_mb(peft)),
        "base model alone, one sample at a time": (
            per_sample_runner([plain_forward] * len(tasks), plain.tokenizer, max_length, device),
            weights_mb(plain.model)),
        "naive loop, one sample at a time (task given)": (
            per_sample_runner(experts, plain.tokenizer, max_length, device), weights_mb(*experts)),
    }
    return {k: v[0] for k, v in methods.items()}, {k: v[1] for k, v in methods.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches, 3 rounds")
    parser.add_argument("--tasks", nargs="*", default=None, help="tasks of the random experts (default: params tasks)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, default=None, help="a built bundle (its experts and trained router)")
    source.add_argument("--experts", nargs="*", type=Path, default=None, help="trained expert directories")
    parser.add_argument("--base-model", default=None, help="base model of the random experts (default: params.yaml)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=None, help="batches in the stream (default 8; quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="timed passes per method (default 5; quick 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    batches, rounds = args.batches or (2 if args.quick else 8), args.rounds or (3 if args.quick else 5)
    params = load_params()
    args.tasks = args.tasks or params.get("tasks") or DEFAULT_TASKS
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="moe-throughput-") as tmp:
        moe, dirs, source = load_mixture(args, params, Path(tmp), device)
        runners, weights = build_methods(moe, dirs, device)
    tasks, max_length = [e.task for e in moe.experts], moe.max_length
    chunks = stream_batches(tasks, batches, args.batch_size, params)
    samples = sum(len(r) for r, _ in chunks)
    padding = padding_share(chunks, moe.base.tokenizer, max_length)
    passes = {name: (lambda run=run: [run(r, x) for r, x in chunks]) for name, run in runners.items()}
    seconds = interleaved_medians(passes, rounds)
    results = [{"method": name, "seconds_per_pass": s, "samples_per_s": samples / s,
                "ms_per_batch": 1000 * s / len(chunks), "time_x_base": s / seconds["base model alone"],
                "weights_mb": weights[name]} for name, s in seconds.items()]
    table = (f"{samples} test rows of {', '.join(tasks)} interleaved, {len(chunks)} batches of {args.batch_size}, "
             f"max_length {max_length} ({padding:.0%} of the batches' tokens are padding), on {device}; {source}; "
             f"median of {rounds} passes after a warm-up pass.\n\n" + markdown_table(results, COLUMNS))
    payload = {"rows": results, "tasks": tasks, "batch_size": args.batch_size, "batches": len(chunks),
               "samples": samples, "max_length": max_length, "padding_share": padding, "rounds": rounds,
               "experts": source, "device": str(device), "quick": args.quick,
               "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    write_results("moe_throughput", payload, table)
    return payload


if __name__ == "__main__":
    run_benchmark(main)
