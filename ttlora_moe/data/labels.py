"""The classes of a new task's raw label column: nothing dropped, merged or invented unless the user said so.

``ttlora-moe tasks add`` infers a card's ``label_names``/``label_values`` here. Values compare as
:func:`~ttlora_moe.data.cards.normalise` does (1, '1' and 1.0 are one class); anything that would
silently lose a class or make one up is one :class:`~ttlora_moe.errors.BadInput` line.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ttlora_moe.data.cards import normalise
from ttlora_moe.data.choices import MARKERS
from ttlora_moe.errors import BadInput

# Labels that often mean "no label": kept as classes (the user did not say otherwise), with a note.
SUSPECT = frozenset({"-1", "none", "null", "nan", "n/a", "na", "?", "-", "unknown", "missing", "unlabelled", "unlabeled"})
OPTION = "--unlabelled-values"


def infer_labels(column: pd.Series, label: str, label_names: list[str] | None,
                 unlabelled_values: list[Any]) -> tuple[list[str], list[Any], list[str]]:
    """``(label_names, label_values, notes)`` of the raw label ``column`` (named ``label``).

    ``unlabelled_values``: raw values whose rows have no label ('' = a blank cell); ``label_names``:
    the user's class names, matching the values themselves or class ids 0..k-1 (None: the values).
    """
    unlabelled = {normalise(v) for v in unlabelled_values}
    names = None if label_names is None else _checked_names([str(n).strip() for n in label_names], unlabelled)
    keys, kept, notes = _labelled(column, label, unlabelled_values)
    first = _classes(column[kept], keys[kept], label)
    for key, raw in first.items():
        if key in SUSPECT:
            notes.append(f"label {raw!r} is kept as a class (pass {OPTION} {raw} if it means 'no label')")
    if names is None:
        return _own_names(first), _own_values(first), notes
    return names, _named_values(first, label, names), notes


def infer_option_labels(column: pd.Series, label: str, count: int, choice_labels: list[str] | None,
                        unlabelled_values: list[Any]) -> tuple[list[str], list[Any], list[str]]:
    """Multiple choice: ``(label_names, label_values, notes)`` of the raw label ``column`` of a task with
    ``count`` options. The names are the option letters A, B, ...; ``choice_labels`` is the user's raw
    value for each option in order (None: the letters themselves, or positions 0..count-1 or 1..count,
    whichever the values are; anything else, or both, is one BadInput)."""
    letters = list(MARKERS[:count])
    keys, kept, notes = _labelled(column, label, unlabelled_values)
    present = set(keys[kept])
    if not present:
        raise BadInput(f"column {label!r} has no labelled rows", "a multiple-choice task needs answered questions")
    if choice_labels is None:
        values = _option_values(present, count, label, _show(_classes_seen(column[kept], keys[kept]), list(present)))
    else:
        given = [normalise(v) for v in choice_labels]
        if len(given) != count or len(set(given)) != count or "" in given:
            raise BadInput(f"--choice-labels {choice_labels} must give {count} distinct values, one per option "
                           f"({', '.join(letters)})", "list the label value that marks each option, in order")
        clash = sorted(set(given) & {normalise(v) for v in unlabelled_values})
        if clash:
            raise BadInput(f"--choice-labels and {OPTION} both name {clash}", "a value is either an option or 'no label'")
        values = list(choice_labels)
    unknown = sorted(present - {normalise(v) for v in values})
    if unknown:
        raise BadInput(f"labels {unknown[:5]} in column {label!r} mark none of the {count} options ({values})",
                       f"pass {OPTION} for values that mean 'no label', or --choice-labels with each option's value")
    notes.append("label " + ", ".join(f"{v!r} is option {m}" for v, m in zip(values, letters)))
    return letters, values, notes


def _option_values(present: set[str], count: int, label: str, shown: str) -> list[Any]:
    """The raw value of each option, read off the normalised labels ``present``: letters or positions."""
    if present <= {m.lower() for m in MARKERS[:count]}:
        return list(MARKERS[:count])
    zero, one = {str(i) for i in range(count)}, {str(i) for i in range(1, count + 1)}
    if present <= zero and present <= one:
        raise BadInput(f"labels {shown} in column {label!r} may count the {count} options from 0 or from 1",
                       f"pass --choice-labels {','.join(map(str, range(count)))} or "
                       f"--choice-labels {','.join(map(str, range(1, count + 1)))}")
    if present <= zero:
        return list(range(count))
    if present <= one:
        return list(range(1, count + 1))
    raise BadInput(f"labels {shown} in column {label!r} are neither the option letters "
                   f"{', '.join(MARKERS[:count])} nor positions 0..{count - 1} or 1..{count}",
                   "pass --choice-labels with the label value of each option, in order")


def _labelled(column: pd.Series, label: str, unlabelled_values: list[Any]) -> tuple[pd.Series, pd.Series, list[str]]:
    """The normalised labels, which rows have a label, and a note for each --unlabelled-values never seen;
    a blank label the user did not call 'no label' is BadInput."""
    keys = column.map(normalise)
    unlabelled = {normalise(v) for v in unlabelled_values}
    blank = int((keys == "").sum())
    if blank and "" not in unlabelled:
        raise BadInput(f"{blank} row(s) have an empty label in column {label!r}",
                       f"fill them in, or pass {OPTION} '' to drop rows without a label")
    present = set(keys)
    notes = [f"{OPTION} {v!r} never occurs in column {label!r}" for v in unlabelled_values if normalise(v) not in present]
    return keys, ~keys.isin(unlabelled), notes


def _classes_seen(column: pd.Series, keys: pd.Series) -> dict[str, Any]:
    """Normalised label -> its first raw value."""
    return {k: _plain(v) for k, v in column.groupby(keys.to_numpy(), sort=False).first().items()}


def _classes(column: pd.Series, keys: pd.Series, label: str) -> dict[str, Any]:
    """The distinct classes (normalised key -> first raw value), checked to be one kind of label."""
    if column.empty:
        raise BadInput(f"column {label!r} has no labelled rows", "a classifier needs examples of at least two labels")
    first = _classes_seen(column, keys)
    spellings = pd.DataFrame({"key": keys, "form": column.map(lambda v: str(v).strip())}).drop_duplicates()
    spellings = spellings[~spellings["key"].map(_is_number)]
    for _, forms in spellings.groupby("key")["form"]:
        if len(forms) > 1:
            raise BadInput(f"labels {sorted(forms)[:5]} in column {label!r} differ only in upper/lower case",
                           "write each class one way in the data (they would become one class)")
    numbers = [k for k in first if _is_number(k)]
    texts = [k for k in first if not _is_number(k)]
    if numbers and texts:
        odd = [str(first[k]) for k in (texts if len(texts) <= len(numbers) else numbers)]
        raise BadInput(f"column {label!r} mixes numbers and text labels ({_show(first, numbers)} and {_show(first, texts)})",
                       f"pass {OPTION} {','.join(odd[:5])} if those mean 'no label', else write every label the same way")
    fractions = [k for k in numbers if not float(k).is_integer()]
    if fractions:
        raise BadInput(f"column {label!r} holds non-integer numbers ({_show(first, fractions)}): a score, not a class",
                       "choose a column of class labels with --label")
    if len(first) < 2:
        raise BadInput(f"column {label!r} has a single class (only {next(iter(first.values()))!r})",
                       "a classifier needs examples of at least two labels")
    rows = len(column)
    if len(first) > 2 and rows < 2 * len(first):
        raise BadInput(f"column {label!r} looks like an identifier, not a label: {len(first)} distinct values "
                       f"in {rows} rows", "choose the column holding the class with --label")
    return first


def _checked_names(names: list[str], unlabelled: set[str]) -> list[str]:
    """``--label-names``: at least two, distinct even ignoring case, none also named unlabelled."""
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise BadInput(f"--label-names {names} must list at least two distinct names", "fix --label-names")
    keys = {normalise(n) for n in names}
    if len(keys) != len(names):
        raise BadInput(f"--label-names {names} differ only in upper/lower case", "give each class a distinct name")
    clash = sorted(keys & unlabelled)
    if clash:
        raise BadInput(f"--label-names and {OPTION} both name {clash}", "a value is either a class or 'no label'")
    return names


def _named_values(first: dict[str, Any], label: str, names: list[str]) -> list[Any]:
    """The raw values of the user's class names: the names themselves, or class ids 0..k-1."""
    by_key = {normalise(n): n for n in names}
    if set(first) <= set(by_key):  # the data holds the names themselves
        unused = [n for n in names if normalise(n) not in first]
        if unused:
            raise BadInput(f"--label-names {unused} never occur in column {label!r} (its classes: {_show(first, list(first))})",
                           "list only the classes in the data")
        return list(names)
    if set(first) <= {str(i) for i in range(len(names))}:  # the data holds class ids 0..k-1
        if len(first) < len(names):
            raise BadInput(f"{len(names)} --label-names for {len(first)} classes in column {label!r} "
                           f"({_show(first, list(first))})", "give one name per class id that occurs (0..k-1)")
        return list(range(len(names)))
    unknown = sorted(str(first[k]) for k in set(first) - set(by_key))
    raise BadInput(f"labels {unknown[:5]} in column {label!r} are not in --label-names {names}",
                   "list every label value in --label-names (or give class ids 0..k-1)")


def _own_names(first: dict[str, Any]) -> list[str]:
    return [k if _is_number(k) else str(first[k]).strip() for k in _sorted(first)]


def _own_values(first: dict[str, Any]) -> list[Any]:
    return [int(k) if _is_number(k) else first[k] for k in _sorted(first)]


def _sorted(first: dict[str, Any]) -> list[str]:
    """Class keys in order: by number, else alphabetically."""
    return sorted(first, key=lambda k: (float(k), k) if _is_number(k) else (0.0, k))


def _is_number(key: str) -> bool:
    """Whether a normalised label is a number (1, -1, 0.5; not nan or inf)."""
    if "_" in key:
        return False
    try:
        return math.isfinite(float(key))
    except ValueError:
        return False


def _plain(value: Any) -> Any:
    """A numpy scalar as the plain Python value; text stripped."""
    value = value.item() if hasattr(value, "item") else value
    return value.strip() if isinstance(value, str) else value


def _show(first: dict[str, Any], keys: list[str]) -> str:
    shown = ", ".join(repr(first[k]) for k in sorted(keys)[:5])
    return shown + (", ..." if len(keys) > 5 else "")
