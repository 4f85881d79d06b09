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
    assert result["sweep"] == [] and result["sweep_rows"] == []  # no --sweep: no refit of the configured detector
    assert result["base"] == moe_env["ref"]  # params.yaml's
    junk, validation_junk = out_of_scope.junk_rows(), out_of_scope.junk_rows(out_of_scope.VALIDATION_JUNK)
    assert len(junk) >= 30 and len(validation_junk) >= 30  # what a sweep chooses on is never what it reports
    assert not {r["text"] for r in junk} & {r["text"] for r in validation_junk}
    # --method picks the configured detector: it comes first and sets the goals
    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12", "--method", "fused"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    assert [r["detector"] for r in result["rows"][:4]] == ["fused", "knn", "relative", "confidence alone"]
    assert result["detector"]["method"] == "fused"


def test_a_profile_sets_the_router_the_benchmark_trains_and_base_its_base_model(moe_env, bench_results, tiny_llama):
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
        out_of_scope.main(["--tasks", "senti", "nli", "--test-rows", "12", "--profile", "strict", "--base", tiny_llama])
        result = json.loads((bench_results / "out_of_scope.json").read_text())
        assert result["base"] == tiny_llama and result["detector"]["method"] == "knn"  # the profile still holds
        assert f"base {tiny_llama};" in (bench_results / "out_of_scope.md").read_text()
        with pytest.raises(BadInput, match="no profile section 'nope'"):
            out_of_scope.main(["--tasks", "senti", "nli", "--test-rows", "12", "--profile", "nope"])
    finally:
        path.write_text(original)


def test_a_sweep_refits_every_combination_and_chooses_on_validation(moe_env, bench_results):
    import pytest

    from benchmarks import out_of_scope
    from ttlora_moe.errors import BadInput

    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12",
                       "--sweep", "components=2,4", "task_covariance=0,0.5"])
    result = json.loads((bench_results / "out_of_scope.json").read_text())
    combos = [r["options"] for r in result["sweep"]]
    assert sorted(json.dumps(c, sort_keys=True) for c in combos) == sorted(
        json.dumps({"components": c, "task_covariance": t}, sort_keys=True) for c in (2, 4) for t in (0, 0.5))
    assert len(result["sweep_rows"]) == 4 * 3 and all(0 <= r["validation_auroc"] <= 1 for r in result["sweep_rows"])
    assert all(0 <= r["validation_junk_abstain"] <= 1 for r in result["sweep_rows"])
    chosen = result["sweep"][0]  # the validation junk goal first, then the best mean validation AUROC
    meets = [r for r in result["sweep"] if r["validation_junk_abstain"] >= out_of_scope.JUNK_GOAL]
    assert chosen["validation_auroc"] == max(r["validation_auroc"] for r in meets or result["sweep"])
    assert out_of_scope.sweep_table([
        {"held_out": "a", "options": {"k": 1}, "validation_auroc": 0.99, "validation_junk_abstain": 0.9,
         **dict.fromkeys(out_of_scope.COLUMNS[2:], 0.5)},
        {"held_out": "a", "options": {"k": 2}, "validation_auroc": 0.95, "validation_junk_abstain": 1.0,
         **dict.fromkeys(out_of_scope.COLUMNS[2:], 0.5)}])[0]["options"] == {"k": 2}  # the goal outranks AUROC
    mine = [r for r in result["sweep_rows"] if r["options"] == chosen["options"]]
    assert chosen["auroc"] == pytest.approx(sum(r["auroc"] for r in mine) / 3)
    # the configured detector's rows are the ones a run without the sweep gives
    assert [r["detector"] for r in result["rows"][:4]][0] == result["detector"]["method"]
    for bad in (["colour=red"], ["components"], ["task_covariance=2"], ["false_abstain_rate=2"],
                ["false_abstain_rate=some"]):
        with pytest.raises(BadInput):
            out_of_scope.main(["--tasks", "senti", "nli", "--test-rows", "12", "--sweep", *bad])


