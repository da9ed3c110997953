"""Prompt templates as ``str.format`` strings over a row's columns, with a few named text transforms.

``"{premise:no_period}{question}"`` formats the row's ``premise`` without its final period and its
``question``; a transform goes where ``str.format`` puts a format spec. ``value_maps`` replace a
column's value first (COPA: ``{question: {cause: " because ", effect: " so "}}``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["TRANSFORMS", "Template", "template_fields"]


def _no_period(text: str) -> str:
    text = text.rstrip()
    return text[:-1] if text.endswith(".") else text


def _lower_first_word(text: str) -> str:
    """MeZO's COPA "correct" capitalisation: the first word lower-cased unless it is "I"."""
    words = text.split(" ")
    if words and words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def _lower_first_char(text: str) -> str:
    return text[:1].lower() + text[1:]


#: Named transforms usable as format specs: ``{column:transform}``.
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "no_period": _no_period,
    "lower_first_word": _lower_first_word,
    "lower_first_char": _lower_first_char,
    "strip": str.strip,
    "lower": str.lower,
}


def template_fields(template: str) -> list[str]:
    """The field names of ``template`` in order, each once; unknown transforms raise ``ValueError``."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string: {err}") from err
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(
                f"template {template!r}: placeholder {{{name}}} must name a column, e.g. {{sentence}}"
            )
        if conversion or (spec and spec not in TRANSFORMS):
            raise ValueError(
                f"template {template!r}: unknown transform {spec or conversion!r} of {{{name}}}; "
                f"known: {sorted(TRANSFORMS)}"
            )
        if name not in fields:
            fields.append(name)
    return fields


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        text = str(value)
        return TRANSFORMS[format_spec](text) if format_spec else text


class Template:
    """A checked format string over row columns.

    Args:
        text: The format string, e.g. ``"{sentence} It was"``.
        value_maps: Per column, a mapping applied to the column's value before formatting.
    """

    def __init__(self, text: str, value_maps: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.text = text
        self.fields = template_fields(text)
        self.value_maps = {k: dict(v) for k, v in (value_maps or {}).items()}

    def __call__(self, row: Mapping[str, Any], **extra: Any) -> str:
        """Format with ``row``'s columns (and ``extra`` fields such as ``candidate``)."""
        values = {**{name: row[name] for name in self.fields if name in row}, **extra}
        for column, mapping in self.value_maps.items():
            if column in values:
                key = str(values[column])
                if key not in mapping:
                    raise ValueError(
                        f"value {key!r} of column {column!r} is not in its value map {sorted(mapping)}"
                    )
                values[column] = mapping[key]
        missing = [name for name in self.fields if name not in values]
        if missing:
            raise ValueError(
                f"template {self.text!r} needs {missing}, which the row does not have: {sorted(row)}"
            )
        return _Formatter().vformat(self.text, (), values)
