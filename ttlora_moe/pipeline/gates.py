"""Promotion gates of a bundle evaluation, as checks with values, thresholds and a verdict."""

from __future__ import annotations

from typing import Any


def check_gates(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gates of a bundle evaluation (:func:`ttlora_moe.moe.gates.gates_of` computes them from params.yaml
    ``bundle``, and against the champion in the pipeline), as
    ``{"passed": bool, "checks": [{"gate", "value", "threshold", "kind", "passed"}]}``.
    An evaluation without gates does not pass."""
    checks = []
    for name, gate in sorted((evaluation.get("gates") or {}).items()):
        kind = "min" if "min" in gate else "max"
        checks.append({"gate": name, "value": gate.get("value"), "threshold": gate.get(kind), "kind": kind,
                       "passed": bool(gate.get("passed"))})
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks}


def describe_failed_gates(gates: dict[str, Any]) -> str:
    """One line naming the failed gates, e.g. ``router_test_accuracy 0.912 < 0.950``."""
    if not gates.get("checks"):
        return "no gates were evaluated"
    parts = []
    for c in gates["checks"]:
        if c["passed"]:
            continue
        value = "missing" if c["value"] is None else f"{float(c['value']):.3f}"
        threshold = "?" if c["threshold"] is None else f"{float(c['threshold']):.3f}"
        parts.append(f"{c['gate']} {value} {'<' if c['kind'] == 'min' else '>'} {threshold}")
    return "; ".join(parts) or "none"
