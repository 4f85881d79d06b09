"""Main-virtualenv side of the `adapters` baselines: one budget, one adapters folder, one way to run train.py.

`peft_quality` (stage `pfeiffer`) and `fusion_vs_moe` (stage `all`) both call `run_train` with the
budget of `expert_budget` and the folder of `default_adapters_dir`, always with `--resume`: the
per-task Pfeiffer adapters are trained once and the second benchmark reuses them (train.py checks
that the saved budget and data are the same; otherwise it retrains). `make bench` runs
`peft_quality` first, so it trains them and `fusion_vs_moe` only trains the fusion. Delete the
folder (`outputs/adapters_baselines/{quick,full}`) to force retraining.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import kept_models_dir

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / "benchmarks" / "adapters_env.sh"
TRAIN_SCRIPT = ROOT / "benchmarks" / "adapters_baselines" / "train.py"
TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
QUICK_TASKS = ["rte", "sst2"]
# Pfeiffer adapters and their heads. The paper's 1e-4 suits its many epochs; at 4,000 rows x 2 epochs
# it left them under-trained here (MNLI 0.398 at 1e-4 vs 0.504 at 1e-3, same rows; README).
PFEIFFER_LR = 1e-3
# Overrides of params.yaml's `train` section: the budget of every method in both benchmarks.
# Full: what `make bench` can afford on 2 CPU cores for 6 tasks x 4 methods (about 30 of its 90 minutes).
FULL_BUDGET: dict[str, Any] = {"max_train_samples": 2000, "epochs": 1, "max_eval_samples": 500}
QUICK_BUDGET: dict[str, Any] = {"max_train_samples": 300, "epochs": 1, "max_eval_samples": 200}
# train.py flag <- params.yaml `train` key.
BUDGET_FLAGS = {"--samples": "max_train_samples", "--epochs": "epochs", "--eval-samples": "max_eval_samples",
                "--evals-per-epoch": "evals_per_epoch", "--batch-size": "batch_size", "--max-length": "max_length",
                "--warmup-ratio": "warmup_ratio", "--seed": "seed"}


def expert_budget(quick: bool, samples: int | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Overrides of the `train` params shared by our experts, the peers and the Pfeiffer adapters."""
    budget = dict(QUICK_BUDGET if quick else FULL_BUDGET)
    if samples is not None:
        budget["max_train_samples"] = samples
    if epochs is not None:
        budget["epochs"] = epochs
    return budget


def default_adapters_dir(quick: bool) -> Path:
    """Where both benchmarks keep (and reuse) the per-task Pfeiffer adapters."""
    return kept_models_dir("adapters_baselines", quick)


def adapters_python() -> str:
    """Create `.venv-adapters` if needed (idempotent; raises CalledProcessError if it cannot) and return its python."""
    out = subprocess.run(["bash", str(ENV_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def budget_flags(params: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """train.py flags for the `train` params with ``overrides`` (the experts' budget) and ``PFEIFFER_LR``."""
    from ttlora_moe.experts.training import TrainConfig
    from ttlora_moe.params import section

    train = TrainConfig.from_dict({**section(params, "train"), **overrides}).to_dict()
    values = {flag: "all" if train[key] is None else str(train[key]) for flag, key in BUDGET_FLAGS.items()}
    return [x for flag, value in values.items() for x in (flag, value)] + ["--lr", str(PFEIFFER_LR)]


def inputs(tasks: list[str], params: dict[str, Any]) -> list[str]:
    """train.py flags for the base model, prepared-data root and task cards, as our experts see them."""
    from ttlora_moe.data.cards import load_task_card
    from ttlora_moe.data.prepare import ensure_prepared
    from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, local_model_dir
    from ttlora_moe.params import section
    from ttlora_moe.paths import tasks_dir

    model = local_model_dir(section(params, "base_model").get("ref", DEFAULT_BASE_MODEL))
    prepared = [ensure_prepared(load_task_card(t), params) for t in tasks]
    return ["--model", str(model), "--data", str(prepared[0].parent), "--cards", str(tasks_dir())]


def run_train(python: str, tasks: list[str], *, stage: str, params: dict[str, Any], overrides: dict[str, Any],
              adapters_dir: Path, out: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """Run train.py (``stage`` all or pfeiffer) in `.venv-adapters` with ``--resume``; return its JSON."""
    cmd = [python, str(TRAIN_SCRIPT), *inputs(tasks, params), "--out", str(out), "--tasks", *tasks,
           "--stage", stage, "--adapters-dir", str(adapters_dir), "--resume",
           *budget_flags(params, overrides), *(extra or [])]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)  # progress (tqdm) goes straight to our stderr
    return json.loads(out.read_text())
