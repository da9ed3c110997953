"""One BAR rule, three front ends: a plain loop (``BAR``), Lightning (``BalancednessCallback``) and the
transformers ``Trainer`` (``BalancednessTrainerCallback``), each against a hand-written loop (§3).

The hand loop (``hand_bar_run``) is a few lines of plain torch written from docs/algorithms.md §3, sharing
no code with lit_bar: per pair, s from the norms, then x ← x(1 − η_x μ s), y ← y(1 + η_y μ s) with each
factor's own group learning rate, then SGD.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_balancedness_callback import lora_factors, make_lora_net
from tiny.sam import Rows, TinyPlain, assert_params_close, batches, fit, loader, make_data, max_diff
from torch import nn

from lit_bar.algorithms.bar import BAR
from lit_bar.algorithms.pairs import balancedness
from lit_bar.callbacks.balancedness import BalancednessCallback

LR, MU = 0.1, 0.5


def _trainable(net: nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.requires_grad]


def lora_plus(net: nn.Module, lr: float = LR, ratio: float = 4.0) -> torch.optim.Optimizer:
    """SGD with every lora_B in a group of its own at ``ratio × lr`` (LoRA+)."""
    a = [p for n, p in net.named_parameters() if p.requires_grad and "lora_B" not in n]
    b = [p for n, p in net.named_parameters() if p.requires_grad and "lora_B" in n]
    return torch.optim.SGD([{"params": a, "lr": lr}, {"params": b, "lr": ratio * lr}])


def hand_bar_run(
    net, optimizer, steps, mode="nbar", mu=MU, schedule=None, y_lr_of_x=False, autocast=None, micro=1
) -> list[float]:
    """SGD + BAR by hand; returns mean |B| after each step. ``y_lr_of_x``: the pre-fix rule (x's η for y);
    ``autocast``: a dtype for one CPU autocast region per forward; ``micro``: micro-batches per step."""
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    history = []
    for t, (x, y) in enumerate(steps):
        for cx, cy in zip(x.chunk(micro), y.chunk(micro), strict=True):
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = F.mse_loss(net(cx), cy) / micro
            loss.backward()
        mu_t = mu * (schedule(t) if schedule else 1.0)
        values = []
        with torch.no_grad():
            for a, b in lora_factors(net):
                if mode == "nbar":
                    s = 1.0 if a.grad.norm() < b.grad.norm() else -1.0
                else:
                    s = 1.0 if a.norm() > b.norm() else -1.0
                eta_a = lr_of[id(a)]
                eta_b = eta_a if y_lr_of_x else lr_of[id(b)]
                a.mul_(1 - eta_a * mu_t * s)
                b.mul_(1 + eta_b * mu_t * s)
                values.append(abs(0.5 * (a.norm() ** 2 - b.norm() ** 2)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(float(sum(values) / len(values)))
    return history


# ------------------------------------------------------------------ issue 8 §2.4: each factor's own lr
def test_balancedness_callback_scales_each_factor_with_its_own_group_lr():
    """LoRA+ (B's lr = 4 × A's): y must move with η_y; the pre-fix rule (η_x for both) differs."""
    x, y = make_data(16)
    net, ref, old_rule = make_lora_net(), make_lora_net(), make_lora_net()
    module = TinyPlain(net, lambda params: lora_plus(net))
    fit(module, loader(x, y, 8), callbacks=[BalancednessCallback(mu=MU)])
    hand_bar_run(ref, lora_plus(ref), batches(x, y, 8))
    hand_bar_run(old_rule, lora_plus(old_rule), batches(x, y, 8), y_lr_of_x=True)
    assert max_diff(_trainable(ref), _trainable(old_rule)) > 1e-3  # the two rules are told apart
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-9)


# ------------------------------------------------------------------ issue 9 §2: BAR in a plain loop
@pytest.mark.parametrize(("mode", "schedule"), [("nbar", "constant"), ("obar", "cosine"), ("nbar", "linear")])
def test_bar_in_a_plain_loop_equals_the_hand_loop(mode, schedule):
    x, y = make_data(24)
    steps = batches(x, y, 8)
    total = len(steps)
    h = {
        "constant": None,
        "linear": lambda t: 1 - t / total,
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t / total)),
    }[schedule]
    net, ref, plain = make_lora_net(), make_lora_net(), make_lora_net()
    optimizer = lora_plus(net)
    bar = BAR(net, mode=mode, mu=MU, schedule=schedule, total_steps=total)  # a module: its LoRA pairs
    for bx, by in steps:  # the two lines BAR adds to a plain loop: construct, then bar.step(optimizer)
        F.mse_loss(net(bx), by).backward()
        bar.step(optimizer)
        optimizer.step()
        optimizer.zero_grad()
    hand_bar_run(ref, lora_plus(ref), steps, mode=mode, schedule=h)
    hand_bar_run(plain, lora_plus(plain), steps, mode=mode, mu=0.0)
    assert max_diff(_trainable(ref), _trainable(plain)) > 1e-3  # BAR changes the result
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-9)
    assert bar.steps_taken == total and float(bar.branch_counts.sum()) == 2 * total  # 2 pairs per step


def test_bar_with_a_grad_scaler_skips_the_step_the_scaler_skips():
    """fp16 autocast on CPU: scale 65536 overflows the first step; BAR must leave it alone too."""
    x, y = make_data(16, dtype=torch.float32, target=3.0)
    net = make_lora_net(torch.float32)
    optimizer = torch.optim.SGD(_trainable(net), lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    bar = BAR(net, mu=MU)
    start = [p.detach().clone() for p in _trainable(net)]
    kept = []
    for bx, by in batches(x, y, 4):
        before = [p.detach().clone() for p in _trainable(net)]
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(net(bx), by)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        bar.step(optimizer, scaler)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        kept.append(max_diff(_trainable(net), before) > 0)
    assert kept[0] is False and any(kept)  # the overflowing step moved nothing, neither BAR nor SGD
    assert scaler.get_scale() < 65536.0 and max_diff(_trainable(net), start) > 1e-3
    assert float(bar.branch_counts.sum()) == 2 * sum(kept)  # BAR counted only the kept steps (2 pairs)


def test_bar_rejects_bad_arguments():
    net = make_lora_net()
    with pytest.raises(ValueError, match="needs total_steps"):
        BAR(net, schedule="linear").step(torch.optim.SGD(_trainable(net), lr=LR))
    with pytest.raises(ValueError, match="mu must be a finite number"):
        BAR(net, mu=-1.0)
    with pytest.raises(ValueError, match="not optimised by SGD"):
        BAR(net).step(torch.optim.SGD(_trainable(net)[:1], lr=LR))
    with pytest.raises(ValueError, match="at least one FactorPair"):
        BAR(nn.Linear(2, 2))


# ------------------------------------------------------------------ issue 9 §1: the transformers Trainer
class LoraRegressor(nn.Module):
    """The tiny LoRA net behind the Trainer's interface: ``forward(x, labels) -> {"loss": ...}``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(x), labels)}


def _hf_train(net: nn.Module, x, y, callbacks, tmp_path, accumulation=2, batch=4, **extra):
    from transformers import Trainer, TrainingArguments

    from lit_bar.hf import run_first

    class OrderedTrainer(Trainer):  # the hand loop's order, not a random one
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    model = LoraRegressor(net)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        num_train_epochs=1, max_grad_norm=0.0, report_to="none", use_cpu=True,
        save_strategy="no", lr_scheduler_type="constant", disable_tqdm=True, seed=0,
        **{"logging_steps": 1, **extra},
    )  # fmt: skip
    optimizer = lora_plus(net)
    trainer = OrderedTrainer(
        model=model, args=args, train_dataset=Rows(x, y), callbacks=callbacks, optimizers=(optimizer, None)
    )
    for callback in callbacks:
        if getattr(callback, "runs_first", False):  # the README recipe: BAR ahead of the reporters
            run_first(trainer, callback)
    trainer.train()
    return trainer


