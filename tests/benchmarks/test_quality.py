"""Smoke runs of the quality and speed benchmarks on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import read_expert_meta
from ttlora_moe.params import load_params


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


def test_peft_quality_repeats_every_method_per_seed_and_summarises(project, bench_results):
    from benchmarks import peft_quality

    result = peft_quality.main(["--tasks", "toy", "--samples", "32", "--epochs", "1", "--no-pfeiffer", "--seeds", "0", "5"])
    assert sorted((r["method"], r["seed"]) for r in result["rows"]) == sorted(
        (m, s) for m in peft_quality.METHODS for s in (0, 5))
    kept = bench_results.parent / "bench-outputs" / "bench_experts" / "full"
    assert (kept / "ttlora" / "toy" / "expert.json").exists()  # params.yaml's seed: where fusion_vs_moe looks
    assert (kept / "seed-5" / "ttlora" / "toy" / "expert.json").exists()
    by_method = {s["method"]: s for s in result["summary"]}
    runs = {(r["method"], r["seed"]): r["test_metric"] for r in result["rows"]}
    for method, row in by_method.items():
        assert row["seeds"] == 2 and row["mean"] == pytest.approx((runs[(method, 0)] + runs[(method, 5)]) / 2)
        assert row["min"] <= row["mean"] <= row["max"]
    assert by_method["ttlora"]["ttlora_minus_lora"] == pytest.approx(by_method["ttlora"]["mean"] - by_method["lora"]["mean"])
    assert by_method["lora"]["ttlora_minus_lora"] is None
    table = (bench_results / "peft_quality.md").read_text()
    assert "Seeds 0, 5 of 0, 5" in table and table.count("| toy |") == 3 + 6


def test_peft_quality_summary_spread():
    from benchmarks.peft_quality import summary

    rows = [{"task": "t", "method": m, "metric": "f1", "test_metric": v, "seed": s}
            for m, values in {"ttlora": (0.5, 0.7), "lora": (0.4, 0.4)}.items() for s, v in enumerate(values)]
    out = {r["method"]: r for r in summary(rows)}
    assert out["ttlora"]["std"] == pytest.approx(0.1414, abs=1e-4) and out["lora"]["std"] == 0.0
    assert out["ttlora"]["ttlora_minus_lora"] == pytest.approx(0.2)


def test_tt_study_changes_one_setting_per_row_and_reuses_peft_qualitys_models(project, bench_results):
    from benchmarks import peft_quality, tt_study

    budget = ["--samples", "32", "--epochs", "1"]
    peft_quality.main(["--tasks", "toy", *budget, "--no-pfeiffer"])
    kept = bench_results.parent / "bench-outputs" / "bench_experts" / "full"
    default_mtime = (kept / "ttlora" / "toy" / "expert.json").stat().st_mtime_ns
    head_mtime = (kept / "head-only" / "toy" / "expert.json").stat().st_mtime_ns
    rows = {r["variant"]: r for r in tt_study.main(
        ["--task", "toy", *budget, "--variants", "default", "rank-8", "qkvo-r3", "qv-ffn-r3", "lora", "head-only"])["rows"]}
    assert (kept / "ttlora" / "toy" / "expert.json").stat().st_mtime_ns == default_mtime  # reused, not retrained
    assert (kept / "head-only" / "toy" / "expert.json").stat().st_mtime_ns == head_mtime
    assert rows["head-only"]["trainable_params"] < rows["default"]["trainable_params"]
    assert (kept / "tt_study" / "qkvo-r3" / "ttlora" / "toy" / "expert.json").exists()
    assert rows["default"]["delta_vs_default"] == 0.0
    assert rows["default"]["trainable_params"] < rows["rank-8"]["trainable_params"] < rows["lora"]["trainable_params"]
    adapted = {name: list(load_file(kept / "tt_study" / name / "ttlora" / "toy" / "adapter.safetensors"))
               for name in ("qkvo-r3", "qv-ffn-r3")}
    assert any(".attention.output.dense.tt_cores." in k for k in adapted["qkvo-r3"])
    assert any(".intermediate.dense.tt_cores." in k for k in adapted["qv-ffn-r3"])
    assert "| qv-ffn-r3 |" in (bench_results / "tt_study.md").read_text()
    # a named run (another task or budget) leaves the default results alone; its experts are reused too
    tt_study.main(["--task", "toy", *budget, "--variants", "default", "--results", "tt_study_toy"])
    assert "| default |" in (bench_results / "tt_study_toy.md").read_text()
    # another seed trains its own expert, in its own folder, on its own rows
    other = tt_study.main(["--task", "toy", *budget, "--variants", "default", "--seed", "7", "--results", "tt_study_toy"])
    assert read_expert_meta(kept / "seed-7" / "ttlora" / "toy")["train"]["seed"] == 7
    assert (kept / "ttlora" / "toy" / "expert.json").stat().st_mtime_ns == default_mtime
    assert "seed 7," in (bench_results / "tt_study_toy.md").read_text() and len(other["rows"]) == 1
    assert "| qv-ffn-r3 |" in (bench_results / "tt_study.md").read_text()
    # LoRA at its own lr, under a profile: both reach the trained expert
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump({**params, "wide": {"tt": {"layers_from": 1}}}))
    tt_study.main(["--task", "toy", *budget, "--variants", "lora-lr-5e-4", "--profile", "wide",
                   "--results", "tt_study_toy"])
    tuned = read_expert_meta(kept / "tt_study" / "lora-lr-5e-4" / "lora" / "toy")
    assert tuned["train"]["lr"] == 5e-4 and tuned["tt"]["layers_from"] == 1
    with pytest.raises(BadInput, match="unknown variant"):
        tt_study.main(["--task", "toy", "--variants", "rank-3"])


def test_adapter_speed_reports_every_mode(project, bench_results):
    from benchmarks import adapter_speed

    adapter_speed.main(["--quick"])
    rows = json.loads((bench_results / "adapter_speed.json").read_text())["rows"]
    assert {r["level"] for r in rows} == {"layer", "model", "mixture of 2"}
    for row in rows:
        modes = adapter_speed.MIXTURE_MODES if row["level"].startswith("mixture") else adapter_speed.MODES
        assert all(row[f"{m}_ms"] > 0 for m in modes)
        for m in modes[1:]:  # paired by round (benchmarks.common.paired_ratios), so not a ratio of the medians
            assert row[f"{m}_x"] > 0
        if row["level"].startswith("mixture"):  # also against the base as one task's classifier, and its forward alone
            assert row["auto_vs_classifier_x"] > 0 and row["auto_forward_x"] > 0
            assert row["base_ms"] > 0 and row["base_again_ms"] > 0 and row["base_again_x"] > 0  # the noise control


def test_fusion_vs_moe_puts_our_bundle_beside_adapterfusion_on_the_same_rows(project, bench_results, tmp_path):
    """Our side for real (experts kept by peft_quality, bundle, evaluation); the `adapters` side from a result file."""
    from benchmarks import fusion_vs_moe, peft_quality

    # the toy task's test rows use another template than its train/validation rows ("a film ... is" vs "the movie
    # ... was"): the out-of-scope detector rightly flags them, so this comparison of answers turns abstention off
    params_path = project / "params.yaml"
    params_path.write_text(yaml.safe_dump({**yaml.safe_load(params_path.read_text()), "router": {"false_abstain_rate": 0.0}}))
    budget = ["--tasks", "toy", "--samples", "64", "--epochs", "1"]
    peft_quality.main([*budget, "--no-pfeiffer"])
    expert = bench_results.parent / "bench-outputs" / "bench_experts" / "full" / "ttlora" / "toy" / "expert.json"
    mtime = expert.stat().st_mtime_ns
    rows = fusion_vs_moe.mixed_test_rows(["toy"], load_params(), 10)
    assert len(rows["toy"]) == 10 and rows["toy"] == sorted(rows["toy"])
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({
        "config": {"tasks": ["toy"], "samples": 64, "epochs": 1, "fusion_samples": 16},
        "pfeiffer": [{"task": task, "method": "pfeiffer", "metric": "f1", "test_metric": 0.5, "test_accuracy": 0.6,
                      "mixed_test_rows": n, "mixed_test_accuracy": acc, "adapter_params": 100, "head_params": 10,
                      "trainable_params": trainable, "train_samples_per_s": 9.0, "lr": 1e-3}
                     for task, n, acc, trainable in (("toy", 10, 0.7, 110), ("other", 30, 0.3, 90))],
        "fusion": {"mixed_accuracy": 0.4, "head_classes": 3, "train_rows": 16, "trainable_params": 50,
                   "total_added_params": 160, "per_task": {"toy": {"accuracy": 0.4, "rows": 10}},
                   "mixed_rows_per_task": {"toy": 10}}}))

    payload = fusion_vs_moe.main([*budget, "--baseline-json", str(baseline), "--test-cap", "10"])
    assert expert.stat().st_mtime_ns == mtime  # peft_quality's expert reused, not retrained
    fusion, oracle, ours, alone = payload["mixed"]
    assert (fusion["trainable_params"], fusion["added_params"]) == (50, 160)  # fusion's own vs with its adapters
    # the Pfeiffer oracle pools the rows of every task: (10 * 0.7 + 30 * 0.3) / 40, not the mean of 0.7 and 0.3
    assert oracle["mixed_accuracy"] == pytest.approx(0.4) and oracle["toy"] == 0.7 and oracle["trainable_params"] == 200
    assert ours["router_accuracy"] == 1.0  # one task: every row goes to its expert
    assert ours["mixed_accuracy"] == ours["toy"] == alone["mixed_accuracy"]  # routed right, so the expert's answers
    assert payload["bundle"]["evaluation"]["rows"] == 10
    assert 0 < payload["bundle"]["params"]["router_params"] < payload["bundle"]["params"]["total_added_params"]
    table = (bench_results / "fusion_vs_moe.md").read_text()
    assert "AdapterFusion (Pfeiffer x1 + Fuse)" in table and "TT-LoRA MoE bundle" in table
