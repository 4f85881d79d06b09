"""Task cards: round trip, one-line errors, and the shipped cards against the real mirror."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.toys import choice_card
from ttlora_moe.data.cards import (
    LEGACY_UNLABELLED,
    TaskCard,
    list_tasks,
    load_task_card,
    name_skeleton,
    normalise,
    save_task_card,
    validate_task_name,
)
from ttlora_moe.data.choices import MULTIPLE_CHOICE, choice_columns
from ttlora_moe.errors import BadInput
from ttlora_moe.paths import tasks_dir


def card(**kw) -> TaskCard:
    base = dict(name="toy", source="toy", text="sentence", text_pair=None, label="label",
                label_names=["neg", "pos"], label_values=[0, 1], metric="accuracy",
                files={"train": "train.parquet", "test": "validation.parquet"})
    return TaskCard(**{**base, **kw})


def test_cards_round_trip_and_unknown_task_lists_known(tmp_path):
    path = save_task_card(card(), tmp_path)
    assert path == tmp_path / "toy.yaml" and list_tasks(tmp_path) == ["toy"]
    assert [p.name for p in tmp_path.iterdir()] == ["toy.yaml"]  # no temp file left behind
    loaded = load_task_card("toy", tmp_path)
    assert loaded == card() and loaded.num_labels == 2
    with pytest.raises(BadInput, match=r"unknown task 'nope' \(known: toy"):
        load_task_card("nope", tmp_path)
    with pytest.raises(BadInput, match="unknown task '../toy'"):
        load_task_card("../toy", tmp_path)
    for bad in ("1abc", "has-dash", "Upper", "", "_hidden", "café", "tоy"):  # the last has a Cyrillic о
        with pytest.raises(BadInput, match="not a valid identifier"):
            validate_task_name(bad)
    validate_task_name("winogrande_l")


@pytest.mark.parametrize("name, message", [
    ("a" * 41, "has 41 characters \\(at most 40\\)"),
    ("b" * 5000, "'b{40}\\.\\.\\.' has 5000 characters"),
    ("yes", "is a YAML keyword"),
    ("off", "is a YAML keyword"),
    ("null", "is a YAML keyword"),
])
def test_task_names_are_short_and_survive_yaml(name, message):
    with pytest.raises(BadInput, match=message) as info:
        validate_task_name(name)
    assert len(str(info.value)) < 200
    validate_task_name("a" * 40)


def test_lookalike_names_share_a_skeleton():
    assert name_skeleton("cola") == name_skeleton("co1a") == name_skeleton("сola") == name_skeleton("ｃｏｌａ")
    assert name_skeleton("sst2") == name_skeleton("sst_2") and name_skeleton("rn") == name_skeleton("m")
    assert name_skeleton("cola") != name_skeleton("coda")


def test_label_values_compare_as_text_and_numbers():
    assert {normalise(v) for v in (1, "1", 1.0, " 1.0 ", "01", np.int64(1), "+1")} == {"1"}
    assert [normalise(v) for v in (True, np.bool_(False), "Pos ", "1_000", "0.5", "nan")] == \
        ["true", "false", "pos", "1_000", "0.5", "nan"]
    assert {normalise(v) for v in (None, float("nan"), np.float32("nan"), pd.NA, "", "  ")} == {""}


def test_unlabelled_values_default_to_the_legacy_glue_set_and_round_trip(tmp_path):
    assert card().unlabelled_values == list(LEGACY_UNLABELLED)
    save_task_card(card(unlabelled_values=["", "n/a"]), tmp_path)
    assert load_task_card("toy", tmp_path).unlabelled_values == ["", "n/a"]
    (tmp_path / "toy.yaml").write_text("source: toy\ntext: t\nlabel: l\nlabel_names: [a, b]\nlabel_values: [0, 1]\n"
                                       "unlabelled_values: -1\nfiles: {train: t.parquet}\n")
    with pytest.raises(BadInput, match="unlabelled_values must be a list"):
        load_task_card("toy", tmp_path)


def test_tasks_dir_follows_the_environment(tmp_path, monkeypatch):
    save_task_card(card(name="other"), tmp_path)
    monkeypatch.setenv("TTLORA_TASKS_DIR", str(tmp_path))
    assert list_tasks() == ["other"] and load_task_card("other").name == "other"


@pytest.mark.parametrize("text, message", [
    ("source: [unclosed", "not valid YAML"),
    ("- a list", "not a mapping"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\n", "missing keys \\['label_values'\\]"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\ncolour: red\n",
     "unknown keys \\['colour'\\]"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0]\nfiles: {train: t.parquet}\n",
     "1 label_values for 2 label_names"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [1, '1']\nfiles: {train: t.parquet}\n",
     "repeats a label value"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b, c]\nlabel_values: [0, 1, 2]\nmetric: f1\n"
     "files: {train: t.parquet}\n", "metric 'f1' .* needs two labels"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\nfiles: {test: t.parquet}\n",
     "map 'train'"),
    ("name: other\nsource: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\n"
     "files: {train: t.parquet}\n", "names task 'other'"),
])
def test_malformed_cards_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "toy.yaml").write_text(text)
    with pytest.raises(BadInput, match=message) as info:
        load_task_card("toy", tmp_path)
    assert "\n" not in str(info.value)


def test_shipped_cards_match_the_real_mirror(mirror):
    if mirror is None:
        pytest.skip("no dataset mirror (TTLORA_DATA_MIRROR or ../shared/datasets)")
    names = list_tasks()
    assert {"mnli", "cola", "rte", "sst2", "qnli", "qqp", "mrpc", "boolq", "sick", "cb",
            "csqa", "winogrande_l", "socialiqa", "cosmosqa", "scitail"} <= set(names)
    for name in names:
        c = load_task_card(name)
        for role, pattern in c.files.items():
            files = sorted((mirror / c.source).glob(pattern))
            assert files, f"{name}: no {role} file {pattern}"
            frame = pd.read_parquet(files[0])
            columns = set(frame.columns)
            inputs = choice_columns(c) if c.kind == MULTIPLE_CHOICE else [c.text, *([c.text_pair] if c.text_pair else [])]
            assert {c.label, *inputs} <= columns, (name, columns)
            if role == "unlabelled":  # labels, if any, are ignored
                continue
            raw_labels = {v for v in frame[c.label].tolist() if v not in c.unlabelled_values}
            assert raw_labels == set(c.label_values) or role == "test" and raw_labels <= set(c.label_values), name
            assert "unlabelled_values" in (tasks_dir() / f"{name}.yaml").read_text(), f"{name}: say what it drops"


def test_multiple_choice_cards_round_trip_and_classification_cards_keep_their_keys(tmp_path):
    path = save_task_card(choice_card(choices="choices.text"), tmp_path)
    assert "kind: multiple_choice" in path.read_text()
    loaded = load_task_card("quiz", tmp_path)
    assert loaded == choice_card(choices="choices.text") and loaded.num_labels == 4 and loaded.has_pair
    assert "kind" not in save_task_card(card(), tmp_path).read_text()  # `tasks add` writes what it always wrote
    assert not card().has_pair and card(text_pair="other").has_pair


MC = "source: q\nkind: multiple_choice\nlabel: y\nlabel_values: [0, 1]\nfiles: {train: t.parquet}\n"


@pytest.mark.parametrize("text, message", [
    (MC + "text: '{q}'\nlabel_names: [A, B]\n", "choices must be a list of option columns or one list column, got None"),
    (MC + "text: '{q}'\nlabel_names: [A, B]\nchoices: [a]\n", "at least two distinct option columns"),
    (MC + "text: '{q}'\nlabel_names: [A, B]\nchoices: [a, a]\n", "at least two distinct option columns"),
    (MC + "text: '{q}'\nlabel_names: [A, B]\nchoices: 'c.'\n", "one list column, got 'c.'"),
    (MC + "text: '{q}'\nlabel_names: [first, second]\nchoices: [a, b]\n", "label_names \\['first', 'second'\\] must be the option letters"),
    (MC + "text: '{q}'\nlabel_names: [A, B]\nchoices: [a, b, c]\n", "must be the option letters \\['A', 'B', 'C'\\]"),
    (MC + "text: q\nlabel_names: [A, B]\nchoices: [a, b]\n", "text template 'q' names no column"),
    (MC + "text: '{q}'\ntext_pair: p\nlabel_names: [A, B]\nchoices: [a, b]\n", "sets text_pair 'p'"),
    (MC.replace("multiple_choice", "ranking") + "text: q\nlabel_names: [A, B]\n", "has kind 'ranking'"),
    (MC.replace("kind: multiple_choice\n", "") + "text: q\nlabel_names: [A, B]\nchoices: [a, b]\n",
     "lists choices but is not multiple choice"),
])
def test_malformed_multiple_choice_cards_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "toy.yaml").write_text(text)
    with pytest.raises(BadInput, match=message) as info:
        load_task_card("toy", tmp_path)
    assert "\n" not in str(info.value)
