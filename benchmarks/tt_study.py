"""Where TT-LoRA loses to LoRA: one task, one budget, one change at a time (rank, alpha, lr schedule, target modules).

Every row is a TT-LoRA expert trained by ``train_expert`` on the same seeded rows as ``peft_quality``
(its budget: 2,000 x 1 epoch, 500 validation rows, whole test split), changing one setting of
params.yaml's ``tt``/``train`` sections; the last row is PEFT LoRA r=16 on the query/value layers,
the paper's baseline. Target-module rows keep about the adapter budget of the default (q,v at rank
4: 6,144 parameters) by lowering the rank. The default and LoRA rows are ``peft_quality``'s own
models when it ran first with the same budget (kept in ``outputs/bench_experts/full``); the other
variants are kept under ``tt_study/<variant>`` there and reused by a re-run.

    python -m benchmarks.tt_study [--task qqp] [--variants default rank-8 ...] [--samples N] [--epochs N] [--quick]
        [--seed N] [--profile NAME] [--results NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.adapters_baselines import driver
from benchmarks.bench_experts import bench_expert, default_experts_dir
from benchmarks.common import markdown_table, run_benchmark, write_results
from benchmarks.peft_quality import seed_folder
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import read_expert_meta
from ttlora_moe.params import load_params, section

LORA_QV_PARAMS = 147_456  # LoRA r=16 on all-MiniLM-L6-v2's query and value layers (6 layers x 2 x 16 x (384 + 384))
# name -> (what changes, tt overrides, train overrides, adapter)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "default": ("params.yaml: q,v, rank 4, alpha 32, lr 1e-2, 6% warm-up then linear decay", {}, {}, "ttlora"),
    "rank-2": ("rank 2", {"rank": 2}, {}, "ttlora"),
    "rank-8": ("rank 8", {"rank": 8}, {}, "ttlora"),
    "alpha-16": ("alpha 16 (the paper's)", {"alpha": 16.0}, {}, "ttlora"),
    "alpha-64": ("alpha 64", {"alpha": 64.0}, {}, "ttlora"),
    "lr-5e-3": ("lr 5e-3 (the paper's)", {}, {"lr": 5e-3}, "ttlora"),
    "lr-2e-2": ("lr 2e-2", {}, {"lr": 2e-2}, "ttlora"),
    "warmup-0.3": ("30% warm-up", {}, {"warmup_ratio": 0.3}, "ttlora"),
    "qkvo-r3": ("query, key, value and attention output, rank 3", {"rank": 3, "target_modules": [
        "query", "key", "value", "attention.output.dense"]}, {}, "ttlora"),
    "qv-ffn-r3": ("query, value and the FFN's input layer, rank 3",
                  {"rank": 3, "target_modules": ["query", "value", "intermediate.dense"]}, {}, "ttlora"),
    "lora": ("PEFT LoRA r=16, alpha 8 on query and value (the paper's baseline), at TT-LoRA's lr 1e-2", {}, {}, "lora"),
    "lora-lr-5e-4": ("PEFT LoRA r=16, alpha 8 on query and value at the paper's LoRA lr 5e-4", {}, {"lr": 5e-4}, "lora"),
    "head-only": ("head-only: the frozen base and a trained head (the floor)", {}, {}, "head-only"),
}
QUICK_VARIANTS = ["default", "rank-2", "qv-ffn-r3", "lora"]
COLUMNS = ["variant", "change", "trainable_params", "pct_of_lora_qv", "metric", "test_metric", "delta_vs_default",
           "validation_metric", "train_samples_per_s"]


def run_variant(name: str, task: str, params: dict[str, Any], budget: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train (or reuse) the ``name`` variant of ``task``'s expert; its row of the table."""
    change, tt, train, adapter = VARIANTS[name]
    # a variant without overrides is exactly peft_quality's expert of that method: share its folder
    place = folder if not tt and not train else folder / "tt_study" / name
    meta = read_expert_meta(bench_expert(task, adapter, place, params, {**budget, **train}, tt))
    test, validation = meta["metrics"]["test"], meta["metrics"].get("validation", {})
    metric = meta["metric"]
    row = {"variant": name, "change": change, "trainable_params": meta["trainable_params"],
           "pct_of_lora_qv": 100 * meta["trainable_params"] / LORA_QV_PARAMS, "metric": metric,
           "test_metric": test.get(metric, test["accuracy"]), "validation_metric": validation.get(metric),
           "train_samples_per_s": meta["train_samples_per_second"]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="qqp", help="the task (default qqp: where LoRA leads most)")
    parser.add_argument("--variants", nargs="+", default=None, help=f"a subset of {', '.join(VARIANTS)} (default all)")
    parser.add_argument("--samples", type=int, default=None, help="training examples (default peft_quality's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default peft_quality's)")
    parser.add_argument("--quick", action="store_true", help=f"variants {' '.join(QUICK_VARIANTS)}, quick budget")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the training rows and initialisation (default params.yaml train.seed; "
                             "another seed keeps its experts in a seed-N folder, as peft_quality --seeds)")
    parser.add_argument("--profile", default=None,
                        help="a params.yaml profile under the variants (two-pass: adapters in every block)")
    parser.add_argument("--results", default="tt_study",
                        help="name of the results/<name>.{md,json} to write (default tt_study)")
    args = parser.parse_args(argv)
    names = args.variants or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise BadInput(f"unknown variant(s) {', '.join(unknown)}", f"choose from {', '.join(VARIANTS)}")
    params = load_params(profile=args.profile)
    budget = driver.expert_budget(args.quick, args.samples, args.epochs)
    default_seed = int(section(params, "train").get("seed", 0))
    seed = default_seed if args.seed is None else args.seed
    budget["seed"] = seed
    folder = seed_folder(default_experts_dir(args.quick), seed, default_seed)
    rows = [run_variant(name, args.task, params, budget, folder) for name in names]
    default = next((r["test_metric"] for r in rows if r["variant"] == "default"), None)
    for row in rows:
        row["delta_vs_default"] = None if default is None else row["test_metric"] - default
    table = (f"Task {args.task}, seed {seed}, {budget['max_train_samples']} training rows x {budget['epochs']} epoch(s), "
             f"{budget['max_eval_samples']} validation rows, whole test split; one change per row.\n\n"
             + markdown_table(rows, COLUMNS))
    write_results(args.results, {"task": args.task, "budget": budget, "rows": rows}, table)
    return {"rows": rows}


if __name__ == "__main__":
    run_benchmark(main)
