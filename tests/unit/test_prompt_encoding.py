"""Prompt parsing/encoding by hand, label-word logits at the mask vs the full MLM logits, init_adapter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import all_texts, pair_rows, tiny_roberta, write_rows

from lit_bar.data.prompt import PromptFewShotDataModule, parse_prompt
from lit_bar.tasks.glue import SequenceClassifier
from lit_bar.tasks.prompt import PromptMLMClassifier

NLI = "<s>{premise:strip_last}?<mask>, {hypothesis:lower_first_char}</s>"
ROW = {"premise": "The film was good.", "hypothesis": "The plot was bad", "label": 1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("encoding")
    splits = {"train": pair_rows(12, 0, 3), "validation": pair_rows(6, 1, 3)}
    model = tiny_roberta(base / "model", [*all_texts(splits), "the plot film"])
    return str(model), str(write_rows(base / "data", splits))


def test_parse_moves_the_space_before_a_field_into_the_field() -> None:
    assert parse_prompt("<s>{a} It was<mask>, {b:lower_first_char}</s>") == [
        ("special", "bos", ""),
        ("field", "a", "|"),
        ("text", " It was", ""),
        ("special", "mask", ""),
        ("text", ",", ""),
        ("field", "b", "lower_first_char| "),
        ("special", "eos", ""),
    ]


def _module(folders: tuple[str, str], **kwargs) -> PromptFewShotDataModule:
    model, data = folders
    return PromptFewShotDataModule(
        NLI, [" Yes", " Maybe", " No"], data_dir=data, tokenizer_name_or_path=model, **kwargs
    )


def test_encode_follows_the_template_with_transforms(folders: tuple[str, str]) -> None:
    dm = _module(folders)
    tokens = dm.tokenizer.convert_ids_to_tokens(dm.encode(ROW)["input_ids"])
    assert tokens == [
        "<s>",
        "The",
        "film",
        "was",
        "good",
        "?",
        "<mask>",
        ",",
        "the",
        "plot",
        "was",
        "bad",
        "</s>",
    ]
    assert dm.encode(ROW)["labels"] == 1


def test_truncation_cuts_the_longest_field_and_keeps_the_mask(folders: tuple[str, str]) -> None:
    dm = _module(folders, max_length=10)
    tokens = dm.tokenizer.convert_ids_to_tokens(dm.encode(ROW)["input_ids"])
    assert tokens == ["<s>", "The", "film", "?", "<mask>", ",", "the", "plot", "was", "</s>"]


def test_label_word_logits_equal_the_full_mlm_logits_at_the_mask(folders: tuple[str, str]) -> None:
    dm = _module(folders)
    dm.setup("fit")
    module = PromptMLMClassifier(folders[0], task_info=dm.task_info).eval()
    batch = dm.collate([dm.datasets["train"][i] for i in range(4)])
    with torch.no_grad():
        got = module.compute_outputs(batch)
        full = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at_mask = full[batch["input_ids"] == dm.tokenizer.mask_token_id]  # (4, vocab)
    expected = at_mask[:, dm.tokenizer.convert_tokens_to_ids(["Yes", "Maybe", "No"])]
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("form", ["peft_folder", "ckpt"])
def test_init_adapter_loads_lora_factors_but_not_the_head(
    folders: tuple[str, str], tmp_path: Path, form: str
) -> None:
    info = {"num_labels": 3}
    source = SequenceClassifier(folders[0], task_info=info)
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    if form == "peft_folder":
        source.model.save_pretrained(tmp_path / "adapter")
        path = tmp_path / "adapter"
    else:
        path = tmp_path / "mnli.ckpt"
        torch.save({"state_dict": source.state_dict()}, path)
    target = SequenceClassifier(folders[0], task_info=info, init_adapter=str(path))
    src, tgt = dict(source.named_parameters()), dict(target.named_parameters())
    lora = [n for n in src if "lora_" in n]
    head = [n for n in src if "modules_to_save" in n]
    assert lora and head
    assert all(torch.equal(src[n], tgt[n]) for n in lora)
    assert not any(torch.equal(src[n], tgt[n]) for n in head)  # a fresh head


def test_init_adapter_without_lora_tensors_is_refused(folders: tuple[str, str], tmp_path: Path) -> None:
    torch.save({"state_dict": {"model.classifier.weight": torch.zeros(2)}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="holds no LoRA tensors"):
        SequenceClassifier(folders[0], task_info={"num_labels": 3}, init_adapter=str(tmp_path / "x.ckpt"))
