"""Editing params.yaml in place with a round-trip YAML parser."""

from __future__ import annotations

import difflib

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.pipeline.conftest import DVC_PARAMS
from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.params_file import add_to_task_list


def test_add_to_task_list_keeps_comments_and_list_style(tmp_path):
    flow_style = tmp_path / "a.yaml"
    flow_style.write_text(DVC_PARAMS)
    assert add_to_task_list("reviews", flow_style) is True
    assert add_to_task_list("reviews", flow_style) is False
    text = flow_style.read_text()
    assert "tasks: [toy, reviews] # trained by default\n" in text and text.startswith("# Every hyperparameter")
    block = tmp_path / "b.yaml"
    block.write_text("# top\ntasks:  # list\n  - toy\n  - cola\nprepare:\n  seed: 1\n")
    add_to_task_list("reviews", block)
    assert block.read_text() == "# top\ntasks:  # list\n  - toy\n  - cola\n  - reviews\nprepare:\n  seed: 1\n"
    empty = tmp_path / "c.yaml"
    empty.write_text("tasks: []   # none yet\nprepare:\n    seed: null\n")
    add_to_task_list("reviews", empty)
    assert empty.read_text() == "tasks: [reviews] # none yet\nprepare:\n    seed: null\n"
    missing = tmp_path / "d.yaml"
    missing.write_text("# no list\nprepare: {seed: 1}\n")
    add_to_task_list("reviews", missing)
    assert yaml.safe_load(missing.read_text()) == {"prepare": {"seed": 1}, "tasks": ["reviews"]}
    assert missing.read_text().startswith("# no list\n")


def test_the_projects_params_change_only_in_the_tasks_line(tmp_path):
    params = tmp_path / "params.yaml"
    before = (PROJECT_ROOT / "params.yaml").read_text()
    params.write_text(before)
    add_to_task_list("reviews", params)
    changed = [line for line in difflib.ndiff(before.splitlines(), params.read_text().splitlines())
               if line.startswith(("+", "-"))]
    assert len(changed) == 2 and changed[0].startswith("- tasks: [") and changed[1].endswith(", reviews]")


@pytest.mark.parametrize("text, message", [
    ("tasks: toy\n", "tasks in .* is not a list"),
    ("tasks: [toy\n", "is not valid YAML"),
    ("- a\n- b\n", "is not a mapping of sections"),
])
def test_a_tasks_list_it_cannot_edit_is_one_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as info:
        add_to_task_list("reviews", path)
    assert "\n" not in str(info.value) and path.read_text() == text
