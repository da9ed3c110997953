"""Run-length LR schedules: transformers' own, by name, with warm-up as a fraction or in steps.

The reference is ``transformers.get_scheduler`` built on a twin optimizer with the run's length
known from the start; ``TransformersSchedule`` is built without it and completed later with
``set_total_steps`` (as ``SAMModule`` does), and must give the same LR at every step. Linear and
cosine are also checked against the few-line formulas.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from transformers import get_scheduler

from lit_bar.lightning.schedules import STEP_SCHEDULES, TransformersSchedule, WarmupLinearDecay

BASE_LR = 0.1
TOTAL = 25
EXTRA = {  # arguments some schedules require
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 5},
    "polynomial": {"power": 2.0, "lr_end": 1e-3},
    "cosine_with_restarts": {"num_cycles": 2},
}


def make_optimizer() -> torch.optim.SGD:
    """SGD over two groups (lr = ``BASE_LR`` and ``3 BASE_LR``): every group follows the schedule."""
    groups = [
        {"params": [torch.zeros(1, requires_grad=True)]},
        {"params": [torch.zeros(1)], "lr": 3 * BASE_LR},
    ]
    return torch.optim.SGD(groups, lr=BASE_LR)


def lrs_over(scheduler, steps: int) -> list[list[float]]:
    """Every group's LR at steps 0 … ``steps − 1`` (optimizer step, then scheduler step)."""
    optimizer = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("warmup", [0.1, 4], ids=["fraction", "steps"])
@pytest.mark.parametrize("name", STEP_SCHEDULES)
def test_every_name_equals_transformers_built_with_the_known_length(name: str, warmup: float) -> None:
    extra = EXTRA.get(name, {})
    ours = TransformersSchedule(make_optimizer(), name=name, warmup=warmup, scheduler_specific_kwargs=extra)
    ours.set_total_steps(TOTAL)
    warmup_steps = 4 if warmup == 4 else math.ceil(0.1 * TOTAL)  # 2.5 → 3, as TrainingArguments rounds
    reference = get_scheduler(
        name, make_optimizer(), num_warmup_steps=warmup_steps, num_training_steps=TOTAL,
        scheduler_specific_kwargs=extra,
    )  # fmt: skip
    assert lrs_over(ours, TOTAL + 3) == lrs_over(reference, TOTAL + 3)


def test_schedules_differ_from_each_other() -> None:
    """The comparison above can fail: each name's LR sequence is distinct from every other's."""
    seen = {}
    for name in STEP_SCHEDULES:
        scheduler = TransformersSchedule(
            make_optimizer(),
            name=name,
            warmup=4,
            total_steps=TOTAL,
            scheduler_specific_kwargs=EXTRA.get(name),
        )
        seen[name] = tuple(lr for step in lrs_over(scheduler, TOTAL) for lr in step)
    assert len(set(seen.values())) == len(STEP_SCHEDULES)


def hand_linear(step: int, warmup: int, total: int) -> float:
    """η_t = η·t/W during warm-up, then η·max(0, (T − t)/(T − W))."""
    if step < warmup:
        return BASE_LR * step / warmup
    return BASE_LR * max(0.0, (total - step) / (total - warmup))


def hand_cosine(step: int, warmup: int, total: int) -> float:
    """η_t = η·t/W during warm-up, then η·½(1 + cos(π (t − W)/(T − W)))."""
    if step < warmup:
        return BASE_LR * step / warmup
    return BASE_LR * max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))


@pytest.mark.parametrize(("name", "formula"), [("linear", hand_linear), ("cosine", hand_cosine)])
def test_linear_and_cosine_match_the_formula_with_the_warmup_rounded_up(name, formula) -> None:
    scheduler = TransformersSchedule(make_optimizer(), name=name, warmup=0.1)
    scheduler.set_total_steps(TOTAL)  # 0.1 × 25 = 2.5 warm-up steps → 3
    got = [lrs[0] for lrs in lrs_over(scheduler, TOTAL + 2)]
    assert got == pytest.approx([formula(t, 3, TOTAL) for t in range(TOTAL + 2)], abs=1e-12)
    floor = [formula(t, 2, TOTAL) for t in range(TOTAL + 2)]  # rounding down: a different schedule
    assert max(abs(a - b) for a, b in zip(got, floor, strict=True)) > 0.01


