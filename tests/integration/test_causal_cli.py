"""Causal-LM family through ``lit-bar fit`` then ``lit-bar test``: tiny random OPT, synthetic hub-schema rows.

Each run composes a shipped ``configs/opt`` task file with a method file and ``configs/debug.yaml``,
and checks what a user would look at: the logged metrics and the trained LoRA factors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny import hf as hf_tiny

from lit_bar.cli import main

ROOT = Path(__file__).resolve().parents[2]

WORDS = ["film", "plot", "cast", "music", "good", "bad", "rain", "sun", "Paris", "Rome", "city"]


def _rows(task: str, n: int) -> list[dict]:
    """``n`` rows of ``task`` in its hub schema."""
    w = lambda i, k=0: WORDS[(i + k) % len(WORDS)]  # noqa: E731
    if task == "sst2":
        return [{"sentence": f"the {w(i)} was {w(i, 3)}", "label": i % 2, "idx": i} for i in range(n)]
    if task in ("cb", "rte"):
        k = 3 if task == "cb" else 2
        return [{"premise": f"The {w(i)} is {w(i, 2)}.", "hypothesis": f"the {w(i, 1)} is {w(i, 4)}",
                 "label": i % k, "idx": i} for i in range(n)]  # fmt: skip
    if task == "copa":
        return [{"premise": f"The {w(i)} was {w(i, 1)}.", "choice1": f"The {w(i, 2)} fell.",
                 "choice2": f"I saw the {w(i, 3)}.", "question": ("cause", "effect")[i % 2], "label": i % 2,
                 "idx": i} for i in range(n)]  # fmt: skip
    if task == "record":
        return [{"passage": f"The {w(i)} met {w(i, 8)}.\n@highlight\n{w(i, 9)} is a city",
                 "query": "@placeholder is a city", "entities": [w(i, 8), w(i, 9), w(i, 8)],
                 "answers": [w(i, 9)], "idx": i} for i in range(n)]  # fmt: skip
    if task == "squad":
        return [{"id": f"q{i}", "title": w(i, 8), "context": f"The {w(i)} is in {w(i, 9)}.",
                 "question": f"Where is the {w(i)}?", "answers": {"text": [w(i, 9), f"in {w(i, 9)}"],
                 "answer_start": [0, 0]}} for i in range(n)]  # fmt: skip
    raise ValueError(task)


TEMPLATE_WORDS = "Suppose Can we infer that Yes No or Maybe Does this mean is true It was terrible great"
TEMPLATE_WORDS += " because so Title Context Question Answer - @ placeholder highlight"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """``main(args)`` must not see pytest's own argv (LightningCLI/jsonargparse read ``sys.argv``)."""
    monkeypatch.setattr("sys.argv", ["lit-bar"])


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory) -> str:
    texts = [json.dumps(r) for task in ("sst2", "cb", "copa", "record", "squad") for r in _rows(task, 24)]
    return str(hf_tiny.save_tiny_opt(tmp_path_factory.mktemp("opt"), [*texts, TEMPLATE_WORDS]))


def _data(folder: Path, task: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(task, 40)
    for split, part in (("train", rows[:24]), ("validation", rows[24:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return str(folder)


def _metrics(root: Path) -> dict[str, float]:
    """Last logged value of every metric in the CSV logs under ``root``."""
    values: dict[str, float] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def fit_then_test(task: str, method: str, model: str, tmp_path: Path) -> tuple[dict[str, float], dict]:
    """Run ``fit`` then ``test`` (best checkpoint) through the CLI; return the metrics and checkpoint."""
    args = [
        "--config", str(ROOT / f"configs/opt/opt-1.3b_{task}.yaml"),
        "--config", str(ROOT / f"configs/method/{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", model,
        "--data.init_args.data_dir", _data(tmp_path / "data", task),
        "--data.init_args.num_train", "16", "--data.init_args.num_validation", "8",
        "--data.init_args.num_test", "6", "--data.init_args.batch_size", "4",
        "--trainer.enable_checkpointing", "true",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                        "init_args": {"save_dir": str(tmp_path / "logs")}}),
    ]  # fmt: skip
    if task == "squad":
        args += ["--model.init_args.max_new_tokens", "4"]
    main(["fit", *args])
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    return _metrics(tmp_path / "logs"), torch.load(checkpoint, map_location="cpu", weights_only=True)


def _assert_lora_trained(state: dict) -> None:
    """peft initialises every lora_B to zero: after training all of them have moved."""
    lora_b = {k: v for k, v in state["state_dict"].items() if "lora_B" in k}
    assert len(lora_b) == 4  # 2 layers × (q_proj, v_proj)
    assert all(v.abs().sum() > 0 for v in lora_b.values())
    assert not any("lora" in k and ("k_proj" in k or "out_proj" in k) for k in state["state_dict"])


#: Every method file runs through the CLI on GLUE (test_glue_cli.py); here the ones whose path depends
#: on the family (Functional-SAM's seed from the candidate scores, BAR over OPT's pairs, the Adam
#: preconditioner), plus SAM and oBAR on the other scoring tasks below (CI time: each run costs seconds).
@pytest.mark.parametrize("method", ["lora", "nbar", "fsam", "psam"])
def test_cb_candidates_fit_then_test(method, tiny_opt, tmp_path):
    metrics, state = fit_then_test("cb", method, tiny_opt, tmp_path)
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and 0.0 <= metrics["test/accuracy"] <= 1.0
    assert metrics["test/accuracy"] * 6 == pytest.approx(round(metrics["test/accuracy"] * 6))  # k of 6 rows
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["test/loss"]])).all()
    _assert_lora_trained(state)
    if method in ("nbar", "obar"):
        assert "bar/abs_balancedness" in " ".join(metrics)


@pytest.mark.parametrize(("task", "method"), [("sst2", "nbar"), ("copa", "sam"), ("record", "obar")])
def test_other_scoring_tasks_fit_then_test(task, method, tiny_opt, tmp_path):
    metrics, state = fit_then_test(task, method, tiny_opt, tmp_path)
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    _assert_lora_trained(state)


def test_squad_generation_fit_then_test(tiny_opt, tmp_path):
    metrics, state = fit_then_test("squad", "lora", tiny_opt, tmp_path)
    for name in ("val/f1", "test/f1", "test/exact_match"):
        assert 0.0 <= metrics[name] <= 100.0
    assert metrics["test/exact_match"] <= metrics["test/f1"]
    _assert_lora_trained(state)
