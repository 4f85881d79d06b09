"""`ttlora-moe train-expert`: the JSON contract, the baseline, bad input, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import run_cli

REQUIRED = {"task", "test_accuracy", "trainable_params", "lora_r16_params", "train_seconds", "artifact"}


def test_train_expert_json_prints_one_object(project, capsys):
    code, out, _ = run_cli(capsys, "train-expert", "toy", "--output", str(project / "e"), "--json")
    assert code == 0
    result = json.loads(out)
    assert out.count("\n") == 1 and REQUIRED <= set(result)
    assert result["kind"] == "ttlora" and 0 < result["trainable_params"] < result["lora_r16_params"]
    assert "f1" in result["test_metrics"]
    assert (project / "e" / "expert.json").exists() and (project / "e" / "adapter.safetensors").exists()
    assert not (project / ".e.checkpoint").exists()


def test_a_profile_replaces_what_it_sets(project, capsys, monkeypatch):
    path = os.environ["TTLORA_PARAMS"]
    params = yaml.safe_load(open(path))
    params["tiny"] = {"train": {"max_train_samples": 8}}
    with open(path, "w") as out:
        yaml.safe_dump(params, out)
    code, out, err = run_cli(capsys, "train-expert", "toy", "--profile", "tiny", "--output", str(project / "p"), "--json")
    assert code == 0, err
    assert json.loads((project / "p" / "expert.json").read_text())["data"]["train_rows"] == 8


def test_head_only_baseline(project, capsys):
    code, out, _ = run_cli(capsys, "train-expert", "toy", "--head-only", "--output", str(project / "h"), "--json")
    result = json.loads(out)
    assert code == 0 and result["kind"] == "head-only" and result["trainable_params"] == 0


@pytest.mark.parametrize("args,message", [
    (["train-expert", "nope"], "unknown task 'nope'"),
    (["train-expert", "toy", "--base-model", "/no/such/model"], "base model path /no/such/model does not exist"),
    (["train-expert", "toy", "--base-model", "pkg:no_such_package/model"], "package 'no_such_package' is not installed"),
    (["train-expert", "toy", "--profile", "nope"], "params.yaml has no profile section 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(project, capsys, args, message):
    code, out, err = run_cli(capsys, *args, "--output", str(project / "bad"))
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (project / "bad").exists()


def test_missing_mirror_and_broken_card(project, capsys, monkeypatch):
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(project / "nowhere"))
    code, _, err = run_cli(capsys, "train-expert", "toy")
    assert code == 2 and "does not exist" in err
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(project / "mirror"))
    card = project / "tasks" / "toy.yaml"
    card.write_text(card.read_text().replace("text: sentence", "text: review"))
    code, _, err = run_cli(capsys, "train-expert", "toy")
    assert code == 2 and "column 'review'" in err


def test_sigkill_mid_training_then_rerun_resumes(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update({"max_train_samples": 480, "batch_size": 2, "checkpoint_every": 5, "epochs": 1})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "ttlora_moe.cli", "train-expert", "toy", "--output", str(project / "k"), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
    state = project / ".k.checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (project / "k").exists()  # nothing half-written

    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["resumed_from_step"] >= 20 and result["steps"] == 240
    assert "resuming from step" in done.stderr
