"""The table of bad inputs and their one-line errors (issue 19 item 8).

Every row runs ``lit-bar fit`` in-process exactly as the console script does (``sys.argv``, then
``lit_bar.cli.main()``, ``LIT_BAR_TRACEBACK`` unset) on a tiny random RoBERTa and tiny hub-schema
files, and asserts: a non-zero exit, exactly one ``lit-bar: error:`` line that matches the row's
pattern (naming the file and row where a row is at fault), no traceback, no usage text, and nothing
trained (no checkpoint, no adapter). New bad inputs get a row here.

Before this table, a NaN or Infinity STS-B target trained to NaN weights and exited 0, a ``null``
target crashed mid-epoch (``TypeError: float() argument must be ... not 'NoneType'``), a string
label crashed the label check (``'<=' not supported between instances of 'int' and 'str'``), a bad
``perturbation`` printed 59 lines and a missing method file the whole usage before its error.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, all_texts, pair_rows, sentence_rows, tiny_roberta, write_rows

from lit_bar.cli import main

SST2, STSB = "configs/glue/roberta-large_sst2.yaml", "configs/glue/roberta-large_stsb.yaml"
FEWSHOT = "configs/fewshot/roberta-large_sst2.yaml"


def _stsb_rows(n: int, seed: int) -> list[dict]:
    return [{**row, "label": float(i % 5)} for i, row in enumerate(pair_rows(n, seed))]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = all_texts({"s": sentence_rows(8, 0, "tr") + sentence_rows(8, 1, "va"), "p": pair_rows(8, 0)})
    return tiny_roberta(tmp_path_factory.mktemp("bad_input") / "model", texts)


def _sst2(folder: Path, train: Callable[[list[dict]], None] = lambda rows: None, **validation) -> Path:
    rows, val = sentence_rows(8, 0, "tr"), sentence_rows(8, 1, "va")
    train(rows)
    for index, label in validation.get("val_labels", {}).items():
        val[index]["label"] = label
    return write_rows(folder, {"train": rows, "validation": val})


def _stsb(folder: Path, target: object) -> Path:
    rows = _stsb_rows(16, 0)
    rows[3]["label"] = target  # line 4 of train.jsonl
    folder.mkdir(parents=True)
    lines = [json.dumps(r, allow_nan=True) for r in rows]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _stsb_rows(8, 1)))
    return folder


def _csv_with_a_string_label(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for split, rows in (("train", sentence_rows(8, 0, "tr")), ("validation", sentence_rows(8, 1, "va"))):
        if split == "train":
            rows[1]["label"] = "positive"  # row 1: line 3 of the CSV (after the header)
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def _set(index: int, label: object) -> Callable[[list[dict]], None]:
    def change(rows: list[dict]) -> None:
        rows[index]["label"] = label

    return change


def _strings(rows: list[dict]) -> None:
    for row in rows:
        row["label"] = ["negative", "positive"][row["label"]]


STSB_ARGS = ["--data.init_args.text_columns", "[premise,hypothesis]"]

#: (id, task file, data folder builder, extra arguments, pattern of the one error line)
TABLE: list[tuple[str, str, Callable[[Path], Path], list[str], str]] = [
    # regression targets (STS-B): never checked before
    ("stsb-nan-target", STSB, lambda d: _stsb(d, float("nan")), STSB_ARGS,
     r"the train split \(.*/train\.jsonl\) has a regression target that is not a finite number in "
     r"column 'label' at line 4: nan \(float\); targets must be finite numbers"),
    ("stsb-infinite-target", STSB, lambda d: _stsb(d, float("inf")), STSB_ARGS,
     r"train\.jsonl\) has a regression target .* at line 4: inf \(float\)"),
    ("stsb-null-target", STSB, lambda d: _stsb(d, None), STSB_ARGS,
     r"train\.jsonl\) has a regression target .* at line 4: None \(null\)"),
    ("stsb-word-target", STSB, lambda d: _stsb(d, "high"), STSB_ARGS,
     r"train\.jsonl\) has a regression target .* at line 4: 'high' \(str\)"),
    # class labels
    ("string-labels", SST2, lambda d: _sst2(d, _strings), [],
     r"the train split \(.*/train\.jsonl\) has a label that is not a class id in column 'label' at "
     r"line 1: 'negative' \(str\); labels must be integer class ids 0\.\.1"),
    ("fractional-label", SST2, lambda d: _sst2(d, _set(5, 0.5)), [],
     r"train\.jsonl\) has a label that is not a class id .* at line 6: 0\.5 \(float\)"),
    ("null-label", SST2, lambda d: _sst2(d, _set(2, None)), [],
     r"train\.jsonl\) has a label that is not a class id .* at line 3: None \(null\)"),
    ("csv-string-label", SST2, _csv_with_a_string_label, [],
     r"train\.csv\) has a label that is not a class id .* at line 3: 'positive' \(str\)"),
    ("label-out-of-range", SST2, lambda d: _sst2(d, val_labels={1: 2, 4: 7}), [],
     r"the validation split \(.*/validation\.jsonl\) has labels \[2, 7\] in column 'label', "
     r"outside 0\.\.1 \(first at line 2\)"),
    ("unlabelled-split", SST2, lambda d: _sst2(d, val_labels=dict.fromkeys(range(8), -1)), [],
     r"has labels \[-1\] .* unlabelled"),
    ("prompt-string-label", FEWSHOT, lambda d: _sst2(d, _set(0, "great")), ["--data.init_args.k", "2"],
     r"the train split \(.*/train\.jsonl\) has a label that is not a class id .* at line 1: 'great'"),
    # option values and files
    ("bad-perturbation", SST2, _sst2, ["--model.init_args.perturbation", "bogus"],
     r"^lit-bar: error: --model\.init_args\.perturbation: expected one of 'sam', 'functional'; "
     r"got 'bogus'$"),
    ("unknown-method-file", SST2, _sst2, ["--config", "configs/method/bogus.yaml"],
     r"--config: no such config file: '.*configs/method/bogus\.yaml' \(.*holds .*nbar\.yaml"),
    ("wrong-type", SST2, _sst2, ["--trainer.max_steps", "abc"],
     r"--trainer\.max_steps: expected an int; got 'abc'$"),
    ("unknown-argument", SST2, _sst2, ["--model.init_args.rhoo", "0.1"],
     r"--model\.init_args\.rhoo: SequenceClassifier takes no argument 'rhoo' "
     r"\(--model\.help SequenceClassifier lists them\)"),
    ("unknown-class", SST2, _sst2, ["--model", "SequenceClasifier"],
     r"--model: 'SequenceClasifier' is neither a config file nor a class name"),
    # already clear before (kept)
    ("negative-rho", SST2, _sst2, ["--model.init_args.rho", "-1"], r"rho must be a finite number >= 0"),
    ("negative-mu", SST2, _sst2,
     ["--config", "configs/method/nbar.yaml", "--trainer.callbacks.init_args.mu", "-1"],
     r"mu must be a finite number >= 0, got -1"),
    ("unknown-bar-mode", SST2, _sst2,
     ["--config", "configs/method/nbar.yaml", "--trainer.callbacks.init_args.mode", "xbar"],
     r"unknown BAR mode 'xbar'; allowed: nbar, obar"),
    ("unknown-schedule", SST2, _sst2,
     ["--config", "configs/method/nbar.yaml", "--trainer.callbacks.init_args.schedule", "steep"],
     r"unknown μ schedule 'steep'; allowed: constant, linear, cosine"),
    ("missing-data-dir", SST2, lambda d: d / "nowhere", [], r"data_dir '.*nowhere' holds no split files"),
    ("missing-model-path", SST2, _sst2, ["--model.init_args.model_name_or_path", "/no/such/model"],
     r"model path '/no/such/model' is not an existing folder"),
    ("missing-column", SST2, _sst2, ["--data.init_args.label_column", "labl"],
     r"column 'labl' is not in the .* split of .*; available: \['sentence', 'label', 'idx'\]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "build", "extra", "pattern"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_bad_input_is_one_error_line_before_training(
    task: str,
    build: Callable[[Path], Path],
    extra: list[str],
    pattern: str,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, run = build(tmp_path / "data"), tmp_path / "run"
    monkeypatch.chdir(ROOT)  # the configs/... paths as a user types them
    monkeypatch.delenv("LIT_BAR_TRACEBACK", raising=False)
    monkeypatch.delenv("JSONARGPARSE_DEBUG", raising=False)
    argv = ["lit-bar", "fit", "--config", task, "--config", "configs/debug.yaml"]
    argv += ["--model.init_args.model_name_or_path", str(model), "--data.init_args.data_dir", str(data)]
    argv += ["--data.init_args.batch_size", "4", "--trainer.default_root_dir", str(run)]
    argv += ["--trainer.enable_checkpointing", "true", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert exit_info.value.code not in (0, None)
    errors = [line for line in err.splitlines() if line.startswith("lit-bar: error:")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in err + out and "usage:" not in err and "\nerror:" not in err
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("adapter_model.safetensors"))
