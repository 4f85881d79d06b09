"""Single-pass routing: a bundle whose router reads block k's states runs at nearly the base model's speed.

Two-pass routing (the default) runs the whole frozen base once for the router's features, then the
adapted base again, so the bundle is at most about half as fast as the base model alone. With
``router.route_after_layer = k`` and experts trained with ``tt.layers_from = k`` one forward does
both (:mod:`ttlora_moe.moe.single_pass`). This benchmark measures what that costs and buys, in one run:

- for ``two-pass`` (experts adapt every layer, router on every hidden state) and ``single-pass k``
  for each ``--ks`` value: train one expert per task (``train_expert``, the same budget for all,
  ``tt.layers_from = k``), build a bundle (same router budget), evaluate it on the mixed test sets
  (``ttlora_moe.moe.evaluate``: router accuracy and mixed accuracy, i.e. task and label both right);
  experts are kept in ``outputs/single_pass/{quick,full}/<budget>/<setting>/ttlora/<task>`` and reused
  by a re-run with the same budget and data (:mod:`benchmarks.bench_experts`), so a long run can be
  stopped and continued, or extended by another ``k``; ``--default-budget`` trains with params.yaml's
  ``train`` section unchanged (12,000 x 2 epochs);
- throughput: a stream of mixed batches (the tasks' test rows interleaved) through each bundle as a
  user calls it (``MixtureOfExperts.predict``: tokenise, route, adapt, answer) and through the base
  model alone (tokenise, forward, pool), in interleaved rounds after a warm-up round; the median
  pass per method; ``x_base`` = samples/s divided by the base model's in the same run.

    python -m benchmarks.single_pass [--quick] [--tasks ...] [--ks 2 3] [--samples N] [--epochs N]
        [--default-budget] [--experts-dir DIR] [--results NAME] [--test-per-task N] [--router-rows N] [--batches N] [--batch-size N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_experts import bench_expert
from benchmarks.common import interleaved_medians, kept_models_dir, markdown_table, run_benchmark, write_results
from ttlora_moe.data.batching import tokenize
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import load_split
from ttlora_moe.experts.artifact import read_expert_meta
from ttlora_moe.experts.base_model import BaseModel, load_base_model, pool
from ttlora_moe.experts.training import TrainConfig
from ttlora_moe.moe.build import build_bundle
from ttlora_moe.moe.bundle import load_moe
from ttlora_moe.moe.evaluate import evaluate_bundle
from ttlora_moe.moe.feature_cache import sample_indices
from ttlora_moe.params import load_params, section

TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
QUICK_TASKS = ["rte", "sst2"]
COLUMNS = ["setting", "layers_from", "router_accuracy", "mixed_accuracy", "mixed_vs_two_pass_points",
           "expert_accuracy", "samples_per_s", "ms_per_batch", "x_base"]


@dataclass(frozen=True)
class Setting:
    """One way to serve: where the router reads and which layers the experts adapt."""

    name: str
    layers_from: int
    route_after_layer: int | None


def settings(ks: list[int]) -> list[Setting]:
    """The two-pass baseline, then single-pass after block ``k`` for each ``k``."""
    return [Setting("two-pass", 0, None)] + [Setting(f"single-pass k={k}", k, k) for k in ks]


# --- quality --------------------------------------------------------------------------------------

def train_experts(setting: Setting, tasks: list[str], params: dict[str, Any], budget: dict[str, Any],
                  root: Path) -> list[Path]:
    """One expert per task with ``tt.layers_from`` of the setting, in ``root`` (reused when already trained there)."""
    dirs = []
    for task in tasks:
        out = bench_expert(task, "ttlora", root, params, budget, {"layers_from": setting.layers_from})
        meta = read_expert_meta(out)
        print(json.dumps({"setting": setting.name, "task": task, "metric": meta["metric"],
                          "test": meta["metrics"]["test"].get(meta["metric"]),
                          "train_seconds": meta["train_seconds"]}), file=sys.stderr, flush=True)
        dirs.append(out)
    return dirs


def bundle_and_evaluate(setting: Setting, dirs: list[Path], params: dict[str, Any], router: dict[str, Any],
                        evaluation: dict[str, Any], root: Path) -> dict[str, Any]:
    """Build the setting's bundle and evaluate it on the mixed test sets; one result row (no speed yet)."""
    built = build_bundle(dirs, root / "bundle", params=params, router={**router, "route_after_layer": setting.route_after_layer},
                         progress=False)
    report = evaluate_bundle(root / "bundle", params=params, bundle=evaluation, output=root / "evaluation",
                             record=False, progress=False)
    per_task = report["per_task"].values()
    return {"setting": setting.name, "layers_from": setting.layers_from, "routing": built["routing"],
            "bundle": str(root / "bundle"), "router_accuracy": report["router_accuracy"],
            "router_balanced_accuracy": report["router_balanced_accuracy"],
            "router_validation_accuracy": built["router_validation_balanced_accuracy"],
            "mixed_accuracy": report["mixed_accuracy"], "abstain_in_scope": report["abstain_in_scope"],
            "expert_accuracy": statistics.mean(v["expert_alone"]["accuracy"] for v in per_task),
            "per_task": {t: {k: v[k] for k in ("router_accuracy", "bundle_metric", "expert_metric")}
                         for t, v in report["per_task"].items()},
            "build_seconds": built["seconds"]["total"], "evaluate_seconds": report["seconds"]["total"]}


