"""Multi-task vs AdapterFusion: the `adapters`-library baselines beside our bundle on one mixed test set.

Trains, in the separate `.venv-adapters` (transformers 4.57 + adapters 1.3.0, created on first use by
`benchmarks/adapters_env.sh`), one Pfeiffer bottleneck adapter (`seq_bn`) + default head per task and
an AdapterFusion (`Fuse` over them, one shared 3-class head, the paper's mixed mode) on a
task-balanced mix, on the same base model, prepared data and budget as our experts (see
`benchmarks/adapters_baselines/train.py` for every setting). The per-task adapters are the ones
`peft_quality` trained when they are in `--adapters-dir` with the same budget (`make bench` runs
`peft_quality` first); otherwise they are trained here. Then puts our bundle's evaluation
(`--bundle-eval`, default `outputs/bundle/evaluation.json` when present) beside AdapterFusion.

The **mixed test set** is, for each task, the first min(test rows, `--test-cap`) rows of
`data/prepared/<task>/test.parquet` in file order (default cap 500): the bundle evaluation must use
the same rows for the two mixed accuracies to be comparable.

    python -m benchmarks.fusion_vs_moe [--quick] [--tasks ...] [--bundle-eval PATH] [--baseline-json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.adapters_baselines import driver
from benchmarks.common import markdown_table, write_results

DEFAULT_BUNDLE_EVAL = driver.ROOT / "outputs" / "bundle" / "evaluation.json"
FUSION_FLAGS = ("fusion_samples", "fusion_epochs", "fusion_lr", "fusion_batch_size", "test_cap")


def run_baselines(args: argparse.Namespace, tasks: list[str], out: Path) -> dict[str, Any]:
    """Train (or reuse) the Pfeiffer adapters, train AdapterFusion over them, in `.venv-adapters`; return the JSON."""
    from ttlora_moe.params import load_params

    extra = [x for key in FUSION_FLAGS for x in ("--" + key.replace("_", "-"), str(getattr(args, key)))]
    return driver.run_train(driver.adapters_python(), tasks, stage="all", params=load_params(),
                            overrides=driver.expert_budget(args.quick, args.samples, args.epochs),
                            adapters_dir=args.adapters_dir or driver.default_adapters_dir(args.quick), out=out, extra=extra)


def count_safetensors(folder: Path) -> dict[str, int]:
    """Parameters stored in a bundle folder: router, experts (cores + heads), total."""
    from safetensors import safe_open

    counts = {"router_params": 0, "expert_params": 0}
    for file in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            n = 0
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                size = 1
                for d in shape:
                    size *= d
                n += size
        counts["router_params" if file.name.startswith("router") else "expert_params"] += n
    counts["total_added_params"] = counts["router_params"] + counts["expert_params"]
    return counts


def read_bundle_eval(path: Path, tasks: list[str], test_cap: int) -> dict[str, Any]:
    """Our bundle's mixed accuracy, per-task accuracy and parameters from its `evaluation.json`."""
    ev = json.loads(path.read_text())
    per_task = ev.get("per_task") or {}
    row: dict[str, Any] = {"method": "TT-LoRA MoE bundle", "mixed_accuracy": ev.get("mixed_accuracy"),
                           "router_accuracy": ev.get("router_accuracy"), "source": str(path)}
    for t in tasks:
        r = per_task.get(t) or {}
        row[t] = r.get("bundle_accuracy", r.get("accuracy"))
    params = {k: ev[k] for k in ("trainable_params", "total_added_params", "added_params", "params") if k in ev}
    if not params and any(path.parent.rglob("*.safetensors")):
        params = count_safetensors(path.parent)
    row["added_params"] = params.get("total_added_params", params.get("added_params", params.get("params")))
    row["trainable_params"] = params.get("trainable_params", row["added_params"])  # every stored tensor was trained
    row["params_detail"] = params
    # Same rows? The bundle evaluation must cap each task's test split at the same first rows.
    rows = {t: (per_task.get(t) or {}).get("rows", (per_task.get(t) or {}).get("n")) for t in tasks}
    cap = ev.get("test_cap", ev.get("max_test_rows_per_task"))
    row["same_rows"] = (cap == test_cap) if cap is not None else None
    row["rows_per_task"] = rows
    if cap is not None and cap != test_cap:
        print(f"warning: {path} used test cap {cap}, the baselines {test_cap}: mixed accuracies are not on the same rows",
              file=sys.stderr)
    return row


