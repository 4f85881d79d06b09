"""Evaluate a bundle on the mixed test splits of its tasks.

Measures, on a seeded sample of every task's **test** split (never seen by experts or router):

- router accuracy (arg-max expert == the input's task) per task and overall, and the routing
  confusion matrix (true task x chosen expert, plus an "abstain" column);
- the task metric inside the bundle (a misrouted or abstained input counts as wrong) next to the same
  expert run alone (``load_expert``) and the task's head-only baseline (:mod:`ttlora_moe.moe.baselines`)
  on the same rows; ``expert_metric - bundle_metric`` is what routing costs, ``bundle_metric -
  baseline_metric`` what the expert buys;
- mixed accuracy (task and label both right) over all rows, and the mixed metric (the mean of the
  tasks' own metrics);
- out of scope: the abstain rate on in-scope inputs and on inputs of a task the bundle does not serve,
  and how well the out-of-scope score separates the two (AUROC, FPR at 95% TPR);
- the gates of :mod:`ttlora_moe.moe.gates` (without a champion: the pipeline adds that comparison).

Writes ``evaluation.json``, ``confusion.png`` and ``per_task.png`` (default: ``<bundle>/evaluation/``)
and records the metrics and gates in the bundle's manifest.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import pandas as pd
import torch

from ttlora_moe.devices import params_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.metrics import headline, task_metrics
from ttlora_moe.files import atomic_dir, write_json
from ttlora_moe.moe.bundle import (
    Bundle,
    bundle_params,
    load_bundle,
    load_moe,
    record_metrics,
)
from ttlora_moe.moe.detection import auroc, fpr_at_tpr
from ttlora_moe.moe.feature_cache import sample_indices
from ttlora_moe.moe.gates import gates_of


def wrong_label(label: int, num_labels: int) -> int:
    """A label that is certainly wrong: how a misrouted or abstained input is scored for its task."""
    return (label + 1) % num_labels


# An out-of-scope task that shares more than this share of the smaller one's inputs with a served task (the
# same data registered again, as `make demo-add-task` registers BoolQ rows as `yesno`) is that task, so its
# rows would measure the bundle against itself: the next candidate is taken.
MAX_SHARED_INPUTS = 0.05


def _out_of_scope_candidates(tasks: list[str], wanted: str | None, preferred: str | None = None) -> list[str]:
    """The tasks whose inputs should abstain, best first: ``wanted`` alone (it must not be in the bundle),
    else ``preferred`` (params.yaml) when the bundle lacks it and the project has its card, then the
    prepared tasks the bundle lacks, then the others."""
    from ttlora_moe.data.cards import list_tasks
    from ttlora_moe.paths import data_root

    if wanted:
        if wanted in tasks:
            raise BadInput(f"out-of-scope task {wanted!r} is in the bundle", "pick a task the bundle has no expert for")
        return [wanted]
    candidates = [t for t in list_tasks() if t not in tasks]
    prepared = [t for t in candidates if (data_root() / "prepared" / t / "test.parquet").exists()]
    first = [preferred] if preferred in candidates else []
    return list(dict.fromkeys(first + prepared + candidates))


def _input_hashes(rows: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per ``(text, text_pair)`` row."""
    return pd.util.hash_pandas_object(rows[["text", "text_pair"]].fillna("\x00"), index=False).to_numpy()


def _prepared_inputs(prepared: Path) -> np.ndarray:
    """The distinct hashes of the inputs of every split in a task's ``prepared`` folder."""
    hashes = [_input_hashes(pd.read_parquet(path, columns=["text", "text_pair"])) for path in sorted(prepared.glob("*.parquet"))]
    return np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, dtype=np.uint64)


def _shared_inputs(theirs: np.ndarray, served: dict[str, np.ndarray]) -> tuple[str | None, float]:
    """The served task that shares the largest share of the smaller one's inputs with ``theirs``, and that share."""
    best: tuple[str | None, float] = (None, 0.0)
    for task, mine in served.items():
        smaller = min(len(mine), len(theirs))
        share = len(np.intersect1d(mine, theirs, assume_unique=True)) / smaller if smaller else 0.0
        best = max(best, (task, share), key=lambda pair: pair[1])
    return best


def evaluation_rows(num_rows: int, cap: int | None, seed: int) -> list[int]:
    """Indices of a split's rows that the evaluation scores: a seeded sample of ``cap``, in file order."""
    return sorted(sample_indices(num_rows, cap, seed))


def _prepared(task: str, params: dict[str, Any]) -> Path:
    """The task's prepared folder (prepared first when it is not)."""
    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared

    return ensure_prepared(load_task_card(task), params)


def _test_rows(task: str, params: dict[str, Any], cap: int, seed: int) -> tuple[Path, list[int], list[dict[str, Any]], str]:
    """(prepared folder, scored row indices, those rows, a key naming exactly these rows) of a task's test split."""
    from ttlora_moe.data.prepared import load_split, prepared_md5

    prepared = _prepared(task, params)
    test = load_split(prepared, "test")
    indices = evaluation_rows(len(test), cap, seed)
    return prepared, indices, [test[i] for i in indices], f"{prepared_md5(prepared)}:{cap}:{seed}"


