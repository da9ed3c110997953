"""Every method file logs ``bar/abs_balancedness`` and the learning rate through ``lit-bar fit``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import glue_cli_args, read_metrics, tiny_sst2

from lit_bar.cli import main


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("monitor"))


def _fit(model: Path, data: Path, method: str, root: Path, *extra: str, logger: bool = True) -> None:
    main(["fit", *glue_cli_args(model, data, method, root, logger=logger), *extra])


@pytest.mark.parametrize("method", ["lora", "sam", "nbar"])
def test_method_files_log_balancedness_and_lr(
    sst2_like: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    _fit(*sst2_like, method, tmp_path)
    metrics = read_metrics(tmp_path / "logs")
    assert metrics["bar/abs_balancedness"] > 0
    assert any(key.startswith("lr-") for key in metrics)


def test_per_pair_from_the_command_line(sst2_like: tuple[Path, Path], tmp_path: Path) -> None:
    per_pair = ["--trainer.callbacks.init_args.log_per_pair", "true"]  # the method file's callback is last
    _fit(*sst2_like, "lora", tmp_path, *per_pair)
    metrics = read_metrics(tmp_path / "logs")
    per_pair = [v for k, v in metrics.items() if k.startswith("bar/abs_balancedness/")]
    assert len(per_pair) == 4  # query + value × 2 layers
    assert sum(per_pair) / 4 == pytest.approx(metrics["bar/abs_balancedness"], rel=1e-5)


def test_debug_preset_without_logger_still_runs(sst2_like: tuple[Path, Path], tmp_path: Path) -> None:
    _fit(*sst2_like, "sam", tmp_path, logger=False)


def test_lora_null_says_once_there_is_nothing_to_monitor(
    sst2_like: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _fit(*sst2_like, "sam", tmp_path, "--model.init_args.lora", "null")
    assert sum("nothing to monitor" in r.getMessage() for r in caplog.records) == 1
    assert not any(key.startswith("bar/") for key in read_metrics(tmp_path / "logs"))
