"""Commit files to a branch of the project's git repository and push it, without touching the checkout.

Registering a task commits its card, DVC pointer, params.yaml and dvc.lock, so that any worker that
clones the branch can train it. The commit is made with git's plumbing on a private index
(``read-tree`` of the branch, ``add`` of the paths, ``write-tree``, ``commit-tree``, ``update-ref``):
it lands on any branch, checked out or not, and leaves the working tree and the other staged changes
as they were. :func:`committed` moves the branch back if what follows the commit fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ttlora_moe.errors import BadInput

GIT_TIMEOUT_S = 300
FALLBACK_IDENTITY = ("ttlora-moe", "ttlora-moe@localhost")  # when git has no user.name/user.email


@dataclass
class Commit:
    """A commit made on ``branch`` (``sha`` None: nothing changed, no commit), and where it was pushed."""

    branch: str
    sha: str | None
    previous: str | None  # the branch's tip before the commit; None: the commit created the branch
    remote: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"branch": self.branch, "commit": self.sha, "pushed_to": self.remote}


def git(args: list[str], root: Path, env: dict[str, str] | None = None, check: bool = True) -> str:
    """``git ARGS`` in ``root``: stdout stripped; a failure is one BadInput line (or "" with ``check=False``)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})})
    except subprocess.TimeoutExpired:
        raise BadInput(f"`git {args[0]}` did not finish in {GIT_TIMEOUT_S} s", "check the git remote") from None
    if done.returncode != 0:
        if not check:
            return ""
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise BadInput(f"`git {' '.join(args[:2])}` failed in {root}: {lines[-1] if lines else 'no output'}",
                       "fix the git repository (see the message), then try again")
    return done.stdout.strip()


def is_repo(root: Path) -> bool:
    """Whether ``root`` is the top of a git working tree."""
    top = git(["rev-parse", "--show-toplevel"], root, check=False)
    return bool(top) and Path(top).resolve() == Path(root).resolve()


def current_branch(root: Path) -> str:
    """The checked-out branch (one BadInput line on a detached HEAD)."""
    branch = git(["symbolic-ref", "--quiet", "--short", "HEAD"], root, check=False)
    if not branch:
        raise BadInput(f"{root} has a detached HEAD: no branch to commit the task to", "pass --git-branch NAME")
    return branch


def target_branch(root: Path, name: str | None = None) -> str:
    """The branch to commit to: ``name`` (one BadInput line if git would refuse it), else the checked-out one."""
    if name is None:
        return current_branch(root)
    if not git(["check-ref-format", "--branch", name], root, check=False):
        raise BadInput(f"{name!r} is not a valid git branch name", "pass --git-branch a name like tasks/reviews")
    return name


def tip(branch: str, root: Path) -> str | None:
    """The commit ``branch`` points at, or None when it does not exist (or has no commit yet)."""
    return git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"], root, check=False) or None


def commit_paths(paths: list[Path], message: str, branch: str, root: Path) -> Commit:
    """Commit the working-tree content of ``paths`` (inside ``root``; ignored ones skipped) on top of ``branch``.

    A missing branch starts at HEAD. When ``branch`` is the checked-out one, the index entries of
    ``paths`` follow the commit (so they show no change).
    """
    checked_out = git(["symbolic-ref", "--quiet", "--short", "HEAD"], root, check=False)
    previous = tip(branch, root)
    parent = previous or git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root, check=False) or None
    with tempfile.TemporaryDirectory(prefix="ttlora-git-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(["read-tree", parent] if parent else ["read-tree", "--empty"], root, index)
        rel = [str(Path(p).resolve().relative_to(Path(root).resolve())) for p in paths
               if Path(p).exists() and Path(p).resolve().is_relative_to(Path(root).resolve())]
        rel = [p for p in rel if not _ignored(p, root, index)]
        if rel:
            git(["add", "--", *rel], root, index)
        tree = git(["write-tree"], root, index)
    if parent and tree == git(["rev-parse", f"{parent}^{{tree}}"], root):
        return Commit(branch, None, previous)
    sha = git(["commit-tree", tree, *(["-p", parent] if parent else []), "-m", message], root, _identity(root))
    git(["update-ref", "-m", f"ttlora-moe: {message}", f"refs/heads/{branch}", sha, previous or ""], root)
    if branch == checked_out and rel:
        git(["reset", "-q", sha, "--", *rel], root)
    return Commit(branch, sha, previous)


def _ignored(path: str, root: Path, index: dict[str, str]) -> bool:
    """Whether git ignores ``path`` (a file the branch already tracks never is)."""
    if git(["ls-files", "--error-unmatch", "--", path], root, index, check=False):
        return False
    return bool(git(["check-ignore", "--", path], root, index, check=False))


def _identity(root: Path) -> dict[str, str]:
    """Author/committer variables for a repository without user.name/user.email (e.g. a fresh worker)."""
    name, email = (git(["config", key], root, check=False) for key in ("user.name", "user.email"))
    env: dict[str, str] = {}
    for role in ("AUTHOR", "COMMITTER"):
        if not (name or os.environ.get(f"GIT_{role}_NAME")):
            env[f"GIT_{role}_NAME"] = FALLBACK_IDENTITY[0]
        if not (email or os.environ.get(f"GIT_{role}_EMAIL")):
            env[f"GIT_{role}_EMAIL"] = FALLBACK_IDENTITY[1]
    return env


def undo(commit: Commit, root: Path) -> None:
    """Move the branch back to where it was before ``commit`` (delete it if the commit created it)."""
    if commit.sha is None:
        return
    if commit.previous:
        git(["update-ref", f"refs/heads/{commit.branch}", commit.previous, commit.sha], root)
    else:
        git(["update-ref", "-d", f"refs/heads/{commit.branch}", commit.sha], root)


def push_remote(branch: str, root: Path) -> str | None:
    """The remote ``branch`` pushes to: its configured remote, else ``origin``, else the only one; None without."""
    remotes = git(["remote"], root).split()
    configured = git(["config", f"branch.{branch}.remote"], root, check=False)
    for choice in (configured, "origin"):
        if choice in remotes:
            return choice
    return remotes[0] if len(remotes) == 1 else None


def push(commit: Commit, root: Path) -> str | None:
    """Push ``commit.branch`` to its remote when the repository has one; return the remote's name."""
    remote = push_remote(commit.branch, root)
    if remote is None:
        return None
    try:
        git(["push", "--quiet", remote, f"refs/heads/{commit.branch}:refs/heads/{commit.branch}"], root)
    except BadInput as exc:
        raise BadInput(f"git push of branch {commit.branch} to {remote} failed ({exc.problem})",
                       f"pull {commit.branch} (or pick another --git-branch), then register again") from None
    commit.remote = remote
    return remote


@contextlib.contextmanager
def committed(paths: list[Path], message: str, branch: str, root: Path) -> Iterator[Commit]:
    """:func:`commit_paths`, undone (:func:`undo`) if the block raises."""
    commit = commit_paths(paths, message, branch, root)
    try:
        yield commit
    except BaseException:
        undo(commit, root)
        raise