@pytest.mark.parametrize(
    ("kwargs", "warmup"),
    [
        ({"warmup_steps": 4}, 4),
        ({"warmup_ratio": 0.2}, 2),
        ({"warmup_ratio": 0.15}, 2),  # 1.5 rounded up, as transformers does
        ({"warmup_ratio": 0.5, "warmup_steps": 3}, 3),  # warmup_steps overrides the ratio
        ({}, 0),
    ],
    ids=["warmup_steps", "warmup_ratio", "ratio_rounded_up", "steps_override_ratio", "no_warmup"],
)
def test_warmup_linear_decay_is_the_linear_schedule(kwargs: dict, warmup: int) -> None:
    total = 10
    scheduler = WarmupLinearDecay(make_optimizer(), total_steps=total, **kwargs)
    got = [lrs[0] for lrs in lrs_over(scheduler, total + 3)]  # past T the LR stays at 0
    assert got == pytest.approx([hand_linear(t, warmup, total) for t in range(total + 3)], abs=1e-12)


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
    assert [lrs[0] for lrs in lrs_over(scheduler, 5)] == [held] * 5


def test_total_steps_filled_in_later_takes_effect_from_the_next_step() -> None:
    scheduler = WarmupLinearDecay(make_optimizer(), warmup_steps=2)
    lrs_over(scheduler, 1)  # step 0 ran while T was unknown
    scheduler.total_steps = 6
    scheduler.optimizer.step()
    scheduler.step()  # now at step 2
    expected = [hand_linear(t, 2, 6) for t in range(2, 8)]
    assert [lrs[0] for lrs in lrs_over(scheduler, 6)] == pytest.approx(expected, abs=1e-12)


def test_state_dict_loads_with_weights_only_and_resumes_the_schedule() -> None:
    straight = TransformersSchedule(make_optimizer(), name="cosine", warmup=0.1, total_steps=TOTAL)
    lrs_over(straight, 7)
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = TransformersSchedule(make_optimizer(), name="cosine", warmup=0.1)
    resumed.load_state_dict(state)
    for group, lr in zip(resumed.optimizer.param_groups, straight.get_last_lr(), strict=True):
        group["lr"] = lr  # Lightning restores the optimizer's own state, lr included
    assert lrs_over(resumed, 10) == lrs_over(straight, 10)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda o: TransformersSchedule(o, name="cosinus"), "unknown schedule name 'cosinus'"),
        (lambda o: TransformersSchedule(o, name="reduce_lr_on_plateau"), "ReduceLROnPlateau"),
        (lambda o: TransformersSchedule(o, warmup=2.5), "warmup must be a fraction"),
        (lambda o: TransformersSchedule(o, warmup=-0.1), "warmup must be a fraction"),
        (lambda o: TransformersSchedule(o, total_steps=0), "total_steps must be a positive int"),
        (lambda o: TransformersSchedule(o, warmup=11, total_steps=10), "must not exceed total_steps"),
        (
            lambda o: TransformersSchedule(o, "cosine", 0.0, 10, scheduler_specific_kwargs={"power": 2}),
            "bad scheduler_specific_kwargs",
        ),
        (lambda o: WarmupLinearDecay(o, warmup_ratio=1.0), "warmup_ratio must be in"),
        (lambda o: WarmupLinearDecay(o, warmup_ratio=float("nan")), "warmup_ratio must be in"),
        (lambda o: WarmupLinearDecay(o, warmup_steps=-1), "warmup_steps must be an int >= 0"),
    ],
    ids=[
        "unknown_name", "plateau", "fractional_steps", "negative", "total_zero", "warmup_past_total",
        "bad_kwargs", "ratio_one", "ratio_nan", "steps_negative",
    ],
)  # fmt: skip
def test_bad_values_raise(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(make_optimizer())
