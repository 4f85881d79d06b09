"""Training checkpoints: the old or the new one after a kill, and no checkpoint (not a crash) when torn."""

from __future__ import annotations

import torch

from ttlora_moe.experts.checkpoint import load_checkpoint, save_checkpoint


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint(tmp_path, kill_between_renames):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"w": torch.ones(2)}, {"step": 1})
    kill_between_renames(folder, lambda: save_checkpoint(folder, {"w": torch.zeros(2)}, {"step": 2}))
    tensors, meta = load_checkpoint(folder)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(2))
    save_checkpoint(folder, {"w": torch.zeros(2)}, {"step": 3})
    assert load_checkpoint(folder)[1] == {"step": 3}


def test_missing_or_torn_state_files_are_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path / "none") is None
    save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(2)}, {"step": 1})
    (tmp_path / "ckpt" / "state.json").write_text('{"step": ')
    assert load_checkpoint(tmp_path / "ckpt") is None
