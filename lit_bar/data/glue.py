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

Few-shot and small-data protocols sample from the train split with ``seed``
(:func:`lit_bar.data.sampling.sample_per_class`): ``k_per_class`` keeps k
training rows per class (as LM-BFF's k-shot sets), and ``dev_per_class`` carves a dev set of that
many rows per class out of the train split, disjoint from the training rows, so that anything
selected (μ, ρ, a checkpoint) is selected on train data and the official validation split stays a
pure test split (RTE, CB, CoLA have no labelled test split)::

    SST-2 32-shot   k_per_class: 32   dev_per_class: 32   test_splits: [test]
    RTE             dev_per_class: 50                      test_splits: [validation]
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from lit_bar.data.base import TextDataModule
from lit_bar.data.checks import check_class_ids, check_targets
from lit_bar.data.sampling import sample_per_class

__all__ = ["GlueDataModule"]


class GlueDataModule(TextDataModule):
    """GLUE-style rows: one or two text columns and a class id or a float score.

    Args:
        text_columns: One column (single sentence) or two (a pair, encoded as the tokenizer's pair).
        label_column: Column with the class id (``0 .. num_labels-1``) or the float score.
        num_labels: Number of classes; 1 means regression (STS-B).
        train_split: Split to train on.
        validation_split: Split validated on during fit (and monitored for checkpoints); ``None``
            means ``"validation"``, or the carved dev set when ``dev_per_class`` is given.
        test_splits: Splits ``lit-bar test`` evaluates, one dataloader each (metrics logged as
            ``test/<metric>``, or ``test/<split>/<metric>`` when there are several).
        k_per_class: Train on ``k`` rows per class of ``train_split``, drawn with ``seed``; ``None``
            trains on every row (less the dev rows).
        dev_per_class: Validate on this many rows per class carved from ``train_split`` with
            ``seed``, disjoint from the training rows, instead of on ``validation_split``.
        **kwargs: :class:`lit_bar.data.TextDataModule` arguments (``data_dir``, ``batch_size``, ...).
    """

    def __init__(
        self,
        text_columns: list[str] | None = None,
        label_column: str = "label",
        num_labels: int = 2,
        train_split: str = "train",
        validation_split: str | None = None,
        test_splits: list[str] | None = None,
        k_per_class: int | None = None,
        dev_per_class: int | None = None,
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
        self.test_splits = list(test_splits or ["validation"])
        self._check_sampling(k_per_class, dev_per_class, validation_split)
        self.k_per_class = k_per_class
        self.dev_per_class = dev_per_class
        self.validation_split = validation_split or ("validation" if dev_per_class is None else None)

    def _check_sampling(self, k: int | None, dev: int | None, validation_split: str | None) -> None:
        """Reject bad per-class sizes, per-class sampling of a regression task, and train/test leaks."""
        for name, value in (("k_per_class", k), ("dev_per_class", dev)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if k is None and dev is None:
            return
        if self.num_labels == 1:
            raise ValueError(
                f"k_per_class={k!r} / dev_per_class={dev!r} sample per class, but num_labels=1 is "
                "regression (no classes)"
            )
        if dev is not None and validation_split is not None:
            raise ValueError(
                f"dev_per_class={dev} carves the validation set from {self.train_split!r}; "
                f"do not also give validation_split={validation_split!r}"
            )
        if self.train_split in self.test_splits:
            raise ValueError(
                f"test_splits {self.test_splits} include the train split {self.train_split!r} that "
                "k_per_class/dev_per_class sample from: the test rows would leak into training"
            )

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
        wanted = {self.train_split, *self.test_splits} | ({self.validation_split} - {None})
        missing = sorted(wanted - set(raw))
        if missing:
            raise ValueError(f"split(s) {missing} not found; the data has splits {sorted(raw)}")
        for name in sorted(wanted - {None}):  # every row used, before any sampling: file rows are named
            self.check_columns(raw[name], name)
            self._check_labels(raw[name], name)
        splits = {"train": raw[self.train_split]}
        if self.k_per_class is not None or self.dev_per_class is not None:
            train = raw[self.train_split]
            rows = sample_per_class(
                train[self.label_column], self.num_labels, self.k_per_class, self.dev_per_class, self.seed
            )
            splits["train"] = train.select(rows["train"])
            if self.dev_per_class is not None:
                splits["validation"] = train.select(rows["dev"])
        if self.validation_split is not None:
            splits["validation"] = raw[self.validation_split]
        tests = [raw[name] for name in self.test_splits]
        splits["test"] = tests if len(tests) > 1 else tests[0]
        return splits

    def _check_labels(self, dataset: Any, split: str) -> None:
        """Class ids in ``0..num_labels-1``, or finite regression targets (``num_labels=1``)."""
        source, values = self.split_source(split), dataset[self.label_column]
        if self.num_labels == 1:
            check_targets(values, source, self.label_column)
            return
        hint = " (GLUE test splits on the hub are unlabelled, -1: evaluate on a validation split instead)"
        check_class_ids(values, self.num_labels, source, self.label_column, hint)

    @override
    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        texts = [row[c] for c in self.text_columns]
        encoded = dict(self.tokenizer(*texts, truncation=True, max_length=self.max_length))
        label = row[self.label_column]
        encoded["labels"] = float(label) if self.num_labels == 1 else int(label)
        return encoded
