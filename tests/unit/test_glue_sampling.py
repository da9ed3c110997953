"""GlueDataModule: k examples per class and a dev split carved from train, seeded and disjoint."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import pair_rows, write_rows

from lit_bar.data.glue import GlueDataModule
from lit_bar.data.sampling import sample_per_class

PAIR = ["premise", "hypothesis"]


@pytest.fixture(scope="module")
def three_class(tmp_path_factory: pytest.TempPathFactory) -> str:
    rows = pair_rows(60, 0, num_labels=3)  # 20 rows per class, labels 0,1,2,0,1,2,...
    return str(write_rows(tmp_path_factory.mktemp("cb"), {"train": rows, "validation": pair_rows(9, 1, 3)}))


def _module(data: str, **kwargs) -> GlueDataModule:
    dm = GlueDataModule(text_columns=PAIR, num_labels=3, data_dir=data, **kwargs)
    dm.setup("fit")
    return dm


def hand_sample(labels: list[int], k: int, dev: int, seed: int) -> tuple[list[int], list[int]]:
    """Independent reference: per class in id order, one seeded shuffle; first k train, next dev."""
    rng = random.Random(seed)
    train, carved = [], []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        train += idx[:k]
        carved += idx[k : k + dev]
    return train, carved


def test_k_per_class_and_dev_are_balanced_disjoint_and_seeded(three_class: str) -> None:
    dm = _module(three_class, k_per_class=4, dev_per_class=3, seed=7)
    train, dev = dm.datasets["train"], dm.datasets["validation"]
    assert Counter(train["label"]) == {0: 4, 1: 4, 2: 4}
    assert Counter(dev["label"]) == {0: 3, 1: 3, 2: 3}
    assert not set(train["idx"]) & set(dev["idx"])
    labels = [i % 3 for i in range(60)]
    expected_train, expected_dev = hand_sample(labels, 4, 3, seed=7)
    assert list(train["idx"]) == expected_train and list(dev["idx"]) == expected_dev
    other = _module(three_class, k_per_class=4, dev_per_class=3, seed=8).datasets["train"]["idx"]
    assert sorted(other) != sorted(train["idx"])  # another seed is another k-shot set
    assert list(dm.datasets["test"]["idx"]) == list(range(9))  # the official validation split, untouched


def test_k_shot_set_does_not_depend_on_the_dev_size() -> None:
    labels = [i % 2 for i in range(40)]
    assert sample_per_class(labels, 2, 5, 3, 1)["train"] == sample_per_class(labels, 2, 5, None, 1)["train"]


def test_dev_alone_keeps_every_other_row_for_training(three_class: str) -> None:
    dm = _module(three_class, dev_per_class=5, seed=3)
    train, dev = list(dm.datasets["train"]["idx"]), list(dm.datasets["validation"]["idx"])
    assert len(dev) == 15 and len(train) == 45
    assert sorted(train + dev) == list(range(60))
    assert train == sorted(train)  # original order


def test_k_alone_validates_on_the_validation_split(three_class: str) -> None:
    dm = _module(three_class, k_per_class=2)
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["validation"]) == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_per_class": 0}, "k_per_class must be a positive int or None, got 0"),
        ({"dev_per_class": 2.5}, r"dev_per_class must be a positive int or None, got 2.5"),
        ({"k_per_class": 4, "num_labels": 1}, "num_labels=1 is regression"),
        ({"dev_per_class": 4, "validation_split": "validation"}, "do not also give validation_split"),
        ({"k_per_class": 4, "test_splits": ["train"]}, "would leak into training"),
    ],
)
def test_bad_sampling_arguments_are_named(kwargs: dict, message: str) -> None:
    options = {"text_columns": PAIR, "num_labels": 3, "data_dir": "unused", **kwargs}
    with pytest.raises(ValueError, match=message):
        GlueDataModule(**options)


def test_too_few_rows_in_a_class_names_the_class(three_class: str) -> None:
    with pytest.raises(ValueError, match=r"class 0 has 20 rows in the train split, fewer than the 21"):
        _module(three_class, k_per_class=16, dev_per_class=5)
