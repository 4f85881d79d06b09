"""The one exception type that means "the user gave us something we cannot use".

Every check on user input raises :class:`BadInput` with a single line that names the problem and
how to fix it. The CLI turns it into that line on stderr and exit code 2; the flows let it fail the
run with the same line. Anything else is a bug and exits 1.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Bad user input: one line that says what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)
