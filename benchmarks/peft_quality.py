"""Quality vs peers on one base model, the same prepared data and the same budget.

For each task: our TT-LoRA expert, PEFT LoRA (r=16, alpha=8, same target modules: the paper's
baseline), a head-only classifier on the frozen base (all three via ``train_expert``), and Pfeiffer
bottleneck adapters (`seq_bn`) from the `adapters` library with its default head, trained by
`benchmarks/adapters_baselines/train.py` in `.venv-adapters` (created on first use; if it cannot be
installed, the Pfeiffer rows are left out and the reason is printed and recorded). Every method
gets the same budget: the same seeded training rows, epochs, batch size, validation rows and
schedule (params.yaml `train` with `--samples`/`--epochs`); Pfeiffer's learning rate is 1e-3
(`driver.PFEIFFER_LR`: the paper's 1e-4 is meant for many epochs and left them under-trained here).

Reports the task metric on the whole test split, trainable parameters of the adapter (the head is
counted apart: ours is one linear layer on the mean-pooled state, Pfeiffer's the library's 2-layer
head on the CLS token) and training samples per second (wall clock of the training loop including
its validation passes).

``--seeds 0 1 2`` repeats every method with each seed (the seed of the sampled training and
validation rows, their order, the initialisation and dropout) and adds a table of the mean and
standard deviation per task and method, with TT-LoRA minus LoRA.

Every trained model is kept and reused by a re-run with the same budget: our experts and the PEFT
peers in `outputs/bench_experts/{quick,full}` (`--experts-dir`), the Pfeiffer adapters in
`outputs/adapters_baselines/{quick,full}` (`--adapters-dir`); a seed other than params.yaml's in a
`seed-N` folder below them. `fusion_vs_moe`, run after this under `make bench`, builds our bundle
from the TT-LoRA experts of params.yaml's seed and AdapterFusion over those adapters.

    python -m benchmarks.peft_quality [--quick] [--tasks mnli cola ...] [--samples N] [--epochs N] [--seeds N ...]
        [--no-pfeiffer]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.adapters_baselines import driver
from benchmarks.bench_experts import bench_expert, default_experts_dir
from benchmarks.common import markdown_table, run_benchmark, write_results
from ttlora_moe.experts.artifact import read_expert_meta
from ttlora_moe.params import load_params, section

METHODS = ["ttlora", "lora", "head-only"]
COLUMNS = ["task", "method", "seed", "metric", "test_metric", "test_accuracy", "trainable_params", "head_params",
           "train_samples_per_s"]
SUMMARY_COLUMNS = ["task", "metric", "method", "seeds", "mean", "std", "min", "max", "ttlora_minus_lora"]


def seed_folder(folder: Path, seed: int, default_seed: int) -> Path:
    """Where ``seed``'s models are kept: ``folder`` for params.yaml's seed (what fusion_vs_moe reuses), else ``folder/seed-N``."""
    return folder if seed == default_seed else folder / f"seed-{seed}"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, standard deviation and range of the test metric per (task, method) over seeds; TT-LoRA's mean minus LoRA's."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    means = {key: statistics.fmean(r["test_metric"] for r in group) for key, group in groups.items()}
    out = []
    for (task, method), group in groups.items():
        values = [r["test_metric"] for r in group]
        gap = None
        if method == "ttlora" and (task, "lora") in means:
            gap = means[(task, "ttlora")] - means[(task, "lora")]
        out.append({"task": task, "metric": group[0]["metric"], "method": method, "seeds": len(values),
                    "mean": means[(task, method)], "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values), "ttlora_minus_lora": gap})
    return out


def expert_rows(task: str, params: dict[str, Any], budget: dict[str, Any], experts_dir: Path) -> list[dict[str, Any]]:
    """One row per ``train_expert`` method for ``task`` (experts kept in, and reused from, ``experts_dir``)."""
    rows = []
    for method in METHODS:
        meta = read_expert_meta(bench_expert(task, method, experts_dir, params, budget))
        test = meta["metrics"]["test"]
        rows.append({"task": task, "method": method, "seed": meta["train"]["seed"], "metric": meta["metric"],
                     "test_metric": test.get(meta["metric"], test["accuracy"]), "test_accuracy": test["accuracy"],
                     "trainable_params": meta["trainable_params"], "head_params": meta["head_params"],
                     "train_samples_per_s": meta["train_samples_per_second"], "train_seconds": meta["train_seconds"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def pfeiffer_rows(tasks: list[str], params: dict[str, Any], budget: dict[str, Any], adapters_dir: Path,
                  tmp: Path) -> tuple[list[dict[str, Any]], str | None]:
    """One row per task from the `adapters` library's Pfeiffer stage, or none and why the library is missing."""
    try:
        python = driver.adapters_python()
    except (subprocess.CalledProcessError, OSError) as exc:
        reason = f".venv-adapters could not be created ({exc}): no Pfeiffer rows"
        print(f"warning: {reason}", file=sys.stderr)
        return [], reason
    result = driver.run_train(python, tasks, stage="pfeiffer", params=params, overrides=budget,
                              adapters_dir=adapters_dir, out=tmp / "pfeiffer.json")
    return [{"task": r["task"], "method": "pfeiffer", "seed": budget.get("seed"), "metric": r["metric"], "test_metric": r["test_metric"],
             "test_accuracy": r["test_accuracy"], "trainable_params": r["adapter_params"],
             "head_params": r["head_params"], "train_samples_per_s": r["train_samples_per_s"],
             "train_seconds": r["train_seconds"]} for r in result["pfeiffer"]], None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tasks {' '.join(driver.QUICK_TASKS)}, budget {driver.QUICK_BUDGET}")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=None, help=f"training examples per task (default {driver.FULL_BUDGET['max_train_samples']}; quick {driver.QUICK_BUDGET['max_train_samples']})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs (default {driver.FULL_BUDGET['epochs']}; quick {driver.QUICK_BUDGET['epochs']})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="repeat every method with each of these seeds (default: params.yaml train.seed)")
    parser.add_argument("--no-pfeiffer", action="store_true", help="leave the `adapters`-library Pfeiffer rows out")
    parser.add_argument("--adapters-dir", type=Path, default=None,
                        help="keep / reuse the Pfeiffer adapters here (default outputs/adapters_baselines/{quick,full})")
    parser.add_argument("--experts-dir", type=Path, default=None,
                        help="keep / reuse our experts and the PEFT peers here (default outputs/bench_experts/{quick,full})")
    args = parser.parse_args(argv)
    tasks = args.tasks or (driver.QUICK_TASKS if args.quick else driver.TASKS)
    params = load_params()
    default_seed = int(section(params, "train").get("seed", 0))
    seeds = args.seeds or [default_seed]
    experts_dir = args.experts_dir or default_experts_dir(args.quick)
    adapters_dir = args.adapters_dir or driver.default_adapters_dir(args.quick)
    rows: list[dict[str, Any]] = []
    pfeiffer_skipped = "--no-pfeiffer" if args.no_pfeiffer else None
    for seed in seeds:  # seed by seed, writing the results after each: a stopped run keeps its finished seeds
        budget = {**driver.expert_budget(args.quick, args.samples, args.epochs), "seed": seed}
        with tempfile.TemporaryDirectory() as tmp:
            for task in tasks:
                rows += expert_rows(task, params, budget, seed_folder(experts_dir, seed, default_seed))
            if not args.no_pfeiffer:
                pf, pfeiffer_skipped = pfeiffer_rows(tasks, params, budget, seed_folder(adapters_dir, seed, default_seed),
                                                     Path(tmp))
                rows += pf
        spread = write(rows, tasks, seeds, budget, pfeiffer_skipped)
    return {"rows": rows, "summary": spread}


