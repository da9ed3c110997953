"""CandidateDataModule and WebNLGDataModule: seeded disjoint sampling, templates, batches, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import hf as hf_tiny

from lit_bar.data.causal import CandidateDataModule
from lit_bar.data.templates import Template
from lit_bar.data.webnlg import WebNLGDataModule, linearise_triples

CB = 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'


def _write(folder: Path, splits: dict[str, list[dict]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def _nli(n: int, start: int) -> list[dict]:
    return [
        {"premise": f"p {i} .", "hypothesis": f"h {i}", "label": i % 3, "idx": i}
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("causal_data")
    data = _write(base / "cb", {"train": _nli(40, 0), "validation": _nli(12, 1000)})
    words = [str(i) for i in range(1200)] + ["Suppose Can we infer that Yes No or Maybe p h"]
    return data, str(hf_tiny.save_tiny_opt(base / "opt", words))


def _module(folders, **kwargs) -> CandidateDataModule:
    data, model = folders
    options = {"template": CB, "candidates": ["Yes", "No", "Maybe"], "num_train": 20, "num_validation": 10,
               "num_test": 8, "data_dir": data, "tokenizer_name_or_path": model, **kwargs}  # fmt: skip
    module = CandidateDataModule(**options)
    module.setup()
    return module


def _ids(module) -> dict[str, list[int]]:
    return {role: list(data["idx"]) for role, data in module.datasets.items()}


def test_sampling_is_deterministic_per_seed_and_never_leaks(folders):
    first, again, other = _ids(_module(folders)), _ids(_module(folders)), _ids(_module(folders, seed=7))
    assert first == again and first != other
    assert {role: len(ids) for role, ids in first.items()} == {"train": 20, "validation": 10, "test": 8}
    assert not set(first["train"]) & set(first["validation"])  # both from the train split, disjoint
    assert all(i >= 1000 for i in first["test"])  # test rows come from the validation split only
    assert all(i < 1000 for i in first["train"] + first["validation"])


def test_too_small_split_is_scaled_down_with_a_warning(folders):
    with pytest.warns(UserWarning, match="fewer than"):
        module = _module(folders, num_train=60, num_validation=20)
    ids = _ids(module)
    assert (len(ids["train"]), len(ids["validation"])) == (30, 10) and not set(ids["train"]) & set(
        ids["validation"]
    )


def test_scoring_batch_marks_only_candidate_tokens(folders):
    module = _module(folders)
    batch = module.collate([{"premise": "p 1 .", "hypothesis": "h 2", "label": 2, "idx": 0}])
    tok = module.tokenizer
    prompt = [
        tok.bos_token_id,
        *tok(CB.format(premise="p 1 .", hypothesis="h 2"), add_special_tokens=False)["input_ids"],
    ]
    for c, word in enumerate(["Yes", "No", "Maybe"]):
        (word_id,) = tok(word, add_special_tokens=False)["input_ids"]
        assert batch["input_ids"][c].tolist() == [*prompt, word_id]
        assert batch["labels"][c].tolist() == [-100] * len(prompt) + [word_id]
    assert batch["example_index"].tolist() == [0, 0, 0] and batch["candidate_index"].tolist() == [0, 1, 2]
    assert batch["gold"].tolist() == [False, False, True] and batch["label"].tolist() == [2]


def test_lm_training_batch_holds_the_gold_candidate_only(folders):
    module = _module(folders, objective="lm")
    batch = module.collate_train([{"premise": "p 1 .", "hypothesis": "h 2", "label": 1, "idx": 0}])
    (word_id,) = module.tokenizer("No", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"].shape[0] == 1 and "example_index" not in batch
    assert [t for t in batch["labels"][0].tolist() if t != -100] == [word_id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "{premise} {sentence}"}, "column 'sentence' is not in"),
        ({"candidate_columns": ["choice1"], "candidates": None}, "column 'choice1' is not in"),
        ({"label_column": "gold"}, "column 'gold' is not in"),
    ],
)
def test_unknown_columns_fail_before_training(folders, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module(folders, **kwargs)


def test_bad_configuration_fails_at_construction(folders):
    with pytest.raises(ValueError, match="unknown transform"):
        CandidateDataModule(template="{premise:shout}", candidates=["a"], data_dir="x")
    with pytest.raises(ValueError, match="exactly one of"):
        CandidateDataModule(template="{premise}", candidates=["a"], candidate_columns=["b"], data_dir="x")
    with pytest.raises(ValueError, match="need answer_column"):
        CandidateDataModule(template="{q}", generation=True, objective="lm", data_dir="x")


def test_copa_template_transforms_and_value_maps():
    prompt = Template("{premise:no_period}{question}", {"question": {"cause": " because ", "effect": " so "}})
    choice = Template("{candidate:lower_first_word}")
    assert prompt({"premise": "The man fell.", "question": "cause"}) == "The man fell because "
    assert choice({}, candidate="He slipped.") == "he slipped." and choice({}, candidate="I ran.") == "I ran."
    with pytest.raises(ValueError, match="not in its value map"):
        prompt({"premise": "x", "question": "why"})


def test_webnlg_linearisation_grouping_and_seen(tmp_path):
    assert linearise_triples(['Alan_Bean | birthPlace | "Wheeler, Texas"', "A | b | C"]) == (
        "Alan Bean : birthPlace : Wheeler, Texas | A : b : C"
    )
    row = lambda cat, eid, t, text: {"category": cat, "eid": eid, "triples": [t], "text": text, "idx": 0}  # noqa: E731
    splits = {
        "train": [row("City", "Id1", "A | b | C", "a c")],
        "test": [row("City", "Id1", "A | b | C", "r1"), row("City", "Id1", "A | b | C", "r2"),
                 row("Artist", "Id1", "A | b | D", "r3")],  # same eid, other category: another input
    }  # fmt: skip
    model = hf_tiny.save_tiny_gpt2(tmp_path / "gpt2", ["A b C D a c r1 r2 r3 :"])
    module = WebNLGDataModule(data_dir=_write(tmp_path / "data", splits), tokenizer_name_or_path=str(model))
    module.setup()
    assert [list(r["text"]) for r in module.datasets["test"]] == [["r1", "r2"], ["r3"]]
    batch = module.collate(list(module.datasets["test"]))
    assert batch["seen"].tolist() == [True, False] and batch["references"] == [["r1", "r2"], ["r3"]]
    tok = module.tokenizer
    prompt = tok("A : b : C", add_special_tokens=False)["input_ids"]
    target = [*tok(" r1", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert batch["input_ids"][0].tolist() == prompt + target
    assert batch["labels"][0].tolist() == [-100] * len(prompt) + target  # loss on the text only
    assert batch["prompt_ids"][0].tolist() == prompt and torch.all(batch["prompt_mask"][0] == 1)
