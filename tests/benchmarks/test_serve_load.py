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


def test_serve_goals_judge_the_bundle_against_the_base_reference():
    from benchmarks.serve_load import serve_goals

    def row(model, phase, rate, x_base, peak_x_idle, errors=0):
        return {"model": model, "phase": phase, "samples_per_s": rate, "x_base": x_base,
                "peak_x_idle": peak_x_idle, "errors": errors}

    rows = [row("base", "sequential", 65.0, 1.0, 1.4), row("base", "concurrent", 60.0, 1.0, 1.7),
            row("bundle", "sequential", 63.0, 0.97, 1.1), row("bundle", "concurrent", 86.0, 1.43, 1.2)]
    assert all(serve_goals(rows).values())  # the base reference's own RSS and concurrency do not count
    slow = rows[:2] + [row("bundle", "sequential", 50.0, 0.77, 1.1), rows[3]]
    assert serve_goals(slow) == {"zero_errors": True, "peak_rss_at_most_1_5x_idle": True,
                                 "bundle_at_least_0_9x_base": False, "concurrent_at_least_sequential": True}
    broken = [{**r, "errors": 1} if r["model"] == "base" else r for r in rows]
    fat = rows[:3] + [row("bundle", "concurrent", 40.0, 0.67, 1.6)]
    assert not serve_goals(broken)["zero_errors"]
    assert serve_goals(fat) == {"zero_errors": True, "peak_rss_at_most_1_5x_idle": False,
                                "bundle_at_least_0_9x_base": False, "concurrent_at_least_sequential": False}


def test_the_concurrent_phase_alternates_the_servers_round_by_round(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import serve_load

    sent: list[tuple[int, list]] = []

    def send(port, part, clients):
        sent.append((port, part))
        return [(0.01 * port, True) for _ in part], 0.5

    class NoRss:
        peak = 100.0

        def __init__(self, pid):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(serve_load, "send", send)
    monkeypatch.setattr(serve_load, "PeakRss", NoRss)
    servers = {"base": SimpleNamespace(port=1, proc=SimpleNamespace(pid=0)),
               "bundle": SimpleNamespace(port=2, proc=SimpleNamespace(pid=0))}
    requests = [[{"text": str(i)}] * (1 + i % 3) for i in range(25)]
    out = serve_load.in_rounds(servers, requests, clients=4, rounds=4)
    assert [port for port, _ in sent] == [1, 2, 2, 1, 1, 2, 2, 1]  # the first server alternates
    for port in (1, 2):  # every request reaches every server once, in order
        assert [r for p, part in sent if p == port for r in part] == requests
    assert out["base"]["requests"] == out["bundle"]["requests"] == 25
    assert out["bundle"]["rows"] == sum(map(len, requests)) and out["base"]["peak_rss_mb"] == 100.0


def test_a_preload_that_is_not_a_file_is_one_error_before_any_work(tmp_path, monkeypatch):
    import pytest

    from benchmarks import serve_load
    from ttlora_moe.errors import BadInput

    monkeypatch.setattr(serve_load, "load_params", lambda **_: pytest.fail("no work before the check"))
    with pytest.raises(BadInput, match="--preload .*none.so is not a file"):
        serve_load.main(["--quick", "--preload", str(tmp_path / "none.so")])
