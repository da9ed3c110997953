"""``lit-bar fit`` leaves ``adapter/``; ``lit-bar predict`` (checkpoint or adapter) writes predictions.jsonl.

Every family runs its shipped task file + ``configs/method/lora.yaml`` + ``configs/debug.yaml`` on a
tiny random model for one step, then ``lit-bar predict`` with ``--model.init_args.adapter_path`` set
to the folder the fit exported (GPT-2's: a stock ``c_attn`` adapter, split again on load). Without
a checkpoint or an adapter, ``predict`` is refused with one ``lit-bar: error:`` line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import hf as hf_tiny
from tiny.hf import ROOT, TEMPLATE_WORDS, all_texts, read_metrics, sentence_rows, tiny_roberta, write_rows

from lit_bar.cli import main

NOUNS = ["film", "plot", "rain", "sun", "Paris", "Rome", "city", "cast"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """``main(args)`` must not see pytest's own argv (LightningCLI/jsonargparse read ``sys.argv``)."""
    monkeypatch.setattr("sys.argv", ["lit-bar"])


def _copa(n: int) -> list[dict]:
    return [{"premise": f"The {NOUNS[i % 8]} was wet.", "choice1": f"The {NOUNS[(i + 1) % 8]} fell.",
             "choice2": f"I saw the {NOUNS[(i + 2) % 8]}.", "question": ("cause", "effect")[i % 2],
             "label": i % 2, "idx": i} for i in range(n)]  # fmt: skip


def _squad(n: int) -> list[dict]:
    return [{"id": f"q{i}", "title": "t", "context": f"The {NOUNS[i % 8]} is in {NOUNS[(i + 4) % 8]}.",
             "question": f"Where is the {NOUNS[i % 8]}?", "answers": {"text": [NOUNS[(i + 4) % 8]],
             "answer_start": [0]}} for i in range(n)]  # fmt: skip


def _webnlg(n: int) -> list[dict]:
    pairs = [(NOUNS[i % 8], NOUNS[(i + 1) % 8]) for i in range(n)]
    return [{"category": "City", "eid": f"Id{i}", "triples": [f"{a} | near | {b}"],
             "text": f"{a} is near {b} .", "idx": i} for i, (a, b) in enumerate(pairs)]  # fmt: skip


CAUSAL_WORDS = "because so Title Context Question Answer Where is the in near | . ? :"


def _family(name: str, base: Path) -> tuple[list[str], int]:
    """The task file and overrides of one family on a tiny model and data; the number of test examples."""
    if name == "glue":
        splits = {"train": sentence_rows(8, 0, "tr"), "validation": sentence_rows(6, 1, "va")}
        model = tiny_roberta(base / "model", all_texts(splits))
        args = ["--config", str(ROOT / "configs/glue/roberta-large_sst2.yaml")]
        return [*args, "--model.init_args.model_name_or_path", str(model),
                "--data.init_args.data_dir", str(write_rows(base / "data", splits))], 6  # fmt: skip
    if name == "prompt":
        splits = {"train": sentence_rows(16, 0, "tr"), "validation": sentence_rows(6, 1, "va")}
        model = tiny_roberta(base / "model", all_texts(splits))
        return ["--config", str(ROOT / "configs/fewshot/roberta-large_sst2.yaml"),
                "--model.init_args.model_name_or_path", str(model), "--data.init_args.k", "4",
                "--data.init_args.data_dir", str(write_rows(base / "data", splits))], 6  # fmt: skip
    if name in ("sst2", "copa", "squad"):
        rows = {"sst2": sentence_rows(20, 0, "tr"), "copa": _copa(20), "squad": _squad(20)}[name]
        texts = [json.dumps(r) for r in rows] + [CAUSAL_WORDS, *TEMPLATE_WORDS]
        model = hf_tiny.save_tiny_opt(base / "model", texts)
        data = write_rows(base / "data", {"train": rows[:14], "validation": rows[14:]})
        extra = ["--model.init_args.max_new_tokens", "3"] if name == "squad" else []
        return ["--config", str(ROOT / f"configs/opt/opt-1.3b_{name}.yaml"), *extra,
                "--model.init_args.model_name_or_path", str(model), "--data.init_args.data_dir", str(data),
                "--data.init_args.num_train", "8", "--data.init_args.num_validation", "4",
                "--data.init_args.num_test", "6"], 6  # fmt: skip
    rows = _webnlg(12)
    model = hf_tiny.save_tiny_gpt2(base / "model", [json.dumps(r) for r in rows])
    data = write_rows(base / "data", {"train": rows[:6], "validation": rows[6:8], "test": rows[6:]})
    return ["--config", str(ROOT / "configs/gpt2/gpt2-medium_webnlg.yaml"),
            "--model.init_args.model_name_or_path", str(model), "--data.init_args.data_dir", str(data),
            "--model.init_args.num_beams", "2", "--model.init_args.max_new_tokens", "3",
            "--model.init_args.lr_scheduler.init_args.warmup_steps", "1"], 6  # fmt: skip


