"""``lit-bar`` behaves like the LightningCLI tools users know (issue 10 §4).

``--version`` and a description; short class names; one place for the optimizer (the module's);
a class's own error as one ``lit-bar: error:`` line; the toy modules' declared pair reaching
``BalancednessCallback``; ``configs/debug.yaml`` leaving the working directory untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import ROOT, tiny_sst2

from lit_bar import __version__
from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.cli import DESCRIPTION, LitBarCLI, main, run_cli


def test_version_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lit-bar {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert DESCRIPTION in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "flag", [["--optimizer", "SGD"], ["--lr_scheduler", "StepLR"]], ids=["optimizer", "lr_scheduler"]
)
def test_top_level_optimizer_flags_are_refused(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``psam.yaml`` + LightningCLI's ``--optimizer SGD`` silently became plain SAM; now it is an error."""
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/toy/nop.yaml"),
        "--config",
        str(ROOT / "configs/method/psam.yaml"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *flag])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    name = flag[0].removeprefix("--")
    assert f"--{name} is not a lit-bar option" in err
    assert f"--model.init_args.{name}" in err


def test_top_level_optimizer_key_in_a_config_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("optimizer:\n  class_path: torch.optim.SGD\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/toy/nop.yaml"), "--config", str(extra)])
    assert "--optimizer is not a lit-bar option" in " ".join(capsys.readouterr().err.split())


def test_short_names_and_one_line_error_in_a_fresh_process(tmp_path: Path) -> None:
    """A fresh ``lit-bar`` (nothing imported but the CLI) resolves ``SequenceClassifier`` and
    ``GlueDataModule`` by short name; the model's offline error is one line, not a union dump."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    args = ["--model", "SequenceClassifier", "--model.model_name_or_path", "some-org/not-cached"]
    args += ["--data", "GlueDataModule", "--data.dataset_name", "glue", "--data.dataset_config", "sst2"]
    args += ["--trainer.callbacks+", "BalancednessCallback", "--config", "configs/debug.yaml"]
    run = subprocess.run(
        [sys.executable, "-m", "lit_bar.cli", "fit", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("lit-bar: error: "), run.stderr[-2000:]
    assert "'some-org/not-cached' is not a local folder and not in the local Hugging Face cache" in errors[0]
    assert len(errors[0]) < 400 and "Union" not in run.stderr
    assert not (tmp_path / "config.yaml").exists()


def _toy_state(tmp_path: Path, method: list[str]) -> tuple[LitBarCLI, torch.Tensor]:
    cli = run_cli(
        [
            "fit",
            "--config", str(ROOT / "configs/toy/nop.yaml"),
            *method,
            "--config", str(ROOT / "configs/debug.yaml"),
            "--trainer.default_root_dir", str(tmp_path),
        ]
    )  # fmt: skip
    return cli, torch.cat([cli.model.x.detach(), cli.model.y.detach()])


def test_toy_config_composes_with_nbar_without_a_pairs_flag(tmp_path: Path) -> None:
    """The toy module declares its pair (``factor_pairs``), so ``nbar.yaml`` needs no ``pairs`` flag."""
    cli, with_bar = _toy_state(tmp_path / "nbar", ["--config", str(ROOT / "configs/method/nbar.yaml")])
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, BalancednessCallback)]
    (pair,) = callback.pairs
    assert pair.x is cli.model.x and pair.y is cli.model.y
    assert cli.trainer.global_step == 4
    # the same run without the callback (nbar.yaml's rho=0: plain SGD) ends elsewhere: nBAR acted
    _, plain = _toy_state(tmp_path / "sgd", ["--model.init_args.rho", "0"])
    assert (with_bar - plain).abs().max() > 1e-4


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("cli"))


def test_debug_yaml_writes_nothing_into_the_working_directory(
    sst2_like: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``configs/...`` paths from an empty working directory resolve against the shipped configs;
    config.yaml and the checkpoint (before: ./config.yaml and ./checkpoints/) go to a temp folder."""
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model, data = sst2_like
    cli = run_cli(
        [
            "fit",
            "--config", "configs/glue/roberta-large_sst2.yaml",
            "--config", "configs/method/nbar.yaml",
            "--config", "configs/debug.yaml",
            "--model.init_args.model_name_or_path", str(model),
            "--data.init_args.data_dir", str(data),
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 4
    assert list(cwd.iterdir()) == []
    run_dir = Path(cli.trainer.default_root_dir)
    assert run_dir.parent == temp and run_dir.name.startswith("lit-bar-")
    assert (run_dir / "config.yaml").is_file() and list(run_dir.rglob("*.ckpt"))


def test_explicit_default_root_dir_wins_over_temp_root_dir(tmp_path: Path) -> None:
    cli, _ = _toy_state(tmp_path, [])
    assert cli.trainer.default_root_dir == str(tmp_path)
    assert cli.config.fit.temp_root_dir is True  # debug.yaml's, overridden by the explicit folder
