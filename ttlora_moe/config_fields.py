"""The config dataclasses of params.yaml sections: one way to declare a field with its help text, and the
dict round trip they share.

Every section class (``tt``, ``train``, ``router``, ``router.features``) declares its fields with
:func:`option` and derives from :class:`Section`. A field's default is the value params.yaml sets (a
test holds them equal), so a library call without params trains what the pipeline trains; the paper's
value, where it differs, is in the help text.
"""

from __future__ import annotations

import copy
from dataclasses import field, fields
from typing import Any, ClassVar, Self

from ttlora_moe.errors import BadInput


def option(default: Any, help: str) -> Any:
    """A dataclass field with its help text in ``metadata["help"]``; a list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _plain(value: Any) -> Any:
    """JSON-shaped copy: tuples become lists, containers are copied."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Section:
    """A params.yaml section as a dataclass: ``from_dict`` refuses unknown keys, ``to_dict`` is plain JSON."""

    section: ClassVar[str]  # where it lives in params.yaml, e.g. "router.features"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        """Build from a (partial) dict; a key the class does not know is one BadInput line naming the section."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BadInput(f"unknown {cls.section} key(s) {unknown}",
                           f"use only {', '.join(known)} under {cls.section} in params.yaml")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON values (lists, not tuples)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
