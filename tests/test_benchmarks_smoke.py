"""Small smoke runs of the benchmark scripts on the tiny model and toy task (no timing asserted)."""

from __future__ import annotations

import json


def test_peft_quality_compares_ttlora_lora_and_head_only(project, bench_results):
    """Without the Pfeiffer rows (tests/test_adapters_baselines_smoke.py covers them: they need .venv-adapters)."""
    from benchmarks import peft_quality

    peft_quality.main(["--tasks", "toy", "--samples", "64", "--epochs", "1", "--no-pfeiffer"])
    result = json.loads((bench_results / "peft_quality.json").read_text())
    by_method = {r["method"]: r for r in result["rows"]}
    assert set(by_method) == {"ttlora", "lora", "head-only"} and result["pfeiffer_skipped"] == "--no-pfeiffer"
    assert by_method["head-only"]["trainable_params"] == 0
    assert 0 < by_method["ttlora"]["trainable_params"] < by_method["lora"]["trainable_params"]
    assert all(r["head_params"] > 0 for r in result["rows"])
    table = (bench_results / "peft_quality.md").read_text()
    assert table.count("| toy |") == 3 and "Pfeiffer rows left out: --no-pfeiffer" in table


def test_adapter_speed_reports_every_mode(project, bench_results):
    from benchmarks import adapter_speed

    adapter_speed.main(["--quick"])
    rows = json.loads((bench_results / "adapter_speed.json").read_text())["rows"]
    assert {r["level"] for r in rows} == {"layer", "model"}
    for row in rows:
        assert all(row[f"{m}_ms"] > 0 for m in adapter_speed.MODES)
        assert row["contraction_x"] > 0 and row["merged_x"] > 0
