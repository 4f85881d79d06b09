"""Expert runs in MLflow (sqlite store) carry their lineage."""

from __future__ import annotations


def test_expert_run_and_version_carry_lineage(registry_env, registered_experts):
    from mlflow import MlflowClient

    from ttlora_moe.data.prepared import prepared_md5
    from ttlora_moe.provenance import git_commit

    toy = registered_experts["toy"]
    assert toy["model"] == "expert-toy" and toy["version"] == 1 and toy["model_uri"] == "models:/expert-toy/1"
    c = MlflowClient()
    run = c.get_run(toy["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.02" and run.data.params["tt.rank"] == "2"
    md5 = prepared_md5(registry_env["root"] / "data" / "prepared" / "toy")
    for tags in (run.data.tags, c.get_model_version("expert-toy", "1").tags):
        assert tags["task"] == "toy" and tags["data_md5"] == md5 and len(tags["base_fingerprint"]) == 64
        assert tags["git_commit"] == (git_commit() or "unknown")
    assert {"test_accuracy", "test_loss", "trainable_params"} <= set(run.data.metrics)
    curve = c.get_metric_history(toy["run_id"], "val_accuracy")
    assert len(curve) == 2 and sorted(m.step for m in curve) == [3, 6]  # one point per evaluation
    artifacts = {a.path for a in c.list_artifacts(toy["run_id"])}
    assert {"training_curve.png", "expert.json"} <= artifacts


