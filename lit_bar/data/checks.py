"""Checks of label and target values, run on the loaded splits before any training step.

A bad value stops the run with one line that names the split, its file (or hub dataset), the row
and what is allowed, instead of a ``TypeError`` mid-epoch or NaN weights at the end:

* class labels must be integer class ids (an integral float, as pandas reads a CSV column, counts);
  strings, ``null`` and fractions are refused, and so are ids outside ``0..n-1`` where asked;
* regression targets (STS-B) must be finite numbers: ``NaN``, ``Infinity``, ``null`` and strings are
  refused.

Rows are named the way an editor shows them: ``line N`` of a JSON Lines file (``line N + 1`` of a
CSV file, after its header), ``row i`` (0-based, as ``dataset[i]``) of a Parquet file or a hub split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_bar.io.hub import SPLIT_SUFFIXES

__all__ = ["SplitSource", "check_class_ids", "check_targets"]


class SplitSource:
    """Where a split's rows come from: a file of ``data_dir`` or a hub dataset, and how to name a row.

    Args:
        split: The split's name (``train``, ``validation``, ...).
        data_dir: The local folder the split was read from, if any.
        dataset: The hub dataset, e.g. ``"glue/sst2"``, when there is no ``data_dir``.
    """

    def __init__(self, split: str, data_dir: str | None = None, dataset: str | None = None) -> None:
        self.split = split
        self.file: Path | None = None
        if data_dir is not None:
            folder = Path(data_dir).expanduser()
            found = [folder / f"{split}.{suffix}" for suffix in SPLIT_SUFFIXES]
            self.file = next((f for f in found if f.is_file()), None)
        self.dataset = dataset

    def __str__(self) -> str:
        if self.file is not None:
            return f"the {self.split} split ({self.file})"
        return f"the {self.split} split of {self.dataset}" if self.dataset else f"the {self.split} split"

    def row(self, index: int) -> str:
        """Row ``index`` (0-based) as a user finds it in the file."""
        suffix = self.file.suffix if self.file is not None else ""
        if suffix in (".jsonl", ".json"):
            return f"line {index + 1}"
        if suffix == ".csv":
            return f"line {index + 2}"
        return f"row {index}"


def _class_id(value: Any) -> int | None:
    """``value`` as a class id, or ``None`` if it is not an integer (``bool`` counts: 0/1)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _culprit(values: list[Any], first: int) -> tuple[int, Any]:
    """The row to name when row ``first`` is not a class id: in a column read as text (a CSV column
    with one word in it holds ``'0'``, ``'1'``, ...), the first value that is not a number at all."""
    if isinstance(values[first], str):
        for i in range(first, len(values)):
            if not (isinstance(values[i], str) and values[i].strip().lstrip("-").isdigit()):
                return i, values[i]
    return first, values[first]


def check_class_ids(
    values: Iterable[Any], num_classes: int | None, source: SplitSource, column: str, hint: str = ""
) -> None:
    """Raise ``ValueError`` at the first label that is not an integer class id.

    Args:
        values: The label column's values, in row order.
        num_classes: Also refuse ids outside ``0..num_classes-1`` (all of them listed, up to five);
            ``None`` checks the type only (a family that drops unlabelled rows itself).
        source: Where the rows come from (named in the message).
        column: The label column (named in the message).
        hint: Appended to the out-of-range message.
    """
    allowed = f"integer class ids 0..{num_classes - 1}" if num_classes else "integer class ids"
    values = list(values)
    outside: dict[int, int] = {}
    for i, value in enumerate(values):
        label = _class_id(value)
        if label is None:
            i, value = _culprit(values, i)
            kind = "null" if value is None else type(value).__name__
            raise ValueError(
                f"{source} has a label that is not a class id in column {column!r} at {source.row(i)}: "
                f"{value!r} ({kind}); labels must be {allowed}"
            )
        if num_classes is not None and not 0 <= label < num_classes:
            outside.setdefault(label, i)
    if outside:
        bad = sorted(outside)[:5]
        first = min(outside.values())
        raise ValueError(
            f"{source} has labels {bad} in column {column!r}, outside 0..{num_classes - 1} "
            f"(first at {source.row(first)}){hint}"
        )


def check_targets(values: Iterable[Any], source: SplitSource, column: str) -> None:
    """Raise ``ValueError`` at the first regression target that is not a finite number."""
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            kind = "null" if value is None else type(value).__name__
            raise ValueError(
                f"{source} has a regression target that is not a finite number in column {column!r} "
                f"at {source.row(i)}: {value!r} ({kind}); targets must be finite numbers (no NaN, "
                "Infinity, null or strings)"
            )
