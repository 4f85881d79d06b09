"""The MLflow side on a sqlite tracking store: expert runs and versions with lineage, resolving experts
for a bundle, bundle versions with pinned experts and gates, promotion, and the pyfunc over REST."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.bundles import promote, register_bundle
from ttlora_moe.pipeline.gates import check_gates, describe_failed_gates
from ttlora_moe.pipeline.models import has_version, resolve_experts

WORDS = ["good", "great", "bad", "awful"]


def write_task(root: Path, name: str, template: str, rows: int = 240) -> None:
    """A toy binary task in the mirror plus its card; ``template`` makes its inputs recognisable."""
    mirror = root / "mirror" / name
    mirror.mkdir(parents=True)
    pd.DataFrame([{"sentence": template.format(i=i, w=WORDS[i % 4]), "label": int(i % 4 < 2)} for i in range(rows)]
                 ).to_parquet(mirror / "train.parquet")
    pd.DataFrame([{"sentence": template.format(i=10_000 + i, w=WORDS[i % 4]), "label": int(i % 4 < 2)} for i in range(40)]
                 ).to_parquet(mirror / "validation.parquet")
    (root / "data" / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "data" / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump({
        "source": name, "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "sentence",
        "label": "label", "label_names": ["neg", "pos"], "label_values": [0, 1]}))


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bert):
    """A project with two toy tasks, tiny budgets, the tiny BERT and a fresh sqlite MLflow store."""
    root = tmp_path_factory.mktemp("registry-project")
    write_task(root, "toy", "the movie {i} was {w}")
    write_task(root, "toy2", "what about {i} cat {w} question")
    params = {"tasks": ["toy", "toy2"], "base_model": {"ref": tiny_bert}, "tt": {"rank": 2, "alpha": 4.0},
              "prepare": {"min_rows": 5, "validation_max_rows": 60},
              "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_train_samples": 96, "evals_per_epoch": 2},
              "router": {"max_epochs": 10}, "bundle": {"test_per_task": 40, "min_router_accuracy": 0.5}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTLORA_PROJECT_DIR", str(root))
        mp.setenv("TTLORA_DATA_MIRROR", str(root / "mirror"))
        mp.setenv("TTLORA_CACHE", str(root / "cache"))
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        yield {"root": root, "params": params}
        mlflow.set_tracking_uri(None)


def train_registered(task: str, params: dict) -> dict:
    from ttlora_moe.experts.job import train_expert
    from ttlora_moe.pipeline.tracking import expert_run

    with expert_run(task, params) as run:
        summary = train_expert(task, Path(os.environ["TTLORA_PROJECT_DIR"]) / "experts" / task, params=params,
                               progress=False, on_eval=run.log_eval)
        return run.register(summary)


@pytest.fixture(scope="module")
def experts(env):
    return {t: train_registered(t, env["params"]) for t in ("toy", "toy2")}


def test_expert_run_and_version_carry_lineage(env, experts):
    from mlflow import MlflowClient

    from ttlora_moe.data.prepared import prepared_md5
    from ttlora_moe.provenance import git_commit

    toy = experts["toy"]
    assert toy["model"] == "expert-toy" and toy["version"] == 1 and toy["model_uri"] == "models:/expert-toy/1"
    c = MlflowClient()
    run = c.get_run(toy["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.02" and run.data.params["tt.rank"] == "2"
    md5 = prepared_md5(env["root"] / "data" / "prepared" / "toy")
    for tags in (run.data.tags, c.get_model_version("expert-toy", "1").tags):
        assert tags["task"] == "toy" and tags["data_md5"] == md5 and len(tags["base_fingerprint"]) == 64
        assert tags["git_commit"] == (git_commit() or "unknown")
    assert {"test_accuracy", "test_loss", "trainable_params"} <= set(run.data.metrics)
    curve = c.get_metric_history(toy["run_id"], "val_accuracy")
    assert len(curve) == 2 and sorted(m.step for m in curve) == [3, 6]  # one point per evaluation
    artifacts = {a.path for a in c.list_artifacts(toy["run_id"])}
    assert {"training_curve.png", "expert.json"} <= artifacts


def test_expert_pyfunc_predicts_with_its_labels(experts):
    import mlflow

    model = mlflow.pyfunc.load_model(experts["toy"]["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["the movie 1 was good", "the movie 2 was awful"]}))
    assert list(out["task"]) == ["toy", "toy"] and set(out["label"]) <= {"neg", "pos"}
    assert all(abs(sum(p.values()) - 1) < 1e-5 for p in out["probabilities"])


def test_resolve_experts_latest_pinned_alias(env, experts, tmp_path):
    from mlflow import MlflowClient


    got = resolve_experts(tmp_path / "a")
    assert [(e["task"], e["version"]) for e in got] == [("toy", 1), ("toy2", 1)]
    assert all((Path(e["dir"]) / "adapter.safetensors").exists() for e in got)
    with pytest.raises(BadInput, match=r"expert-toy/7 does not exist \(known versions: 1\)"):
        resolve_experts(tmp_path / "b", versions={"toy": 7})
    with pytest.raises(BadInput, match="no version with alias 'prod'"):
        resolve_experts(tmp_path / "c", tasks=["toy"], alias="prod")
    MlflowClient().set_registered_model_alias("expert-toy", "prod", "1")
    assert resolve_experts(tmp_path / "d", tasks=["toy"], alias="prod")[0]["version"] == 1
    with pytest.raises(BadInput, match="task 'nope' has no registered expert"):
        resolve_experts(tmp_path / "e", tasks=["nope"])


@pytest.fixture(scope="module")
def bundle(env, experts, tmp_path_factory):
    """Build and evaluate a bundle of the two registered experts."""
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.evaluate import evaluate_bundle

    work = tmp_path_factory.mktemp("bundle")
    resolved = resolve_experts(work / "experts")
    build_bundle([Path(e["dir"]) for e in resolved], work / "bundle", params=env["params"],
                 versions={e["task"]: str(e["version"]) for e in resolved}, progress=False)
    evaluation = evaluate_bundle(work / "bundle", params=env["params"], output=work / "evaluation", progress=False)
    return {"dir": work / "bundle", "evaluation_dir": work / "evaluation", "evaluation": evaluation, "experts": resolved}


def test_register_bundle_gates_aliases_and_promotion(env, bundle):
    from mlflow import MlflowClient


    c = MlflowClient()
    gates = check_gates(bundle["evaluation"])
    assert gates["passed"], describe_failed_gates(gates)
    first = register_bundle(bundle["dir"], bundle["evaluation"], gates, bundle["experts"],
                                     bundle["evaluation_dir"], env["params"])
    assert first["gates_passed"] and first["aliases"] == ["candidate"]
    version = c.get_model_version("ttlora-moe", str(first["version"]))
    assert version.tags["expert.toy"] == "1" and version.tags["expert.toy2"] == "1"
    assert version.tags["gates_passed"] == "true"
    assert str(c.get_model_version_by_alias("ttlora-moe", "candidate").version) == str(first["version"])
    run_files = {a.path for a in c.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/confusion.png", "evaluation/per_task.png"} <= run_files

    failing = json.loads(json.dumps(bundle["evaluation"]))
    failing["gates"]["router_test_accuracy"].update(value=0.4, passed=False)
    bad_gates = check_gates(failing)
    second = register_bundle(bundle["dir"], failing, bad_gates, bundle["experts"], bundle["evaluation_dir"])
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


def test_champion_answers_rest_requests(env, bundle):
    """`models:/ttlora-moe@champion` through MLflow's own scoring server app (the one `mlflow models serve` runs)."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server


    if not has_version("ttlora-moe", 1):
        pytest.skip("needs the bundle registered by the previous test")
    model = mlflow.pyfunc.load_model("models:/ttlora-moe@champion")
    client = TestClient(scoring_server.init(model))
    body = {"dataframe_records": [{"text": "the movie 3 was good"},
                                  {"text": "what about 5 cat bad question", "text_pair": None}]}
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["task"] for p in predictions] == ["toy", "toy2"]  # routed
    assert all(p["expert_version"] == "1" and p["label"] in ("neg", "pos") and not p["abstained"] for p in predictions)
    bad = client.post("/invocations", json={"dataframe_records": [{"txt": "x"}]})
    assert bad.status_code == 400 and "text" in bad.text
