"""The SST-2 sweep that chose the default expert budget and hyperparameters for all-MiniLM-L6-v2.

Short runs (4,000 examples, 1 epoch) compare the paper's settings with other learning rates,
alphas, ranks and initialisations; then the chosen setting and the head-only baseline run at the
default budget of params.yaml. Every run is ``train_expert`` as the CLI calls it.

    python -m benchmarks.sst2_sweep [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import markdown_table, run_benchmark, write_results
from ttlora_moe.experts.job import train_expert
from ttlora_moe.params import load_params, section

PAPER = {"tt": {"rank": 5, "alpha": 16.0}, "train": {"lr": 5e-3}}
SHORT = {"max_train_samples": 4000, "epochs": 1}
SWEEP = [
    ("head-only", {}, {}, True),
    ("paper: r5 a16 lr5e-3", {}, {}, False),
    ("lr 2e-2", {}, {"lr": 2e-2}, False),
    ("lr 1e-3", {}, {"lr": 1e-3}, False),
    ("alpha 4", {"alpha": 4.0}, {}, False),
    ("alpha 64", {"alpha": 64.0}, {}, False),
    ("rank 4", {"rank": 4}, {}, False),
    ("zero init", {"init": "zero"}, {}, False),
    ("r4 a32 lr1e-2", {"rank": 4, "alpha": 32.0}, {"lr": 1e-2}, False),
]


def run(name: str, tt: dict, train: dict, head_only: bool, budget: dict, workdir: Path) -> dict:
    params = load_params()
    summary = train_expert("sst2", workdir / name.replace(" ", "_").replace(":", ""), params=params,
                           overrides={**train, **budget}, tt_overrides=tt,
                           adapter="head-only" if head_only else "ttlora", progress=False)
    row = {"run": name, "samples": budget.get("max_train_samples", section(params, "train").get("max_train_samples")),
           "epochs": budget.get("epochs", section(params, "train").get("epochs")),
           "test_accuracy": summary["test_accuracy"], "validation_accuracy": summary["validation_accuracy"],
           "tt_params": summary["trainable_params"], "lora_r16_params": summary["lora_r16_params"],
           "train_seconds": summary["train_seconds"]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two default-budget runs, at 1,000 examples")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick:
            # The short runs start from the paper's settings and change one thing at a time.
            for name, tt, train, head_only in SWEEP:
                rows.append(run(name, {**PAPER["tt"], **tt}, {**PAPER["train"], **train}, head_only, SHORT, Path(tmp)))
        budget = {"max_train_samples": 1000, "epochs": 1} if args.quick else {}
        rows.append(run("default (params.yaml)", {}, {}, False, budget, Path(tmp)))
        rows.append(run("head-only (params.yaml budget)", {}, {}, True, budget, Path(tmp)))
    columns = ["run", "samples", "epochs", "test_accuracy", "validation_accuracy", "tt_params", "lora_r16_params",
               "train_seconds"]
    table = markdown_table(rows, columns)
    write_results("sst2_sweep", {"rows": rows, "quick": args.quick}, table)
    return {"rows": rows}


if __name__ == "__main__":
    run_benchmark(main)
