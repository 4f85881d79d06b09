"""Smoke runs of the adapters-library baselines (Pfeiffer, AdapterFusion) in .venv-adapters."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"


TRAIN = ROOT / "benchmarks" / "adapters_baselines" / "train.py"


# Built inside .venv-adapters, so transformers 4.57 writes (and reads) the tiny model's files.
MAKE_TINY_BERT = """
import sys, torch
from transformers import BertConfig, BertModel, BertTokenizerFast
out = sys.argv[1]
words = "the a is was good bad great awful movie film cat dog sat on mat yes no not why who what it".split()
open(out + "/vocab.txt", "w").write("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\\n")
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)).save_pretrained(out)
BertTokenizerFast(out + "/vocab.txt").save_pretrained(out)
"""


def _write_tasks(root: Path) -> tuple[Path, Path]:
    """Two toy tasks: a single-text binary one and a 3-class pair one."""
    data, cards = root / "prepared", root / "tasks"
    words = ["good", "great", "bad", "awful"]
    for task, pair, classes in (("toysent", False, 2), ("toypair", True, 3)):
        (data / task).mkdir(parents=True)
        for split, n in (("train", 64), ("validation", 16), ("test", 24)):
            rows = [{"text": f"the movie {words[i % 4]} {words[(i // 4) % 4]}",
                     "text_pair": f"the film is {words[(i + 1) % 4]}" if pair else None,
                     "label": i % classes} for i in range(n)]
            pd.DataFrame(rows).to_parquet(data / task / f"{split}.parquet")
        (cards).mkdir(exist_ok=True)
        (cards / f"{task}.yaml").write_text(yaml.safe_dump({
            "name": task, "label_names": [f"c{i}" for i in range(classes)],
            "metric": "mcc" if classes == 2 else "accuracy"}))
    return data, cards


needs_adapters_venv = pytest.mark.skipif(
    not ADAPTERS_PYTHON.exists(),
    reason=".venv-adapters is missing (make test does not create it): run `bash benchmarks/adapters_env.sh` to test "
           "the adapters-library baselines")


@pytest.fixture(scope="module")
def adapters_bert(tmp_path_factory) -> Path:
    """A tiny random BERT saved by `.venv-adapters`' transformers 4.57 (which cannot read a v5 tokenizer file)."""
    model = tmp_path_factory.mktemp("adapters-bert")
    subprocess.run([str(ADAPTERS_PYTHON), "-c", MAKE_TINY_BERT, str(model)], check=True, timeout=120)
    return model


def _mixed_rows(folder: Path, rows: list[int]) -> Path:
    path = folder / f"mixed-{len(rows)}.json"
    path.write_text(json.dumps({"toysent": rows, "toypair": rows}))
    return path


def _train(model: Path, data: Path, cards: Path, out: Path, saved: Path, mixed: Path, *extra: str) -> dict:
    cmd = [str(ADAPTERS_PYTHON), str(TRAIN), "--model", str(model), "--data", str(data), "--cards", str(cards),
           "--out", str(out), "--tasks", "toysent", "toypair", "--samples", "32", "--epochs", "1",
           "--eval-samples", "16", "--fusion-samples", "16", "--mixed-rows", str(mixed), "--lr", "1e-3",
           "--adapters-dir", str(saved), "--threads", "1", *extra]
    subprocess.run(cmd, check=True, timeout=300)
    return json.loads(out.read_text())


