"""A candidate bundle against the ``champion`` serving now: gates on the same rows, and a comparison table.

The champion's own evaluation (stored with its registered version) is reused: evaluation is
deterministic given the bundle and the rows, and each task's ``rows_key`` names exactly the rows it
scored (prepared data checksum, sample size, seed). A task both evaluated on the same rows is
compared; one the champion does not serve, or whose rows differ, is listed as not compared with
the reason, so a data change never passes silently for a comparison.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ttlora_moe.moe.gates import comparable_tasks, gates_of
from ttlora_moe.pipeline.models import BUNDLE_MODEL, CHAMPION


def champion_version() -> int | None:
    """The ``ttlora-moe`` version at alias ``champion``, or None when nothing is promoted."""
    from ttlora_moe.pipeline.mlflow_client import client
    from ttlora_moe.pipeline.models import model_exists

    if not model_exists(BUNDLE_MODEL):
        return None
    with contextlib.suppress(Exception):  # MLflow raises a plain RestException for a missing alias
        return int(client().get_model_version_by_alias(BUNDLE_MODEL, CHAMPION).version)
    return None


def compare_with_champion(evaluation: dict[str, Any], bundle_params: dict[str, Any]) -> dict[str, Any]:
    """``evaluation`` with the champion's gates added (``vs_champion.*``) and a ``champion`` section:
    its version, the tasks compared and why the others were not. Unchanged gates without a champion."""
    from ttlora_moe.pipeline.bundles import bundle_summary

    version = champion_version()
    if version is None:
        return {**evaluation, "champion": None}
    theirs = bundle_summary(version)["evaluation"]
    gates = gates_of(evaluation, bundle_params, theirs)
    compared = comparable_tasks(evaluation, theirs)
    not_compared = {t: ("the champion does not serve it" if t not in (theirs.get("per_task") or {})
                        else "scored on other rows (its data, sample size or seed changed)")
                    for t in evaluation["per_task"] if t not in compared}
    section = {"version": version, "compared": compared, "not_compared": not_compared,
               "rows": comparison_rows(evaluation, theirs)}
    return {**evaluation, "gates": gates, "gates_passed": all(g["passed"] for g in gates.values()), "champion": section}


def comparison_rows(candidate: dict[str, Any], champion: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task (and ``mixed``): the candidate's metric, the champion's and the difference (None where not comparable)."""
    ours, theirs = candidate.get("per_task") or {}, champion.get("per_task") or {}
    shared = set(comparable_tasks(candidate, champion))
    rows = []
    for task in sorted(set(ours) | set(theirs)):
        a = ours.get(task, {}).get("bundle_metric")
        b = theirs.get(task, {}).get("bundle_metric")
        note = ("" if task in shared else "new task" if b is None else "not in this version" if a is None
                else "not compared: other rows")
        rows.append({"task": task, "metric": (ours.get(task) or theirs.get(task) or {}).get("metric"),
                     "candidate": a, "champion": b, "delta": a - b if task in shared else None, "note": note})
    if shared:
        a = sum(ours[t]["bundle_metric"] for t in shared) / len(shared)
        b = sum(theirs[t]["bundle_metric"] for t in shared) / len(shared)
        rows.append({"task": "mixed", "metric": "mean", "candidate": a, "champion": b, "delta": a - b, "note": ""})
    return rows


def comparison_markdown(rows: list[dict[str, Any]], candidate: int | str, champion: int | str) -> str:
    """The comparison as a markdown table (empty string without rows)."""
    if not rows:
        return ""

    def fmt(value: Any, signed: bool = False) -> str:
        return "" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")

    lines = [f"| task | metric | version {candidate} | champion (version {champion}) | difference |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['metric'] or ''} | {fmt(r['candidate'])} | {fmt(r['champion'])} | "
              f"{fmt(r['delta'], True) or r['note']} |" for r in rows]
    return "\n".join(lines)
