"""Editing params.yaml in place."""

from __future__ import annotations

import yaml

from tests.pipeline.conftest import DVC_PARAMS
from ttlora_moe.pipeline.params_file import add_to_task_list


def test_add_to_task_list_keeps_comments(tmp_path):
    flow_style = tmp_path / "a.yaml"
    flow_style.write_text(DVC_PARAMS)
    assert add_to_task_list("reviews", flow_style) is True
    assert add_to_task_list("reviews", flow_style) is False
    text = flow_style.read_text()
    assert "tasks: [toy, reviews]   # trained by default" in text and text.startswith("# Every hyperparameter")
    block = tmp_path / "b.yaml"
    block.write_text("# top\ntasks:  # list\n  - toy\n  - cola\nprepare:\n  seed: 1\n")
    add_to_task_list("reviews", block)
    assert yaml.safe_load(block.read_text()) == {"tasks": ["toy", "cola", "reviews"], "prepare": {"seed": 1}}
    assert block.read_text().startswith("# top\ntasks:  # list\n")
