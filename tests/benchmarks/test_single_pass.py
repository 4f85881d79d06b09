"""Smoke run of the single-pass benchmark."""

from __future__ import annotations

import json

import pytest

from tests.toys import add_pair_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_benchmark_quick_compares_two_pass_and_single_pass(project, bench_results, monkeypatch, tmp_path, capsys):
    from benchmarks import single_pass

    add_pair_task(project)
    monkeypatch.setenv("TTLORA_CACHE", str(tmp_path / "cache"))
    args = ["--quick", "--tasks", "toy", "pairs", "--ks", "1", "--batches", "2", "--batch-size", "8",
            "--repeats", "2", "--test-per-task", "16", "--router-rows", "60"]
    single_pass.main(args)
    assert "reusing" not in capsys.readouterr().err
    single_pass.main(args)  # the experts were kept: a re-run (or another k) trains nothing again
    assert capsys.readouterr().err.count("reusing") == 4
    result = json.loads((bench_results / "single_pass.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"base", "two-pass", "single-pass k=1"}
    assert rows["single-pass k=1"]["routing"] == {"mode": "single-pass", "route_after_layer": 1}
    assert rows["two-pass"]["routing"] == {"mode": "two-pass", "route_after_layer": None}
    for name in ("two-pass", "single-pass k=1"):
        assert 0 <= rows[name]["mixed_accuracy"] <= 1 and 0 <= rows[name]["router_accuracy"] <= 1
        assert rows[name]["samples_per_s"] > 0
        assert rows[name]["x_base"] == pytest.approx(rows[name]["samples_per_s"] / rows["base"]["samples_per_s"])
    assert "| single-pass k=1 |" in (bench_results / "single_pass.md").read_text()