def test_trainer_callback_with_accumulation_equals_the_hand_loop_and_lightning(tmp_path):
    from transformers import TrainerCallback

    from lit_bar.hf import BalancednessTrainerCallback

    class Recorder(TrainerCallback):  # stands for a reporting integration, which runs before user callbacks
        def __init__(self) -> None:
            self.seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    x, y = make_data(16)
    net, ref, light, plain = make_lora_net(), make_lora_net(), make_lora_net(), make_lora_net()
    recorder = Recorder()
    trainer = _hf_train(net, x, y, [recorder, BalancednessTrainerCallback(mu=MU)], tmp_path)
    history = hand_bar_run(ref, lora_plus(ref), batches(x, y, 8))
    hand_bar_run(plain, lora_plus(plain), batches(x, y, 8), mu=0.0)
    module = TinyPlain(light, lambda params: lora_plus(light))
    fit(module, loader(x, y, 4), callbacks=[BalancednessCallback(mu=MU)], accumulate_grad_batches=2)

    assert trainer.state.global_step == 2
    assert max_diff(_trainable(ref), _trainable(plain)) > 1e-3  # BAR is visible at this tolerance
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-9)
    assert_params_close(_trainable(net), _trainable(light), atol=1e-9)
    logged = [e for e in trainer.state.log_history if "bar/abs_balancedness" in e]
    assert [e["step"] for e in logged] == [1, 2]
    assert [e["bar/abs_balancedness"] for e in logged] == pytest.approx(history, rel=1e-9)
    assert logged[-1]["bar/pairs_plus"] + logged[-1]["bar/pairs_minus"] == 2
    assert [e["bar/abs_balancedness"] for e in recorder.seen if "loss" in e] == pytest.approx(
        history, rel=1e-9
    )


