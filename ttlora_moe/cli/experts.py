"""CLI commands of tasks and experts: ``tasks list`` and ``train-expert``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ttlora_moe.cli.app import (
    DeviceOption,
    JsonFlag,
    ProfileOption,
    app,
    emit,
    quiet_stdout,
    tasks_app,
)


@tasks_app.command("list")
def tasks_list(as_json: JsonFlag = False) -> None:
    """List the registered tasks with their inputs, labels and metric."""
    from ttlora_moe.data.cards import list_tasks, load_task_card

    cards = [load_task_card(name) for name in list_tasks()]
    rows = [{"task": c.name, "source": c.source, "text": c.text, "text_pair": c.text_pair,
             "labels": c.label_names, "metric": c.metric} for c in cards]

    def render(result: dict[str, Any]) -> str:
        lines = [f"{'task':<14} {'inputs':<28} {'labels':<40} metric"]
        for r in result["tasks"]:
            inputs = r["text"] + (f" + {r['text_pair']}" if r["text_pair"] else "")
            lines.append(f"{r['task']:<14} {inputs:<28} {', '.join(r['labels']):<40} {r['metric']}")
        return "\n".join(lines)

    emit({"tasks": rows}, as_json, render)


@app.command("train-expert")
def train_expert_cmd(
    task: Annotated[str, typer.Argument(help="Task name (see `ttlora-moe tasks list`).")],
    output: Annotated[Path | None, typer.Option(help="Expert directory to write (default: outputs/experts/TASK).")] = None,
    max_train_samples: Annotated[int | None, typer.Option(help="Training examples (default from params.yaml).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default from params.yaml).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model: pkg:..., a local path or a hub id.")] = None,
    head_only: Annotated[bool, typer.Option("--head-only", help="Train only the head on the frozen base (baseline).")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed (default from params.yaml).")] = None,
    device: DeviceOption = None,
    profile: ProfileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Train, test and save one task's TT-LoRA expert (resumes after a kill)."""
    from ttlora_moe.devices import params_device
    from ttlora_moe.experts.job import train_expert
    from ttlora_moe.params import load_params
    from ttlora_moe.paths import project_dir

    params = load_params(profile=profile)
    params_device(params, device)  # an absent device is one line before anything loads
    overrides = {k: v for k, v in {"max_train_samples": max_train_samples, "epochs": epochs, "seed": seed}.items()
                 if v is not None}
    if output is None:
        output = project_dir() / "outputs" / "experts" / (f"{task}-head-only" if head_only else task)
    with quiet_stdout(as_json):
        result = train_expert(task, output, params=params, base_model=base_model, overrides=overrides,
                              adapter="head-only" if head_only else "ttlora", device=device)

    def render(r: dict[str, Any]) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["test_metrics"].items() if k != "loss")
        ratio = f" ({100 * r['trainable_ratio_vs_lora']:.1f}% of LoRA r=16's {r['lora_r16_params']:,})" \
            if r["trainable_ratio_vs_lora"] else ""
        return (f"{r['task']} ({r['kind']}): test {metrics}\n"
                f"trainable TT parameters {r['trainable_params']:,}{ratio}, head {r['head_params']:,}\n"
                f"trained in {r['train_seconds']:.0f} s; expert written to {r['artifact']}")

    emit(result, as_json, render)
