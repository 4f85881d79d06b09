"""Atomic directory writes: a replaced directory reads as the old or the new version, even after a kill
between the two renames of a replacement."""

from __future__ import annotations

import pytest

from ttlora_moe.files import atomic_dir, remove_dir, settled_dir


def write(target, text):
    with atomic_dir(target) as tmp:
        (tmp / "file").write_text(text)


def test_replacing_leaves_only_the_new_version(tmp_path):
    write(tmp_path / "a", "old")
    write(tmp_path / "a", "new")
    assert (tmp_path / "a" / "file").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "a", replace=False) as tmp:
        (tmp / "file").write_text("other")
    assert (tmp_path / "a" / "file").read_text() == "new"


def test_a_kill_between_the_two_renames_keeps_the_old_version(tmp_path, kill_between_renames):
    target = tmp_path / "a"
    write(target, "old")
    kill_between_renames(target, lambda: write(target, "new"))
    assert not target.exists()  # what the kill leaves: only the old version, moved aside
    assert (settled_dir(target) / "file").read_text() == "old"  # what readers see
    write(target, "newer")  # the next writer first puts the old version back, then replaces it
    assert (target / "file").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["a"]
    kill_between_renames(target, lambda: write(target, "lost"))
    remove_dir(target)
    assert not list(tmp_path.iterdir())
