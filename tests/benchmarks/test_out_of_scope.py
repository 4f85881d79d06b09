"""Smoke run of the leave-one-task-out out-of-scope benchmark on toy tasks and the tiny BERT."""

from __future__ import annotations

import json


def test_every_task_is_held_out_once_for_every_detector(moe_env, bench_results):
    from benchmarks import out_of_scope

    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    rows = result["rows"]
    assert [(r["held_out"], r["detector"]) for r in rows] == [
        *[(t, d) for t in ("senti", "nli", "quest") for d in ("knn", "fused", "confidence alone")],
        ("**mean**", "knn"), ("**mean**", "fused"), ("**mean**", "confidence alone")]
    for row in rows:
        assert all(0 <= row[k] <= 1 for k in out_of_scope.COLUMNS[2:])
    knn = [r for r in rows[:-3] if r["detector"] == "knn"]
    assert rows[-3]["auroc"] == sum(r["auroc"] for r in knn) / 3
    assert set(result["goals"]) == {"mean_auroc_at_least_0_95", "junk_abstains_at_least_99pct", "false_abstain_at_most_2pct"}
    assert len(out_of_scope.junk_rows()) >= 30
    # --method picks the configured detector: it comes first and sets the goals
    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12", "--method", "fused"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    assert [r["detector"] for r in result["rows"][:3]] == ["fused", "knn", "confidence alone"]
    assert result["detector"]["method"] == "fused"
