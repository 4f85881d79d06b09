"""Evaluating a bundle on the mixed test sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.files import read_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(moe_bundle, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(moe_bundle[0], target)
    return target


def test_out_of_scope_task_choice(moe_env):
    from ttlora_moe.moe.evaluate import _out_of_scope_candidates

    assert _out_of_scope_candidates(["a", "b"], "c", preferred="d")[0] == "c"
    assert _out_of_scope_candidates(["senti", "nli"], None, preferred="quest")[0] == "quest"
    with pytest.raises(BadInput, match="out-of-scope task 'a' is in the bundle"):
        _out_of_scope_candidates(["a", "b"], "a")
    # params.yaml's preference is only a preference: a bundle that serves it, or a project without its
    # card (the library default names a GLUE task), gets another task
    assert _out_of_scope_candidates(["senti", "nli", "quest"], None, preferred="nli")[0] == "extra"
    assert _out_of_scope_candidates(["senti", "nli", "quest"], None, preferred="mrpc")[0] == "extra"


def test_an_out_of_scope_task_that_is_a_served_task_again_is_skipped(moe_env, moe_bundle, tmp_path):
    """The same data registered under another name (as `make demo-add-task` registers BoolQ rows) is in
    scope: measuring abstention on it would measure the bundle against itself, so the next task is taken."""
    from ttlora_moe.moe.evaluate import evaluate_bundle
    from ttlora_moe.pipeline.bundle_report import evaluation_table
    from ttlora_moe.pipeline.gates import check_gates

    cards = moe_env["root"] / "tasks"
    (cards / "again.yaml").write_text((cards / "senti.yaml").read_text())  # senti's source under a new name
    try:
        params = {**moe_env["params"], "bundle": {**moe_env["params"]["bundle"], "out_of_scope_task": "again"}}
        report = evaluate_bundle(_copy(moe_bundle, tmp_path), params=params, progress=False, baselines=False)
    finally:
        (cards / "again.yaml").unlink()
    oos = report["out_of_scope"]
    assert oos["skipped"] == ["again and the served task senti share 100% of the smaller one's inputs"]
    assert oos["task"] == "extra" and oos["rows"] > 0 and "out_of_scope_auroc" in report["gates"]
    table = evaluation_table(report, check_gates(report), "m", "1", {})
    assert "Out of scope: not measured on again and the served task senti share 100%" in table


def test_evaluate_bundle_reports_routing_retention_and_abstain(moe_env, moe_bundle, tmp_path):
    from ttlora_moe.moe.evaluate import evaluate_bundle

    b = _copy(moe_bundle, tmp_path)
    report = evaluate_bundle(b, params=moe_env["params"], out_of_scope_task="extra", progress=False)
    assert report["rows"] == 3 * 16 and report["tasks"] == ["senti", "nli", "quest"]
    assert report["router_accuracy"] > 0.9
    for task, v in report["per_task"].items():
        assert {"router_accuracy", "bundle_metric", "expert_metric", "abstain_rate"} <= set(v)
        assert v["routed_agreement"] == 1.0 and v["routed_max_probability_diff"] < 1e-4  # same math as alone
        assert v["rows_key"].endswith(":16:0") and 0 <= v["baseline_metric"] <= 1  # head-only on the same rows
    counts = report["confusion"]["counts"]
    assert [sum(r) for r in counts] == [16, 16, 16] and len(counts[0]) == 4
    assert report["out_of_scope"]["task"] == "extra" and report["out_of_scope"]["rows"] == 12
    assert 0 <= report["abstain_out_of_scope"] <= 1 and 0 <= report["abstain_in_scope"] <= 1
    oos = report["out_of_scope"]
    assert 0 <= oos["auroc"] <= 1 and 0 <= oos["fpr_at_95_tpr"] <= 1
    assert report["mixed_metric"] == pytest.approx(sum(v["bundle_metric"] for v in report["per_task"].values()) / 3)
    gates = report["gates"]  # measured against thresholds and baselines, never against itself
    assert set(gates) == {"router_test_accuracy", "out_of_scope_auroc"} | {f"floor.{t}" for t in report["tasks"]}
    for task, v in report["per_task"].items():
        assert gates[f"floor.{task}"] == {"value": v["bundle_metric"], "min": v["baseline_metric"],
                                          "passed": v["bundle_metric"] >= v["baseline_metric"]}
    for png in ("confusion.png", "per_task.png"):
        assert (b / "evaluation" / png).read_bytes()[:4] == b"\x89PNG"
    assert read_json(b / "evaluation" / "evaluation.json")["mixed_accuracy"] == report["mixed_accuracy"]
    manifest = read_json(b / "manifest.json")
    assert manifest["metrics"]["test"]["router_accuracy"] == report["router_accuracy"]
    assert "router_test_accuracy" in manifest["gates"]
    from ttlora_moe.moe.bundle import load_bundle

    load_bundle(b)  # the report and the recorded metrics do not break verification


def test_a_bundle_with_a_multiple_choice_expert_evaluates_it_with_its_option_head(moe_env, tmp_path, monkeypatch):
    """The mixture answers the quiz rows as the expert alone does, and the floor scores option states too."""
    from tests.toys import add_choice_task, make_random_expert
    from ttlora_moe.moe import baselines
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.evaluate import evaluate_bundle

    project = tmp_path / "project"
    (project / "tasks").mkdir(parents=True)
    add_choice_task(project)
    for task in ("senti", "extra"):  # extra: the out-of-scope task
        shutil.copytree(moe_env["root"] / "mirror" / task, project / "mirror" / task)
        shutil.copy(moe_env["root"] / "tasks" / f"{task}.yaml", project / "tasks" / f"{task}.yaml")
    for key, value in {"TTLORA_DATA_MIRROR": project / "mirror", "TTLORA_TASKS_DIR": project / "tasks",
                       "TTLORA_DATA_DIR": project / "data", "TTLORA_CACHE": project / "cache"}.items():
        monkeypatch.setenv(key, str(value))
    quiz = make_random_expert(tmp_path / "quiz", moe_env["ref"], "quiz", seed=5, labels=list("ABCD"), options=True)
    option_baselines = []
    real = baselines.head_only_baseline
    monkeypatch.setattr(baselines, "head_only_baseline",
                        lambda *a, **kw: option_baselines.append(kw.get("options")) or real(*a, **kw))
    build_bundle([moe_env["experts"]["senti"], quiz], tmp_path / "bundle", params=moe_env["params"], progress=False)
    report = evaluate_bundle(tmp_path / "bundle", params=moe_env["params"], progress=False)
    v = report["per_task"]["quiz"]
    assert v["routed_agreement"] == 1.0 and v["routed_max_probability_diff"] < 1e-4
    assert option_baselines == [0, 4] and 0 <= v["baseline_metric"] <= 1
