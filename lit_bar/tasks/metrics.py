"""Evaluation metrics by name, from torchmetrics, for the classification and regression families.

Names: ``accuracy``, ``f1`` (positive class for two labels, macro otherwise — GLUE's MRPC/QQP F1),
``matthews`` (CoLA), ``pearson`` and ``spearman`` (STS-B, one output). Classification metrics take
predicted class ids, regression metrics the predicted scores. :func:`classification_rows` turns
scores into the rows ``lit-bar predict`` writes.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "build_metrics",
    "classification_rows",
    "default_metrics",
]

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")


def _classification(name: str, num_labels: int) -> Metric:
    task = "binary" if num_labels == 2 else "multiclass"
    if name == "accuracy":
        return Accuracy(task="multiclass", num_classes=num_labels)
    if name == "f1":
        return F1Score(task=task, num_classes=num_labels, average="macro")
    return MatthewsCorrCoef(task=task, num_classes=num_labels)


def build_metrics(names: list[str], num_labels: int) -> MetricCollection:
    """A ``MetricCollection`` of ``names`` for ``num_labels`` outputs (1 = regression).

    Raises:
        ValueError: an unknown name, or a classification metric for regression (or the reverse).
    """
    allowed = REGRESSION_METRICS if num_labels == 1 else CLASSIFICATION_METRICS
    if not names:
        raise ValueError(f"give at least one metric; allowed for num_labels={num_labels}: {list(allowed)}")
    metrics: dict[str, Metric] = {}
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"metric {name!r} does not apply to num_labels={num_labels}; allowed: {list(allowed)}"
            )
        if name == "pearson":
            metrics[name] = PearsonCorrCoef()
        elif name == "spearman":
            metrics[name] = SpearmanCorrCoef()
        else:
            metrics[name] = _classification(name, num_labels)
    return MetricCollection(metrics, compute_groups=False)


def default_metrics(num_labels: int) -> list[str]:
    """``[pearson, spearman]`` for regression, ``[accuracy]`` otherwise."""
    return list(REGRESSION_METRICS) if num_labels == 1 else ["accuracy"]


def classification_rows(
    logits: torch.Tensor, names: list[str] | None = None, name_key: str = "label_name"
) -> list[dict[str, Any]]:
    """One row per example: the class id (``label``), its name under ``name_key``, and the probabilities.

    Args:
        logits: ``(batch, classes)`` scores; ``-inf`` marks a class an example does not have.
        names: Class names (label names, label words) by id, or ``None``.
        name_key: The row key of the name (``label_name``, ``label_word``).
    """
    probabilities = torch.softmax(logits.float(), dim=-1)
    rows = []
    for scores, probs in zip(logits.tolist(), probabilities.tolist(), strict=True):
        label = max(range(len(scores)), key=scores.__getitem__)
        row: dict[str, Any] = {"label": label}
        if names is not None:
            row[name_key] = names[label]
        row["probabilities"] = [p for s, p in zip(scores, probs, strict=True) if s != float("-inf")]
        rows.append(row)
    return rows
