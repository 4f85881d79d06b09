"""Multi-task vs AdapterFusion: the `adapters`-library baselines beside our bundle on one mixed test set.

AdapterFusion side, in the separate `.venv-adapters` (transformers 4.57 + adapters 1.3.0, created on
first use by `benchmarks/adapters_env.sh`): one Pfeiffer bottleneck adapter (`seq_bn`) + default
head per task, then an AdapterFusion (`Fuse` over them, one shared 3-class head, the paper's mixed
mode) trained on a task-balanced mix (`benchmarks/adapters_baselines/train.py` has every setting).
Our side: one TT-LoRA expert per task and a bundle (router from params.yaml `router:`) built from
them. Both sides use the same base model, prepared data and expert budget; the per-task models are
the ones `peft_quality` kept (`--adapters-dir`, `--experts-dir`; `make bench` runs it first), or
are trained here when missing.

The **mixed test set** is, for each task, the rows our bundle evaluation scores
(`ttlora_moe.moe.evaluate.evaluation_rows`: a seeded sample of min(test rows, `--test-cap`), params.yaml
`bundle.eval_seed`); AdapterFusion and the per-task Pfeiffer adapters are scored on exactly those
rows. Reported: mixed accuracy (task and label both right, rows pooled), per-task accuracy and
parameters; beside them the per-task models given the true task (no routing), the ceiling of each
side.

    python -m benchmarks.fusion_vs_moe [--quick] [--tasks ...] [--test-cap N] [--baseline-json PATH] [--no-bundle]
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
from benchmarks.bench_experts import bench_expert, default_experts_dir
from benchmarks.common import markdown_table, run_benchmark, write_results
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import num_rows
from ttlora_moe.moe.build import build_bundle
from ttlora_moe.moe.bundle import bundle_params
from ttlora_moe.moe.evaluate import evaluate_bundle, evaluation_rows
from ttlora_moe.params import load_params, section

FUSION_FLAGS = ("fusion_samples", "fusion_epochs", "fusion_lr", "fusion_batch_size")


def mixed_test_rows(tasks: list[str], params: dict[str, Any], test_cap: int) -> dict[str, list[int]]:
    """Per task, the test-row indices of the mixed test set: the rows ``evaluate_bundle`` scores."""
    seed = int(bundle_params(section(params, "bundle"))["eval_seed"])
    return {t: evaluation_rows(num_rows(ensure_prepared(load_task_card(t), params), "test"), test_cap, seed)
            for t in tasks}


def run_baselines(args: argparse.Namespace, tasks: list[str], params: dict[str, Any], mixed: dict[str, list[int]],
                  tmp: Path) -> dict[str, Any]:
    """Train (or reuse) the Pfeiffer adapters, train AdapterFusion over them, in `.venv-adapters`; return the JSON."""
    rows_file = tmp / "mixed_rows.json"
    rows_file.write_text(json.dumps(mixed))
    extra = [x for key in FUSION_FLAGS for x in ("--" + key.replace("_", "-"), str(getattr(args, key)))]
    return driver.run_train(driver.adapters_python(), tasks, stage="all", params=params,
                            overrides=driver.expert_budget(args.quick, args.samples, args.epochs),
                            adapters_dir=args.adapters_dir or driver.default_adapters_dir(args.quick),
                            out=tmp / "adapters_baselines.json", extra=[*extra, "--mixed-rows", str(rows_file)])


def count_safetensors(folder: Path) -> dict[str, int]:
    """Parameters stored in a bundle folder: router, experts (cores + heads), total."""
    from safetensors import safe_open

    counts = {"router_params": 0, "expert_params": 0}
    for file in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            n = 0
            for key in f.keys():
                size = 1
                for d in f.get_slice(key).get_shape():
                    size *= d
                n += size
        counts["router_params" if file.name.startswith("router") else "expert_params"] += n
    counts["total_added_params"] = counts["router_params"] + counts["expert_params"]
    return counts


def our_bundle(args: argparse.Namespace, tasks: list[str], params: dict[str, Any], test_cap: int) -> dict[str, Any]:
    """Build our bundle from TT-LoRA experts of the Pfeiffer budget and evaluate it on the mixed test set."""
    folder = args.experts_dir or default_experts_dir(args.quick)
    budget = driver.expert_budget(args.quick, args.samples, args.epochs)
    dirs = [bench_expert(t, "ttlora", folder, params, budget) for t in tasks]
    out = folder / "bundle"
    built = build_bundle(dirs, out, params=params, progress=False)
    report = evaluate_bundle(out, params=params, test_per_task=test_cap, output=out / "evaluation", record=False,
                             progress=False)
    return {"report": report, "params": count_safetensors(out), "build_seconds": built["seconds"]["total"]}


def bundle_rows(ours: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    """Our two mixed-test-set rows: the bundle (routed) and its experts given the true task."""
    report, params = ours["report"], ours["params"]
    per_task = report["per_task"]
    rows = sum(per_task[t]["rows"] for t in tasks)
    alone = sum(per_task[t]["expert_alone"]["accuracy"] * per_task[t]["rows"] for t in tasks) / max(1, rows)
    return [
        {"method": "TT-LoRA MoE bundle (the router picks the expert)", "mixed_accuracy": report["mixed_accuracy"],
         "router_accuracy": report["router_accuracy"], **{t: per_task[t]["bundle"]["accuracy"] for t in tasks},
         "trainable_params": params["total_added_params"], "added_params": params["total_added_params"]},
        {"method": "TT-LoRA experts, true task given (no router)", "mixed_accuracy": alone,
         **{t: per_task[t]["expert_alone"]["accuracy"] for t in tasks},
         "trainable_params": params["expert_params"], "added_params": params["expert_params"]},
    ]


def fusion_rows(result: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    """The `adapters` side's mixed-test-set rows: AdapterFusion and the Pfeiffer adapters given the true task."""
    rows, pf, fusion = [], result.get("pfeiffer") or [], result.get("fusion")
    if fusion:
        rows.append({"method": f"AdapterFusion (Pfeiffer x{len(tasks)} + Fuse)", "mixed_accuracy": fusion["mixed_accuracy"],
                     **{t: fusion["per_task"][t]["accuracy"] for t in tasks if t in fusion["per_task"]},
                     "trainable_params": fusion["trainable_params"], "added_params": fusion["total_added_params"]})
    if pf and all("mixed_test_accuracy" in r for r in pf):
        n = sum(r["mixed_test_rows"] for r in pf)
        rows.append({"method": "Pfeiffer per task, true task given (no router)",
                     "mixed_accuracy": sum(r["mixed_test_accuracy"] * r["mixed_test_rows"] for r in pf) / max(1, n),
                     **{r["task"]: r["mixed_test_accuracy"] for r in pf},
                     "trainable_params": sum(r["trainable_params"] for r in pf),
                     "added_params": sum(r["trainable_params"] for r in pf)})
    return rows


