"""BalancednessCallback against a hand-written nBAR step (G) and resuming a SAM + nBAR run (H)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from peft import LoraConfig, inject_adapter_in_model
from tiny.sam import (
    IN,
    OUT,
    TinyPlain,
    TinySAM,
    assert_params_close,
    batches,
    fit,
    hand_sam,
    loader,
    make_data,
    sgd,
)
from torch import nn

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.lightning.schedules import WarmupLinearDecay

LR, MU = 0.1, 0.5


class LoraNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(IN, 6)
        self.out = nn.Linear(6, OUT)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def make_lora_net(dtype=torch.float64) -> nn.Module:
    """Two peft LoRA layers (r = 2, random A and B), only the adapters trainable."""
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["hidden", "out"], init_lora_weights=False)
    net = inject_adapter_in_model(config, LoraNet()).to(dtype)
    for name, param in net.named_parameters():
        param.requires_grad_("lora_" in name)
    return net


def lora_factors(net) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (layer.lora_A["default"].weight, layer.lora_B["default"].weight) for layer in (net.hidden, net.out)
    ]


class HandNBar:
    """nBAR by hand (docs/algorithms.md §3): s = +1 if ‖g_x‖ < ‖g_y‖; x ← x − ημs x, y ← y + ημs y."""

    def __init__(self, mu: float = MU) -> None:
        self.mu = mu
        self.calls = 0
        self.abs_balancedness: list[float] = []

    def __call__(self, net, optimizer) -> None:
        lr = optimizer.param_groups[0]["lr"]
        values = []
        with torch.no_grad():
            for x, y in lora_factors(net):
                s = 1.0 if x.grad.norm() < y.grad.norm() else -1.0
                x.mul_(1 - lr * self.mu * s)
                y.mul_(1 + lr * self.mu * s)
                values.append(abs(0.5 * (x.norm() ** 2 - y.norm() ** 2)))
        self.calls += 1
        self.abs_balancedness.append(float(sum(values) / len(values)))


class CountingBalancedness(BalancednessCallback):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1
        super().on_before_optimizer_step(trainer, pl_module, optimizer)


def _trainable(net):
    return [p for p in net.parameters() if p.requires_grad]


# ------------------------------------------------------------------ G: once per optimizer step
def test_nbar_once_per_step_with_automatic_optimization_and_accumulation():
    x, y = make_data(16)
    net, ref = make_lora_net(), make_lora_net()
    callback, hand = CountingBalancedness(mu=MU), HandNBar()
    run = fit(
        TinyPlain(net, sgd(LR)),
        loader(x, y, 4),
        callbacks=[callback],
        accumulate_grad_batches=2,
        log_every_n_steps=1,
    )
    hand_sam(ref, sgd(LR), batches(x, y, 8), 0.0, before_step=hand)
    assert callback.calls == hand.calls == run.global_step == 2
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-6)
    assert float(run.callback_metrics["bar/abs_balancedness"]) == pytest.approx(
        hand.abs_balancedness[-1], rel=1e-5
    )


def test_nbar_once_per_step_with_sam_module_and_its_accumulation():
    x, y = make_data(16)
    net, ref = make_lora_net(), make_lora_net()
    callback, hand = CountingBalancedness(mu=MU), HandNBar()
    module = TinySAM(net, optimizer=sgd(LR), rho=0.1, accumulate_grad_batches=2)
    run = fit(module, loader(x, y, 4), callbacks=[callback], log_every_n_steps=1)
    hand_sam(ref, sgd(LR), batches(x, y, 8), 0.1, before_step=hand)
    no_bar = make_lora_net()
    hand_sam(no_bar, sgd(LR), batches(x, y, 8), 0.1)
    assert callback.calls == hand.calls == run.global_step == 2
    assert (
        max(float((a - b).abs().max()) for a, b in zip(_trainable(ref), _trainable(no_bar), strict=True))
        > 1e-3
    )
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-6)
    assert float(run.callback_metrics["bar/abs_balancedness"]) == pytest.approx(
        hand.abs_balancedness[-1], rel=1e-5
    )


@pytest.mark.parametrize("sam", [False, True], ids=["automatic", "sam"])
def test_nbar_once_per_step_under_bf16_mixed(sam):
    x, y = make_data(16, dtype=torch.float32)
    net, ref = make_lora_net(torch.float32), make_lora_net(torch.float32)
    callback, hand = CountingBalancedness(mu=MU), HandNBar()
    module = TinySAM(net, optimizer=sgd(LR), rho=0.1) if sam else TinyPlain(net, sgd(LR))
    run = fit(module, loader(x, y, 4), callbacks=[callback], precision="bf16-mixed")
    hand_sam(ref, sgd(LR), batches(x, y, 4), 0.1 if sam else 0.0, before_step=hand, autocast=torch.bfloat16)
    assert callback.calls == hand.calls == run.global_step == 4
    assert_params_close(_trainable(net), _trainable(ref), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sam", [False, True], ids=["automatic", "sam"])
def test_nbar_skips_the_step_the_fp16_scaler_skips(sam):
    x, y = make_data(16, dtype=torch.float32, target=3.0)  # the first step overflows at scale 65536
    net = make_lora_net(torch.float32)
    start = [p.detach().clone() for p in _trainable(net)]

    class FirstStep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self.params = [p.detach().clone() for p in _trainable(pl_module.net)]
                self.scale = trainer.precision_plugin.scaler.get_scale()

    first = FirstStep()
    module = TinySAM(net, optimizer=sgd(LR), rho=0.1) if sam else TinyPlain(net, sgd(LR))
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    fit(module, loader(x, y, 4), callbacks=[BalancednessCallback(mu=MU), first], plugins=[plugin])
    assert first.scale == 32768.0
    assert_params_close(first.params, start, atol=0)  # neither BAR nor the optimizer moved anything
    assert max(float((a - b).abs().max()) for a, b in zip(_trainable(net), start, strict=True)) > 1e-3


# ------------------------------------------------------------------ H: resume
class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _resumable_run(tmp_path, callbacks=(), ckpt_path=None):
    x, y = make_data(12)  # 3 optimizer steps per epoch
    net = make_lora_net()
    schedule = partial(WarmupLinearDecay, warmup_steps=2)
    module = TinySAM(net, optimizer=partial(torch.optim.AdamW, lr=0.05), lr_scheduler=schedule, rho=0.1)
    bar = BalancednessCallback(mu=MU, schedule="linear")
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    run = fit(
        module,
        loader(x, y, 4),
        callbacks=[bar, checkpoint, *callbacks],
        max_epochs=2,
        enable_checkpointing=True,
        ckpt_path=ckpt_path,
    )
    return net, run


def test_resume_from_checkpoint_equals_straight_run(tmp_path):
    straight, run = _resumable_run(tmp_path / "straight")
    assert run.global_step == 6
    _resumable_run(tmp_path / "part", callbacks=[StopAfterFirstEpoch()])
    (checkpoint,) = (tmp_path / "part").glob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)  # plain tensors and primitives only: safe to load
    (bar_state,) = [v for k, v in saved["callbacks"].items() if "Balancedness" in k]
    assert bar_state["total_steps"] == 6
    resumed, run = _resumable_run(tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert run.global_step == 6
    assert_params_close(_trainable(resumed), _trainable(straight), atol=1e-6)


@pytest.mark.parametrize("every, logged", [(2, True), (3, False), (0, False)])
def test_balancedness_is_logged_only_on_logging_steps(every, logged):
    """BAR runs every step, but its metrics are logged only every ``log_every_n_steps`` (2 steps here);
    ``log_every_n_steps=0`` (Lightning logs nothing) logs nothing and still applies BAR."""
    x, y = make_data(16)
    callback = CountingBalancedness(mu=MU)
    run = fit(
        TinyPlain(make_lora_net(), sgd(LR)), loader(x, y, 8), callbacks=[callback], log_every_n_steps=every
    )
    assert callback.calls == run.global_step == 2
    assert ("bar/abs_balancedness" in run.callback_metrics) is logged