def write(rows: list[dict[str, Any]], tasks: list[str], seeds: list[int], budget: dict[str, Any],
          pfeiffer_skipped: str | None) -> list[dict[str, Any]]:
    """Write the results so far: every run, then (with more than one seed) the mean and spread per task and
    method; return that summary."""
    rows = sorted(rows, key=lambda r: (tasks.index(r["task"]), r["seed"]))  # stable: methods stay in order
    done = sorted({r["seed"] for r in rows})
    spread = summary(rows)
    table = markdown_table(rows, COLUMNS)
    if len(seeds) > 1:
        table = (f"Seeds {', '.join(map(str, done))} of {', '.join(map(str, seeds))}: test metric over seeds.\n\n"
                 + markdown_table(spread, SUMMARY_COLUMNS) + "\n\nEvery run:\n\n" + table)
    if pfeiffer_skipped:
        table += f"\n\nPfeiffer rows left out: {pfeiffer_skipped}."
    budget = {k: v for k, v in budget.items() if k != "seed"}
    write_results("peft_quality", {"rows": rows, "summary": spread, "budget": budget, "seeds": done,
                                   "tasks": tasks, "pfeiffer_skipped": pfeiffer_skipped}, table)
    return spread


if __name__ == "__main__":
    run_benchmark(main)
