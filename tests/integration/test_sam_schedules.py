"""LR schedulers under SAMModule: ReduceLROnPlateau on a chosen metric, epoch-sized schedules, and
transformers' schedules sized from the run's optimizer steps (accumulation included).

References are independent: a few-line simulation of ReduceLROnPlateau's rule, the linear formula,
and ``transformers.get_scheduler`` built with the known length on a twin optimizer.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from transformers import get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.sam import TinySAM, fit, loader, make_data, make_net, sgd, trainer

from lit_bar.lightning.schedules import TransformersSchedule, WarmupLinearDecay

LR = 0.1


class LRRecorder(pl.Callback):
    """The LR of group 0 at each epoch start and at each optimizer step."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.steps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append(optimizer.param_groups[0]["lr"])


class ScriptedValidation(TinySAM):
    """Logs ``key`` = ``values[epoch]`` as its validation metric (a metric the test controls)."""

    def __init__(self, key: str, values: list[float], **kwargs) -> None:
        super().__init__(make_net(), **kwargs)
        self.key, self.values = key, values

    def evaluation_step(self, batch, stage):
        self.log(self.key, torch.tensor(self.values[self.current_epoch], dtype=torch.float64))


def hand_plateau(metrics: list[float], mode: str, factor: float, patience: int) -> list[float]:
    """LR during each epoch under ReduceLROnPlateau's rule (rel threshold 1e-4, no cooldown)."""
    lr, best, bad, out = LR, math.inf if mode == "min" else -math.inf, 0, []
    for value in metrics:
        out.append(lr)
        better = value < best * (1 - 1e-4) if mode == "min" else value > best * (1 + 1e-4)
        best, bad = (value, 0) if better else (best, bad + 1)
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


@pytest.mark.parametrize(
    ("key", "mode", "values"),
    [
        ("val/loss", "min", [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]),
        ("val/score", "max", [0.2, 0.6, 0.6, 0.6, 0.7, 0.7]),
    ],
    ids=["default_val_loss", "configured_key"],
)
def test_reduce_on_plateau_drops_the_lr_after_the_monitored_metric_stalls(key, mode, values) -> None:
    module = ScriptedValidation(
        key,
        values,
        optimizer=sgd(LR),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode=mode, factor=0.5, patience=1
        ),
        lr_scheduler_interval="epoch",
        rho=0.05,
        **({} if key == "val/loss" else {"lr_scheduler_monitor": key}),
    )
    x, y = make_data(8)
    recorder = LRRecorder()
    trainer(max_epochs=len(values), callbacks=[recorder]).fit(module, loader(x, y, 4), loader(x, y, 4))
    expected = hand_plateau(values, mode, 0.5, 1)
    assert recorder.epochs == pytest.approx(expected, rel=1e-12)
    assert min(expected) < LR  # the plateau did lower it (a scheduler never stepped would not)


def test_reduce_on_plateau_on_a_metric_never_logged_names_it() -> None:
    module = ScriptedValidation(
        "val/loss",
        [1.0, 1.0],
        optimizer=sgd(LR),
        lr_scheduler=lambda o: ReduceLROnPlateau(o),
        lr_scheduler_interval="epoch",
        lr_scheduler_monitor="val/accuracy",
    )
    x, y = make_data(8)
    with pytest.raises(ValueError, match=r"'val/accuracy'.*logged: .*val/loss"):
        trainer(max_epochs=2).fit(module, loader(x, y, 4), loader(x, y, 4))


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "epochs"), [(4, -1, 4), (10, 7, 3)], ids=["epochs", "capped"]
)
def test_epoch_interval_schedule_is_sized_in_epochs(max_epochs: int, max_steps: int, epochs: int) -> None:
    # 12 rows, batch 4: 3 optimizer steps per epoch; a schedule sized in steps would decay over 12 (or 7)
    module = TinySAM(
        make_net(),
        optimizer=sgd(LR),
        lr_scheduler=lambda o: WarmupLinearDecay(o),
        lr_scheduler_interval="epoch",
        rho=0.05,
    )
    x, y = make_data(12)
    recorder = LRRecorder()
    fit(module, loader(x, y, 4), max_epochs=max_epochs, max_steps=max_steps, callbacks=[recorder])
    expected = [LR * (epochs - e) / epochs for e in range(epochs)]
    assert recorder.epochs == pytest.approx(expected, abs=1e-12)
    steps = 3 * max_epochs if max_steps == -1 else min(3 * max_epochs, max_steps)
    sized_in_steps = [LR * (steps - e) / steps for e in range(epochs)]  # the defect: decays over steps
    assert max(abs(a - b) for a, b in zip(expected, sized_in_steps, strict=True)) > 0.01


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial", "constant_with_warmup"])
def test_transformers_schedule_is_sized_from_the_runs_optimizer_steps(name: str) -> None:
    # 10 rows, batch 2, accumulation 2: ⌈5 / 2⌉ = 3 optimizer steps per epoch, 3 epochs: T = 9
    module = TinySAM(
        make_net(),
        optimizer=sgd(LR),
        lr_scheduler=lambda o: TransformersSchedule(o, name=name, warmup=0.2),
        rho=0.05,
        accumulate_grad_batches=2,
    )
    x, y = make_data(10)
    recorder = LRRecorder()
    fit(module, loader(x, y, 2), max_epochs=3, callbacks=[recorder])
    twin = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    reference = get_scheduler(name, twin, num_warmup_steps=math.ceil(0.2 * 9), num_training_steps=9)
    expected = []
    for _ in range(9):
        expected.append(twin.param_groups[0]["lr"])
        twin.step()
        reference.step()
    assert recorder.steps == expected
    micro = get_scheduler(
        name, torch.optim.SGD([torch.zeros(1)], lr=LR), num_warmup_steps=3, num_training_steps=15
    )
    sized_in_micro_batches = [LR * micro.lr_lambdas[0](t) for t in range(9)]  # ignoring the accumulation
    assert max(abs(a - b) for a, b in zip(expected, sized_in_micro_batches, strict=True)) > 1e-3
