"""Prompt few-shot family: `lit-bar fit`, then validate and test the best-dev checkpoint; 4 methods."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, read_metrics, tiny_sst2

from lit_bar.cli import main


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("prompt"), train=24, validation=6)


def _args(model: Path, data: Path, method: str, out: Path) -> list[str]:
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out / "logs")},
    }
    return [
        "--config", str(ROOT / "configs/fewshot/roberta-large_sst2.yaml"),
        "--config", str(ROOT / "configs/method" / f"{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", str(model),
        "--data.init_args.data_dir", str(data),
        "--data.init_args.k", "4",
        "--data.init_args.batch_size", "4",
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "1",  # validate after each step: two candidates for "best"
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", json.dumps(logger),
        "--trainer.enable_checkpointing", "true",  # debug.yaml: off; best-dev needs it
    ]  # fmt: skip


#: Every method file runs through the CLI on GLUE (test_glue_cli.py); here plain LoRA, BAR over the
#: MLM model's pairs and Functional-SAM through the verbalizer logits (CI time: each run costs seconds).
@pytest.mark.parametrize("method", ["lora", "nbar", "fsam"])
def test_fit_then_test_best_checkpoint(sst2_like: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    model, data = sst2_like
    main(["fit", *_args(model, data, method, tmp_path)])
    fitted = read_metrics(tmp_path / "logs")
    assert torch.isfinite(torch.tensor(fitted["train/loss"]))
    (best,) = (tmp_path / "logs").rglob("best.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=True)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["best_model_path"] == str(best)

    main(["validate", *_args(model, data, method, tmp_path / "dev"), "--ckpt_path", str(best)])
    assert read_metrics(tmp_path / "dev" / "logs")["val/accuracy"] == pytest.approx(
        state["best_model_score"].item()
    )

    main(["test", *_args(model, data, method, tmp_path / "test"), "--ckpt_path", str(best)])
    tested = read_metrics(tmp_path / "test" / "logs")
    assert 0.0 <= tested["test/accuracy"] <= 1.0 and torch.isfinite(torch.tensor(tested["test/loss"]))
