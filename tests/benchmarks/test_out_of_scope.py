"""Smoke run of the leave-one-task-out out-of-scope benchmark on toy tasks and the tiny BERT."""

from __future__ import annotations

import json


def test_every_task_is_held_out_once_for_every_detector(moe_env, bench_results):
    from benchmarks import out_of_scope

    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    rows = result["rows"]
    configured = result["detector"]["method"]  # params.yaml's: first, then the other methods on the same router
    order = [configured, *(d for d in out_of_scope.DETECTORS if d != configured), "confidence alone"]
    assert set(order) == {"knn", "fused", "relative", "confidence alone"}
    assert [(r["held_out"], r["detector"]) for r in rows] == [
        *[(t, d) for t in ("senti", "nli", "quest") for d in order], *[("**mean**", d) for d in order]]
    for row in rows:
        assert all(0 <= row[k] <= 1 for k in out_of_scope.COLUMNS[2:])
    knn = [r for r in rows[:-4] if r["detector"] == "knn"]
    assert [r for r in rows[-4:] if r["detector"] == "knn"][0]["auroc"] == sum(r["auroc"] for r in knn) / 3
    assert set(result["goals"]) == {"mean_auroc_at_least_0_95", "junk_abstains_at_least_99pct", "false_abstain_at_most_2pct"}
    assert len(out_of_scope.junk_rows()) >= 30
    # --method picks the configured detector: it comes first and sets the goals
    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12", "--method", "fused"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    assert [r["detector"] for r in result["rows"][:4]] == ["fused", "knn", "relative", "confidence alone"]
    assert result["detector"]["method"] == "fused"


def test_a_profile_sets_the_router_the_benchmark_trains(moe_env, bench_results):
    import pytest
    import yaml

    from benchmarks import out_of_scope
    from ttlora_moe.errors import BadInput

    path = moe_env["root"] / "params.yaml"
    original = path.read_text()
    try:
        path.write_text(yaml.safe_dump({**moe_env["params"], "strict": {"router": {"out_of_scope": {"method": "knn"}}}}))
        out_of_scope.main(["--tasks", "senti", "nli", "--test-rows", "12", "--profile", "strict"])
        result = json.loads((bench_results / "out_of_scope.json").read_text())
        assert result["profile"] == "strict" and result["detector"]["method"] == "knn"
        assert result["rows"][0]["detector"] == "knn"
        with pytest.raises(BadInput, match="no profile section 'nope'"):
            out_of_scope.main(["--tasks", "senti", "nli", "--test-rows", "12", "--profile", "nope"])
    finally:
        path.write_text(original)
