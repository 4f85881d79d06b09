"""`ttlora-moe tasks add` and `ttlora-moe promote`: the JSON contract, every bad input as one line and
exit code 2 with nothing half-registered, a CSV with its own column names, unreachable servers."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import S3_ENV, init_dvc_project
from ttlora_moe.cli import main

WORDS = ["good", "great", "bad", "awful"]


PARAMS = "# params\ntasks: [toy]\nprepare:\n  min_rows: 5\n  validation_max_rows: 60\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC project (local remote) with one registered task, shared by this module's tests."""
    root = tmp_path_factory.mktemp("cli") / "project"
    (root / "data" / "tasks").mkdir(parents=True)
    init_dvc_project(root)
    (root / "params.yaml").write_text(PARAMS)
    (root / "data" / "tasks" / "toy.yaml").write_text(yaml.safe_dump({
        "source": "toy", "text": "sentence", "label": "label", "files": {"train": "train.parquet"},
        "label_names": ["neg", "pos"], "label_values": [0, 1]}))
    data = root.parent / "sources"
    data.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTLORA_PROJECT_DIR", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root.parent}/mlflow.db")
        for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS", "TTLORA_DVC_REMOTE", "TTLORA_S3"):
            mp.delenv(name, raising=False)
        from ttlora_moe.pipeline.dvc_remote import configure_remote, ensure_repo

        ensure_repo(root)
        configure_remote(root=root)
        yield {"root": root, "data": data}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def reviews_csv(folder: Path, name: str = "reviews.csv", rows: int = 120, **overrides) -> Path:
    """Customer reviews with their own column names (not GLUE's): body, headline, rating."""
    df = pd.DataFrame([{"body": f"the movie {i} was {WORDS[i % 4]}", "headline": f"review {i}",
                        "rating": ["negative", "positive"][i % 4 < 2], "stars": 1 + i % 5} for i in range(rows)])
    for column, values in overrides.items():
        df[column] = values
    path = folder / name
    df.to_csv(path, index=False)
    return path


def snapshot(root: Path) -> dict[str, object]:
    """What registering a task may change: cards, raw data, params, DVC pointers and lock."""
    return {"cards": sorted(p.name for p in (root / "data" / "tasks").iterdir()),
            "raw": sorted(p.name for p in (root / "data" / "raw").iterdir()) if (root / "data" / "raw").exists() else [],
            "params": (root / "params.yaml").read_text(),
            "lock": (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else None}


def test_tasks_add_csv_with_own_columns(repo, capsys):
    root = repo["root"]
    csv = reviews_csv(repo["data"])
    code, out, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(csv), "--text", "body",
                             "--text-pair", "headline", "--label", "rating", "--json")
    assert code == 0, err
    assert out.count("\n") == 1
    result = json.loads(out)["registered"]
    assert result["task"] == "reviews" and result["labels"] == ["negative", "positive"]
    assert result["files"] == {"labelled": "reviews.csv"} and sum(result["rows"].values()) == 120
    card = yaml.safe_load((root / "data" / "tasks" / "reviews.yaml").read_text())
    assert card["text"] == "body" and card["text_pair"] == "headline" and card["label"] == "rating"
    assert (root / "data" / "raw" / "reviews.dvc").exists() and (root / "data" / "raw" / "reviews" / "reviews.csv").exists()
    assert (root / "data" / "prepared" / "reviews" / "train.parquet").exists()
    params = (root / "params.yaml").read_text()
    assert params.startswith("# params\n") and yaml.safe_load(params)["tasks"] == ["toy", "reviews"]
    assert "prepare@reviews" in (root / "dvc.lock").read_text()
    assert not list((root / "data" / "raw").glob(".staging-*"))

    # Listed like any other task; registering the same name again is refused unless --replace.
    code, out, _ = run_cli(capsys, "tasks", "list", "--json")
    assert "reviews" in [t["task"] for t in json.loads(out)["tasks"]]
    code, _, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(csv), "--text", "body", "--label", "rating")
    assert code == 2 and "task 'reviews' is already registered" in err and "--replace" in err
    ids = reviews_csv(repo["data"], "ids.csv", rating=[i % 2 for i in range(120)])
    code, out, err = run_cli(capsys, "tasks", "add", "reviews", "--source", str(ids), "--text", "body", "--label", "rating",
                             "--label-names", "bad,good", "--replace", "--json")
    assert code == 0, err
    assert json.loads(out)["registered"]["replaced"] is True
    card = yaml.safe_load((root / "data" / "tasks" / "reviews.yaml").read_text())
    assert card["label_names"] == ["bad", "good"] and card["label_values"] == [0, 1]
    assert yaml.safe_load((root / "params.yaml").read_text())["tasks"] == ["toy", "reviews"]


