"""The ``ttlora-moe`` typer app and its output contract.

``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr.
Exit codes: 0 success, 2 bad input (one line on stderr says what and how to fix), 1 anything else.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

app = typer.Typer(help="TT-LoRA experts and a task router on one frozen language model.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


tasks_app = typer.Typer(help="Task cards in data/tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ProfileOption = Annotated[str | None, typer.Option(
    "--profile", help="A params.yaml profile merged over the sections it sets, e.g. demo or pool.")]
DeviceOption = Annotated[str | None, typer.Option(
    "--device", help="auto, cpu, cuda, cuda:N or mps (default: params.yaml `device`, auto = CUDA, else MPS, else CPU).")]


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
