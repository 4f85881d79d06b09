"""Smoke runs of the `adapters`-library baselines (Pfeiffer adapters, AdapterFusion) and fusion_vs_moe.

The baselines need `.venv-adapters` (transformers 4.57 + adapters 1.3.0: `bash
benchmarks/adapters_env.sh`); without it the training smoke run is skipped. The table test reads a
synthetic result file and runs everywhere.
"""

from __future__ import annotations

import json
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


@pytest.mark.skipif(not ADAPTERS_PYTHON.exists(),
                    reason=".venv-adapters is missing: run `bash benchmarks/adapters_env.sh` to create it")
def test_pfeiffer_and_fusion_train_and_report(tmp_path, bench_results):
    model = tmp_path / "tiny-bert"
    model.mkdir()
    subprocess.run([str(ADAPTERS_PYTHON), "-c", MAKE_TINY_BERT, str(model)], check=True, timeout=120)
    data, cards = _write_tasks(tmp_path)
    out, saved = tmp_path / "result.json", tmp_path / "adapters"
    cmd = [str(ADAPTERS_PYTHON), str(TRAIN), "--model", str(model), "--data", str(data), "--cards", str(cards),
           "--out", str(out), "--tasks", "toysent", "toypair", "--samples", "32", "--epochs", "1",
           "--eval-samples", "16", "--fusion-samples", "16", "--test-cap", "10", "--lr", "1e-3",
           "--adapters-dir", str(saved), "--threads", "1"]
    subprocess.run(cmd, check=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["versions"]["adapters"] == "1.3.0"
    rows = {r["task"]: r for r in result["pfeiffer"]}
    assert set(rows) == {"toysent", "toypair"}
    for task, row in rows.items():
        assert row["adapter_params"] > 0 and row["head_params"] > 0
        assert row["train_rows"] == 32 and row["mixed_test_rows"] == 10 and row["test_rows"] == 24
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["train_samples_per_s"] > 0
        assert (saved / task / "adapter_config.json").exists()
        assert not list((saved / task).glob("*.bin")), "adapters are saved as safetensors, not pickles"
    fusion = result["fusion"]
    assert fusion["head_classes"] == 3 and fusion["rows_per_task"] == {"toysent": 16, "toypair": 16}
    assert {t: r["rows"] for t, r in fusion["per_task"].items()} == {"toysent": 10, "toypair": 10}
    assert fusion["mixed_rows"] == 20 and 0.0 <= fusion["mixed_accuracy"] <= 1.0
    assert 0 < fusion["fusion_params"] < fusion["trainable_params"] < fusion["total_added_params"]
    assert fusion["adapter_params_total"] == sum(r["adapter_params"] for r in rows.values())

    # --resume with the same budget reuses the saved adapters and retrains only the fusion.
    subprocess.run(cmd + ["--resume", "--out", str(tmp_path / "again.json")], check=True, timeout=300)
    again = json.loads((tmp_path / "again.json").read_text())
    assert [r["train_seconds"] for r in again["pfeiffer"]] == [r["train_seconds"] for r in result["pfeiffer"]]

    from benchmarks import fusion_vs_moe

    payload = fusion_vs_moe.main(["--baseline-json", str(out), "--no-bundle"])
    assert payload["mixed"][0]["mixed_accuracy"] == fusion["mixed_accuracy"]
    assert (bench_results / "fusion_vs_moe.md").exists()


def test_fusion_vs_moe_table_puts_the_bundle_beside_fusion(tmp_path, bench_results):
    from benchmarks import fusion_vs_moe

    tasks = ["rte", "sst2"]
    pfeiffer = [{"task": t, "method": "pfeiffer", "metric": "accuracy", "test_metric": 0.7, "test_accuracy": 0.7,
                 "test_rows": 300, "mixed_test_rows": 100, "mixed_test_accuracy": 0.6 + 0.2 * i,
                 "adapter_params": 113040, "head_params": 148610, "trainable_params": 261650,
                 "train_samples_per_s": 20.0, "train_seconds": 10.0, "lr": 1e-3} for i, t in enumerate(tasks)]
    fusion = {"mixed_accuracy": 0.65, "head_classes": 3, "train_rows": 200, "trainable_params": 2_800_000,
              "total_added_params": 3_000_000,
              "per_task": {t: {"accuracy": 0.6 + 0.1 * i, "rows": 100} for i, t in enumerate(tasks)}}
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"config": {"tasks": tasks, "test_cap": 100, "samples": 200, "epochs": 1},
                                    "pfeiffer": pfeiffer, "fusion": fusion}))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "evaluation.json").write_text(json.dumps({
        "mixed_accuracy": 0.9, "router_accuracy": 0.97, "test_cap": 100,
        "per_task": {t: {"bundle_accuracy": 0.85 + 0.1 * i, "rows": 100} for i, t in enumerate(tasks)}}))
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(10, 3)}, str(bundle / "router.safetensors"))
    (bundle / "experts" / "rte").mkdir(parents=True)
    save_file({"core": torch.zeros(4, 5), "head": torch.zeros(7)}, str(bundle / "experts" / "rte" / "adapter.safetensors"))

    payload = fusion_vs_moe.main(["--baseline-json", str(baseline), "--bundle-eval", str(bundle / "evaluation.json")])
    methods = [r["method"] for r in payload["mixed"]]
    assert methods[0].startswith("AdapterFusion") and methods[-1] == "TT-LoRA MoE bundle"
    oracle = payload["mixed"][1]
    assert oracle["mixed_accuracy"] == pytest.approx(0.7)  # (0.6 * 100 + 0.8 * 100) / 200
    ours = payload["bundle"]
    assert ours["mixed_accuracy"] == 0.9 and ours["same_rows"] is True
    assert ours["params_detail"] == {"router_params": 30, "expert_params": 27, "total_added_params": 57}
    table = (bench_results / "fusion_vs_moe.md").read_text()
    assert "#### pfeiffer" in table and "| TT-LoRA MoE bundle | 0.9 |" in table and "| rte |" in table