def _bad(repo, name):  # the sources of the bad-input cases, written on demand
    data = repo["data"]
    if name == "numbers":
        return reviews_csv(data, "numbers.csv")
    if name == "labels":
        return reviews_csv(data, "labels.csv", rating=["positive", "negative", "meh"] * 40)
    if name == "single":
        return reviews_csv(data, "single.csv", rating=["positive"] * 120)
    if name == "few":
        return reviews_csv(data, "few.csv", rows=10)
    return reviews_csv(data, "ok.csv")


@pytest.mark.parametrize("args,message", [
    (["tasks", "add", "nowhere", "--source", "/no/such/file.csv", "--text", "body", "--label", "rating"],
     "dataset path /no/such/file.csv does not exist"),
    (["tasks", "add", "cols", "--source", "{ok}", "--text", "review", "--label", "rating"],
     "column 'review' is not in ok.csv (columns: body, headline, rating, stars)"),
    (["tasks", "add", "nums", "--source", "{numbers}", "--text", "stars", "--label", "rating"],
     "input column 'stars' of numbers.csv is not text"),
    (["tasks", "add", "labs", "--source", "{labels}", "--text", "body", "--label", "rating",
      "--label-names", "positive", "--label-names", "negative"], "labels ['meh'] in column 'rating' are not in --label-names"),
    (["tasks", "add", "one", "--source", "{single}", "--text", "body", "--label", "rating"], "has a single class"),
    (["tasks", "add", "few", "--source", "{few}", "--text", "body", "--label", "rating"], "has 10 rows; at least 15 are needed"),
    (["tasks", "add", "toy", "--source", "{ok}", "--text", "body", "--label", "rating"], "task 'toy' is already registered"),
    (["tasks", "add", "Bad-Name", "--source", "{ok}", "--text", "body", "--label", "rating"], "task name 'Bad-Name' is not a valid identifier"),
])
def test_tasks_add_bad_input_is_one_line_exit_2_nothing_written(repo, capsys, args, message):
    args = [a.format(**{k: _bad(repo, k) for k in ("ok", "numbers", "labels", "single", "few")}) if "{" in a else a
            for a in args]
    before = snapshot(repo["root"])
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert snapshot(repo["root"]) == before
    assert not list((repo["root"] / "data" / "raw").glob(".staging-*"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variable,url,message", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow server at http://127.0.0.1:{port} is unreachable"),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect server at http://127.0.0.1:{port}/api is unreachable"),
])
def test_tasks_add_train_with_a_server_down(repo, capsys, monkeypatch, variable, url, message):
    port = _closed_port()
    monkeypatch.setenv(variable, url.format(port=port))
    before = snapshot(repo["root"])
    code, _, err = run_cli(capsys, "tasks", "add", "down", "--source", str(_bad(repo, "ok")), "--text", "body",
                           "--label", "rating", "--train")
    assert code == 2 and message.format(port=port) in err
    assert snapshot(repo["root"]) == before


def test_tasks_add_with_an_s3_remote_and_no_credentials(repo, capsys, monkeypatch, tmp_path):
    for name in S3_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("TTLORA_DVC_REMOTE", "s3://ttlora-moe/dvc")
    before = snapshot(repo["root"])
    code, _, err = run_cli(capsys, "tasks", "add", "s3task", "--source", str(_bad(repo, "ok")), "--text", "body",
                           "--label", "rating")
    assert code == 2 and "S3 credentials are missing" in err and "AWS_ACCESS_KEY_ID" in err
    assert snapshot(repo["root"]) == before


def test_promote(repo, capsys):
    """Versions registered directly (gates passed / failed) stand in for bundles here; test_registry builds real ones."""
    from mlflow import MlflowClient

    c = MlflowClient()
    c.create_registered_model("ttlora-moe")
    source = repo["root"].parent / "dummy-model"
    source.mkdir(exist_ok=True)
    good = c.create_model_version("ttlora-moe", str(source), tags={"gates_passed": "true"}).version
    bad = c.create_model_version("ttlora-moe", str(source), tags={"gates_passed": "false",
                                                                  "gates_failed": "router_test_accuracy 0.610 < 0.950"}).version
    code, out, err = run_cli(capsys, "promote", str(good), "--json")
    assert code == 0, err
    assert json.loads(out) == {"model": "ttlora-moe", "alias": "champion", "version": int(good), "previous": None,
                               "gates_passed": True, "forced": False, "model_uri": "models:/ttlora-moe@champion"}
    code, out, err = run_cli(capsys, "promote", str(bad))
    assert code == 2 and out == ""
    assert f"version {bad} failed its gates (router_test_accuracy 0.610 < 0.950)" in err and "--force" in err
    assert str(c.get_model_version_by_alias("ttlora-moe", "champion").version) == str(good)
    code, out, _ = run_cli(capsys, "promote", str(bad), "--force")
    assert code == 0 and f"ttlora-moe@champion -> version {bad} (was version {good})" in out
    code, _, err = run_cli(capsys, "promote", "42")
    assert code == 2 and "model version ttlora-moe/42 does not exist (known versions: 1, 2)" in err
    code, _, err = run_cli(capsys, "promote", "latest")
    assert code == 2 and "is not a version number" in err
