"""Evaluate a bundle on the mixed test splits of its tasks.

Measures, on a seeded sample of every task's **test** split (never seen by experts or router):

- router accuracy (arg-max expert == the input's task) per task and overall, and the routing
  confusion matrix (true task x chosen expert, plus an "abstain" column);
- the task metric inside the bundle next to the same expert run alone (``load_expert``) on the same
  rows. Inside the bundle an input routed to another expert or abstained counts as a wrong
  prediction, so ``expert_metric - bundle_metric`` is what routing costs; on the correctly routed
  rows alone the two must agree (``routed_bundle_metric`` vs ``routed_expert_metric``);
- mixed accuracy (task and label both right) over all rows;
- the abstain rate on in-scope inputs and on inputs of a task that is not in the bundle.

Writes ``evaluation.json``, ``confusion.png`` and ``per_task.png`` (default: ``<bundle>/evaluation/``)
and records the metrics and gates in the bundle's manifest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ttlora_moe.errors import BadInput
from ttlora_moe.experts.metrics import headline, task_metrics
from ttlora_moe.files import atomic_dir, write_json
from ttlora_moe.moe.bundle import bundle_params, load_bundle, load_moe, record_metrics
from ttlora_moe.moe.feature_cache import sample_indices


def wrong_label(label: int, num_labels: int) -> int:
    """A label that is certainly wrong: how a misrouted or abstained input is scored for its task."""
    return (label + 1) % num_labels


def _out_of_scope_task(tasks: list[str], wanted: str | None, preferred: str | None = None) -> str | None:
    """The task whose inputs should abstain: ``wanted`` (must not be in the bundle), else ``preferred``
    (params.yaml) when the bundle lacks it and the project has its card, else the first prepared task the
    bundle lacks."""
    from ttlora_moe.data.cards import list_tasks
    from ttlora_moe.paths import data_root

    if wanted:
        if wanted in tasks:
            raise BadInput(f"out-of-scope task {wanted!r} is in the bundle", "pick a task the bundle has no expert for")
        return wanted
    candidates = [t for t in list_tasks() if t not in tasks]
    if preferred in candidates:
        return preferred
    prepared = [t for t in candidates if (data_root() / "prepared" / t / "test.parquet").exists()]
    return (prepared or candidates or [None])[0]


def evaluation_rows(num_rows: int, cap: int | None, seed: int) -> list[int]:
    """Indices of a split's rows that the evaluation scores: a seeded sample of ``cap``, in file order."""
    return sorted(sample_indices(num_rows, cap, seed))


