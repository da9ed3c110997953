"""k-shot sampling: deterministic per seed, class-balanced, train/dev disjoint, test rows never leak."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import all_texts, sentence_rows, tiny_roberta, write_rows

from lit_bar.data.prompt import PromptFewShotDataModule
from lit_bar.data.sampling import sample_k_per_class

LABELS = [i % 3 for i in range(60)]  # 20 rows per class


def test_sampling_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    assert sample_k_per_class(LABELS, 4, 13, 3) == sample_k_per_class(LABELS, 4, 13, 3)
    assert sample_k_per_class(LABELS, 4, 13, 3) != sample_k_per_class(LABELS, 4, 21, 3)


@pytest.mark.parametrize("seed", [13, 21, 42, 87, 100])
def test_sampling_is_class_balanced_and_disjoint(seed: int) -> None:
    train, dev = sample_k_per_class(LABELS, 4, seed, 3)
    for rows in (train, dev):
        assert sorted(LABELS[i] for i in rows) == [0] * 4 + [1] * 4 + [2] * 4
    assert not set(train) & set(dev)


def test_short_class_gives_what_it_has_and_warns() -> None:
    labels = [0] * 10 + [1] * 3
    with pytest.warns(UserWarning, match="class 1 has 3"):
        train, dev = sample_k_per_class(labels, 2, 0, 2)
    assert sorted(labels[i] for i in train) == [0, 0, 1, 1] and sorted(labels[i] for i in dev) == [0, 0, 1]


@pytest.fixture(scope="module")
def module_factory(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("fewshot")
    splits = {"train": sentence_rows(40, 0, "tr"), "validation": sentence_rows(30, 1, "va")}
    model, data = tiny_roberta(base / "model", all_texts(splits)), write_rows(base / "data", splits)

    def make(**kwargs) -> PromptFewShotDataModule:
        args = {
            "template": "<s>{sentence} It was<mask>.</s>",
            "label_words": [" terrible", " great"],
            "data_dir": str(data),
            "tokenizer_name_or_path": str(model),
            "k": 5,
            **kwargs,
        }
        dm = PromptFewShotDataModule(**args)
        dm.setup("fit")
        return dm

    return make


def _texts(dataset) -> list[str]:
    return list(dataset["sentence"])


def test_datamodule_train_dev_from_train_split_test_from_validation(module_factory) -> None:
    dm = module_factory(seed=13)
    train, dev, test = (_texts(dm.datasets[r]) for r in ("train", "validation", "test"))
    assert len(train) == len(dev) == 10 and len(test) == 30
    assert all(" tr " in t for t in train + dev) and all(" va " in t for t in test)  # no test row leaks
    assert not set(train) & set(dev)
    assert sorted(dm.datasets["train"]["label"]) == [0] * 5 + [1] * 5
    assert _texts(module_factory(seed=13).datasets["train"]) == train
    assert _texts(module_factory(seed=21).datasets["train"]) != train


def test_test_set_is_capped_with_seed_42_whatever_the_data_seed(module_factory) -> None:
    a, b = module_factory(seed=13, test_size=7), module_factory(seed=87, test_size=7)
    assert len(a.datasets["test"]) == 7
    assert _texts(a.datasets["test"]) == _texts(b.datasets["test"])