@needs_adapters_venv
def test_pfeiffer_and_fusion_train_resume_and_report(tmp_path, bench_results, adapters_bert):
    data, cards = _write_tasks(tmp_path)
    saved = tmp_path / "adapters"
    result = _train(adapters_bert, data, cards, tmp_path / "result.json", saved, _mixed_rows(tmp_path, list(range(3, 13))))
    assert result["versions"]["adapters"] == "1.3.0"
    rows = {r["task"]: r for r in result["pfeiffer"]}
    assert set(rows) == {"toysent", "toypair"}
    for task, row in rows.items():
        assert row["adapter_params"] > 0 and row["head_params"] > 0
        assert row["train_rows"] == 32 and row["mixed_test_rows"] == 10 and row["test_rows"] == 24
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["train_samples_per_s"] > 0
        assert len(row["test_predictions"]) == 24
        assert {p.name for p in (saved / task).iterdir()} == {
            "adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors", "pfeiffer.json"}
    fusion = result["fusion"]
    assert fusion["head_classes"] == 3 and fusion["rows_per_task"] == {"toysent": 16, "toypair": 16}
    assert {t: r["rows"] for t, r in fusion["per_task"].items()} == {"toysent": 10, "toypair": 10}
    assert fusion["mixed_rows_per_task"] == {"toysent": 10, "toypair": 10}
    assert fusion["mixed_rows"] == 20 and 0.0 <= fusion["mixed_accuracy"] <= 1.0
    assert 0 < fusion["fusion_params"] < fusion["trainable_params"] < fusion["total_added_params"]
    assert fusion["adapter_params_total"] == sum(r["adapter_params"] for r in rows.values())

    # --resume reuses an adapter saved with the same budget (its row comes back unchanged, mixed score
    # re-taken on the new rows) and retrains one whose budget differs.
    kept, stale = saved / "toysent" / "pfeiffer.json", saved / "toypair" / "pfeiffer.json"
    stale.write_text(json.dumps(json.loads(stale.read_text()) | {"budget": {"samples": 999}}))
    kept_mtime = kept.stat().st_mtime_ns
    again = _train(adapters_bert, data, cards, tmp_path / "again.json", saved, _mixed_rows(tmp_path, [0, 5, 9, 20, 23]),
                   "--resume")
    reused, retrained = (next(r for r in again["pfeiffer"] if r["task"] == t) for t in ("toysent", "toypair"))
    assert kept.stat().st_mtime_ns == kept_mtime and reused["train_seconds"] == rows["toysent"]["train_seconds"]
    assert reused["mixed_test_rows"] == 5
    assert json.loads(stale.read_text())["budget"] == retrained["budget"] == rows["toypair"]["budget"]

    from benchmarks import fusion_vs_moe

    payload = fusion_vs_moe.main(["--baseline-json", str(tmp_path / "result.json"), "--no-bundle"])
    assert payload["mixed"][0]["mixed_accuracy"] == fusion["mixed_accuracy"]
    assert (bench_results / "fusion_vs_moe.md").exists()


@needs_adapters_venv
def test_peft_quality_models_are_reused_by_fusion_vs_moe(project, bench_results, adapters_bert):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base_model"]["ref"] = str(adapters_bert)  # a model both transformers versions read
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    saved = project / "adapters"
    bench_outputs = Path(os.environ["TTLORA_BENCH_OUTPUTS"])
    budget = ["--tasks", "toy", "--samples", "64", "--epochs", "1", "--adapters-dir", str(saved)]
    from benchmarks import fusion_vs_moe, peft_quality

    rows = peft_quality.main(budget)["rows"]
    saved_mtime = (saved / "toy" / "pfeiffer.json").stat().st_mtime_ns
    assert [r["method"] for r in rows] == ["ttlora", "lora", "head-only", "pfeiffer"]
    pfeiffer = rows[-1]
    assert pfeiffer["trainable_params"] > 0 and pfeiffer["head_params"] > 0 and pfeiffer["train_samples_per_s"] > 0
    assert json.loads((saved / "toy" / "pfeiffer.json").read_text())["train_rows"] == 64
    assert (bench_results / "peft_quality.md").read_text().count("| toy |") == 4

    expert = bench_outputs / "bench_experts" / "full" / "ttlora" / "toy" / "expert.json"
    expert_mtime = expert.stat().st_mtime_ns
    payload = fusion_vs_moe.main([*budget, "--fusion-samples", "16", "--test-cap", "10"])
    assert (saved / "toy" / "pfeiffer.json").stat().st_mtime_ns == saved_mtime  # reused, not retrained
    assert expert.stat().st_mtime_ns == expert_mtime  # our expert too: the bundle is built from peft_quality's
    assert payload["pfeiffer"][0]["train_seconds"] == pfeiffer["train_seconds"]
    assert payload["fusion"]["rows_per_task"] == {"toy": 16} and payload["fusion"]["mixed_rows_per_task"] == {"toy": 10}
    assert [r["method"] for r in payload["mixed"]] == [
        "AdapterFusion (Pfeiffer x1 + Fuse)", "Pfeiffer per task, true task given (no router)",
        "TT-LoRA MoE bundle (the router picks the expert)", "TT-LoRA experts, true task given (no router)"]
