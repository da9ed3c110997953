"""Command-line errors as one ``lit-bar: error:`` line instead of the usage text and a union dump.

jsonargparse reports a bad value (``--model.init_args.perturbation bogus``, a missing ``--config``
file) by printing the whole usage (about 50 lines) and then a nested dump of every union member it
tried. :class:`LitBarArgumentParser` prints the part a user acts on instead: the option's full key,
what is allowed and what was given::

    lit-bar: error: --model.init_args.perturbation: expected one of 'sam', 'functional'; got 'bogus'

``LIT_BAR_TRACEBACK=1`` (or jsonargparse's own ``JSONARGPARSE_DEBUG``) restores jsonargparse's report.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

__all__ = ["LitBarArgumentParser", "one_line"]

_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$')
_CLASS = re.compile(r"^Problem with given class_path '(?P<cls>[^']+)':")
_LITERAL = re.compile(r"^Expected a typing\.Literal\[(?P<allowed>.*)\]\. Got value: (?P<given>.*)$")
_TYPE = re.compile(r"^Expected a <class '(?P<type>\w+)'>\. Got value: (?P<given>.*)$")
_NOT_ACCEPTED = re.compile(r"^Option '(?P<name>[^']+)' is not accepted$")
_NOT_A_PATH = re.compile(r"^Expected a path but (?P<given>.+) either not accessible or invalid$")
_MISSING_FILE = re.compile(r"^File does not exist: '(?P<path>[^']+)'")
_STRUCTURE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
)


def _readable(text: str) -> str:
    """jsonargparse's wording of a few common failures, rephrased for a user."""
    literal = _LITERAL.match(text)
    if literal:
        return f"expected one of {literal['allowed']}; got {literal['given']!r}"
    expected = _TYPE.match(text)
    if expected:
        article = "an" if expected["type"][0] in "aeiou" else "a"
        return f"expected {article} {expected['type']}; got {expected['given']!r}"
    missing = _MISSING_FILE.match(text)
    if missing:
        path = Path(missing["path"])
        shipped = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        known = f" ({path.parent} holds {', '.join(shipped)})" if shipped else ""
        return f"no such config file: {str(path)!r}{known}"
    return text


def one_line(message: str) -> str:
    """The innermost failure of a jsonargparse error report, prefixed with its full option key.

    The report nests ``Parser key "k":`` lines and, for a class given by ``class_path``, the
    attempts at each union member; the first line that is neither structure nor the ``None``
    member's refusal is the cause. A report with no such line is returned with its whitespace
    collapsed, so the result is always one line.
    """
    keys: list[tuple[int, str]] = []  # (indent, key part) of the enclosing "Parser key" lines
    classes: list[str] = []  # the classes given by class_path, outermost first
    for raw in message.splitlines():
        indent = len(raw) - len(raw.lstrip())
        text = raw.strip().removeprefix("- ").strip()
        if not text:
            continue
        while keys and keys[-1][0] >= indent:
            keys.pop()
        key, given_class = _KEY.match(text), _CLASS.match(text)
        if key:
            keys.append((indent, key["key"]))
            text = key["rest"]
            if not text:
                continue
        elif given_class:
            keys.append((indent, "init_args"))
            classes.append(given_class["cls"].rsplit(".", 1)[-1])
            continue
        if text.startswith(_STRUCTURE):
            continue
        option = ".".join(part for _, part in keys)
        return _cause(option, text, classes)
    return " ".join(message.split())


def _cause(option: str, text: str, classes: list[str]) -> str:
    """``--option: cause`` in a user's words."""
    top = option.split(".", 1)[0]
    not_accepted = _NOT_ACCEPTED.match(text)
    if not_accepted and classes:
        name = not_accepted["name"]
        return (
            f"--{option}.{name}: {classes[-1]} takes no argument {name!r} "
            f"(--{top}.help {classes[0]} lists them)"
        )
    not_a_path = _NOT_A_PATH.match(text)
    if not_a_path:
        return (
            f"--{option}: {not_a_path['given']!r} is neither a config file nor a class name lit-bar "
            "knows (a short name such as SequenceClassifier or GlueDataModule, or a dot import path)"
        )
    return f"--{option}: {_readable(text)}" if option else _readable(text)


class LitBarArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose parse errors are one ``lit-bar: error:`` line (exit status 2)."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        verbose = os.environ.get("LIT_BAR_TRACEBACK") or os.environ.get("JSONARGPARSE_DEBUG")
        if verbose or not self.exit_on_error:
            super().error(message, ex)
        print(f"lit-bar: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)
