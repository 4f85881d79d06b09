"""Registering a task in a git + DVC repository: one path (validate, write, track, push), and a failure at
any step after validation leaves the project byte-for-byte as it was."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.pipeline.conftest import project_snapshot
from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline import registration
from ttlora_moe.pipeline.dvc_remote import configure_remote, ensure_repo, remote_url
from ttlora_moe.pipeline.dvc_tracking import import_task
from ttlora_moe.pipeline.registration import register_task
from ttlora_moe.pipeline.task_validation import TaskSpec

WORDS = ["good", "great", "bad", "awful"]


def reviews(folder, name: str = "reviews.csv", offset: int = 0):
    """A CSV task with its own column names."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pd.DataFrame([{"body": f"the movie {offset + i} was {WORDS[i % 4]}", "rating": ["neg", "pos"][i % 4 < 2]}
                  for i in range(120)]).to_csv(path, index=False)
    return TaskSpec(name="reviews", source=str(path), text="body", label="rating")


@pytest.fixture
def tracked_repo(dvc_repo):
    """The DVC repository with its remote and the toy task imported, prepared and pushed (dvc.lock exists)."""
    ensure_repo()
    configure_remote()
    import_task("toy")
    return dvc_repo


def fail_after(step, error: BaseException):
    """``step``, then ``error``: the failure comes once the step has really written what it writes."""
    def failing(*args, **kwargs):
        step(*args, **kwargs)
        raise error
    return failing


def test_register_task_from_scratch(dvc_repo):
    """A repository without DVC yet: validation first, then DVC set up, the task written, tracked, pushed."""
    result = register_task(reviews(dvc_repo.parent / "sources"))
    assert result["task"] == "reviews" and result["labels"] == ["neg", "pos"] and result["notes"] == []
    assert remote_url() == str(dvc_repo / ".dvc-remote") and any((dvc_repo / ".dvc-remote").rglob("*"))
    assert yaml.safe_load((dvc_repo / "params.yaml").read_text())["tasks"] == ["toy", "reviews"]
    assert (dvc_repo / "params.yaml").read_text().startswith("# Every hyperparameter (a comment that must survive edits).")
    assert (dvc_repo / "data" / "raw" / "reviews.dvc").exists() and (dvc_repo / "data" / "tasks" / "reviews.yaml").exists()
    assert "prepare@reviews" in (dvc_repo / "dvc.lock").read_text()
    assert result["data_md5"] and (dvc_repo / "data" / "prepared" / "reviews" / "train.parquet").exists()
    assert not list((dvc_repo / "data" / "raw").glob(".staging-*"))


@pytest.mark.parametrize("step, error", [
    ("track_raw", KeyboardInterrupt()),
    ("repro_prepare", BadInput("simulated repro failure")),
    ("push", BadInput("simulated push failure")),
])
def test_a_failure_after_validation_puts_the_project_back(tracked_repo, monkeypatch, step, error):
    before = project_snapshot(tracked_repo)
    monkeypatch.setattr(registration, step, fail_after(getattr(registration, step), error))
    with pytest.raises(type(error)):
        register_task(reviews(tracked_repo.parent / "sources"))
    assert project_snapshot(tracked_repo) == before


def test_a_failure_in_a_repository_without_dvc_removes_what_dvc_init_made(dvc_repo, monkeypatch):
    before = project_snapshot(dvc_repo)
    monkeypatch.setattr(registration, "push", fail_after(registration.push, BadInput("simulated push failure")))
    with pytest.raises(BadInput, match="simulated push failure"):
        register_task(reviews(dvc_repo.parent / "sources"))
    assert project_snapshot(dvc_repo) == before and not (dvc_repo / ".dvc").exists()


def test_a_failed_replacement_keeps_the_registered_task(tracked_repo, monkeypatch):
    register_task(reviews(tracked_repo.parent / "sources"))
    before = project_snapshot(tracked_repo)
    monkeypatch.setattr(registration, "push", fail_after(registration.push, BadInput("simulated push failure")))
    with pytest.raises(BadInput):
        register_task(reviews(tracked_repo.parent / "other", offset=500), replace=True)
    assert project_snapshot(tracked_repo) == before


