"""Smoke run of `make gpu-check` on the CPU: every step's row, on the device asked for, in one table."""

from __future__ import annotations

import json

import pytest
import torch


def test_gpu_check_trains_bundles_and_reports_one_table(moe_env, tiny_llama, bench_results):
    from benchmarks import gpu_check

    gpu_check.main(["--device", "cpu", "--tasks", "senti", "nli", "--bases", moe_env["ref"], tiny_llama,
                    "--max-train-samples", "16", "--skip", "serve_load", "adapter_speed"])
    result = json.loads((bench_results / "gpu_check.json").read_text())
    steps = [(r["step"], r["base"].rstrip("0123456789")) for r in result["rows"]]
    assert steps == [("train senti", "tiny-bert"), ("train nli", "tiny-bert"), ("train senti", "tiny-llama"),
                     ("bundle", "tiny-bert"), ("evaluate", "tiny-bert")]
    assert all(r["device"] == "cpu" and r["seconds"] > 0 and 0 <= r["value"] <= 1 for r in result["rows"])
    assert "| step | base | device |" in (bench_results / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_a_gpu_stops_before_any_work(bench_results, monkeypatch):
    from benchmarks import gpu_check
    from ttlora_moe.errors import BadInput

    monkeypatch.setattr(gpu_check, "train_rows", lambda *a: pytest.fail("trained without the device"))
    with pytest.raises(BadInput, match="torch sees no CUDA device"):
        gpu_check.main([])
