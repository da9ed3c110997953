"""SAMModule under 16-mixed (GradScaler skip and recover) and bf16-mixed (point F)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from tiny_sam import (
    TinySAM,
    adam,
    assert_params_close,
    batches,
    fit,
    hand_sam,
    loader,
    make_data,
    make_net,
    max_diff,
    sgd,
)

VARIANTS = [("sam", None), ("functional", None), ("sam", "adam"), ("functional", "adam")]
F32 = torch.float32


class StepRecorder(Callback):
    """Parameters and loss scale after every training batch."""

    def __init__(self) -> None:
        self.params: list[list[torch.Tensor]] = []
        self.scales: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append([p.detach().clone() for p in pl_module.parameters()])
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales.append(scaler.get_scale() if scaler is not None else 1.0)


def fp16(**scaler_kwargs) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", **scaler_kwargs))


def hand_fp16_sam(net, optimizer, steps, rho, scaler):
    """Plain-torch SAM under CPU fp16 autocast with a GradScaler; returns the scale after each step."""
    params = list(net.parameters())
    opt = optimizer(params)
    scales = []
    for x, y in steps:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(net(x), y)
        grads = torch.autograd.grad(scaler.scale(loss), params)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        finite = bool(torch.isfinite(norm)) and float(norm) > 0
        eps = [rho * g.float() / norm if finite else torch.zeros_like(g) for g in grads]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(net(x), y)
        scaler.scale(loss).backward()
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())
    return scales


def test_fp16_skips_the_overflowing_step_and_follows_gradscaler_exactly():
    x, y = make_data(48, dtype=F32, target=1.0)  # loss × 65536 overflows fp16; × 32768 does not
    net, ref = make_net(dtype=F32), make_net(dtype=F32)
    start = [p.detach().clone() for p in net.parameters()]
    recorder = StepRecorder()
    module = TinySAM(net, optimizer=sgd(0.05), rho=0.1)
    fit(module, loader(x, y, 8), plugins=[fp16(growth_interval=2)], callbacks=[recorder])
    hand_scales = hand_fp16_sam(
        ref, sgd(0.05), batches(x, y, 8), 0.1, torch.amp.GradScaler("cpu", growth_interval=2)
    )

    assert_params_close(recorder.params[0], start, atol=0)  # step 1 skipped: weights untouched
    assert recorder.scales[0] == 32768.0
    assert recorder.scales == hand_scales
    assert 65536.0 in hand_scales  # the scale grew back: the later steps proceeded
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


@pytest.mark.parametrize(("perturbation", "precondition"), VARIANTS)
def test_fp16_steps_use_unscaled_gradients(perturbation, precondition):
    """16-mixed SAM ≈ fp32 SAM on the batches whose step the scaler did not skip.

    A step is skipped exactly when the scale halves, and then no weight moves. A loss-scaled
    gradient reaching SGD would be ~10⁴× too large; fp16 rounding is ~1e-3.
    """
    x, y = make_data(32, dtype=F32, target=1.0)
    optimizer = adam(0.02) if precondition else sgd(0.05)
    net, ref = make_net(dtype=F32), make_net(dtype=F32)
    before = [p.detach().clone() for p in net.parameters()]
    recorder = StepRecorder()
    module = TinySAM(net, optimizer=optimizer, rho=0.1, perturbation=perturbation, precondition=precondition)
    fit(module, loader(x, y, 8), plugins=[fp16()], callbacks=[recorder])
    scales = [65536.0, *recorder.scales]
    skipped = [i for i in range(4) if scales[i + 1] < scales[i]]
    assert scales[1:] == [65536.0 / 2 ** (1 + sum(j <= i for j in skipped[1:])) for i in range(4)]
    assert skipped[0] == 0 and len(skipped) < 4
    for i, params in enumerate(recorder.params):
        if i in skipped:
            assert_params_close(params, before, atol=0)
        before = params
    kept = [b for i, b in enumerate(batches(x, y, 8)) if i not in skipped]
    functional = perturbation == "functional"
    hand_sam(ref, optimizer, kept, 0.1, functional=functional, precondition=precondition)
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=3e-3, rtol=1e-2)
    assert max_diff(list(net.parameters()), recorder.params[0]) > 1e-3  # the kept steps moved the weights


@pytest.mark.parametrize(("perturbation", "precondition"), VARIANTS)
def test_bf16_mixed_takes_finite_steps_close_to_fp32(perturbation, precondition):
    x, y = make_data(32, dtype=F32)
    optimizer = adam(0.02) if precondition else sgd(0.05)
    net, ref = make_net(dtype=F32), make_net(dtype=F32)
    module = TinySAM(net, optimizer=optimizer, rho=0.1, perturbation=perturbation, precondition=precondition)
    run = fit(module, loader(x, y, 8), precision="bf16-mixed")
    assert run.global_step == 4
    assert all(torch.isfinite(p).all() for p in net.parameters())
    functional = perturbation == "functional"
    hand_sam(ref, optimizer, batches(x, y, 8), 0.1, functional=functional, precondition=precondition)
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=2e-2, rtol=5e-2)
