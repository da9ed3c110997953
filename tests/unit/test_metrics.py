"""``build_metrics`` against hand-computed accuracy, F1, Matthews correlation, Pearson and Spearman."""

from __future__ import annotations

import math

import pytest
import torch

from lit_bar.tasks.metrics import build_metrics

PREDS = [1, 0, 1, 1, 0, 1, 0, 1]
LABELS = [1, 0, 0, 1, 0, 1, 1, 1]


def _hand_binary() -> dict[str, float]:
    pairs = list(zip(PREDS, LABELS, strict=True))
    tp = sum(p == 1 and y == 1 for p, y in pairs)  # 4
    tn = sum(p == 0 and y == 0 for p, y in pairs)  # 2
    fp = sum(p == 1 and y == 0 for p, y in pairs)  # 1
    fn = sum(p == 0 and y == 1 for p, y in pairs)  # 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {"accuracy": (tp + tn) / len(pairs), "f1": 2 * tp / (2 * tp + fp + fn), "matthews": mcc}


def test_binary_classification_metrics_match_hand_formulas() -> None:
    metrics = build_metrics(["accuracy", "f1", "matthews"], num_labels=2)
    metrics.update(torch.tensor(PREDS), torch.tensor(LABELS))
    got = {k: v.item() for k, v in metrics.compute().items()}
    expected = _hand_binary()
    assert expected == pytest.approx({"accuracy": 0.75, "f1": 0.8, "matthews": 7 / 15})
    assert got == pytest.approx(expected, abs=1e-6)


def test_multiclass_accuracy_and_macro_f1() -> None:
    preds, labels = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    metrics = build_metrics(["accuracy", "f1"], num_labels=3)
    metrics.update(torch.tensor(preds), torch.tensor(labels))
    got = metrics.compute()
    # per class (tp, fp, fn): 0 (1, 1, 0), 1 (2, 0, 1), 2 (1, 1, 1)
    f1 = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in [(1, 1, 0), (2, 0, 1), (1, 1, 1)]]
    assert got["accuracy"].item() == pytest.approx(4 / 6)
    assert got["f1"].item() == pytest.approx(sum(f1) / 3, abs=1e-6)


def test_regression_pearson_and_spearman_match_hand_formulas() -> None:
    preds = [0.5, 2.0, 1.0, 4.5, 3.0]
    target = [1.0, 1.5, 2.0, 5.0, 2.5]

    def pearson(x: list[float], y: list[float]) -> float:
        mx, my = sum(x) / len(x), sum(y) / len(y)
        cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
        return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))

    def ranks(x: list[float]) -> list[float]:
        return [float(sorted(x).index(v)) for v in x]  # no ties here

    metrics = build_metrics(["pearson", "spearman"], num_labels=1)
    metrics.update(torch.tensor(preds), torch.tensor(target))
    got = metrics.compute()
    assert got["pearson"].item() == pytest.approx(pearson(preds, target), abs=1e-6)
    assert got["spearman"].item() == pytest.approx(pearson(ranks(preds), ranks(target)), abs=1e-6)
    assert got["spearman"].item() == pytest.approx(0.9)  # ranks (0,2,1,4,3) vs (0,1,2,4,3): 1 - 6·2/(5·24)


@pytest.mark.parametrize(
    ("names", "num_labels", "match"),
    [
        (["pearson"], 2, "does not"),
        (["matthews"], 1, "does not"),
        (["bleu"], 2, "allowed"),
        ([], 2, "at least"),
    ],
)
def test_metric_names_checked(names: list[str], num_labels: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_metrics(names, num_labels)
