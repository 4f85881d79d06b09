"""``ttlora-moe``: tensor-train LoRA experts and a task router on one frozen language model.

Importing this package registers every command on :data:`ttlora_moe.cli.app.app`; :func:`main` runs it.
"""

from __future__ import annotations

import sys

import typer

from ttlora_moe.cli import bundle, experts, pipeline  # noqa: F401  (they register their commands
from ttlora_moe.cli.app import app
from ttlora_moe.errors import BadInput


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