def _run(subcommand: str, family: list[str], out: Path, *extra: str) -> Path:
    """Run one subcommand with the CSV logger under ``out``; return the run's log directory."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out)}}
    main([subcommand, *family,
          "--config", str(ROOT / "configs/method/lora.yaml"), "--config", str(ROOT / "configs/debug.yaml"),
          "--data.init_args.batch_size", "4", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(out),
          "--trainer.logger", json.dumps(logger), *extra])  # fmt: skip
    (log_dir,) = {p.parent for p in out.rglob("config.yaml")}
    return log_dir


def _rows(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "predictions.jsonl").read_text().splitlines()]


def _check_classes(rows: list[dict], names_key: str, names: list[str] | None) -> None:
    for row in rows:
        probs = row["probabilities"]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(range(len(probs)), key=probs.__getitem__)
        if names is not None:
            assert row[names_key] == names[row["label"]]


def test_glue_predict_from_the_checkpoint_or_the_exported_adapter(tmp_path: Path) -> None:
    family, n = _family("glue", tmp_path)
    family += ["--model.init_args.label_names", "[negative, positive]"]
    fit_dir = _run("fit", family, tmp_path / "fit")
    assert (fit_dir / "adapter/adapter_config.json").is_file()
    (checkpoint,) = fit_dir.rglob("*.ckpt")
    from_checkpoint = _rows(_run("predict", family, tmp_path / "p1", "--ckpt_path", str(checkpoint)))
    adapter = ["--model.init_args.adapter_path", str(fit_dir / "adapter")]
    from_adapter = _rows(_run("predict", family, tmp_path / "p2", *adapter))
    assert [r["index"] for r in from_checkpoint] == list(range(n))
    _check_classes(from_checkpoint, "label_name", ["negative", "positive"])
    for a, b in zip(from_checkpoint, from_adapter, strict=True):
        assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    # lit-bar test with the adapter: the metrics of the predicted probabilities (gold label: index % 2)
    tested = read_metrics(_run("test", family, tmp_path / "t", *adapter))
    gold = [r["index"] % 2 for r in from_adapter]
    accuracy = sum(r["label"] == g for r, g in zip(from_adapter, gold, strict=True)) / n
    loss = -sum(math.log(r["probabilities"][g]) for r, g in zip(from_adapter, gold, strict=True)) / n
    assert tested["test/accuracy"] == pytest.approx(accuracy) and tested["test/loss"] == pytest.approx(
        loss, rel=1e-5
    )


@pytest.mark.parametrize("name", ["prompt", "sst2", "copa", "squad", "webnlg"])
def test_every_family_predicts_from_its_exported_adapter(tmp_path: Path, name: str) -> None:
    family, n = _family(name, tmp_path)
    fit_dir = _run("fit", family, tmp_path / "fit")
    adapter = fit_dir / "adapter"
    if name == "webnlg":  # a stock GPT-2 adapter: one pair on c_attn
        assert json.loads((adapter / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    rows = _rows(
        _run("predict", family, tmp_path / "predict", "--model.init_args.adapter_path", str(adapter))
    )
    assert sorted(r["index"] for r in rows) == list(range(n))
    if name in ("prompt", "sst2"):  # fewshot and OPT SST-2: the label words of the task file
        _check_classes(rows, "label_word", [" terrible", " great"])
    elif name == "copa":
        _check_classes(rows, "candidate", None)
        assert all(r["candidate"] for r in rows)
    else:
        assert all(isinstance(r["text"], str) for r in rows)


def test_predict_without_checkpoint_or_adapter_is_one_error_line(tmp_path: Path, monkeypatch, capsys) -> None:
    family, _ = _family("glue", tmp_path)
    argv = ["lit-bar", "predict", *family, "--config", str(ROOT / "configs/debug.yaml"),
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    capsys.readouterr()  # drop what building the tiny model printed
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lit-bar: error:")]
    assert line.startswith("lit-bar: error: predict needs trained weights") and "--ckpt_path" in line
