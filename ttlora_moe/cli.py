"""``ttlora-moe`` command line.

Contract: ``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr.
Exit codes: 0 success, 2 bad input (one line on stderr says what and how to fix), 1 anything else.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ttlora_moe.errors import BadInput

app = typer.Typer(help="TT-LoRA experts and a task router on one frozen language model.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
tasks_app = typer.Typer(help="Task cards in data/tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print ``result`` as one JSON object (``--json``) or as human text."""
    if as_json:
        sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(render(result) + "\n")


@contextlib.contextmanager
def quiet_stdout(as_json: bool):
    """In ``--json`` mode, anything a library prints goes to stderr, keeping stdout one JSON object."""
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


@tasks_app.command("list")
def tasks_list(as_json: JsonFlag = False) -> None:
    """List the registered tasks with their inputs, labels and metric."""
    from ttlora_moe.tasks import list_tasks, load_task_card

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
    as_json: JsonFlag = False,
) -> None:
    """Train, test and save one task's TT-LoRA expert (resumes after a kill)."""
    from ttlora_moe.params import project_dir
    from ttlora_moe.train_expert import train_expert

    overrides = {k: v for k, v in {"max_train_samples": max_train_samples, "epochs": epochs, "seed": seed}.items()
                 if v is not None}
    if output is None:
        output = project_dir() / "outputs" / "experts" / (f"{task}-head-only" if head_only else task)
    with quiet_stdout(as_json):
        result = train_expert(task, output, base_model=base_model, overrides=overrides,
                              adapter="head-only" if head_only else "ttlora")

    def render(r: dict[str, Any]) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["test_metrics"].items() if k != "loss")
        ratio = f" ({100 * r['trainable_ratio_vs_lora']:.1f}% of LoRA r=16's {r['lora_r16_params']:,})" \
            if r["trainable_ratio_vs_lora"] else ""
        return (f"{r['task']} ({r['kind']}): test {metrics}\n"
                f"trainable TT parameters {r['trainable_params']:,}{ratio}, head {r['head_params']:,}\n"
                f"trained in {r['train_seconds']:.0f} s; expert written to {r['artifact']}")

    emit(result, as_json, render)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (bundle, registry) register themselves here."""
    import importlib

    for module in ("ttlora_moe.cli_bundle", "ttlora_moe.cli_pipeline"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_optional_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping bad input to exit code 2 with one line on stderr."""
    try:
        app(args=argv, standalone_mode=False)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 1
    except Exception as exc:  # click's usage errors carry their own exit code (2)
        import click

        if isinstance(exc, click.ClickException):
            exc.show(file=sys.stderr)
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