# --- speed ----------------------------------------------------------------------------------------

def mixed_batches(tasks: list[str], batches: int, batch_size: int, params: dict[str, Any],
                  seed: int = 1) -> list[list[dict[str, Any]]]:
    """``batches`` batches of test rows, the tasks interleaved row by row (seeded sample of each test split)."""
    per_task = -(-batches * batch_size // len(tasks))
    splits = []
    for task in tasks:
        test = load_split(ensure_prepared(load_task_card(task), params), "test")
        splits.append([test[i] for i in sample_indices(len(test), per_task, seed)])
    stream = [split[i] for i in range(per_task) for split in splits if i < len(split)][: batches * batch_size]
    return [stream[i : i + batch_size] for i in range(0, len(stream), batch_size)]


def base_runner(base: BaseModel, max_length: int) -> Callable[[list[dict[str, Any]]], torch.Tensor]:
    """The limit: tokenise, one forward of the frozen base, pool."""
    def run(rows: list[dict[str, Any]]) -> torch.Tensor:
        batch = tokenize(base.tokenizer, rows, max_length)
        with torch.inference_mode():
            hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            return pool(hidden, batch["attention_mask"], base.pooling)
    return run


def speed_rows(rows: list[dict[str, Any]], tasks: list[str], params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Add samples/s and ``x_base`` to every row; return the base model's own row."""
    max_length = int(section(params, "train").get("max_length", 128))
    base = load_base_model(section(params, "base_model")["ref"], section(params, "base_model").get("pooling"))
    runners: dict[str, Callable[[list[dict[str, Any]]], Any]] = {"base": base_runner(base, max_length)}
    for row in rows:
        moe = load_moe(Path(row["bundle"]))
        runners[row["setting"]] = lambda batch, moe=moe: moe.predict(batch, batch_size=len(batch))
    stream = mixed_batches(tasks, args.batches, args.batch_size, params)
    samples = sum(len(b) for b in stream)
    passes = {name: (lambda run=run: [run(rows) for rows in stream]) for name, run in runners.items()}
    seconds = interleaved_medians(passes, args.repeats)  # one warm-up pass each, then interleaved rounds
    base_row = {"setting": "base", "routing": None}
    for row in [base_row, *rows]:
        s = seconds[row["setting"]]
        row.update(samples_per_s=samples / s, ms_per_batch=1000 * s / len(stream), x_base=seconds["base"] / s)
    return base_row


# --- main -----------------------------------------------------------------------------------------

def budgets(args: argparse.Namespace, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(expert ``train`` overrides, router config, evaluation ``bundle`` params) from the flags."""
    train = {} if args.default_budget else {"max_train_samples": args.samples, "epochs": args.epochs,
                                            "max_eval_samples": args.eval_samples, "evals_per_epoch": 1}
    router = {**section(params, "router"), "train_per_task": args.router_rows,
              "unlabelled_per_task": args.router_unlabelled}
    evaluation = {**section(params, "bundle"), "test_per_task": args.test_per_task,
                  "out_of_scope_rows": args.out_of_scope_rows}
    return train, router, evaluation


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tasks {' '.join(QUICK_TASKS)}, k 2, tiny budgets (flags given still win)")
    parser.add_argument("--tasks", nargs="*", default=None, help=f"default {' '.join(TASKS)}")
    parser.add_argument("--ks", nargs="*", type=int, default=None, help="route_after_layer values (default 2 3; quick 2)")
    parser.add_argument("--samples", type=int, default=None, help="training rows per expert (default 1000; quick 200)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--default-budget", action="store_true",
                        help="experts on params.yaml's train section unchanged (ignores --samples, --epochs, --eval-samples)")
    parser.add_argument("--experts-dir", type=Path, default=None,
                        help="keep / reuse experts here (default outputs/single_pass/{quick,full})")
    parser.add_argument("--results", default="single_pass",
                        help="name of the results/<name>.{md,json} to write (default single_pass)")
    parser.add_argument("--eval-samples", type=int, default=None, help="validation rows per expert (default 300; quick 100)")
    parser.add_argument("--router-rows", type=int, default=None, help="router training rows per task (default params; quick 300)")
    parser.add_argument("--router-unlabelled", type=int, default=None,
                        help="unlabelled router inputs per task (default params; quick 0)")
    parser.add_argument("--test-per-task", type=int, default=None, help="evaluation rows per task (default 300; quick 100)")
    parser.add_argument("--out-of-scope-rows", type=int, default=None, help="default 100; quick 0")
    parser.add_argument("--batches", type=int, default=None, help="mixed batches per timed pass (default 12; quick 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    args = parser.parse_args(argv)
    router = section(load_params(), "router")
    defaults = {"tasks": TASKS, "ks": [2, 3], "samples": 1000, "eval_samples": 300, "test_per_task": 300,
                "out_of_scope_rows": 100, "batches": 12, "repeats": 5, "router_rows": router.get("train_per_task", 2000),
                "router_unlabelled": router.get("unlabelled_per_task", 1000)}
    if args.quick:
        defaults.update(tasks=QUICK_TASKS, ks=[2], samples=200, eval_samples=100, test_per_task=100, out_of_scope_rows=0,
                        batches=3, repeats=2, router_rows=300, router_unlabelled=0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    params = load_params()
    train, router, evaluation = budgets(args, params)
    full = TrainConfig.from_dict({**section(params, "train"), **train})
    experts_dir = (args.experts_dir or kept_models_dir("single_pass", args.quick)) / f"{full.max_train_samples}x{full.epochs}"
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings(args.ks):
            slug = setting.name.replace(" ", "-").replace("=", "")
            root = Path(tmp) / slug
            t0 = time.perf_counter()
            dirs = train_experts(setting, args.tasks, params, train, experts_dir / slug)
            row = bundle_and_evaluate(setting, dirs, params, router, evaluation, root)
            row["train_seconds"] = sum(read_expert_meta(d)["train_seconds"] for d in dirs)
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_task"}), file=sys.stderr, flush=True)
        base_row = speed_rows(rows, args.tasks, params, args)
    two_pass = rows[0]["mixed_accuracy"]
    for row in rows:
        row["mixed_vs_two_pass_points"] = 100 * (row["mixed_accuracy"] - two_pass)
        row.pop("bundle")
    rows.insert(0, base_row)
    budget = {"train": {k: getattr(full, k) for k in ("max_train_samples", "epochs", "max_eval_samples", "evals_per_epoch")},
              "router": {k: router[k] for k in ("train_per_task", "unlabelled_per_task")},
              "test_per_task": args.test_per_task, "stream": {"batches": args.batches, "batch_size": args.batch_size,
                                                              "repeats": args.repeats}}
    seconds = round(time.perf_counter() - start, 1)
    table = markdown_table(rows, COLUMNS) + (
        f"\n\nTasks {', '.join(args.tasks)}; experts: {full.max_train_samples} training rows x {full.epochs} "
        f"epoch(s); router: {router['train_per_task']} rows per task (+{router['unlabelled_per_task']} unlabelled); "
        f"evaluation: {args.test_per_task} test rows per task; speed: {args.batches} mixed batches of "
        f"{args.batch_size}, median of {args.repeats} rounds; run took {seconds:.0f} s.")
    write_results(args.results, {"rows": rows, "tasks": args.tasks, "ks": args.ks, "budget": budget,
                                  "seconds": seconds}, table)
    return {"rows": rows}


if __name__ == "__main__":
    run_benchmark(main)
