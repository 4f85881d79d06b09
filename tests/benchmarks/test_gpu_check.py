"""Smoke run of `make gpu-check` on the CPU: every step's row, on the device asked for, in one table.

``TTLORA_TEST_DEVICE=cuda`` (``make gpu-test``) runs the same smoke, with tiny models, on a GPU.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml


def test_gpu_check_trains_bundles_and_reports_one_table(moe_env, tiny_llama, bench_results, monkeypatch, tmp_path):
    from benchmarks import gpu_check, serve_load

    from ttlora_moe.devices import resolve_device

    device = str(resolve_device(os.environ.get("TTLORA_TEST_DEVICE", "cpu")))  # cuda -> cuda:0, as the table names it
    params = {**moe_env["params"], "decoder": {"train": {"lr": 0.003}}}  # the second base's profile
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("TTLORA_PARAMS", str(tmp_path / "params.yaml"))

    served = []

    def fake_serve_load(argv):  # the real one starts two MLflow servers (tests/benchmarks/test_serve_load.py)
        served.append(argv)
        bench_results.mkdir(parents=True, exist_ok=True)
        (bench_results / "serve_load.json").write_text(json.dumps(
            {"rows": [{"model": "bundle", "phase": "concurrent", "samples_per_s": 7.0, "x_base": 0.5}]}))

    monkeypatch.setattr(serve_load, "main", fake_serve_load)
    gpu_check.main(["--device", device, "--tasks", "senti", "nli", "--bases", moe_env["ref"], tiny_llama,
                    "--max-train-samples", "16", "--skip", "adapter_speed", "--keep", str(tmp_path / "kept")])
    # served on the bundle's base and tasks (serve_load's own quick tasks are the tests' toy ones)
    assert served == [["--quick", "--device", device, "--base", moe_env["ref"], "--tasks", "senti", "nli"]]
    result = json.loads((bench_results / "gpu_check.json").read_text())
    steps = [(r["step"], r["base"].rstrip("0123456789")) for r in result["rows"]]
    assert steps == [("train senti", "tiny-bert"), ("train nli", "tiny-bert"), ("train senti", "tiny-llama"),
                     ("bundle", "tiny-bert"), ("evaluate", "tiny-bert"), ("serve_load (concurrent)", "tiny-bert")]
    assert all(r["device"] == device and r.get("seconds", 1) > 0 and 0 <= r["value"] <= 1 for r in result["rows"])
    assert result["rows"][-1]["samples_per_s"] == 7.0
    assert "| step | base | device |" in (bench_results / "gpu_check.md").read_text()
    kept = tmp_path / "kept"  # --keep: the experts (senti on the second base too) and the bundle stay
    assert {p.name for p in kept.iterdir()} == {"0-senti", "0-nli", "1-senti", "bundle"}
    lr = {name: json.loads((kept / name / "expert.json").read_text())["train"]["lr"] for name in ("0-senti", "1-senti")}
    assert lr["1-senti"] == 0.003 and lr["0-senti"] != 0.003  # --decoder-profile (default decoder) for the other bases
    metrics = {r["step"]: r["metric"] for r in result["rows"]}
    assert metrics["train senti"] == f"test {json.loads((kept / '0-senti' / 'expert.json').read_text())['metric']}"


def test_a_failing_step_keeps_the_rows_measured_around_it_and_exits_1(moe_env, bench_results, monkeypatch):
    from benchmarks import gpu_check

    def broken(*args):
        raise RuntimeError("Expected all tensors to be on the same device | cuda:0 and cpu")

    monkeypatch.setattr(gpu_check, "evaluate_rows", broken)
    monkeypatch.setattr(gpu_check, "speed_rows", lambda device: [{"step": "adapter_speed (mixture, batch 32)",
                                                                   "device": device, "value": 1.0}])
    with pytest.raises(SystemExit, match=r"1 step\(s\) of the check failed \(evaluate\)"):
        gpu_check.main(["--device", "cpu", "--tasks", "senti", "nli", "--bases", moe_env["ref"],
                        "--max-train-samples", "16", "--skip", "serve_load"])
    rows = json.loads((bench_results / "gpu_check.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["train senti", "train nli", "bundle", "evaluate",
                                         "adapter_speed (mixture, batch 32)"]
    assert rows[3]["metric"] == "failed: RuntimeError: Expected all tensors to be on the same device / cuda:0 and cpu"
    assert "| evaluate | tiny-bert" in (bench_results / "gpu_check.md").read_text()  # the table stays one table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_a_gpu_stops_before_any_work(bench_results, monkeypatch):
    from benchmarks import gpu_check
    from ttlora_moe.errors import BadInput

    monkeypatch.setattr(gpu_check, "train_rows", lambda *a: pytest.fail("trained without the device"))
    with pytest.raises(BadInput, match="torch sees no CUDA device"):
        gpu_check.main([])


def test_an_unknown_task_stops_the_check_before_any_work_and_skips_add_up(moe_env, bench_results, monkeypatch):
    from benchmarks import gpu_check
    from ttlora_moe.errors import BadInput

    monkeypatch.setattr(gpu_check, "train_rows", lambda *a: pytest.fail("trained for an unknown task"))
    with pytest.raises(BadInput, match="unknown task 'zzz'"):
        gpu_check.main(["--device", "cpu", "--tasks", "senti", "zzz"])
    monkeypatch.setattr(gpu_check, "train_rows", lambda *a: ([], []))
    monkeypatch.setattr(gpu_check, "bundle_rows", lambda *a: [])
    monkeypatch.setattr(gpu_check, "serve_rows", lambda *a: pytest.fail("served though skipped"))
    monkeypatch.setattr(gpu_check, "speed_rows", lambda *a: pytest.fail("timed though skipped"))
    # both --skip options count, not only the last one
    assert gpu_check.main(["--device", "cpu", "--tasks", "senti", "--bases", moe_env["ref"], "--skip", "serve_load",
                           "--skip", "adapter_speed"]) == {
        "rows": []}


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_a_benchmark_command_reports_bad_input_in_one_line_and_exits_2(bench_results, capsys, monkeypatch):
    from benchmarks import gpu_check
    from benchmarks.common import run_benchmark

    monkeypatch.setattr(sys, "argv", ["gpu_check", "--device", "cuda:7"])
    with pytest.raises(SystemExit) as stopped:
        run_benchmark(gpu_check.main)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda:7' is not available") and err.count("\n") == 1