def _oos_score(answer: dict[str, Any]) -> float:
    score = answer.get("out_of_scope_score")
    return math.inf if score is None else float(score)  # an empty input is as far out of scope as it gets


def _expert_alone(bundle: Bundle, e: int, task: str, rows: list[dict[str, Any]], batch_size: int,
                  max_length: int, progress: bool, device: torch.device) -> list[list[float]]:
    """The expert's own class probabilities on ``rows``, loaded alone on a fresh base."""
    from ttlora_moe.data.batching import Collator
    from ttlora_moe.experts.artifact import load_expert
    from ttlora_moe.experts.base_model import load_base_model
    from ttlora_moe.experts.training import predict

    meta = bundle.expert_meta[e]
    base = load_base_model(meta["base_model"]["ref"], meta.get("pooling"), device=device)
    expert = load_expert(bundle.expert_dir(task), base)
    collate = Collator(base.tokenizer, int(meta.get("max_length", max_length)), options=expert.model.options)
    _, probs = predict(expert.model, rows, collate, batch_size=batch_size, progress=progress, desc=f"{task} alone")
    return probs.tolist()


def _task_report(e: int, task: str, rows: list[dict[str, Any]], answers: list[dict[str, Any]],
                 meta: dict[str, Any], alone: list[list[float]] | None) -> dict[str, Any]:
    """Routing and the task metric of one task's rows inside the bundle (and alone, when given)."""
    labels = [int(r["label"]) for r in rows]
    metric = meta.get("metric", "accuracy")
    ok_route = [a["expert_index"] == e for a in answers]
    bundle_preds = [a["label_id"] if ok else wrong_label(y, len(meta["label_names"]))
                    for a, ok, y in zip(answers, ok_route, labels)]
    bundle_m = task_metrics(labels, bundle_preds, metric)
    report = {
        "rows": len(rows), "metric": metric,
        "router_accuracy": sum(a["router_choice"] == task for a in answers) / max(1, len(rows)),
        "abstain_rate": sum(a["abstained"] for a in answers) / max(1, len(rows)),
        "bundle_metric": headline(bundle_m, metric), "bundle": bundle_m,
        "mixed_correct": sum(int(p == y and ok) for p, y, ok in zip(bundle_preds, labels, ok_route)),
        "expert_recorded_test": (meta.get("metrics") or {}).get("test"),
    }
    if alone is not None:
        alone_preds = [max(range(len(p)), key=p.__getitem__) for p in alone]
        alone_m = task_metrics(labels, alone_preds, metric)
        routed = [k for k, ok in enumerate(ok_route) if ok]
        names = meta["label_names"]
        report.update(expert_metric=headline(alone_m, metric), expert_alone=alone_m,
                      retention_drop=headline(alone_m, metric) - headline(bundle_m, metric), routed_rows=len(routed),
                      # the bundle's answer on a correctly routed row is the expert's own (the same math)
                      routed_agreement=(sum(bundle_preds[k] == alone_preds[k] for k in routed) / len(routed)) if routed else None,
                      routed_max_probability_diff=max((abs(answers[k]["probabilities"][n] - alone[k][j])
                                                       for k in routed for j, n in enumerate(names)), default=0.0))
    return report


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
    experts_alone: bool = True,
    baselines: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``bundle_dir``; write the report and plots; return the report (JSON-able).

    ``experts_alone`` and ``baselines`` can be switched off when only the bundle's own numbers are
    needed (e.g. re-evaluating the champion on a candidate's rows). Models run on ``device``
    (default params.yaml ``device``).
    """
    from ttlora_moe.moe.baselines import head_only_baseline
    from ttlora_moe.moe.plots import confusion_png, per_task_png
    from ttlora_moe.params import load_params, section

    start = time.perf_counter()
    params = load_params() if params is None else params
    bp = bundle_params(section(params, "bundle") if bundle is None else bundle)
    cap, seed, batch_size = int(test_per_task or bp["test_per_task"]), int(bp["eval_seed"]), int(bp["batch_size"])
    b = load_bundle(Path(bundle_dir))
    tasks = b.tasks
    target = params_device(params, device)
    moe = load_moe(b, device=target)

    per_task: dict[str, dict[str, Any]] = {}
    confusion: list[list[int]] = []
    in_scores: list[float] = []
    seconds = {"bundle_predict": 0.0, "experts_alone": 0.0, "baselines": 0.0}
    for e, task in enumerate(tasks):
        prepared, indices, rows, rows_key = _test_rows(task, params, cap, seed)
        t0 = time.perf_counter()
        answers = moe.predict(rows, batch_size=batch_size, progress=progress)
        seconds["bundle_predict"] += time.perf_counter() - t0
        confusion.append([sum(a["router_choice"] == name and not a["abstained"] for a in answers) for name in tasks]
                         + [sum(a["abstained"] for a in answers)])
        in_scores += [_oos_score(a) for a in answers]
        t0 = time.perf_counter()
        alone = _expert_alone(b, e, task, rows, batch_size, moe.max_length, progress, target) if experts_alone else None
        seconds["experts_alone"] += time.perf_counter() - t0
        per_task[task] = {**_task_report(e, task, rows, answers, b.expert_meta[e], alone), "rows_key": rows_key}
        if baselines:
            t0 = time.perf_counter()
            options = moe.num_labels[e] if bool(moe.option_heads[e]) else 0
            base_line = head_only_baseline(moe.base, prepared, per_task[task]["metric"], indices,
                                           [int(r["label"]) for r in rows], moe.pooling, moe.max_length, seed=seed,
                                           options=options)
            per_task[task].update(baseline_metric=base_line["metric"], baseline=base_line["scores"])
            seconds["baselines"] += time.perf_counter() - t0

    total = sum(v["rows"] for v in per_task.values())
    report: dict[str, Any] = {
        "bundle": str(b.path.resolve()), "tasks": tasks, "rows": total, "test_per_task": cap, "seed": seed,
        "router_accuracy": sum(v["router_accuracy"] * v["rows"] for v in per_task.values()) / max(1, total),
        "router_balanced_accuracy": mean(v["router_accuracy"] for v in per_task.values()),
        "mixed_accuracy": sum(v.pop("mixed_correct") for v in per_task.values()) / max(1, total),
        "mixed_metric": mean(v["bundle_metric"] for v in per_task.values()),
        "abstain_in_scope": sum(v["abstain_rate"] * v["rows"] for v in per_task.values()) / max(1, total),
        "per_task": per_task,
        "confusion": {"rows": tasks, "columns": tasks + ["abstain"], "counts": confusion},
    }
    report["out_of_scope"] = _out_of_scope(moe, tasks, params, bp, out_of_scope_task, in_scores, seed, progress)
    report["abstain_out_of_scope"] = report["out_of_scope"]["abstain_rate"]
    report["gates"] = gates_of(report, bp)
    report["gates_passed"] = all(g["passed"] for g in report["gates"].values())
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()} | {"total": round(time.perf_counter() - start, 2)}
    output = Path(output) if output else b.path / "evaluation"
    with atomic_dir(output) as tmp:
        write_json(tmp / "evaluation.json", report)
        confusion_png(confusion, tasks, tmp / "confusion.png")
        per_task_png(per_task, tmp / "per_task.png")
    report["output"] = str(output.resolve())
    report["plots"] = [str(output / "confusion.png"), str(output / "per_task.png")]
    if record:
        headline_keys = ("router_accuracy", "router_balanced_accuracy", "mixed_accuracy", "mixed_metric",
                         "abstain_in_scope", "abstain_out_of_scope")
        record_metrics(b.path, {"test": {k: report[k] for k in headline_keys}
                                | {"per_task": {t: {k: v.get(k) for k in ("router_accuracy", "bundle_metric",
                                                                          "expert_metric", "baseline_metric")}
                                                for t, v in per_task.items()}}}, report["gates"])
    print(f"evaluated {total} in-scope rows in {report['seconds']['total']:.0f} s", file=sys.stderr)
    return report


def _out_of_scope(moe: Any, tasks: list[str], params: dict[str, Any], bp: dict[str, Any], wanted: str | None,
                  in_scores: list[float], seed: int, progress: bool) -> dict[str, Any]:
    """Abstain rate and score separation on rows of a task the bundle does not serve."""
    result: dict[str, Any] = {"task": None, "rows": 0, "abstain_rate": None, "auroc": None, "fpr_at_95_tpr": None,
                              "routed_to": {}, "skipped": []}
    served: dict[str, np.ndarray] = {}  # each served task's input hashes, read once
    for task in _out_of_scope_candidates(tasks, wanted, bp["out_of_scope_task"]):
        result["task"] = task
        try:
            prepared, _, rows, _ = _test_rows(task, params, int(bp["out_of_scope_rows"]), seed)
        except BadInput as exc:  # its data is not here (e.g. a worker without a mirror and no DVC pointer for it)
            return {**result, "error": str(exc)}
        served = served or {t: _prepared_inputs(_prepared(t, params)) for t in tasks}
        twin, shared = _shared_inputs(_prepared_inputs(prepared), served)
        if shared <= MAX_SHARED_INPUTS:
            break
        result["skipped"].append(f"{task} and the served task {twin} share {shared:.0%} of the smaller one's inputs")
        result["task"] = None
    if not result["task"]:
        return result
    answers = moe.predict(rows, batch_size=int(bp["batch_size"]), progress=progress)
    out_scores = [_oos_score(a) for a in answers]
    for a in answers:
        key = "abstain" if a["abstained"] else a["task"]
        result["routed_to"][key] = result["routed_to"].get(key, 0) + 1
    finite_in = [s for s in in_scores if math.isfinite(s)] or [0.0]
    result.update(rows=len(rows), abstain_rate=sum(a["abstained"] for a in answers) / max(1, len(rows)),
                  auroc=auroc([min(s, 1e30) for s in out_scores], finite_in),
                  fpr_at_95_tpr=fpr_at_tpr([min(s, 1e30) for s in out_scores], finite_in),
                  mean_confidence=mean(a["router_confidence"] for a in answers) if answers else None)
    return result
