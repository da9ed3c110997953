"""One logging clock under Lightning (:func:`lit_bar.lightning.steps.is_logging_step`), over accumulation.

``SAMModule``'s ``train/*``, ``BalancednessCallback``'s and ``BalancednessMonitor``'s ``bar/*`` and the
step progress lines all log on the same *optimizer* steps: every ``log_every_n_steps``-th. Before, with
``accumulate_grad_batches=2`` and ``log_every_n_steps=4``, ``train/*`` logged at optimizer steps
2, 4, 6, 8 (Lightning's private micro-batch counter) and ``bar/*`` at 4, 8.

What reaches the loggers is recorded by a logger that notes the Trainer's optimizer step
(``global_step``) at each write.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from test_balancedness_callback import make_lora_net
from tiny.sam import TinySAM, loader, make_data, sgd, trainer

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.callbacks.monitor import BalancednessMonitor
from lit_bar.callbacks.progress import StepProgressBar

STEPS = 8
EVERY = 4


class StepRecorder(Logger):
    """Records ``(optimizer step, logged names)`` at every write to the loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, set[str]]] = []
        self.run = None

    @property
    def name(self) -> str:
        return "steps"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((self.run.global_step, set(metrics)))

    def steps_of(self, name: str) -> list[int]:
        return [step for step, names in self.rows if name in names]


def _run(accumulation: int, callback, capsys=None) -> StepRecorder:
    x, y = make_data(4 * accumulation * STEPS)
    module = TinySAM(make_lora_net(), optimizer=sgd(), rho=0.05, accumulate_grad_batches=accumulation)
    recorder = StepRecorder()
    callbacks = [callback] + ([StepProgressBar(lines=True)] if capsys is not None else [])
    run = trainer(
        logger=recorder, log_every_n_steps=EVERY, callbacks=callbacks, enable_progress_bar=capsys is not None
    )
    recorder.run = run
    torch.manual_seed(0)
    run.fit(module, loader(x, y, 4))
    assert run.global_step == STEPS
    return recorder


@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_train_and_bar_log_on_the_same_optimizer_steps(accumulation, capsys) -> None:
    recorder = _run(accumulation, BalancednessCallback(mu=0.5), capsys)
    expected = [EVERY, 2 * EVERY]
    assert recorder.steps_of("train/loss") == expected
    assert recorder.steps_of("train/grad_norm") == expected
    assert recorder.steps_of("bar/abs_balancedness") == expected
    printed = [int(s) for s in re.findall(r"lit-bar: step (\d+)\b", capsys.readouterr().out)]
    assert printed == expected  # one progress line per logging optimizer step


def test_the_monitor_logs_on_the_same_optimizer_steps_as_train() -> None:
    recorder = _run(2, BalancednessMonitor())
    assert recorder.steps_of("bar/abs_balancedness") == recorder.steps_of("train/loss") == [EVERY, 2 * EVERY]


@pytest.mark.parametrize(
    ("global_step", "step", "every", "should_stop", "logs"),
    [
        (3, None, None, False, True),  # the step in progress is 4
        (4, None, None, False, False),  # in progress: 5
        (4, 4, None, False, True),  # after step 4
        (5, None, None, True, True),  # stopping: log the last step
        (3, None, 0, False, False),  # N = 0: never
        (3, None, 2, False, True),  # a callback's own cadence
        (4, None, 2, False, False),
    ],
)
def test_the_rule(global_step, step, every, should_stop, logs) -> None:
    from lit_bar.lightning.steps import is_logging_step

    fake = SimpleNamespace(log_every_n_steps=EVERY, global_step=global_step, should_stop=should_stop)
    assert is_logging_step(fake, step, every) is logs
