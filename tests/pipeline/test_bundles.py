"""Registering bundles: gates, aliases and promotion."""

from __future__ import annotations

import json

import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.bundles import promote, register_bundle
from ttlora_moe.pipeline.gates import check_gates, describe_failed_gates


def test_register_bundle_gates_aliases_and_promotion(registry_env, evaluated_bundle):
    from mlflow import MlflowClient


    c = MlflowClient()
    gates = check_gates(evaluated_bundle["evaluation"])
    assert gates["passed"], describe_failed_gates(gates)
    first = register_bundle(evaluated_bundle["dir"], evaluated_bundle["evaluation"], gates, evaluated_bundle["experts"],
                                     evaluated_bundle["evaluation_dir"], registry_env["params"])
    assert first["gates_passed"] and first["aliases"] == ["candidate"]
    version = c.get_model_version("ttlora-moe", str(first["version"]))
    assert version.tags["expert.toy"] == "1" and version.tags["expert.toy2"] == "1"
    assert version.tags["gates_passed"] == "true"
    assert str(c.get_model_version_by_alias("ttlora-moe", "candidate").version) == str(first["version"])
    run_files = {a.path for a in c.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/confusion.png", "evaluation/per_task.png"} <= run_files

    failing = json.loads(json.dumps(evaluated_bundle["evaluation"]))
    failing["gates"]["router_test_accuracy"].update(value=0.4, passed=False)
    bad_gates = check_gates(failing)
    second = register_bundle(evaluated_bundle["dir"], failing, bad_gates, evaluated_bundle["experts"], evaluated_bundle["evaluation_dir"])
    assert not second["gates_passed"] and second["aliases"] == []
    assert str(c.get_model_version_by_alias("ttlora-moe", "candidate").version) == str(first["version"])  # unchanged
    assert "router_test_accuracy 0.400 < 0.500" in c.get_model_version("ttlora-moe", str(second["version"])).tags["gates_failed"]

    with pytest.raises(BadInput, match=f"version {second['version']} failed its gates"):
        promote(second["version"])
    with pytest.raises(BadInput, match="ttlora-moe/99 does not exist"):
        promote(99)
    assert promote(first["version"])["version"] == first["version"]
    forced = promote(second["version"], force=True)
    assert forced["forced"] and forced["previous"] == first["version"]
    assert str(c.get_model_version_by_alias("ttlora-moe", "champion").version) == str(second["version"])
    promote(first["version"])
    assert [r["task"] for r in forced["comparison"]] == ["toy", "toy2", "mixed"]
    assert all(r["delta"] == 0.0 for r in forced["comparison"])  # the same per-task metrics under both versions


def test_a_candidate_is_gated_against_the_champion_on_the_same_rows(registry_env, evaluated_bundle, capsys):
    from ttlora_moe.moe.bundle import bundle_params
    from ttlora_moe.pipeline.champion import (
        champion_version,
        compare_with_champion,
        comparison_markdown,
    )

    evaluation = evaluated_bundle["evaluation"]
    bp = bundle_params(registry_env["params"]["bundle"])
    first = register_bundle(evaluated_bundle["dir"], evaluation, check_gates(evaluation), evaluated_bundle["experts"],
                            evaluated_bundle["evaluation_dir"], registry_env["params"])
    promote(first["version"])
    assert champion_version() == first["version"]

    worse = json.loads(json.dumps(evaluation))
    worse["per_task"]["toy"]["bundle_metric"] -= 0.2  # one task 0.2 below the champion on the same rows
    compared = compare_with_champion(worse, bp)
    assert compared["champion"]["version"] == first["version"] and compared["champion"]["compared"] == ["toy", "toy2"]
    assert not compared["gates"]["vs_champion.toy"]["passed"] and compared["gates"]["vs_champion.toy2"]["passed"]
    assert not compared["gates_passed"] and not check_gates(compared)["passed"]
    assert compare_with_champion(evaluation, bp)["gates_passed"] == evaluation["gates_passed"]  # as good as the champion

    other_rows = json.loads(json.dumps(worse))
    other_rows["per_task"]["toy"]["rows_key"] = "changed-data:40:0"  # its data changed: not compared, and said so
    compared = compare_with_champion(other_rows, bp)
    assert "vs_champion.toy" not in compared["gates"] and compared["champion"]["compared"] == ["toy2"]
    assert "other rows" in compared["champion"]["not_compared"]["toy"]
    table = comparison_markdown(compared["champion"]["rows"], "new", first["version"])
    assert "| toy | accuracy |" in table and "not compared: other rows" in table and "| mixed |" in table

    # the version page shows the comparison
    from mlflow import MlflowClient

    worse_compared = compare_with_champion(worse, bp)
    registered = register_bundle(evaluated_bundle["dir"], worse_compared, check_gates(worse_compared),
                                 evaluated_bundle["experts"], evaluated_bundle["evaluation_dir"], registry_env["params"])
    description = MlflowClient().get_model_version("ttlora-moe", str(registered["version"])).description
    assert "Gates FAILED: " in description and "vs_champion.toy " in description and f"champion (version {first['version']})" in description
    assert "| toy | accuracy |" in description and not registered["gates_passed"]

    # ttlora-moe bundle-show: the same report the flow's artifact and make demo print
    from tests.conftest import run_cli

    code, out, err = run_cli(capsys, "bundle-show", str(registered["version"]))
    assert code == 0, err
    assert f"**ttlora-moe version {registered['version']}**" in out and "| toy | 1 | accuracy |" in out
    assert "gates FAILED: " in out and "aliases: none (gates failed" in out and f"champion (version {first['version']})" in out
    assert f"ttlora-moe promote {registered['version']} --force   (its gates failed" in out
    code, _, err = run_cli(capsys, "bundle-show", "latest")
    assert code == 2 and "is not a version number" in err
