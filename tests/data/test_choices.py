"""Multiple-choice inputs: the template and every option reach the row; malformed cards and data are one line."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.toys import choice_card, choice_frame
from ttlora_moe.data.choices import (
    choice_columns,
    choice_inputs,
    options_text,
    template_fields,
)
from ttlora_moe.errors import BadInput


def test_options_are_marked_in_order_and_templates_name_columns():
    assert options_text(["bank", "library", "new york"]) == "(A) bank (B) library (C) new york"
    assert template_fields("{context} {question}") == ["context", "question"]
    assert template_fields("Q: {question} {{literal}}") == ["question"]
    for bad, message in (("{context", "malformed"), ("no fields", "names no column"), ("{}", "not a column name"),
                         ("{q!r}", "field \\{q!r\\}"), ("{q:>9}", "field \\{q:>9\\}")):
        with pytest.raises(BadInput, match=message) as info:
            template_fields(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("choices", [[f"answer{k}" for k in range(4)], "choices.text"])
def test_every_option_reaches_the_pair_from_columns_or_a_struct_list(choices):
    frame = choice_frame(8)
    card = choice_card(choices=choices)
    inputs = choice_inputs(card, frame, "train.parquet")
    assert list(inputs.columns) == ["text", "text_pair"]
    assert inputs["text"].iloc[3] == "premise 3 the red sat on the mat what sat on the mat"
    for i, row in frame.iterrows():
        assert inputs["text_pair"].iloc[i] == options_text([row[f"answer{k}"] for k in range(4)])
    assert choice_columns(card) == ["context", "question", *(choices if isinstance(choices, list) else ["choices"])]


def test_a_row_missing_an_option_or_a_field_has_no_input():
    frame = choice_frame(4)
    frame.loc[1, "answer2"] = "  "
    frame.loc[2, "context"] = None
    frame.at[3, "choices"] = None
    inputs = choice_inputs(choice_card(), frame, "f")
    assert inputs["text_pair"].isna().tolist() == [False, True, False, False]
    assert inputs["text"].isna().tolist() == [False, False, True, False]
    assert choice_inputs(choice_card(choices="choices.text"), frame, "f")["text_pair"].isna().tolist()[3]


def test_bad_option_data_is_a_one_line_error():
    frame = choice_frame(4)
    cases = [
        (choice_card(choices="choices.text", label_names=list("ABC"), label_values=[0, 1, 2]),
         frame, "row 0 of f has 4 options in 'choices.text'; task 'quiz' has 3"),
        (choice_card(choices="choices.nope"), frame, "a cell of f has no field 'nope'"),
        (choice_card(choices="context"), frame, "holds str, not a list of options"),
        (choice_card(), frame.assign(answer1=1), "input column 'answer1' of task 'quiz' in f is not text"),
        (choice_card(), frame.drop(columns="question"), "column 'question' of task 'quiz' is not in f"),
        (choice_card(choices="choices.text"), frame.assign(choices=[{"text": [1, 2, 3, 4]}] * 4),
         "input column 'choices.text' .* is not text"),
    ]
    for card, data, message in cases:
        with pytest.raises(BadInput, match=message) as info:
            choice_inputs(card, data, "f")
        assert "\n" not in str(info.value)


def test_struct_cells_read_back_from_parquet(tmp_path):
    choice_frame(6, options=3).to_parquet(tmp_path / "t.parquet")
    frame = pd.read_parquet(tmp_path / "t.parquet")  # lists come back as numpy arrays inside dicts
    card = choice_card(choices="choices.text", label_names=list("ABC"), label_values=[0, 1, 2])
    pairs = choice_inputs(card, frame, "t.parquet")["text_pair"]
    assert pairs.iloc[0] == options_text([frame.loc[0, f"answer{k}"] for k in range(3)])
