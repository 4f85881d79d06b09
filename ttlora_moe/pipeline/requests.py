"""Serving requests: what a client sends becomes checked ``{"text", "text_pair"}`` rows, or one error naming
the row and the field.

The scoring server hands the pyfunc whatever the JSON held: ``None``, numbers, missing columns or a
megabyte of text. Every such row is refused before any model work (HTTP 400 through
:class:`mlflow.exceptions.MlflowException`), so a bad row can neither crash the server nor grow its
memory. An empty or whitespace-only text is not an error: the bundle answers it with an abstention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ttlora_moe.errors import BadInput

FIELDS = ("text", "text_pair")


@dataclass(frozen=True)
class RequestLimits:
    """How big one request may be (``serve:`` in params.yaml, recorded in the bundle)."""

    max_rows: int = 1024            # rows per request
    max_chars: int = 20_000         # characters of text + text_pair per row (inputs are truncated to max_length tokens anyway)


COLUMN_TYPES = (list, tuple, np.ndarray, pd.Series)  # a dict of these is columns (MLflow parses "instances" so)


def _records(model_input: Any) -> list[Any]:
    if isinstance(model_input, np.ndarray) and model_input.ndim == 0:  # MLflow parses {"inputs": "a text"} so
        model_input = model_input.item()
    if isinstance(model_input, pd.DataFrame):
        twice = sorted({str(c) for c in model_input.columns[model_input.columns.duplicated()]})
        if twice:
            raise BadInput(f"the request names column(s) {twice} more than once", "send each field once")
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        if model_input and all(isinstance(v, COLUMN_TYPES) for v in model_input.values()):
            lengths = {str(k): len(v) for k, v in model_input.items()}
            if len(set(lengths.values())) > 1:
                raise BadInput(f"the request's columns differ in length ({lengths})", "send one value per row in every column")
            # zipped, not through pandas, whose arrow strings would fail on text that is not valid Unicode
            return [dict(zip(model_input, values)) for values in zip(*model_input.values())]
        return [model_input]
    if isinstance(model_input, str):
        return [{"text": model_input}]
    if isinstance(model_input, COLUMN_TYPES):
        return list(model_input)
    raise BadInput(f"the request is {json_kind(model_input)}, not rows",
                   'send {"dataframe_records": [{"text": ..., "text_pair": ...}, ...]}')


def json_kind(value: Any) -> str:
    """What ``value`` is, in the words of the JSON a client sent: ``a number``, ``an array``, ``an object``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    if isinstance(value, COLUMN_TYPES):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _field(index: int, record: dict[str, Any], name: str, required: bool) -> str | None:
    value = record.get(name)
    if isinstance(value, np.ndarray) and value.ndim == 0:  # MLflow parses {"inputs": [{"text": "a"}]} so
        value = value.item()
    if _missing(value):
        if required:
            got = "missing" if name not in record else "null"
            raise BadInput(f"row {index}: field {name!r} is {got}", f"send a string in {name!r} for every row")
        return None
    if not isinstance(value, str):
        raise BadInput(f"row {index}: field {name!r} is {json_kind(value)} ({str(value)[:40]!r}), not text",
                       f"send {name!r} as a JSON string")
    check_unicode(value, f"row {index}: field {name!r}")
    return str(value)  # a plain str, also for numpy's


def check_unicode(text: str, where: str) -> None:
    """:class:`BadInput` naming ``where`` when ``text`` is not valid Unicode: JSON's ``"\\ud800"`` escape, or a
    command-line argument that was not UTF-8, leaves half of a surrogate pair, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput(f"{where} holds {text[exc.start]!r} at character {exc.start}, half of a surrogate pair, "
                       "not a character", "send valid Unicode (UTF-8) text") from None


def request_rows(model_input: Any, limits: RequestLimits = RequestLimits()) -> list[dict[str, str | None]]:
    """The checked rows of one request, in order; any bad row is one :class:`BadInput` naming it (0-based)."""
    records = _records(model_input)
    if not records:
        raise BadInput("the request holds no rows", 'send {"dataframe_records": [{"text": ...}, ...]}')
    if len(records) > limits.max_rows:
        raise BadInput(f"the request holds {len(records)} rows; the limit is {limits.max_rows}",
                       "split it into smaller requests")
    rows = []
    for i, record in enumerate(records):
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            raise BadInput(f"row {i} is {json_kind(record)}, not an object", 'send {"text": ..., "text_pair": ...}')
        unknown = sorted(str(k) for k in record if k not in FIELDS)
        if unknown:
            raise BadInput(f"row {i}: unknown field(s) {unknown}", f"send only {', '.join(FIELDS)}")
        text = _field(i, record, "text", required=True)
        pair = _field(i, record, "text_pair", required=False)
        size = len(text) + len(pair or "")
        if size > limits.max_chars:
            field = "text" if len(text) > limits.max_chars or pair is None else "text_pair"
            raise BadInput(f"row {i}: field {field!r} brings the row to {size:,} characters; the limit is "
                           f"{limits.max_chars:,}", "send shorter text (inputs are truncated to the model's length anyway)")
        rows.append({"text": text, "text_pair": pair})
    return rows