# --- the task goes to git, so a worker that clones the branch can train it -----------------------

def git(root, *args) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def refs(root) -> dict[str, str]:
    """Every branch of a repository and its commit."""
    lines = git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads").splitlines()
    return dict(line.split() for line in lines)


@pytest.fixture
def published_repo(tracked_repo, tmp_path):
    """The tracked repository with one commit on ``main`` and a bare ``origin`` that has it."""
    git(tracked_repo, "checkout", "-q", "-b", "main")
    git(tracked_repo, "add", "-A")
    git(tracked_repo, "commit", "-qm", "project")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(tracked_repo, "remote", "add", "origin", str(origin))
    git(tracked_repo, "push", "-q", "origin", "main")
    return tracked_repo, origin


VERSIONED = {"data/tasks/reviews.yaml", "data/raw/reviews.dvc", "params.yaml", "dvc.lock"}


def test_register_task_commits_the_task_on_the_checked_out_branch_and_pushes_it(published_repo):
    root, origin = published_repo
    before = git(root, "rev-parse", "HEAD")
    result = register_task(reviews(root.parent / "sources"))
    head = git(root, "rev-parse", "HEAD")
    assert result["git"] == {"branch": "main", "commit": head, "pushed_to": "origin"} and head != before
    assert result["card"] == "data/tasks/reviews.yaml" and result["pointer"] == "data/raw/reviews.dvc"
    changed = set(git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", head).splitlines())
    assert VERSIONED <= changed <= VERSIONED | {"data/raw/.gitignore"}  # DVC's ignore entry for data/raw/reviews
    assert git(origin, "rev-parse", "main") == head  # any clone of the branch now has the task
    assert git(root, "status", "--porcelain", "--", *VERSIONED) == ""  # committed, index in step
    assert "reviews" in yaml.safe_load(git(origin, "show", "main:params.yaml"))["tasks"]


def test_register_task_on_a_named_branch_leaves_the_checkout_alone(published_repo):
    root, origin = published_repo
    main = git(root, "rev-parse", "main")
    result = register_task(reviews(root.parent / "sources"), git_branch="tasks/reviews")
    assert git(root, "symbolic-ref", "--short", "HEAD") == "main" and git(root, "rev-parse", "main") == main
    sha = result["git"]["commit"]
    assert git(root, "rev-parse", "tasks/reviews") == sha and git(root, "rev-parse", f"{sha}^") == main
    assert git(origin, "rev-parse", "tasks/reviews") == sha
    assert (root / "data" / "tasks" / "reviews.yaml").exists()  # the checkout keeps the files, uncommitted on main


def test_a_rejected_git_push_puts_the_project_and_the_branch_back(published_repo):
    root, origin = published_repo
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'no pushes today' >&2\nexit 1\n")
    hook.chmod(0o755)
    before, branches = project_snapshot(root), refs(root)
    with pytest.raises(BadInput, match="git push of branch main to origin failed"):
        register_task(reviews(root.parent / "sources"))
    assert project_snapshot(root) == before and refs(root) == branches


def test_an_interrupt_after_the_commit_removes_a_new_branch(published_repo, monkeypatch):
    root, _ = published_repo
    before, branches = project_snapshot(root), refs(root)
    monkeypatch.setattr(registration.git_repo, "push", fail_after(registration.git_repo.push, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        register_task(reviews(root.parent / "sources"), git_branch="tasks/reviews")
    assert project_snapshot(root) == before and refs(root) == branches


@pytest.mark.parametrize("detach, branch, error", [
    (True, None, "detached HEAD.*--git-branch"),
    (False, "no..dots", "'no..dots' is not a valid git branch name"),
])
def test_no_branch_to_commit_to_is_refused_before_anything_is_written(published_repo, detach, branch, error):
    root, _ = published_repo
    if detach:
        git(root, "checkout", "-q", "--detach")
    before, branches = project_snapshot(root), refs(root)
    with pytest.raises(BadInput, match=error):
        register_task(reviews(root.parent / "sources"), git_branch=branch)
    assert project_snapshot(root) == before and refs(root) == branches
