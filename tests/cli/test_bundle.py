"""`ttlora-moe build-bundle`, `evaluate` and `predict`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.toys import (
    moe_rows,
    router_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_build_evaluate_predict(moe_env, tmp_path, capsys, monkeypatch):
    e = moe_env["experts"]
    out = tmp_path / "cli-bundle"
    code, stdout, _ = run_cli(capsys, "build-bundle", "--experts", e["senti"], e["quest"], "--output", out, "--json")
    assert code == 0 and stdout.count("\n") == 1
    result = json.loads(stdout)
    assert result["experts"] == ["senti", "quest"]
    assert result["cache_hits"] + result["cache_misses"] == router_rows(moe_env, "senti", "quest")

    code, stdout, _ = run_cli(capsys, "evaluate", "--bundle", out, "--test-per-task", 8, "--json")
    assert code == 0 and stdout.count("\n") == 1
    report = json.loads(stdout)
    assert {"router_accuracy", "per_task", "mixed_accuracy", "abstain_in_scope", "abstain_out_of_scope"} <= set(report)
    assert {"router_accuracy", "bundle_metric", "expert_metric"} <= set(report["per_task"]["quest"])

    inputs = tmp_path / "in.jsonl"
    rows = moe_rows("quest", 1) + moe_rows("senti", 1)
    inputs.write_text(json.dumps({"text": rows[0]["text"], "id": 7}) + "\n\n"
                      + json.dumps({"text": rows[1]["text"], "txt_pair": None}) + "\n")
    first = moe_rows("senti", 1, 7)[0]["text"]
    code, stdout, err = run_cli(capsys, "predict", "--bundle", out, first, "--file", inputs, "--json")
    assert code == 0 and stdout.count("\n") == 1
    assert "in.jsonl has fields that are not read: id, txt_pair" in err
    predictions = json.loads(stdout)["predictions"]
    from ttlora_moe.moe.bundle import load_moe

    expected = load_moe(out).predict([{"text": first, "text_pair": None}] + rows)
    assert [p["text"] for p in predictions] == [first, rows[0]["text"], rows[1]["text"]]
    assert [{k: v for k, v in p.items() if k not in ("text", "text_pair")} for p in predictions] == json.loads(
        json.dumps(expected))
    assert {p["task"] for p in predictions} <= {"senti", "quest", None}
    code, stdout, _ = run_cli(capsys, "predict", "--bundle", out, first)
    assert code == 0 and stdout.startswith(("senti: ", "quest: ", "no expert fits")) and stdout.count("\n") == 1

    (out / "router.json").write_text((out / "router.json").read_text().replace('"kind"', '"kind" ', 1))
    code, stdout, err = run_cli(capsys, "predict", "--bundle", out, "the film was awful", "--json")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and stdout == "" and len(errors) == 1 and "router.json does not match its sha256" in errors[0]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_pair": "x"}\n')
    code, _, err = run_cli(capsys, "predict", "--bundle", out, "--file", bad)
    assert code == 2 and "bad.jsonl:1" in err
    bad.write_text('{"text": "fine"}\n{"text": "ok", "text_pair": "a\\udc00"}\n')  # JSON's escape of half a pair
    code, _, err = run_cli(capsys, "predict", "--bundle", out, "--file", bad)
    assert code == 2 and "bad.jsonl:2: \"text_pair\" holds '\\udc00' at character 1, half of a surrogate pair" in err
    code, _, err = run_cli(capsys, "predict", "--bundle", out, "fine", b"b\xff".decode(errors="surrogateescape"))
    assert code == 2 and "argument 2 holds '\\udcff' at character 1" in err  # argv bytes that are not UTF-8
    code, _, err = run_cli(capsys, "build-bundle", "--experts", tmp_path / "nope", "--output", tmp_path / "x")
    assert code == 2 and "expert.json does not exist" in err
