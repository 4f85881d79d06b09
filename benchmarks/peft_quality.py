"""Quality vs peers on one base model, the same prepared data and the same budget.

For each task: our TT-LoRA expert, PEFT LoRA (r=16, alpha=8, same target modules: the paper's
baseline) and a head-only classifier on the frozen base. Reports the task metric, trainable
parameters (adapter only; the head is the same for all three) and training samples per second
(wall clock of the training loop including its validation passes). Every run is ``train_expert``.

    python -m benchmarks.peft_quality [--quick] [--tasks mnli cola ...] [--samples N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import markdown_table, write_results
from ttlora_moe.params import load_params
from ttlora_moe.tasks import load_task_card
from ttlora_moe.train_expert import train_expert

TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
METHODS = ["ttlora", "lora", "head-only"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tasks, 300 examples")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=4000, help="training examples per task")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    tasks = args.tasks or (["rte", "sst2"] if args.quick else TASKS)
    budget = {"max_train_samples": 300 if args.quick else args.samples, "epochs": 1 if args.quick else args.epochs}
    params = load_params()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            metric = load_task_card(task).metric
            for method in METHODS:
                s = train_expert(task, Path(tmp) / f"{task}-{method}", params=params, overrides=budget,
                                 adapter=method, progress=False)
                row = {"task": task, "method": method, "metric": metric,
                       "test_metric": s["test_metrics"].get(metric, s["test_accuracy"]),
                       "test_accuracy": s["test_accuracy"], "trainable_params": s["trainable_params"],
                       "train_samples_per_s": s["train_samples_per_second"], "train_seconds": s["train_seconds"]}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    columns = ["task", "method", "metric", "test_metric", "test_accuracy", "trainable_params", "train_samples_per_s"]
    table = markdown_table(rows, columns)
    write_results("peft_quality", {"rows": rows, "budget": budget, "tasks": tasks}, table)
    return {"rows": rows}


if __name__ == "__main__":
    main()
