"""``BalancednessTrainerCallback`` runs ahead of the reporting integrations, by a public route.

transformers builds the callback list as ``[DefaultFlowCallback, <report_to integrations>, <user
callbacks>, <printer/progress>]``. The reporting integrations are stood in for by a recorder that the
Trainer itself places where it places integrations (``get_reporting_integration_callbacks`` patched),
so the test sees the Trainer's own order. ``run_first`` (plain ``Trainer``) and ``SAMTrainer`` (at
construction and in ``add_callback``) put BAR first with ``pop_callback``/``add_callback`` only;
``lit_bar/hf`` inspects no stack frames.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback

from lit_bar.hf import BalancednessTrainerCallback, SAMTrainer, run_first

HF = Path(__file__).resolve().parents[2] / "lit_bar" / "hf"


class Reporter(TrainerCallback):
    """Stands for an integration (TensorBoard, W&B): records what ``on_log`` hands it."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs or {}))


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Other(TrainerCallback):
    """A user callback listed before BAR."""


class Factors(nn.Module):
    """y = B A x, one scale-invariant pair (a, b); ``forward(x, labels) -> {"loss": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(2, 4, generator=generator))
        self.b = nn.Parameter(torch.randn(3, 2, generator=generator))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(x @ self.a.T @ self.b.T, labels)}


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 4, generator=generator), torch.randn(n, 3, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


@pytest.fixture
def reporter(monkeypatch) -> Reporter:
    """One Reporter, placed by the Trainer where it places ``report_to`` integrations."""
    import transformers.trainer

    recorder = Reporter()
    monkeypatch.setattr(
        transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [recorder]
    )
    return recorder


def _args(tmp_path, **extra) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, logging_steps=2,
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0, **{"report_to": "none", **extra},
    )  # fmt: skip


def _names(trainer: Trainer) -> list[str]:
    return [type(c).__name__ for c in trainer.callback_handler.callbacks]


def _bar() -> BalancednessTrainerCallback:
    return BalancednessTrainerCallback(mu=0.5, pairs=[("a", "b")])


def test_the_trainer_puts_user_callbacks_behind_the_integrations(tmp_path, reporter) -> None:
    """Why BAR must be moved: the plain Trainer's own order."""
    trainer = Trainer(
        model=Factors(), args=_args(tmp_path), train_dataset=Rows(), callbacks=[Other(), _bar()]
    )
    assert _names(trainer) == [
        "DefaultFlowCallback", "Reporter", "Other", "BalancednessTrainerCallback", "PrinterCallback",
    ]  # fmt: skip


def test_run_first_puts_bar_first_and_keeps_the_others_order(tmp_path, reporter) -> None:
    bar = _bar()
    trainer = Trainer(model=Factors(), args=_args(tmp_path), train_dataset=Rows(), callbacks=[Other(), bar])
    assert run_first(trainer) is bar
    assert _names(trainer) == [
        "BalancednessTrainerCallback", "DefaultFlowCallback", "Reporter", "Other", "PrinterCallback",
    ]  # fmt: skip
    trainer.train()
    logged = [e for e in reporter.seen if "loss" in e]
    assert len(logged) == 2  # 4 steps, logging_steps=2
    assert all("bar/abs_balancedness" in e and "bar/mu" in e for e in logged)  # BAR ran ahead of the reporter


def test_run_first_adds_an_instance_the_trainer_lacks_and_names_a_missing_class(tmp_path) -> None:
    trainer = Trainer(model=Factors(), args=_args(tmp_path), train_dataset=Rows())
    bar = run_first(trainer, _bar())
    assert trainer.callback_handler.callbacks[0] is bar
    assert [type(c) for c in trainer.callback_handler.callbacks[1:]] == [DefaultFlowCallback, PrinterCallback]
    with pytest.raises(ValueError, match=r"run_first: the Trainer has no Other among its callbacks \["):
        run_first(trainer, Other)


def test_sam_trainer_puts_bar_first_at_construction_and_in_add_callback(tmp_path, reporter) -> None:
    trainer = SAMTrainer(
        model=Factors(), args=_args(tmp_path), train_dataset=Rows(), callbacks=[Other(), _bar()], rho=0.0
    )
    assert _names(trainer) == [
        "BalancednessTrainerCallback", "DefaultFlowCallback", "Reporter", "Other", "PrinterCallback",
    ]  # fmt: skip
    trainer.train()
    logged = [e for e in reporter.seen if "loss" in e]
    assert len(logged) == 2 and all("bar/abs_balancedness" in e for e in logged)

    later = SAMTrainer(model=Factors(), args=_args(tmp_path), train_dataset=Rows(), rho=0.0)
    later.add_callback(_bar())
    later.add_callback(Other())
    assert _names(later) == [
        "BalancednessTrainerCallback", "DefaultFlowCallback", "Reporter", "PrinterCallback", "Other",
    ]  # fmt: skip


def test_a_plain_trainer_without_run_first_warns_when_integrations_would_miss_bar(tmp_path, reporter) -> None:
    trainer = Trainer(
        model=Factors(),
        args=_args(tmp_path, report_to=["tensorboard"]),
        train_dataset=Rows(),
        callbacks=[_bar()],
    )
    handler = Messages()
    logger = logging.getLogger("lit_bar.hf.callback")
    logger.addHandler(handler)
    try:
        trainer.train()
    finally:
        logger.removeHandler(handler)
    assert any("run_first(trainer)" in m and "tensorboard" in m for m in handler.messages)
    assert not any("bar/abs_balancedness" in e for e in reporter.seen)  # the reporter ran before BAR


def test_lit_bar_hf_inspects_no_stack_frames() -> None:
    pattern = re.compile(r"_getframe|f_back|f_locals|inspect\.(stack|currentframe)|traceback\.extract_stack")
    found = [
        f"{path.name}:{n}"
        for path in sorted(HF.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"stack-frame inspection in lit_bar/hf: {found}"
