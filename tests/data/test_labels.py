"""Inferring a new task's classes: every value a class unless the user says it means "no label"; anything
that would drop, merge or invent a class is one line."""

from __future__ import annotations

import pandas as pd
import pytest

from ttlora_moe.data.labels import infer_labels
from ttlora_moe.errors import BadInput


def labels(values, names=None, unlabelled=()):
    return infer_labels(pd.Series(values, dtype=object), "y", names, list(unlabelled))


def test_classes_are_the_values_sorted_numbers_as_numbers():
    assert labels(["pos", "neg", " pos", "neg"]) == (["neg", "pos"], ["neg", "pos"], [])
    assert labels(["10", "9", "10", "9.0"])[:2] == (["9", "10"], [9, 10])
    assert labels([1.0, 0.0, 1.0, 0.0])[:2] == (["0", "1"], [0, 1])  # a float column of whole numbers
    assert labels([True, False, True, False])[:2] == (["False", "True"], [False, True])


def test_nothing_is_dropped_unless_named_unlabelled():
    _, values, notes = labels(["1", "0", "-1", "1", "0", "-1"])  # -1 looks like a class: it is one, with a note
    assert values == [-1, 0, 1] and notes == ["label '-1' is kept as a class (pass --unlabelled-values -1 if it means 'no label')"]
    assert labels(["pos", "neg", "none", "pos", "neg", "none"])[0] == ["neg", "none", "pos"]
    assert labels(["1", "0", "-1", "1"], unlabelled=["-1"])[:2] == (["0", "1"], [0, 1])
    assert labels(["a", "b", "", None, float("nan"), "a"], unlabelled=[""])[:2] == (["a", "b"], ["a", "b"])
    assert labels(["a", "b", "a", "b"], unlabelled=["?"])[2] == ["--unlabelled-values '?' never occurs in column 'y'"]


def test_label_names_map_values_or_class_ids():
    assert labels(["Pos", "neg", "Pos", "neg"], names=["neg", "pos"])[:2] == (["neg", "pos"], ["neg", "pos"])
    assert labels([1, 0, 2, 1, 0, 2], names=["a", "b", "c"])[:2] == (["a", "b", "c"], [0, 1, 2])
    assert labels(["1", "0", "1", "0"], names=["no", "yes"])[:2] == (["no", "yes"], [0, 1])


@pytest.mark.parametrize("values, names, unlabelled, message", [
    (["a", "b", "", None], None, (), "2 row\\(s\\) have an empty label in column 'y' .*--unlabelled-values ''"),
    (["1", "0", "none", "1", "0"], None, (), "mixes numbers and text labels \\('0', '1' and 'none'\\) .*--unlabelled-values none"),
    ([-1, "pos", "neg", "pos", "neg"], None, (), "mixes numbers and text labels .*--unlabelled-values -1 if"),
    (["0.5", "1.5", "0.5", "1.5"], None, (), "non-integer numbers \\('0.5', '1.5'\\)"),
    (["Pos", "pos", "neg", "neg"], None, (), "labels \\['Pos', 'pos'\\] in column 'y' differ only in upper/lower case"),
    ([str(i) for i in range(10)] + ["1"], None, (), "looks like an identifier, not a label: 10 distinct values in 11 rows"),
    (["a", "a", "a"], None, (), "has a single class \\(only 'a'\\)"),
    (["a", "b", "a"], None, ["a", "b"], "column 'y' has no labelled rows"),
    ([0, 1, 0, 1], ["a", "b", "c"], (), "3 --label-names for 2 classes in column 'y'"),
    (["a", "b", "a"], ["a", "b", "c"], (), "--label-names \\['c'\\] never occur in column 'y'"),
    (["a", "b", "c", "a", "b", "c"], ["a", "b"], (), "labels \\['c'\\] in column 'y' are not in --label-names"),
    (["a", "b", "a"], ["a", "A"], (), "differ only in upper/lower case"),
    (["a", "b", "a"], ["a"], (), "must list at least two distinct names"),
    (["a", "b", "x"], ["a", "b"], ["x", "b"], "--label-names and --unlabelled-values both name \\['b'\\]"),
])
def test_ambiguous_labels_are_one_line(values, names, unlabelled, message):
    with pytest.raises(BadInput, match=message) as info:
        labels(values, names, unlabelled)
    assert "\n" not in str(info.value)
