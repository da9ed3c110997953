"""What a user sees while a run trains (issue 19, items 7 and 10).

``StepProgressBar``: no ``Epoch 0/-2`` under ``max_steps``; one line per logging step when stdout is
not a terminal (nothing showed until the end before); the final metrics after ``fit``; and
``--trainer.enable_progress_bar false`` still works with the bar in ``configs/defaults.yaml``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from torch.utils.data import DataLoader, TensorDataset

from lit_bar.callbacks.progress import StepProgressBar
from lit_bar.cli import run_cli
from lit_bar.lightning.compat import RICH_AVAILABLE

ROOT = Path(__file__).resolve().parents[2]


class Regression(LightningModule):
    """Two parameter groups with different learning rates; logs ``train/loss`` every step."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.b(self.a(x)), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.b(self.a(x)), y))

    def configure_optimizers(self):
        groups = [{"params": self.a.parameters()}, {"params": self.b.parameters(), "lr": 0.5}]
        return torch.optim.SGD(groups, lr=0.01)


class Halving(Regression):
    """The learning rates halve after every optimizer step."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        halve = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": halve, "interval": "step"}}


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)), 2)


def _fit(
    tmp_path: Path, bar: ProgressBar, module: LightningModule | None = None, **trainer_kwargs
) -> Trainer:
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
        **trainer_kwargs,
    )
    trainer.fit(module or Regression(), _loader(), _loader())
    return trainer


@pytest.mark.skipif(not RICH_AVAILABLE, reason="the Epoch 0/-2 description is the rich bar's")
def test_description_under_max_steps_has_no_minus_two() -> None:
    from lightning.pytorch.callbacks import RichProgressBar

    only_steps, with_epochs = SimpleNamespace(max_epochs=-1), SimpleNamespace(max_epochs=3)
    lightning_bar = RichProgressBar()
    lightning_bar._trainer = only_steps
    assert "0/-2" in lightning_bar._get_train_description(0)  # what users saw
    bar = StepProgressBar(lines=False)
    bar._trainer = only_steps
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = with_epochs
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_bar_metrics_show_the_step_count(tmp_path: Path) -> None:
    seen: list[str] = []

    class Spy(StepProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            seen.append(items.get("step"))
            return items

    _fit(tmp_path, Spy(lines=False), max_steps=6, max_epochs=-1, limit_val_batches=0)
    assert "6/6" in seen and "1/6" in seen


def test_one_line_per_logging_step_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert not sys.stdout.isatty()  # pytest captures stdout: the situation of a log file
    _fit(tmp_path, StepProgressBar(), max_steps=6, max_epochs=-1, log_every_n_steps=2, val_check_interval=4)
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("lit-bar: step ")]
    assert [line.split()[2] for line in steps] == ["2/6", "4/6", "6/6"], out
    for line in steps:
        assert re.search(r"train/loss=[0-9.e+-]+ lr=1\.00e-02 lr1=5\.00e-01 elapsed=\d+:\d\d:\d\d$", line), (
            line
        )
    assert any(line.startswith("lit-bar: validation at step 4: val/loss=") for line in out), out
    (final,) = [line for line in out if line.startswith("lit-bar: fit done")]
    assert (
        final.startswith("lit-bar: fit done at step 6 in ")
        and "train/loss=" in final
        and "val/loss=" in final
    )
    assert not any("\r" in line for line in out)


def test_lines_show_the_learning_rate_the_step_used(tmp_path: Path, capsys) -> None:
    """Step 2 steps with the rates halved once: 0.005 and 0.25 (not step 3's, set after step 2)."""
    _fit(tmp_path, StepProgressBar(lines=True), Halving(), max_steps=2, max_epochs=-1, log_every_n_steps=2)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("lit-bar: step")]
    assert " lr=5.00e-03 lr1=2.50e-01 " in line, line


def test_a_terminal_gets_the_bar_and_the_final_metrics_only(tmp_path: Path, capsys) -> None:
    _fit(tmp_path, StepProgressBar(lines=False), max_steps=4, max_epochs=-1, log_every_n_steps=1)
    out = capsys.readouterr().out
    assert "lit-bar: step" not in out
    assert re.search(r"^lit-bar: fit done at step 4 in .*train/loss=", out, re.MULTILINE), out


def _toy(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config", str(ROOT / "configs/toy/nop.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.log_every_n_steps", "2",
        *extra,
    ]  # fmt: skip


def test_lit_bar_runs_print_progress_lines(tmp_path: Path, capsys) -> None:
    cli = run_cli(_toy(tmp_path))
    assert any(isinstance(cb, StepProgressBar) for cb in cli.trainer.callbacks)
    out = capsys.readouterr().out
    assert re.search(r"^lit-bar: step 2/4 epoch 0 .*train/loss=", out, re.MULTILINE), out
    assert "lit-bar: fit done at step 4" in out


def test_enable_progress_bar_false_still_works(tmp_path: Path, capsys) -> None:
    """The defaults' bar used to make Lightning refuse the flag (MisconfigurationException)."""
    cli = run_cli(_toy(tmp_path, "--trainer.enable_progress_bar", "false"))
    assert cli.trainer.progress_bar_callback is None and cli.trainer.global_step == 4
    assert "lit-bar: step" not in capsys.readouterr().out
