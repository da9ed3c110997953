"""Data-to-text family through ``lit-bar fit`` then ``lit-bar test``: tiny random GPT-2, WebNLG rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny import hf as hf_tiny

from lit_bar.cli import main

ROOT = Path(__file__).resolve().parents[2]

SEEN, UNSEEN = ["Airport", "City"], ["Politician"]
NAMES = ["Alan_Bean", "Rome", "Paris", "Abilene_Regional_Airport", "Texas"]


def _rows(categories: list[str], n_inputs: int, refs: int) -> list[dict]:
    """``n_inputs`` inputs, ``refs`` reference rows each; ``eid`` restarts per category, as in WebNLG."""
    rows = []
    for i in range(n_inputs):
        category = categories[i % len(categories)]
        subject, obj = NAMES[i % len(NAMES)], NAMES[(i + 2) % len(NAMES)]
        triples = [f"{subject} | location | {obj}"] + ([f'{obj} | country | "{subject}"'] if i % 2 else [])
        for r in range(refs):
            text = f"{subject.replace('_', ' ')} is in {obj.replace('_', ' ')} {'.' if r else 'indeed .'}"
            rows.append({"category": category, "eid": f"Id{i // len(categories) + 1}", "triples": triples,
                         "text": text, "idx": len(rows)})  # fmt: skip
    return rows


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """``main(args)`` must not see pytest's own argv (LightningCLI/jsonargparse read ``sys.argv``)."""
    monkeypatch.setattr("sys.argv", ["lit-bar"])


@pytest.fixture(scope="module")
def webnlg(tmp_path_factory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("webnlg")
    splits = {"train": _rows(SEEN, 8, 2), "validation": _rows(SEEN, 4, 2), "test": _rows(SEEN + UNSEEN, 6, 3)}
    (base / "data").mkdir()
    for split, rows in splits.items():
        (base / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [json.dumps(r) for rows in splits.values() for r in rows] + [r.replace("_", " ") for r in NAMES]
    return str(hf_tiny.save_tiny_gpt2(base / "gpt2", texts)), str(base / "data")


def _metrics(root: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


#: Every method file runs through the CLI on GLUE (test_glue_cli.py); here the ones whose path depends
#: on the family: SAM and Functional-SAM through the LM loss, BAR over GPT-2's split q/k/v pairs.
@pytest.mark.parametrize("method", ["sam", "nbar", "fsam"])
def test_webnlg_fit_then_test(method, webnlg, tmp_path):
    model, data = webnlg
    args = [
        "--config", str(ROOT / "configs/gpt2/gpt2-medium_webnlg.yaml"),
        "--config", str(ROOT / f"configs/method/{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", model,
        "--model.init_args.num_beams", "2", "--model.init_args.max_new_tokens", "6",
        "--model.init_args.lr_scheduler.init_args.warmup_steps", "1",
        "--data.init_args.data_dir", data, "--data.init_args.batch_size", "4",
        "--trainer.enable_checkpointing", "true",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                        "init_args": {"save_dir": str(tmp_path / "logs")}}),
    ]  # fmt: skip
    main(["fit", *args])
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    metrics = _metrics(tmp_path / "logs")
    for name in ("val/bleu", "test/bleu", "test/bleu_seen", "test/bleu_unseen"):
        assert 0.0 <= metrics[name] <= 100.0, name
    assert "val/bleu_unseen" not in metrics  # validation has seen categories only
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["test/loss"]])).all()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    lora_b = {k: v for k, v in state.items() if "lora_B" in k}
    assert sorted({k.split(".lora_B")[0].rsplit(".", 1)[-1] for k in lora_b}) == ["q_proj", "v_proj"]
    assert len(lora_b) == 4 and all(v.abs().sum() > 0 for v in lora_b.values())  # 2 layers × (q, v), trained
