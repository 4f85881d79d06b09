"""The promotion gates of a bundle evaluation: measured numbers against params.yaml and against the champion.

Every gate compares a number measured on the bundle with something independent of it:

- ``router_test_accuracy`` >= ``bundle.min_router_accuracy``;
- ``out_of_scope_auroc`` >= ``bundle.min_out_of_scope_auroc`` (how well abstention separates the
  out-of-scope task's rows from the bundle's own), when there is a task the bundle does not serve
  (its rows unreadable: the gate fails);
- ``floor.<task>``: the task's metric inside the bundle >= its floor: ``bundle.floors[<task>]`` when
  params.yaml sets one, else the task's head-only baseline on the same rows minus ``bundle.floor_margin``;
- with a champion (the version serving now), evaluated on the same rows: ``vs_champion.<task>`` and
  ``vs_champion.mixed``: the candidate's metric >= the champion's minus ``bundle.max_task_drop``. A task
  the champion does not serve, or whose rows differ (its data changed), is not compared, and the
  evaluation says so.

A gate is ``{"value", "min", "passed"}``; :func:`ttlora_moe.pipeline.gates.check_gates` lists them.
"""

from __future__ import annotations

from statistics import mean
from typing import Any


def _gate(value: float | None, minimum: float) -> dict[str, Any]:
    return {"value": value, "min": minimum, "passed": value is not None and value >= minimum}


def gates_of(evaluation: dict[str, Any], bundle: dict[str, Any], champion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gates of ``evaluation`` under the ``bundle`` params (and against ``champion``'s evaluation)."""
    gates = {"router_test_accuracy": _gate(evaluation["router_accuracy"], float(bundle["min_router_accuracy"]))}
    out_of_scope = evaluation.get("out_of_scope") or {}
    if out_of_scope.get("task"):  # measured, or missing (its data could not be read: the gate fails, the evaluation says why)
        gates["out_of_scope_auroc"] = _gate(out_of_scope.get("auroc"), float(bundle["min_out_of_scope_auroc"]))
    floors = bundle.get("floors") or {}
    for task, row in evaluation["per_task"].items():
        if task in floors:
            floor = float(floors[task])
        elif row.get("baseline_metric") is not None:
            floor = float(row["baseline_metric"]) - float(bundle["floor_margin"])
        else:
            continue
        gates[f"floor.{task}"] = _gate(row["bundle_metric"], floor)
    if champion is not None:
        gates.update(_versus(evaluation, champion, float(bundle["max_task_drop"])))
    return gates


def comparable_tasks(evaluation: dict[str, Any], champion: dict[str, Any]) -> list[str]:
    """Tasks both evaluations scored on the same rows (same data version, sample size and seed)."""
    theirs = champion.get("per_task") or {}
    return [t for t, row in evaluation["per_task"].items()
            if t in theirs and row.get("rows_key") and row.get("rows_key") == theirs[t].get("rows_key")]


def _versus(evaluation: dict[str, Any], champion: dict[str, Any], max_drop: float) -> dict[str, Any]:
    shared = comparable_tasks(evaluation, champion)
    ours, theirs = evaluation["per_task"], champion["per_task"]
    gates = {f"vs_champion.{t}": _gate(ours[t]["bundle_metric"], theirs[t]["bundle_metric"] - max_drop) for t in shared}
    if shared:
        gates["vs_champion.mixed"] = _gate(mean(ours[t]["bundle_metric"] for t in shared),
                                           mean(theirs[t]["bundle_metric"] for t in shared) - max_drop)
    return gates
