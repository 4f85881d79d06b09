"""Multiple-choice tasks: a question template and C options become one ``(text, text_pair)`` row.

A ``kind: multiple_choice`` card renders its ``text`` template (``"{context} {question}"``) from the
raw columns and lists every option in ``text_pair`` behind a letter marker: ``(A) bank (B) library
(C) ...``. The label is the position of the right option (class ``A`` is the first option). So a
multiple-choice task is a C-label classification whose input shows the question and every option,
and the expert, the router and the mixture see it as the same one-forward row as any other task
(README, "Multiple-choice tasks", says why this formulation).

The options come from several columns (``choices: [answerA, answerB, answerC]``) or from one column
holding a list per row, optionally a field of a struct column (``choices: choices.text``).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from ttlora_moe.data.columns import require_columns, require_text
from ttlora_moe.errors import BadInput

if TYPE_CHECKING:
    from ttlora_moe.data.cards import TaskCard

MULTIPLE_CHOICE = "multiple_choice"
MARKERS = string.ascii_uppercase  # the letter before each option; also the class names of the card
_TEMPLATE_FIX = "write column names in braces, e.g. '{context} {question}' (a literal brace is {{ or }})"


def options_text(options: Sequence[str]) -> str:
    """The options as the model reads them: ``(A) first (B) second ...`` (a request's ``text_pair``)."""
    return " ".join(f"({MARKERS[i]}) {option}" for i, option in enumerate(options))


def option_spans(text_pair: str | None) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of each option's text in an :func:`options_text` string, in order.

    The inverse of :func:`options_text`: option ``A`` starts after a leading ``(A) ``, and each next one
    after `` (B) ``, `` (C) ``, ... in turn (an option's own text may hold other brackets). A text that
    does not start with ``(A) `` has no options: ``[]``.
    """
    first = f"({MARKERS[0]}) "
    if not text_pair or not text_pair.startswith(first):
        return []
    spans, start = [], len(first)
    for marker in MARKERS[1:]:
        tag = f" ({marker}) "
        end = text_pair.find(tag, start)
        if end < 0:
            break
        spans.append((start, end))
        start = end + len(tag)
    spans.append((start, len(text_pair)))
    return spans


def template_fields(template: str) -> list[str]:
    """The columns a text template names (``"{context} {question}"`` -> ``[context, question]``)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise BadInput(f"text template {template!r} is malformed ({exc})", _TEMPLATE_FIX) from None
    fields = []
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if not field.strip() or spec or conversion:
            raise BadInput(f"text template {template!r} has the field {{{field}{'!' + conversion if conversion else ''}"
                           f"{':' + spec if spec else ''}}}, not a column name", _TEMPLATE_FIX)
        fields.append(field)
    if not fields:
        raise BadInput(f"text template {template!r} names no column", _TEMPLATE_FIX)
    return fields


def choice_template(text: str) -> str:
    """``tasks add --text`` of a multiple-choice task as a card template: a template stays, a column name
    ``question`` becomes ``{question}``."""
    return text if "{" in text or "}" in text else "{" + text + "}"


def option_count(task: str, df: pd.DataFrame, choices: list[str] | str, where: str) -> int:
    """How many options each row of ``df`` offers: the number of option columns, or the one length of
    every row's list in a list column (``column`` or ``column.field``)."""
    if isinstance(choices, list):
        return len(choices)
    column, *keys = choices.split(".")
    require_columns(task, df, [column], where)
    lengths = sorted({len(row) for row in (_cell_options(cell, keys, choices, task, where) for cell in df[column])
                      if row is not None})
    if not lengths:
        raise BadInput(f"choices {choices!r} of {where} hold no list of options in any row",
                       "name a column of lists, or list the option columns")
    if len(lengths) > 1:
        raise BadInput(f"rows of {where} offer {', '.join(map(str, lengths))} options in {choices!r}",
                       "give every row the same number of options (a task has one set of option letters)")
    if lengths[0] < 2:
        raise BadInput(f"choices {choices!r} of {where} hold {lengths[0]} option per row", "a question needs at least two options")
    if lengths[0] > len(MARKERS):
        raise BadInput(f"choices {choices!r} of {where} hold {lengths[0]} options per row", f"at most {len(MARKERS)} are supported")
    return lengths[0]


def check_choice_card(card: TaskCard) -> None:
    """A multiple-choice card: a text template, the options, and the option letters as label names."""
    where = f"multiple-choice task card {card.name!r}"
    if card.text_pair is not None:
        raise BadInput(f"{where} sets text_pair {card.text_pair!r}", "remove it: the options are the text_pair")
    template_fields(card.text)
    spec = card.choices
    if isinstance(spec, list):
        if len(spec) < 2 or len(set(spec)) != len(spec) or not all(isinstance(c, str) and c.strip() for c in spec):
            raise BadInput(f"{where}: choices must list at least two distinct option columns, got {spec!r}",
                           "e.g. choices: [answerA, answerB, answerC]")
        count = len(spec)
    elif isinstance(spec, str) and all(part.strip() for part in spec.split(".")):
        count = len(card.label_names)
    else:
        raise BadInput(f"{where}: choices must be a list of option columns or one list column, got {spec!r}",
                       "e.g. choices: [option1, option2], or choices: choices.text for a struct column's list")
    if count > len(MARKERS):
        raise BadInput(f"{where} has {count} options", f"at most {len(MARKERS)} options are supported")
    markers = list(MARKERS[:count])
    if card.label_names != markers:
        raise BadInput(f"{where}: label_names {card.label_names} must be the option letters {markers}",
                       "name the classes by the letter the model sees before each option, in order")


def choice_columns(card: TaskCard) -> list[str]:
    """The raw columns a multiple-choice card reads (template fields, then the option column(s))."""
    fields = template_fields(card.text)
    return fields + [c for c in option_columns(card.choices) if c not in fields]


def option_columns(choices: list[str] | str) -> list[str]:
    """The raw columns of a card's ``choices``: the option columns, or the one list column (before any ``.field``)."""
    return list(choices) if isinstance(choices, list) else [str(choices).split(".")[0]]


def choice_inputs(card: TaskCard, df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``text`` (the rendered template) and ``text_pair`` (every option, marked) of each raw row.

    A row with a missing template field or a missing or blank option gets a missing input (cleaning
    drops it as empty); an option list of the wrong length or a cell that is not text is BadInput.
    """
    fields = template_fields(card.text)
    require_columns(card.name, df, choice_columns(card), where)
    for field in fields:
        require_text(card.name, df[field], field, where)
    text = pd.Series("", index=df.index, dtype="string")
    for literal, field, _, _ in string.Formatter().parse(card.text):
        text = text + literal
        if field is not None:
            text = text + df[field].astype("string")
    pair = [None if row is None or any(_blank(o) for o in row) else options_text(row) for row in _option_rows(card, df, where)]
    return pd.DataFrame({"text": text, "text_pair": pd.Series(pair, index=df.index, dtype="string")})


def _option_rows(card: TaskCard, df: pd.DataFrame, where: str) -> list[Sequence[Any] | None]:
    """Each row's options in order (None: the row has no option list)."""
    if isinstance(card.choices, list):
        for column in card.choices:
            require_text(card.name, df[column], column, where)
        return list(df[card.choices].itertuples(index=False, name=None))
    spec = str(card.choices)
    column, *keys = spec.split(".")
    rows = [_cell_options(cell, keys, spec, card.name, where) for cell in df[column]]
    wanted = card.num_labels
    for i, row in enumerate(rows):
        if row is not None and len(row) != wanted:
            raise BadInput(f"row {i} of {where} has {len(row)} options in {spec!r}; task {card.name!r} has {wanted} "
                           f"(its label_names)", "give every row that many options, or fix the card's label_names")
    require_text(card.name, pd.Series([o for row in rows if row is not None for o in row], dtype=object), spec, where)
    return rows


def _cell_options(cell: Any, keys: list[str], spec: str, task: str, where: str) -> list[Any] | None:
    """The option list inside one cell of a list (or struct) column; None for a missing cell."""
    for key in keys:
        if _missing(cell):
            return None
        if not isinstance(cell, dict) or key not in cell:
            raise BadInput(f"choices {spec!r} of task {task!r}: a cell of {where} has no field {key!r}",
                           "fix the card's choices (column.field of a struct column)")
        cell = cell[key]
    if _missing(cell):
        return None
    if isinstance(cell, (str, bytes, dict)) or not hasattr(cell, "__len__"):
        raise BadInput(f"choices {spec!r} of task {task!r} in {where} holds {type(cell).__name__}, not a list of options",
                       "name a column of lists, or list the option columns: choices: [a, b, c]")
    return list(cell)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _blank(option: Any) -> bool:
    return _missing(option) or option is pd.NA or (isinstance(option, str) and not option.strip())
