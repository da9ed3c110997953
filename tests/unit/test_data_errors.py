"""Bad input fails with a clear error before any training step; no remote code unless asked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, all_texts, sentence_rows, tiny_roberta, write_rows

import lit_bar.io.hub
from lit_bar.cli import main
from lit_bar.data.glue import GlueDataModule
from lit_bar.data.prompt import PromptFewShotDataModule
from lit_bar.tasks.glue import SequenceClassifier

SST2 = "<s>{sentence} It was<mask>.</s>"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("errors")
    splits = {"train": sentence_rows(8, 0, "tr"), "validation": sentence_rows(4, 1, "va")}
    return str(tiny_roberta(base / "model", all_texts(splits))), str(write_rows(base / "data", splits))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lit_bar.io.hub, "hub_reachable", lambda timeout=3.0: False)


def test_unknown_column_is_named_with_the_available_ones(folders: tuple[str, str]) -> None:
    model, data = folders
    dm = GlueDataModule(text_columns=["sentense"], data_dir=data, tokenizer_name_or_path=model)
    with pytest.raises(
        ValueError, match=r"column 'sentense' is not in the train split .*available: \['sentence'"
    ):
        dm.setup("fit")


def test_unknown_column_stops_lit_bar_fit_before_training(folders: tuple[str, str], tmp_path: Path) -> None:
    model, data = folders
    args = [
        "fit",
        "--config",
        f"{ROOT}/configs/glue/roberta-large_sst2.yaml",
        "--config",
        f"{ROOT}/configs/debug.yaml",
    ]
    args += ["--model.init_args.model_name_or_path", model, "--data.init_args.data_dir", data]
    args += ["--data.init_args.label_column", "labl", "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="column 'labl'"):
        main(args)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_two_token_label_word_is_named_with_its_tokens(folders: tuple[str, str]) -> None:
    model, data = folders
    dm = PromptFewShotDataModule(
        SST2, [" terrible", " very good"], data_dir=data, tokenizer_name_or_path=model
    )
    with pytest.raises(ValueError, match=r"label word ' very good' is 2 tokens \['very', 'good'\]"):
        dm.task_info  # noqa: B018  (what lit-bar reads at instantiation)


@pytest.mark.parametrize("word", ["great", " "])
def test_label_word_needs_a_leading_space(word: str) -> None:
    with pytest.raises(ValueError, match="leading space"):
        PromptFewShotDataModule(SST2, [" bad", word], data_dir="unused")


@pytest.mark.parametrize("template", ["<s>{sentence} It was.</s>", "<s>{sentence}<mask> <mask></s>"])
def test_template_needs_exactly_one_mask(template: str) -> None:
    with pytest.raises(ValueError, match="mask marker <mask> exactly once"):
        PromptFewShotDataModule(template, [" bad", " great"], data_dir="unused")


def test_unknown_transform_is_named() -> None:
    with pytest.raises(ValueError, match=r"bad placeholder.*strip_lst"):
        PromptFewShotDataModule("<s>{sentence:strip_lst}<mask></s>", [" bad", " great"], data_dir="unused")


def test_hub_dataset_offline_says_to_pass_a_local_folder(folders: tuple[str, str], offline: None) -> None:
    dm = GlueDataModule(dataset_name="glue", dataset_config="sst2", tokenizer_name_or_path=folders[0])
    with pytest.raises(ValueError, match=r"unreachable.*data_dir"):
        dm.setup("fit")


def test_hub_model_offline_says_to_pass_a_local_folder(offline: None) -> None:
    with pytest.raises(ValueError, match=r"'roberta-large' is not a local folder.*Pass a local folder"):
        SequenceClassifier("roberta-large", task_info={"num_labels": 2})


def test_data_dir_without_split_files(folders: tuple[str, str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no splits here")
    dm = GlueDataModule(data_dir=str(tmp_path), tokenizer_name_or_path=folders[0])
    with pytest.raises(ValueError, match="holds no split files"):
        dm.setup("fit")


def test_unlabelled_split_is_refused(folders: tuple[str, str], tmp_path: Path) -> None:
    rows = sentence_rows(4, 0, "tr")
    write_rows(tmp_path, {"train": rows, "validation": [{**r, "label": -1} for r in rows]})
    dm = GlueDataModule(data_dir=str(tmp_path), tokenizer_name_or_path=folders[0])
    with pytest.raises(ValueError, match=r"labels \[-1\].*unlabelled"):
        dm.setup("fit")


def test_no_remote_code_unless_asked(folders: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[bool] = []
    real = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    SequenceClassifier(folders[0], task_info={"num_labels": 2})
    SequenceClassifier(folders[0], task_info={"num_labels": 2}, trust_remote_code=True)
    assert seen == [False, True]