def test_a_sweep_of_the_false_abstain_rate_moves_the_threshold_only(moe_env, bench_results):
    from benchmarks import out_of_scope

    out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12",
                       "--sweep", "false_abstain_rate=0.01,0.5"])
    rows = json.loads((bench_results / "out_of_scope.json").read_text())["sweep_rows"]
    for held in ("senti", "nli", "quest"):
        low, high = ([r for r in rows if r["held_out"] == held and r["options"] == {"false_abstain_rate": rate}][0]
                     for rate in (0.01, 0.5))
        assert low["auroc"] == high["auroc"] and low["validation_auroc"] == high["validation_auroc"]  # same scores
        assert high["false_abstain_in_scope"] > low["false_abstain_in_scope"]  # a lower threshold
        assert high["abstain_held_out"] >= low["abstain_held_out"] and high["abstain_junk"] >= low["abstain_junk"]


def run_single_pass(moe_env, bench_results, second_look: dict, argv: list[str]) -> dict:
    """The benchmark's results on the three toy tasks, routing after block 1 with ``second_look`` (a profile)."""
    import yaml

    from benchmarks import out_of_scope

    path = moe_env["root"] / "params.yaml"
    original = path.read_text()
    try:
        path.write_text(yaml.safe_dump({**moe_env["params"], "one": {"router": {
            "route_after_layer": 1, "second_look": second_look}}}))
        out_of_scope.main(["--tasks", "senti", "nli", "quest", "--test-rows", "12", "--profile", "one", *argv])
        return json.loads((bench_results / "out_of_scope.json").read_text())
    finally:
        path.write_text(original)


def test_second_look_rows_lead_when_bands_are_given(moe_env, bench_results):
    from benchmarks import out_of_scope

    result = run_single_pass(moe_env, bench_results, {"rate": 0, "source": "plain"},
                             ["--second-look-rates", "0.05", "0.5", "1"])
    rows = result["rows"]
    looks = ["relative + second look 0.05", "relative + second look 0.5", "relative + second look 1"]
    assert [r["detector"] for r in rows[:9]] == [d for look in looks for d in (look, f"{look}, summed")] + [
        "relative", "knn", "fused"]
    assert result["second_look"]["rate"] == 0.05
    shares = [r["looked_in_scope"] for r in rows[:6:2]]
    assert shares[0] <= shares[1] <= shares[2] == 1.0  # a wider band looks at more in-scope rows; rate 1 at all
    mean = {r["detector"]: r for r in rows if r["held_out"] == "**mean**"}
    assert result["goals"]["junk_abstains_at_least_99pct"] == (mean[looks[0]]["abstain_junk"] >= 0.99)
    assert all(0 <= r[k] <= 1 for r in rows for k in out_of_scope.LOOK_COLUMNS[2:] if k in r)


def test_an_adapted_look_trains_the_experts_and_scores_each_row_through_the_one_it_rides_with(moe_env, bench_results):
    import os
    from pathlib import Path

    from benchmarks import out_of_scope

    result = run_single_pass(moe_env, bench_results, {"rate": 1, "source": "adapted"}, ["--expert-samples", "16"])
    experts = Path(os.environ["TTLORA_BENCH_OUTPUTS"]) / "out_of_scope_experts" / "full" / "ttlora"
    assert sorted(p.name for p in experts.iterdir()) == ["nli", "quest", "senti"]  # kept for the next run
    assert json.loads((experts / "nli" / "expert.json").read_text())["tt"]["layers_from"] == 1
    rows = result["rows"]
    assert [r["detector"] for r in rows[:3]] == ["relative + adapted look 1", "relative + adapted look 1, summed", "relative"]
    assert all(0 <= r["validation_auroc"] <= 1 for r in rows[:2])
    assert result["second_look"]["source"] == "adapted"
    assert all(r["looked_in_scope"] == 1.0 for r in rows if "adapted look" in r["detector"])
    assert all(0 <= r[k] <= 1 for r in rows for k in out_of_scope.LOOK_COLUMNS[2:] if k in r)