def tables(result: dict[str, Any], ours: dict[str, Any] | None, tasks: list[str], test_cap: int) -> tuple[list, list, str]:
    """(Pfeiffer rows, mixed-test-set rows, Markdown)."""
    pf_rows = [{k: r.get(k) for k in ("task", "method", "metric", "test_metric", "test_accuracy", "test_rows",
                                      "adapter_params", "head_params", "trainable_params", "train_samples_per_s",
                                      "train_seconds", "lr")} for r in result.get("pfeiffer") or []]
    mixed_rows = fusion_rows(result, tasks) + (bundle_rows(ours, tasks) if ours else [])
    pf_cols = ["task", "metric", "test_metric", "test_accuracy", "trainable_params", "adapter_params", "head_params",
               "train_samples_per_s", "lr"]
    mixed_cols = ["method", "mixed_accuracy", "router_accuracy", *tasks, "trainable_params", "added_params"]
    cfg, fusion = result.get("config", {}), result.get("fusion")
    text = (f"#### pfeiffer: `adapters` seq_bn + default head (CLS), per task, full test split\n\n"
            f"Budget: {cfg.get('samples')} train rows x {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, "
            f"lr {cfg.get('lr')}.\n\n" + markdown_table(pf_rows, pf_cols) + "\n\n"
            f"#### mixed test set: min(rows, {test_cap}) seeded test rows per task, accuracy\n\n"
            + (f"AdapterFusion: {fusion['train_rows']} mixed train rows ({cfg.get('fusion_samples')} per task), "
               f"{cfg.get('fusion_epochs')} epoch, lr {cfg.get('fusion_lr')}, batch {cfg.get('fusion_batch_size')}, "
               f"one shared {fusion['head_classes']}-class head.\n\n" if fusion else "")
            + markdown_table(mixed_rows, mixed_cols))
    return pf_rows, mixed_rows, text


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tasks {' '.join(driver.QUICK_TASKS)}, budget {driver.QUICK_BUDGET}, 100 fusion rows per task, "
                             "test cap 100")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--samples", type=int, default=None, help=f"training rows per task of every per-task model (default {driver.FULL_BUDGET['max_train_samples']}; quick {driver.QUICK_BUDGET['max_train_samples']})")
    parser.add_argument("--epochs", type=int, default=None, help=f"their epochs (default {driver.FULL_BUDGET['epochs']}; quick {driver.QUICK_BUDGET['epochs']})")
    parser.add_argument("--fusion-samples", type=int, default=None, help="fusion mix: training rows per task (default 1000)")
    parser.add_argument("--fusion-epochs", type=int, default=1)
    parser.add_argument("--fusion-lr", type=float, default=5e-5)
    parser.add_argument("--fusion-batch-size", type=int, default=8, help="paper: 8")
    parser.add_argument("--test-cap", type=int, default=None, help="mixed test set rows per task (default 500)")
    parser.add_argument("--adapters-dir", type=Path, default=None,
                        help="keep / reuse the Pfeiffer adapters here (default outputs/adapters_baselines/{quick,full})")
    parser.add_argument("--experts-dir", type=Path, default=None,
                        help="keep / reuse our experts here; the bundle is written to its bundle/ (default "
                             "outputs/bench_experts/{quick,full})")
    parser.add_argument("--baseline-json", type=Path, default=None,
                        help="reuse a result file of benchmarks/adapters_baselines/train.py instead of training")
    parser.add_argument("--no-bundle", action="store_true", help="leave our bundle out of the table")
    args = parser.parse_args(argv)
    args.fusion_samples = args.fusion_samples or (100 if args.quick else 1000)
    args.test_cap = args.test_cap or (100 if args.quick else 500)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.perf_counter()
    params = load_params()
    if args.baseline_json:
        result = json.loads(args.baseline_json.read_text())
        tasks = args.tasks or result["config"]["tasks"]
    else:
        tasks = args.tasks or (driver.QUICK_TASKS if args.quick else driver.TASKS)
        with tempfile.TemporaryDirectory(prefix="fusion-vs-moe-") as tmp:
            result = run_baselines(args, tasks, params, mixed_test_rows(tasks, params, args.test_cap), Path(tmp))
    ours = None if args.no_bundle else our_bundle(args, tasks, params, args.test_cap)
    if ours and result.get("fusion"):
        scored = {t: ours["report"]["per_task"][t]["rows"] for t in tasks}
        if scored != result["fusion"].get("mixed_rows_per_task"):
            print(f"warning: our bundle scored {scored} rows per task, AdapterFusion "
                  f"{result['fusion'].get('mixed_rows_per_task')}: not the same mixed test set", file=sys.stderr)
    pf_rows, mixed_rows, table = tables(result, ours, tasks, args.test_cap)
    payload = {
        "tasks": tasks, "test_cap": args.test_cap,
        "mixed_test_set": f"per task, min(test rows, {args.test_cap}) seeded rows of data/prepared/<task>/test.parquet "
                          "(ttlora_moe.moe.evaluate.evaluation_rows, params bundle.eval_seed)",
        "pfeiffer": pf_rows, "mixed": mixed_rows, "fusion": result.get("fusion"),
        "bundle": {k: v for k, v in ours.items() if k != "report"} | {
            "evaluation": {k: ours["report"][k] for k in ("rows", "router_accuracy", "mixed_accuracy", "abstain_in_scope")}}
        if ours else None,
        "baselines": {k: result.get(k) for k in ("config", "versions", "threads", "wall_seconds")},
        "pfeiffer_history": {r["task"]: r.get("history") for r in result.get("pfeiffer") or []},
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_results("fusion_vs_moe", payload, table)
    return payload


if __name__ == "__main__":
    run_benchmark(main)
