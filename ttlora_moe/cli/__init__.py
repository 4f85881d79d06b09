"""``ttlora-moe``: tensor-train LoRA experts and a task router on one frozen language model.

Importing this package registers every command on :data:`ttlora_moe.cli.app.app`; :func:`main` runs it.
"""

from __future__ import annotations

import sys

import typer

from ttlora_moe.cli import bundle, experts, pipeline  # noqa: F401  (they register their commands
from ttlora_moe.cli.app import app
from ttlora_moe.errors import BadInput

try:  # typer >= 0.20 bundles its own click; older typer uses the click package
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; bad input and usage errors are one line on stderr and exit code 2."""
    try:
        code = app(args=argv, prog_name="ttlora-moe", standalone_mode=False)  # typer.Exit(n) returns n
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 1
    except ClickException as exc:
        if isinstance(exc, NoArgsIsHelpError):  # a command group alone: its help says what to add
            exc.show(file=sys.stderr)
            return exc.exit_code
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        print(f"error: {' '.join(exc.format_message().split())}{where}", file=sys.stderr)
        return exc.exit_code
    return code if isinstance(code, int) else 0
