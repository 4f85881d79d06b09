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
