"""``GlueDataModule``: sentence / sentence-pair classification and regression (GLUE, family 3).

One class for every GLUE task; a task is a config: its text columns, label column, number of
labels (1 = regression, STS-B) and which splits evaluate. GLUE's test labels are hidden on the hub
(every label is -1), so, as microsoft/LoRA and the paper do, the validation split is the reported
split: ``validation_split`` and ``test_splits`` both default to ``validation``; MNLI evaluates
``[validation_matched, validation_mismatched]``.

Examples of configs (``data.init_args``)::

    SST-2  text_columns: [sentence]                 num_labels: 2
    RTE    text_columns: [sentence1, sentence2]     num_labels: 2   (glue/rte)
    STS-B  text_columns: [sentence1, sentence2]     num_labels: 1
    MNLI   text_columns: [premise, hypothesis]      num_labels: 3   validation_split: validation_matched
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from lit_bar.data.base import TextDataModule

__all__ = ["GlueDataModule"]


class GlueDataModule(TextDataModule):
    """GLUE-style rows: one or two text columns and a class id or a float score.

    Args:
        text_columns: One column (single sentence) or two (a pair, encoded as the tokenizer's pair).
        label_column: Column with the class id (``0 .. num_labels-1``) or the float score.
        num_labels: Number of classes; 1 means regression (STS-B).
        train_split: Split to train on.
        validation_split: Split validated on during fit (and monitored for checkpoints).
        test_splits: Splits ``lit-bar test`` evaluates, one dataloader each (metrics logged as
            ``test/<metric>``, or ``test/<split>/<metric>`` when there are several).
        **kwargs: :class:`lit_bar.data.TextDataModule` arguments (``data_dir``, ``batch_size``, ...).
    """

    def __init__(
        self,
        text_columns: list[str] | None = None,
        label_column: str = "label",
        num_labels: int = 2,
        train_split: str = "train",
        validation_split: str = "validation",
        test_splits: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        text_columns = list(text_columns or ["sentence"])
        if not 1 <= len(text_columns) <= 2:
            raise ValueError(f"text_columns must name one or two columns, got {text_columns!r}")
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int (1 = regression), got {num_labels!r}")
        self.text_columns = text_columns
        self.label_column = label_column
        self.num_labels = num_labels
        self.train_split = train_split
        self.validation_split = validation_split
        self.test_splits = list(test_splits or ["validation"])

    @property
    @override
    def task_info(self) -> dict[str, Any]:
        """``num_labels`` and the names of the test splits (for the metric names)."""
        return {"num_labels": self.num_labels, "test_splits": list(self.test_splits)}

    @override
    def required_columns(self) -> list[str]:
        return [*self.text_columns, self.label_column]

    @override
    def select_splits(self, raw: Any) -> dict[str, Any]:
        wanted = {self.train_split, self.validation_split, *self.test_splits}
        missing = sorted(wanted - set(raw))
        if missing:
            raise ValueError(f"split(s) {missing} not found; the data has splits {sorted(raw)}")
        splits = {"train": raw[self.train_split], "validation": raw[self.validation_split]}
        tests = [raw[name] for name in self.test_splits]
        splits["test"] = tests if len(tests) > 1 else tests[0]
        return splits

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        super().setup(stage)
        if self.num_labels > 1:
            for role, data in self.datasets.items():
                for part in data if isinstance(data, list) else [data]:
                    self._check_labels(part, role)

    def _check_labels(self, dataset: Any, role: str) -> None:
        bad = sorted({y for y in dataset[self.label_column] if not 0 <= y < self.num_labels})
        if bad:
            raise ValueError(
                f"the {role} split has labels {bad[:5]} in column {self.label_column!r}, "
                f"outside 0..{self.num_labels - 1}"
                " (GLUE test splits on the hub are unlabelled, -1: evaluate on a validation split instead)"
            )

    @override
    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        texts = [row[c] for c in self.text_columns]
        encoded = dict(self.tokenizer(*texts, truncation=True, max_length=self.max_length))
        label = row[self.label_column]
        encoded["labels"] = float(label) if self.num_labels == 1 else int(label)
        return encoded
