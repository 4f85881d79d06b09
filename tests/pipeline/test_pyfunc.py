"""The expert and bundle pyfuncs, in process and over REST."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.pipeline.bundles import promote, register_bundle
from ttlora_moe.pipeline.gates import check_gates
from ttlora_moe.pipeline.pyfunc import BasePyfunc


def test_expert_pyfunc_predicts_with_its_labels(registered_experts):
    import mlflow

    model = mlflow.pyfunc.load_model(registered_experts["toy"]["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["the movie 1 was good", "the movie 2 was awful"]}))
    assert list(out["task"]) == ["toy", "toy"] and set(out["label"]) <= {"neg", "pos"}
    assert all(abs(sum(p.values()) - 1) < 1e-5 for p in out["probabilities"])


def test_champion_answers_rest_requests(registry_env, evaluated_bundle):
    """`models:/ttlora-moe@champion` through MLflow's own scoring server app (the one `mlflow models serve` runs)."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    b = evaluated_bundle
    gates = check_gates(b["evaluation"])
    registered = register_bundle(b["dir"], b["evaluation"], gates, b["experts"], b["evaluation_dir"], registry_env["params"])
    promote(registered["version"])
    model = mlflow.pyfunc.load_model("models:/ttlora-moe@champion")
    client = TestClient(scoring_server.init(model))
    body = {"dataframe_records": [{"text": "the movie 3 was good"},
                                  {"text": "what about 5 cat bad question", "text_pair": None}]}
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["task"] for p in predictions] == ["toy", "toy2"]  # routed
    assert all(p["expert_version"] == "1" and p["label"] in ("neg", "pos") and not p["abstained"] for p in predictions)
    assert all(p["abstain_reason"] is None and isinstance(p["out_of_scope_score"], float) for p in predictions)
    assert model.metadata.get_input_schema() is None  # a schema would make MLflow drop unknown fields unseen
    for records, message in (([{"txt": "x"}], "row 0: unknown field(s) ['txt']"),
                             ([{"text": "ok", "txt_pair": "misspelt"}], "row 0: unknown field(s) ['txt_pair']"),
                             ([{"text_pair": "no text"}], "row 0: field 'text' is missing"),
                             ([{"text": "ok"}, {"text": None}], "row 1: field 'text' is null"),
                             ([{"text": "ok"}, {"text": 42}], "row 1: field 'text' is a number"),
                             ([{"text": "ok", "text_pair": 3.5}], "row 0: field 'text_pair' is a number"),
                             ([{"text": "x" * 20_001}], "row 0: field 'text' brings the row to 20,001 characters")):
        response = client.post("/invocations", json={"dataframe_records": records})
        assert response.status_code == 400 and message in response.json()["message"], response.text
    for lone_surrogate in ('{"inputs": ["ok", "a\\ud800"]}', '{"instances": [{"text": "ok"}, {"text": "a\\ud800"}]}'):
        response = client.post("/invocations", content=lone_surrogate, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "row 1: field 'text' holds '\\ud800'" in response.json()["message"]
    # MLflow would prefix the 400 with the whole request (3 MB here); the answer is our message alone
    response = client.post("/invocations", json={"inputs": ["a long review " * 700] * 300 + [None]})
    assert response.status_code == 400 and len(response.content) < 1_000, len(response.content)
    assert response.json()["message"].startswith("row 300 is null"), response.json()["message"]
    assert client.post("/invocations", json={"inputs": "the movie 3 was good"}).json()["predictions"][0]["task"] == "toy"
    assert "the request is a number" in client.post("/invocations", json={"inputs": 5}).json()["message"]
    for body in ({"inputs": ["the movie 3 was good", "the movie 4 was bad"]},
                 {"inputs": [{"text": "the movie 3 was good"}, {"text": "the movie 4 was bad", "text_pair": None}]},
                 {"dataframe_split": {"columns": ["text"], "data": [["the movie 3 was good"], ["the movie 4 was bad"]]}},
                 {"instances": [{"text": "the movie 3 was good"}, {"text": "the movie 4 was bad"}]}):
        response = client.post("/invocations", json=body)
        assert response.status_code == 200 and [p["task"] for p in response.json()["predictions"]] == ["toy", "toy"], body
    empty = client.post("/invocations", json={"dataframe_records": [{"text": ""}, {"text": "the movie 3 was good"}]})
    answers = empty.json()["predictions"]
    assert [p["abstained"] for p in answers] == [True, False]
    assert answers[0]["abstain_reason"] == "empty" and answers[0]["out_of_scope_score"] is None  # null, not NaN


def test_a_full_queue_answers_503_and_a_bad_row_400():
    release = threading.Event()

    def answer(rows):
        release.wait(5)
        return [{"norm": 1.0} for _ in rows]

    model = BasePyfunc()
    model.serve(answer, ServeConfig(max_pending_rows=1, queue_timeout_s=0.1))
    with pytest.raises(MlflowException, match="row 0: field 'text' is null") as bad:
        model.answers([{"text": None}])
    assert bad.value.get_http_status_code() == 400
    bad.value.message = f"Failed to predict data '{'x' * 10_000}'. \nError: {bad.value.message}"  # what MLflow does
    assert bad.value.message.startswith("row 0: field 'text' is null")
    assert json.loads(bad.value.serialize_as_json())["message"] == bad.value.message
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(model.answers, [{"text": "a"}])  # takes the queue's only room
        time.sleep(0.05)
        with pytest.raises(MlflowException, match="serving queue held 1 rows for 0.1 s; retry later") as busy:
            model.answers([{"text": "b"}])
        assert busy.value.get_http_status_code() == 503
        release.set()
        assert first.result(timeout=5) == [{"norm": 1.0}]


def test_the_base_pyfunc_batches_by_length_and_answers_in_order(tiny_bert, tmp_path):
    import json
    from types import SimpleNamespace

    spec = tmp_path / "base.json"
    spec.write_text(json.dumps({"ref": tiny_bert, "max_length": 32, "serve": {"batch_size": 2}}))
    model = BasePyfunc()
    model.load_context(SimpleNamespace(artifacts={"base": str(spec)}))
    texts = ["a much longer movie review with many words in it", "short", "mid length text", "x", "two words"]
    together = model.answers([{"text": t} for t in texts])  # three batches of length-sorted neighbours
    alone = [model.answers([{"text": t}])[0] for t in texts]
    assert [a["norm"] for a in together] == pytest.approx([a["norm"] for a in alone], rel=1e-5)
    assert len({round(a["norm"], 4) for a in alone}) >= 4  # the answers differ, so a wrong order shows
