"""Smoke runs of the serving benchmarks (mixed-batch throughput, router scaling)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from ttlora_moe.errors import BadInput

# name: (card fields, row maker); three tasks a router can tell apart (pairs vs single texts, words)
EXTRA_TASKS = {
    "pairs": ({"text": "premise", "text_pair": "hypothesis", "label_names": ["entail", "neutral", "contra"],
               "label_values": [0, 1, 2], "metric": "accuracy"},
              lambda i: {"premise": f"premise the {['cat', 'dog'][i % 2]} {i} sat on the mat",
                         "hypothesis": f"hypothesis it is {['happy', 'sad', 'red'][i % 3]}", "label": i % 3}),
    "quest": ({"text": "sentence", "label_names": ["no", "yes"], "label_values": [0, 1], "metric": "accuracy"},
              lambda i: {"sentence": f"{['what', 'why', 'who', 'where'][i % 4]} is the {i} {['answer', 'question'][i % 2]}",
                         "label": i % 2}),
}


@pytest.fixture()
def serving(project, bench_results, monkeypatch):
    """The toy project plus two more tasks, a private feature cache, one torch thread."""
    for name, (card, make) in EXTRA_TASKS.items():
        folder = project / "mirror" / name
        folder.mkdir(parents=True)
        pd.DataFrame([make(i) for i in range(300)]).to_parquet(folder / "train.parquet")
        pd.DataFrame([make(i) for i in range(1000, 1040)]).to_parquet(folder / "validation.parquet")
        (project / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"source": name, "files": {"train": "train.parquet", "test": "validation.parquet"}, "label": "label", **card}))
    monkeypatch.setenv("TTLORA_CACHE", str(project / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield bench_results
    torch.set_num_threads(before)


def test_mixed_stream_interleaves_the_tasks(serving):
    from benchmarks.moe_throughput import mixed_stream
    from ttlora_moe.params import load_params

    rows, index = mixed_stream(["toy", "pairs", "quest"], 7, load_params())
    assert index == [0, 1, 2, 0, 1, 2, 0]
    assert rows[1]["text_pair"] is not None and rows[0]["text_pair"] is None


def test_moe_throughput_times_every_method_against_the_base(serving):
    from benchmarks import moe_throughput

    moe_throughput.main(["--quick", "--tasks", "toy", "pairs", "quest", "--batch-size", "8", "--batches", "2",
                         "--rounds", "2"])
    result = json.loads((serving / "moe_throughput.json").read_text())
    by = {r["method"]: r for r in result["rows"]}
    assert len(by) == 7 and result["samples"] == 16 and result["batches"] == 2
    assert result["tasks"] == ["toy", "pairs", "quest"] and result["experts"] == "random experts, untrained router"
    base_ms = by["base model alone"]["ms_per_batch"]
    for r in result["rows"]:  # one timing per method, read three ways: 8-row batches, and relative to the base
        assert r["samples_per_s"] > 0 and r["samples_per_s"] * r["ms_per_batch"] / 1000 == pytest.approx(8)
        assert r["time_x_base"] == pytest.approx(r["ms_per_batch"] / base_ms)
    base_mb = by["base model alone"]["weights_mb"]
    assert base_mb < by["bundle (routing + adapted pass)"]["weights_mb"] < by["peft mixed-adapter LoRA (task given)"]["weights_mb"]
    assert by["base model alone, one sample at a time"]["weights_mb"] == base_mb
    assert 0 <= result["padding_share"] < 1
    assert by["naive loop, one sample at a time (task given)"]["weights_mb"] > 2.9 * base_mb  # one model per expert
    assert "| bundle (routing + adapted pass) |" in (serving / "moe_throughput.md").read_text()


def test_router_scaling_trains_each_subset_and_a_joining_task(serving):
    from benchmarks import router_scaling

    router_scaling.main(["--quick", "--tasks", "toy", "pairs", "quest"])
    result = json.loads((serving / "router_scaling.json").read_text())
    assert [r["tasks"] for r in result["rows"]] == [2, 3]  # quick sizes 2 and 4, capped at the 3 tasks
    assert result["rows"][0]["balanced_accuracy"] > 0.9  # single texts vs pairs: trivially told apart
    for row in result["rows"]:
        assert set(row["per_task"]) == set(row["task_names"]) == set(result["order"][: row["tasks"]])
        assert row["balanced_accuracy"] == pytest.approx(sum(row["per_task"].values()) / row["tasks"])
        # abstentions are reported apart from the arg-max accuracy: the toy task's test rows use another template than
        # its training rows, and the out-of-scope detector flags many of them
        assert 0 <= row["abstain_rate"] < 1 and row["worst_task_accuracy"] == min(row["per_task"].values())
        assert row["train_s"] > 0 and row["feature_rows_computed"] == 0  # the cache was filled before
    assert result["cache_fill"]["rows_computed"] > 0
    join = result["join"]
    assert join["joining_task"] == "quest" and join["tasks_after"] == 3
    assert join["first_feature_rows"] > 0 and join["first_features_s"] > 0 and join["retrain_s"] > 0
    assert "**quest joins 2 tasks**" in (serving / "router_scaling.md").read_text()
    with pytest.raises(BadInput, match="at least 2 tasks with data, found 1"):  # no torch.cat of nothing
        router_scaling.main(["--quick", "--tasks", "toy"])
