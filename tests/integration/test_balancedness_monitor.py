"""BalancednessMonitor against a hand computation of ½(‖A‖² − ‖B‖²); LearningRateMonitor without a logger."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from test_balancedness_callback import make_lora_net
from tiny.sam import TinySAM, fit, loader, make_data, make_net, sgd

import lit_bar.callbacks.monitor as monitor_module
from lit_bar import BalancednessMonitor
from lit_bar.callbacks import BalancednessCallback, LearningRateMonitor

EVERY, STEPS = 2, 6


class FactorRecorder(Callback):
    """Copies every (lora_A, lora_B) weight at each optimizer step, before the step."""

    def __init__(self) -> None:
        self.factors: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        layers = {n: m for n, m in pl_module.named_modules() if hasattr(m, "lora_A") and m.lora_A}
        self.factors[trainer.global_step] = {
            name: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
            for name, m in layers.items()
        }


def hand_abs_balancedness(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    return {name: abs(0.5 * (float((a**2).sum()) - float((b**2).sum()))) for name, (a, b) in factors.items()}


def logged_rows(log_dir: Path) -> list[dict[str, str]]:
    (path,) = log_dir.rglob("metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("rho", [0.0, 0.05], ids=["lora", "sam"])
def test_logged_value_matches_hand_computation(
    tmp_path: Path, rho: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    trainer_ref: list = []
    real = monitor_module.balancedness

    def counted(pairs):
        calls.append(trainer_ref[0].global_step)
        return real(pairs)

    monkeypatch.setattr(monitor_module, "balancedness", counted)
    recorder = FactorRecorder()

    class Grab(Callback):
        def on_fit_start(self, trainer, pl_module):
            trainer_ref.append(trainer)

    module = TinySAM(make_lora_net(), rho=rho, optimizer=sgd(0.2))
    fit(
        module,
        loader(*make_data(n=4 * STEPS), batch_size=4),
        callbacks=[Grab(), BalancednessMonitor(log_per_pair=True), recorder],
        logger=CSVLogger(tmp_path),
        log_every_n_steps=EVERY,
        max_steps=STEPS,
    )
    logging_steps = [s for s in range(STEPS) if (s + 1) % EVERY == 0]
    assert calls == logging_steps  # nothing at all on the other steps
    rows = [r for r in logged_rows(tmp_path) if r.get("bar/abs_balancedness")]
    assert len(rows) == len(logging_steps)
    for row, step in zip(rows, logging_steps, strict=True):
        expected = hand_abs_balancedness(recorder.factors[step])
        mean = sum(expected.values()) / len(expected)
        assert float(row["bar/abs_balancedness"]) == pytest.approx(mean, rel=1e-9)
        for name, value in expected.items():
            assert float(row[f"bar/abs_balancedness/{name}.default"]) == pytest.approx(value, rel=1e-9)
    # the test can fail: the value moves between logging steps by more than the tolerance
    first, second = (hand_abs_balancedness(recorder.factors[s]) for s in logging_steps[:2])
    assert abs(sum(first.values()) - sum(second.values())) > 1e-6


def test_no_pairs_says_so_once_and_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = BalancednessMonitor()
    with caplog.at_level(logging.INFO):
        fit(
            TinySAM(make_net(), optimizer=sgd()),
            loader(*make_data(n=16), batch_size=4),
            callbacks=[monitor],
            logger=CSVLogger(tmp_path),
            log_every_n_steps=1,
            max_steps=4,
        )
    said = [r for r in caplog.records if "nothing to monitor" in r.getMessage()]
    assert len(said) == 1
    assert not any(key.startswith("bar/") for row in logged_rows(tmp_path) for key in row if row[key])


def test_refuses_to_log_the_key_twice() -> None:
    with pytest.raises(ValueError, match="both log 'bar/abs_balancedness'"):
        fit(
            TinySAM(make_lora_net(), optimizer=sgd()),
            loader(*make_data(n=8), batch_size=4),
            callbacks=[BalancednessMonitor(), BalancednessCallback()],
            logger=False,
            max_steps=1,
        )


def test_bad_argument_is_named() -> None:
    with pytest.raises(ValueError, match="log_per_pair must be True or False, got 'yes'"):
        BalancednessMonitor(log_per_pair="yes")


def test_learning_rate_monitor_logs_and_stands_down_without_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = loader(*make_data(n=16), batch_size=4)
    fit(
        TinySAM(make_net(), optimizer=sgd(0.1)),
        data,
        callbacks=[LearningRateMonitor()],
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        max_steps=3,
    )
    lrs = [float(r["lr-SGD"]) for r in logged_rows(tmp_path) if r.get("lr-SGD")]
    assert len(lrs) >= 3 and lrs == [pytest.approx(0.1)] * len(lrs)
    with caplog.at_level(logging.INFO):
        fit(
            TinySAM(make_net(), optimizer=sgd()),
            data,
            callbacks=[LearningRateMonitor()],
            logger=False,
            max_steps=2,
        )
    assert any("no logger" in r.getMessage() for r in caplog.records)