def evaluate_bundle(
    bundle_dir: Path,
    *,
    params: dict[str, Any] | None = None,
    bundle: dict[str, Any] | None = None,
    test_per_task: int | None = None,
    out_of_scope_task: str | None = None,
    output: Path | None = None,
    record: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``bundle_dir``; write the report and plots; return the report (JSON-able)."""
    from ttlora_moe.data.batching import Collator
    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared
    from ttlora_moe.data.prepared import load_split
    from ttlora_moe.experts.artifact import load_expert
    from ttlora_moe.experts.base_model import load_base_model
    from ttlora_moe.experts.training import predict
    from ttlora_moe.moe.plots import confusion_png, per_task_png
    from ttlora_moe.params import load_params, section

    start = time.perf_counter()
    params = load_params() if params is None else params
    bp = bundle_params(section(params, "bundle") if bundle is None else bundle)
    cap = int(test_per_task or bp["test_per_task"])
    seed = int(bp["eval_seed"])
    b = load_bundle(Path(bundle_dir))
    tasks = b.tasks
    moe = load_moe(b)
    num_experts = len(tasks)

    rows: list[dict[str, Any]] = []
    truth: list[int] = []
    for e, task in enumerate(tasks):
        test = load_split(ensure_prepared(load_task_card(task), params), "test")
        picked = [test[i] for i in evaluation_rows(len(test), cap, seed)]
        rows += picked
        truth += [e] * len(picked)
    t0 = time.perf_counter()
    answers = moe.predict(rows, batch_size=int(bp["batch_size"]), progress=progress)
    bundle_seconds = time.perf_counter() - t0

    names = list(tasks)
    routed = [names.index(a["router_choice"]) for a in answers]
    confusion = [[0] * (num_experts + 1) for _ in tasks]
    for t, r, a in zip(truth, routed, answers):
        confusion[t][num_experts if a["abstained"] else r] += 1

    per_task: dict[str, dict[str, Any]] = {}
    mixed_correct = 0
    expert_seconds = 0.0
    for e, task in enumerate(tasks):
        idx = [i for i, t in enumerate(truth) if t == e]
        task_rows = [rows[i] for i in idx]
        labels = [int(r["label"]) for r in task_rows]
        meta = b.expert_meta[e]
        metric = meta.get("metric", "accuracy")
        c = len(meta["label_names"])
        ok_route = [answers[i]["expert_index"] == e for i in idx]
        bundle_preds = [answers[i]["label_id"] if ok else wrong_label(y, c) for i, ok, y in zip(idx, ok_route, labels)]
        mixed_correct += sum(int(p == y and ok) for p, y, ok in zip(bundle_preds, labels, ok_route))

        t0 = time.perf_counter()
        alone_base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"))
        expert = load_expert(b.expert_dir(task), alone_base)
        collate = Collator(alone_base.tokenizer, int(meta.get("max_length", moe.max_length)))
        _, probs = predict(expert.model, task_rows, collate,
                           batch_size=int(bp["batch_size"]), progress=progress, desc=f"{task} alone")
        expert_seconds += time.perf_counter() - t0
        alone_preds = probs.argmax(-1).tolist()
        del expert, alone_base

        bundle_m = task_metrics(labels, bundle_preds, metric)
        alone_m = task_metrics(labels, alone_preds, metric)
        sel = [k for k, ok in enumerate(ok_route) if ok]
        routed_b = task_metrics([labels[k] for k in sel], [bundle_preds[k] for k in sel], metric) if sel else None
        routed_a = task_metrics([labels[k] for k in sel], [alone_preds[k] for k in sel], metric) if sel else None
        max_prob_diff = 0.0
        for k in sel:
            p = answers[idx[k]]["probabilities"]
            diff = max(abs(p[name] - float(probs[k, j])) for j, name in enumerate(meta["label_names"]))
            max_prob_diff = max(max_prob_diff, diff)
        per_task[task] = {
            "rows": len(idx),
            "metric": metric,
            "router_accuracy": sum(int(routed[i] == e) for i in idx) / max(1, len(idx)),
            "abstain_rate": sum(int(answers[i]["abstained"]) for i in idx) / max(1, len(idx)),
            "bundle_metric": headline(bundle_m, metric),
            "expert_metric": headline(alone_m, metric),
            "retention_drop": headline(alone_m, metric) - headline(bundle_m, metric),
            "routed_rows": len(sel),
            "routed_bundle_metric": headline(routed_b, metric) if routed_b else None,
            "routed_expert_metric": headline(routed_a, metric) if routed_a else None,
            "routed_agreement": (sum(int(bundle_preds[k] == alone_preds[k]) for k in sel) / len(sel)) if sel else None,
            "routed_max_probability_diff": max_prob_diff,
            "bundle": bundle_m,
            "expert_alone": alone_m,
            "expert_recorded_test": (meta.get("metrics") or {}).get("test"),
        }

    total = len(rows)
    router_accuracy = sum(int(r == t) for r, t in zip(routed, truth)) / max(1, total)
    balanced = sum(v["router_accuracy"] for v in per_task.values()) / max(1, len(per_task))
    abstain_in = sum(int(a["abstained"]) for a in answers) / max(1, total)

    oos_task = _out_of_scope_task(tasks, out_of_scope_task, bp["out_of_scope_task"])
    oos: dict[str, Any] = {"task": oos_task, "rows": 0, "abstain_rate": None, "routed_to": {}}
    if oos_task:
        test = load_split(ensure_prepared(load_task_card(oos_task), params), "test")
        oos_rows = [test[i] for i in evaluation_rows(len(test), int(bp["out_of_scope_rows"]), seed)]
        oos_answers = moe.predict(oos_rows, batch_size=int(bp["batch_size"]), progress=progress)
        oos["rows"] = len(oos_rows)
        oos["abstain_rate"] = sum(int(a["abstained"]) for a in oos_answers) / max(1, len(oos_rows))
        for a in oos_answers:
            key = "abstain" if a["abstained"] else a["task"]
            oos["routed_to"][key] = oos["routed_to"].get(key, 0) + 1
        oos["mean_confidence"] = sum(a["router_confidence"] for a in oos_answers) / max(1, len(oos_answers))
    in_conf = sum(a["router_confidence"] for a in answers) / max(1, total)

    min_acc, max_drop = float(bp["min_router_accuracy"]), float(bp["max_retention_drop"])
    gates = {
        "router_test_accuracy": {"value": router_accuracy, "min": min_acc, "passed": router_accuracy >= min_acc},
        "retention_on_routed_rows": {
            "value": max((abs(v["routed_expert_metric"] - v["routed_bundle_metric"]) for v in per_task.values()
                          if v["routed_bundle_metric"] is not None), default=0.0),
            "max": max_drop,
            "passed": all(v["routed_bundle_metric"] is None
                          or abs(v["routed_expert_metric"] - v["routed_bundle_metric"]) <= max_drop
                          for v in per_task.values()),
        },
    }
    report = {
        "bundle": str(b.path.resolve()),
        "tasks": tasks,
        "rows": total,
        "test_per_task": cap,
        "seed": seed,
        "router_accuracy": router_accuracy,
        "router_balanced_accuracy": balanced,
        "mixed_accuracy": mixed_correct / max(1, total),
        "abstain_in_scope": abstain_in,
        "abstain_out_of_scope": oos["abstain_rate"],
        "out_of_scope": oos,
        "mean_confidence_in_scope": in_conf,
        "abstain_threshold": b.manifest["router"]["threshold"],
        "per_task": per_task,
        "confusion": {"rows": tasks, "columns": tasks + ["abstain"], "counts": confusion},
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates.values()),
        "seconds": {"bundle_predict": round(bundle_seconds, 2), "experts_alone": round(expert_seconds, 2),
                    "total": round(time.perf_counter() - start, 2)},
    }
    output = Path(output) if output else b.path / "evaluation"
    with atomic_dir(output) as tmp:
        write_json(tmp / "evaluation.json", report)
        confusion_png(confusion, tasks, tmp / "confusion.png")
        per_task_png(per_task, tmp / "per_task.png")
    report["output"] = str(output.resolve())
    report["plots"] = [str(output / "confusion.png"), str(output / "per_task.png")]
    if record:
        record_metrics(b.path, {"test": {k: report[k] for k in ("router_accuracy", "router_balanced_accuracy",
                                                                 "mixed_accuracy", "abstain_in_scope",
                                                                 "abstain_out_of_scope")}
                                | {"per_task": {t: {k: v[k] for k in ("router_accuracy", "bundle_metric",
                                                                      "expert_metric")}
                                                for t, v in per_task.items()}}}, gates)
    print(f"evaluated {total} in-scope rows in {report['seconds']['total']:.0f} s", file=sys.stderr)
    return report

