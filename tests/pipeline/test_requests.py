"""Serving requests: every malformed row is one error naming the row and the field; good rows pass as they are."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.requests import RequestLimits, request_rows


def test_good_rows_in_every_shape_a_client_sends():
    want = [{"text": "a", "text_pair": None}, {"text": "b", "text_pair": "c"}]
    frame = pd.DataFrame({"text": ["a", "b"], "text_pair": [None, "c"]})
    assert request_rows(frame) == want
    assert request_rows({"text": ["a", "b"], "text_pair": [math.nan, "c"]}) == want
    assert request_rows([{"text": "a"}, {"text": "b", "text_pair": "c"}]) == want
    assert request_rows("a") == request_rows(np.array("a")) == [{"text": "a", "text_pair": None}]  # {"inputs": "a"}
    columns = {"text": np.array(["a", "b"]), "text_pair": np.array([None, "c"], dtype=object)}  # MLflow's "instances"
    assert request_rows(columns) == want
    assert all(type(r["text"]) is str for shape in (columns, np.array(["a", "b"])) for r in request_rows(shape))
    assert request_rows([{"text": "   "}]) == [{"text": "   ", "text_pair": None}]  # answered with an abstention
    parsed = [{"text": np.array("a")}, {"text": np.array("b"), "text_pair": np.array("c")}]  # {"inputs": [records]}
    assert request_rows(parsed) == want and all(type(r["text"]) is str for r in request_rows(parsed))


@pytest.mark.parametrize("records,message", [
    ([{"text": "ok"}, {"text": None}], "row 1: field 'text' is null"),
    ([{"text": "ok"}, {"text_pair": "x"}], "row 1: field 'text' is missing"),
    ([{"text": 5}], "row 0: field 'text' is a number (\'5\'), not text"),
    ([{"text": 1.5}], "row 0: field 'text' is a number"),
    ([{"text": ["a"]}], "row 0: field 'text' is an array"),
    ([{"text": "a", "text_pair": 3}], "row 0: field 'text_pair' is a number"),
    ([{"text": True}], "row 0: field 'text' is a boolean"),
    ([{"text": {"a": 1}}], "row 0: field 'text' is an object"),
    ([{"text": "a", "label": 1}], "row 0: unknown field(s) ['label']"),
    ([{"text": "x" * 30}], "row 0: field 'text' brings the row to 30 characters; the limit is 20"),
    ([{"text": "x" * 10, "text_pair": "y" * 15}], "row 0: field 'text_pair' brings the row to 25 characters"),
    ([{"text": "ok"}, {"text": "a\ud800b"}], "row 1: field 'text' holds '\\ud800' at character 1, half of a surrogate"),
    ([{"text": "a", "text_pair": "\udc80"}], "row 0: field 'text_pair' holds '\\udc80' at character 0"),
    ({"text": ["ok", "b\ud800"]}, "row 1: field 'text' holds '\\ud800' at character 1"),  # "instances" columns
    ([7], "row 0 is a number, not an object"),
    (pd.DataFrame([["a", "b"]], columns=["text", "text"]), "the request names column(s) ['text'] more than once"),
    ([], "the request holds no rows"),
    (np.array(5), "the request is a number, not rows"),
    (None, "the request is null, not rows"),
    ({"text": ["a", "b"], "text_pair": ["c"]}, "the request's columns differ in length ({'text': 2, 'text_pair': 1})"),
    ([{"text": "a"}] * 4, "the request holds 4 rows; the limit is 3"),
])
def test_bad_rows_are_one_line_naming_row_and_field(records, message):
    with pytest.raises(BadInput) as info:
        request_rows(records, RequestLimits(max_rows=3, max_chars=20))
    assert message in str(info.value) and "\n" not in str(info.value)
