"""Every method file logs ``bar/abs_balancedness`` and the learning rate through ``lit-bar fit``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_fixtures import ROOT, read_metrics, tiny_sst2

from lit_bar.cli import main


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("monitor"))


def _fit(model: Path, data: Path, method: str, root: Path, *extra: str) -> None:
    main(
        [
            "fit",
            "--config", str(ROOT / "configs/glue/roberta-large_sst2.yaml"),
            "--config", str(ROOT / "configs/method" / f"{method}.yaml"),
            "--config", str(ROOT / "configs/debug.yaml"),
            "--model.init_args.model_name_or_path", str(model),
            "--data.init_args.data_dir", str(data),
            "--data.init_args.batch_size", "4",
            "--trainer.enable_checkpointing", "true",
            "--trainer.default_root_dir", str(root),
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize("method", ["lora", "sam", "nbar"])
def test_method_files_log_balancedness_and_lr(
    sst2_like: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "logs")},
    }
    _fit(*sst2_like, method, tmp_path, "--trainer.logger", json.dumps(logger))
    metrics = read_metrics(tmp_path / "logs")
    assert metrics["bar/abs_balancedness"] > 0
    assert any(key.startswith("lr-") for key in metrics)


def test_per_pair_from_the_command_line(sst2_like: tuple[Path, Path], tmp_path: Path) -> None:
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "logs")},
    }
    per_pair = ["--trainer.callbacks.init_args.log_per_pair", "true"]  # the method file's callback is last
    _fit(*sst2_like, "lora", tmp_path, "--trainer.logger", json.dumps(logger), *per_pair)
    metrics = read_metrics(tmp_path / "logs")
    per_pair = [v for k, v in metrics.items() if k.startswith("bar/abs_balancedness/")]
    assert len(per_pair) == 4  # query + value × 2 layers
    assert sum(per_pair) / 4 == pytest.approx(metrics["bar/abs_balancedness"], rel=1e-5)


def test_debug_preset_without_logger_still_runs(sst2_like: tuple[Path, Path], tmp_path: Path) -> None:
    _fit(*sst2_like, "sam", tmp_path)


def test_lora_null_says_once_there_is_nothing_to_monitor(
    sst2_like: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "logs")},
    }
    with caplog.at_level(logging.INFO):
        _fit(
            *sst2_like,
            "sam",
            tmp_path,
            "--trainer.logger",
            json.dumps(logger),
            "--model.init_args.lora",
            "null",
        )
    assert sum("nothing to monitor" in r.getMessage() for r in caplog.records) == 1
    assert not any(key.startswith("bar/") for key in read_metrics(tmp_path / "logs"))
