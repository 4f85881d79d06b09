"""Smoke run of the serving load benchmark: real `mlflow models serve` processes, concurrent clients."""

from __future__ import annotations

import json


def test_serve_load_serves_the_bundle_and_the_base_under_concurrent_load(project, bench_results):
    from benchmarks import serve_load

    serve_load.main(["--quick", "--requests", "40", "--sequential", "8", "--max-rows", "8"])
    result = json.loads((bench_results / "serve_load.json").read_text())
    rows = {(r["model"], r["phase"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in ("base", "bundle") for p in ("sequential", "concurrent")}
    for row in rows.values():
        assert row["errors"] == 0 and row["rows"] >= row["requests"]
        assert 0 < row["idle_rss_mb"] <= row["peak_rss_mb"] and row["p50_ms"] <= row["p99_ms"]
    assert rows[("bundle", "concurrent")]["x_base"] == rows[("bundle", "concurrent")]["samples_per_s"] / \
        rows[("base", "concurrent")]["samples_per_s"]
    assert result["goals"]["zero_errors"] is True
