"""Gates: every one compares the bundle with something independent of it (thresholds, floors, the champion)."""

from __future__ import annotations

from ttlora_moe.moe.gates import comparable_tasks, gates_of

BUNDLE = {"min_router_accuracy": 0.9, "min_out_of_scope_auroc": 0.8, "floors": {"b": 0.5}, "floor_margin": 0.02,
          "max_task_drop": 0.01}


def evaluation(metrics: dict[str, float], router: float = 0.95, auroc: float | None = 0.9, key: str = "k") -> dict:
    return {"router_accuracy": router, "out_of_scope": {"task": "oos", "auroc": auroc},
            "per_task": {t: {"bundle_metric": m, "baseline_metric": 0.6, "rows_key": key} for t, m in metrics.items()}}


def test_thresholds_and_floors():
    gates = gates_of(evaluation({"a": 0.7, "b": 0.45}), BUNDLE)
    assert gates["router_test_accuracy"] == {"value": 0.95, "min": 0.9, "passed": True}
    assert gates["out_of_scope_auroc"]["passed"]
    assert gates["floor.a"] == {"value": 0.7, "min": 0.6 - 0.02, "passed": True}  # the head-only baseline, less the margin
    assert gates["floor.b"] == {"value": 0.45, "min": 0.5, "passed": False}  # params.yaml's floor wins
    assert not gates_of(evaluation({"a": 0.5}, router=0.8), BUNDLE)["router_test_accuracy"]["passed"]
    unread = gates_of(evaluation({"a": 0.7}, auroc=None), BUNDLE)["out_of_scope_auroc"]  # its rows could not be read
    assert unread == {"value": None, "min": 0.8, "passed": False}
    no_other_task = evaluation({"a": 0.7}, auroc=None)
    no_other_task["out_of_scope"]["task"] = None  # the bundle serves every task there is: nothing to measure
    assert "out_of_scope_auroc" not in gates_of(no_other_task, BUNDLE)


def test_the_champion_is_compared_on_the_same_rows_only():
    candidate = evaluation({"a": 0.70, "b": 0.60, "new": 0.9})
    champion = evaluation({"a": 0.72, "b": 0.60, "old": 0.9})
    champion["per_task"]["b"]["rows_key"] = "other data version"
    assert comparable_tasks(candidate, champion) == ["a"]
    gates = gates_of(candidate, BUNDLE, champion)
    assert gates["vs_champion.a"] == {"value": 0.70, "min": 0.72 - 0.01, "passed": False}  # dropped 2 points
    assert "vs_champion.b" not in gates and "vs_champion.new" not in gates
    assert gates["vs_champion.mixed"]["value"] == 0.70 and not gates["vs_champion.mixed"]["passed"]
    better = gates_of(evaluation({"a": 0.715, "b": 0.6}), BUNDLE, champion)
    assert better["vs_champion.a"]["passed"] and better["vs_champion.mixed"]["passed"]  # within the margin