def tables(result: dict[str, Any], bundle: dict[str, Any] | None, tasks: list[str]) -> tuple[list, list, str]:
    pf = result.get("pfeiffer") or []
    pf_rows = [{k: r.get(k) for k in ("task", "method", "metric", "test_metric", "test_accuracy", "test_rows",
                                      "adapter_params", "head_params", "trainable_params", "train_samples_per_s",
                                      "train_seconds", "lr")} for r in pf]
    mixed_rows = []
    fusion = result.get("fusion")
    if fusion:
        mixed_rows.append({"method": "AdapterFusion (Pfeiffer x%d + Fuse)" % len(tasks),
                           "mixed_accuracy": fusion["mixed_accuracy"],
                           **{t: fusion["per_task"][t]["accuracy"] for t in tasks if t in fusion["per_task"]},
                           "trainable_params": fusion["trainable_params"],
                           "added_params": fusion["total_added_params"]})
    if pf and all("mixed_test_accuracy" in r for r in pf):
        n = sum(r["mixed_test_rows"] for r in pf)
        mixed_rows.append({"method": "Pfeiffer per task, true task given (no router)",
                           "mixed_accuracy": sum(r["mixed_test_accuracy"] * r["mixed_test_rows"] for r in pf) / max(1, n),
                           **{r["task"]: r["mixed_test_accuracy"] for r in pf},
                           "trainable_params": sum(r["trainable_params"] for r in pf),
                           "added_params": sum(r["trainable_params"] for r in pf)})
    if bundle:
        mixed_rows.append({k: v for k, v in bundle.items() if k not in ("params_detail", "rows_per_task", "source")})
    pf_cols = ["task", "metric", "test_metric", "test_accuracy", "trainable_params", "adapter_params", "head_params",
               "train_samples_per_s", "lr"]
    mixed_cols = ["method", "mixed_accuracy", *tasks, "trainable_params", "added_params"]
    cfg = result.get("config", {})
    text = (f"#### pfeiffer: `adapters` seq_bn + default head (CLS), per task, full test split\n\n"
            f"Budget: {cfg.get('samples')} train rows x {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, "
            f"lr {cfg.get('lr')}.\n\n" + markdown_table(pf_rows, pf_cols) + "\n\n"
            f"#### mixed test set: first min(rows, {cfg.get('test_cap')}) test rows per task, accuracy\n\n"
            + (f"AdapterFusion: {fusion['train_rows']} mixed train rows ({cfg.get('fusion_samples')} per task), "
               f"{cfg.get('fusion_epochs')} epoch, lr {cfg.get('fusion_lr')}, batch {cfg.get('fusion_batch_size')}, "
               f"one shared {fusion['head_classes']}-class head.\n\n" if fusion else "")
            + markdown_table(mixed_rows, mixed_cols))
    return pf_rows, mixed_rows, text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tasks {' '.join(driver.QUICK_TASKS)}, budget {driver.QUICK_BUDGET}, 100 fusion rows per task, "
                             "test cap 100")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=None, help=f"Pfeiffer training rows per task (default {driver.FULL_BUDGET['max_train_samples']}; quick {driver.QUICK_BUDGET['max_train_samples']})")
    parser.add_argument("--epochs", type=int, default=None, help=f"Pfeiffer epochs (default {driver.FULL_BUDGET['epochs']}; quick {driver.QUICK_BUDGET['epochs']})")
    parser.add_argument("--fusion-samples", type=int, default=None, help="fusion mix: training rows per task (default 1000)")
    parser.add_argument("--fusion-epochs", type=int, default=1)
    parser.add_argument("--fusion-lr", type=float, default=5e-5)
    parser.add_argument("--fusion-batch-size", type=int, default=8, help="paper: 8")
    parser.add_argument("--test-cap", type=int, default=None,
                        help="mixed test set rows per task (first rows of test.parquet; default 500)")
    parser.add_argument("--adapters-dir", type=Path, default=None,
                        help="keep / reuse the Pfeiffer adapters here (default outputs/adapters_baselines/{quick,full})")
    parser.add_argument("--baseline-json", type=Path, default=None,
                        help="reuse a result file of benchmarks/adapters_baselines/train.py instead of training")
    parser.add_argument("--bundle-eval", type=Path, default=None,
                        help=f"our bundle's evaluation.json (default {DEFAULT_BUNDLE_EVAL.relative_to(driver.ROOT)} if present)")
    parser.add_argument("--no-bundle", action="store_true", help="leave our bundle out of the table")
    args = parser.parse_args(argv)
    args.fusion_samples = args.fusion_samples or (100 if args.quick else 1000)
    args.test_cap = args.test_cap or (100 if args.quick else 500)
    start = time.perf_counter()
    if args.baseline_json:
        result = json.loads(args.baseline_json.read_text())
        tasks = args.tasks or result["config"]["tasks"]
    else:
        tasks = args.tasks or (driver.QUICK_TASKS if args.quick else driver.TASKS)
        with tempfile.TemporaryDirectory(prefix="fusion-vs-moe-") as tmp:
            result = run_baselines(args, tasks, Path(tmp) / "adapters_baselines.json")
    test_cap = int(result.get("config", {}).get("test_cap", args.test_cap))
    bundle_eval = args.bundle_eval or (DEFAULT_BUNDLE_EVAL if DEFAULT_BUNDLE_EVAL.exists() else None)
    if args.no_bundle:
        bundle_eval = None
    bundle = read_bundle_eval(bundle_eval, tasks, test_cap) if bundle_eval else None
    pf_rows, mixed_rows, table = tables(result, bundle, tasks)
    payload = {
        "tasks": tasks, "test_cap": test_cap,
        "mixed_test_set": f"per task, the first min(test rows, {test_cap}) rows of data/prepared/<task>/test.parquet in file order",
        "pfeiffer": pf_rows, "mixed": mixed_rows, "fusion": result.get("fusion"), "bundle": bundle,
        "baselines": {k: result.get(k) for k in ("config", "versions", "threads", "wall_seconds")},
        "pfeiffer_history": {r["task"]: r.get("history") for r in result.get("pfeiffer") or []},
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_results("fusion_vs_moe", payload, table)
    return payload


if __name__ == "__main__":
    main()