def test_trainer_callback_takes_balancedness_only_on_logged_steps(tmp_path, monkeypatch):
    """4 optimizer steps, ``logging_steps=2``: |B| is computed for steps 2 and 4 only (BAR runs on all)."""
    import lit_bar.hf.callback as hf_callback
    from lit_bar.hf import BalancednessTrainerCallback

    calls = []

    def counting(pairs):
        calls.append(len(pairs))
        return balancedness(pairs)

    monkeypatch.setattr(hf_callback, "balancedness", counting)
    x, y = make_data(32)
    trainer = _hf_train(
        make_lora_net(), x, y, [BalancednessTrainerCallback(mu=MU)], tmp_path, logging_steps=2
    )
    assert trainer.state.global_step == 4
    assert len(calls) == 2
    logged = [e["step"] for e in trainer.state.log_history if "bar/abs_balancedness" in e]
    assert logged == [2, 4]


def test_trainer_callback_under_bf16_equals_the_hand_loop_under_bf16_autocast(tmp_path):
    """``bf16=True`` (accelerate's autocast; fp16 would be ignored on CPU) against one bf16 autocast
    region per forward by hand; BAR's effect is far larger than the tolerance."""
    from lit_bar.hf import BalancednessTrainerCallback

    x, y = make_data(16, dtype=torch.float32)
    net, ref, plain = (make_lora_net(torch.float32) for _ in range(3))
    _hf_train(net, x, y, [BalancednessTrainerCallback(mu=MU)], tmp_path, bf16=True)
    hand_bar_run(ref, lora_plus(ref), batches(x, y, 8), autocast=torch.bfloat16, micro=2)
    hand_bar_run(plain, lora_plus(plain), batches(x, y, 8), mu=0.0, autocast=torch.bfloat16, micro=2)
    assert max_diff(_trainable(ref), _trainable(plain)) > 1e-3
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-6)


def test_trainer_callback_skips_the_step_the_grad_scaler_skips(tmp_path):
    """A GradScaler whose scale overflows the float32 loss: the Trainer skips the step, and BAR skips it too.

    (accelerate ignores ``fp16=True`` on CPU, so the scaler is set by hand; the fp16 run on a GPU is in
    ``scripts/gpu_check.py``.)"""
    from transformers import Trainer, TrainingArguments

    from lit_bar.hf import BalancednessTrainerCallback

    x, y = make_data(8, dtype=torch.float32, target=3.0)  # loss ≈ 9: times 2**127 overflows float32
    net = make_lora_net(torch.float32)
    start = [p.detach().clone() for p in _trainable(net)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, max_grad_norm=0.0,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = Trainer(
        model=LoraRegressor(net), args=args, train_dataset=Rows(x, y),
        callbacks=[BalancednessTrainerCallback(mu=MU)], optimizers=(lora_plus(net), None),
    )  # fmt: skip
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    trainer.train()
    assert trainer.accelerator.optimizer_step_was_skipped
    assert trainer.accelerator.scaler.get_scale() == 2.0**126
    assert max_diff(_trainable(net), start) == 0.0  # neither SGD nor BAR moved a factor
