"""``WarmupLinearDecay``: linear warm-up to the base LR, then linear decay to 0, at known steps."""

from __future__ import annotations

import pytest
import torch

from lit_bar.schedules import WarmupLinearDecay

BASE_LR = 0.1


def make_optimizer() -> torch.optim.SGD:
    """SGD over one parameter with lr = ``BASE_LR``."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)


def lrs_over(scheduler: WarmupLinearDecay, steps: int) -> list[float]:
    """The LR the optimizer uses at steps 0 … ``steps − 1``, stepping the optimizer then the scheduler.

    Args:
        scheduler: The schedule under test.
        steps: How many optimizer steps to record.

    Returns:
        One LR per step.
    """
    optimizer = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def hand_schedule(step: int, warmup: int, total: int) -> float:
    """η_t = η·t/W during warm-up, then η·max(0, (T − t)/(T − W))."""
    if step < warmup:
        return BASE_LR * step / warmup
    return BASE_LR * max(0.0, (total - step) / (total - warmup))


@pytest.mark.parametrize(
    ("kwargs", "warmup"),
    [
        ({"warmup_steps": 4}, 4),
        ({"warmup_ratio": 0.2}, 2),
        ({"warmup_ratio": 0.5, "warmup_steps": 3}, 3),  # warmup_steps overrides the ratio
        ({}, 0),
    ],
    ids=["warmup_steps", "warmup_ratio", "steps_override_ratio", "no_warmup"],
)
def test_lr_at_every_step_matches_the_formula(kwargs: dict, warmup: int) -> None:
    total = 10
    scheduler = WarmupLinearDecay(make_optimizer(), total_steps=total, **kwargs)
    got = lrs_over(scheduler, total + 3)  # past T the LR stays at 0
    expected = [hand_schedule(t, warmup, total) for t in range(total + 3)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_spot_values_with_warmup() -> None:
    lrs = lrs_over(WarmupLinearDecay(make_optimizer(), warmup_steps=4, total_steps=10), 11)
    assert lrs[0] == 0.0
    assert lrs[2] == pytest.approx(0.05)
    assert lrs[4] == pytest.approx(0.1)  # the peak, at the end of warm-up
    assert lrs[7] == pytest.approx(0.05)
    assert lrs[10] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "held"),
    [
        ({}, BASE_LR),
        ({"warmup_ratio": 0.1}, 0.0),
        ({"warmup_steps": 5}, 0.0),
        ({"warmup_steps": 0, "warmup_ratio": 0.1}, BASE_LR),  # explicit 0 steps: no warm-up
    ],
    ids=["no_warmup", "warmup_ratio", "warmup_steps", "zero_steps_override_ratio"],
)
def test_without_total_steps_the_start_value_is_held(kwargs: dict, held: float) -> None:
    scheduler = WarmupLinearDecay(make_optimizer(), **kwargs)
    assert lrs_over(scheduler, 5) == [held] * 5


def test_total_steps_filled_in_later_takes_effect_from_the_next_step() -> None:
    scheduler = WarmupLinearDecay(make_optimizer(), warmup_steps=2)
    lrs_over(scheduler, 1)  # step 0 ran while T was unknown
    scheduler.total_steps = 6
    scheduler.optimizer.step()
    scheduler.step()  # now at step 2
    expected = [hand_schedule(t, 2, 6) for t in range(2, 8)]
    assert lrs_over(scheduler, 6) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_ratio": 1.0}, "warmup_ratio must be in"),
        ({"warmup_ratio": -0.1}, "warmup_ratio must be in"),
        ({"warmup_ratio": float("nan")}, "warmup_ratio must be in"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"total_steps": 0}, "total_steps must be > 0"),
        ({"warmup_steps": 11, "total_steps": 10}, "must not exceed total_steps"),
    ],
    ids=["ratio_one", "ratio_negative", "ratio_nan", "steps_negative", "total_zero", "warmup_past_total"],
)
def test_bad_values_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WarmupLinearDecay(make_optimizer(), **kwargs)
