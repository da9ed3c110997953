"""SAMModule under 16-mixed (GradScaler skip and recover) and bf16-mixed, against hand loops under the
same autocast.

The reference (``hand_amp_sam``) is SAM / Functional-SAM / preconditioned SAM in plain torch, each
forward in its own CPU autocast region, with torch's ``GradScaler`` idiom for fp16. Comparing with
it, instead of with fp32 SAM at a loose tolerance, lets the tests tell ρ = 0 and the other
perturbation apart: each test first shows that those alternatives differ from the reference by
several times its tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from tiny.sam import (
    TinySAM,
    adam,
    assert_params_close,
    batches,
    fit,
    hand_epsilon,
    loader,
    make_data,
    make_net,
    max_diff,
    sgd,
)

VARIANTS = [("sam", None), ("functional", None), ("sam", "adam"), ("functional", "adam")]
F32 = torch.float32
OTHER = {"sam": "functional", "functional": "sam"}


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


def hand_amp_sam(
    net, optimizer, steps, rho, dtype, scaler=None, perturbation="sam", precondition=None
) -> list[float]:
    """Plain-torch SAM with one CPU autocast region per forward; returns the scale after each step.

    With ``scaler`` (fp16) the losses are scaled, ε = ρ g/‖g‖ is taken from the scaled g (it does
    not depend on the scale; ε = 0 when g is not finite) and ``scaler.step`` unscales and skips.
    Functional-SAM seeds the perturbed forward's backward with the clean (scaled) ∂L/∂f.
    """
    params = list(net.parameters())
    opt = optimizer(params)
    scale = scaler.scale if scaler is not None else (lambda loss: loss)
    scales = []
    for x, y in steps:
        with torch.autocast("cpu", dtype=dtype):
            out = net(x)
            loss = F.mse_loss(out, y)
        dl_df, *grads = torch.autograd.grad(scale(loss), [out, *params])
        grads = [g.float() for g in grads]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        finite = bool(torch.isfinite(norm)) and float(norm) > 0
        eps = (
            hand_epsilon(params, grads, rho, False, opt, precondition) if finite else [0 * p for p in params]
        )
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        with torch.autocast("cpu", dtype=dtype):
            out = net(x)
            loss = F.mse_loss(out, y)
        if perturbation == "functional":
            grads = torch.autograd.grad(out, params, grad_outputs=dl_df)
        else:
            grads = torch.autograd.grad(scale(loss), params)
        with torch.no_grad():
            for p, w, g in zip(params, saved, grads, strict=True):
                p.copy_(w)
                p.grad = g
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return scales


def test_fp16_skips_the_overflowing_step_and_follows_gradscaler_exactly():
    x, y = make_data(48, dtype=F32, target=1.0)  # loss × 65536 overflows fp16; × 32768 does not
    net, ref = make_net(dtype=F32), make_net(dtype=F32)
    start = [p.detach().clone() for p in net.parameters()]
    recorder = StepRecorder()
    module = TinySAM(net, optimizer=sgd(0.05), rho=0.1)
    fit(module, loader(x, y, 8), plugins=[fp16(growth_interval=2)], callbacks=[recorder])
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    hand_scales = hand_amp_sam(ref, sgd(0.05), batches(x, y, 8), 0.1, torch.float16, scaler)

    assert_params_close(recorder.params[0], start, atol=0)  # step 1 skipped: weights untouched
    assert recorder.scales[0] == 32768.0
    assert recorder.scales == hand_scales
    assert 65536.0 in hand_scales  # the scale grew back: the later steps proceeded
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


FP16_TOL = 1e-4


@pytest.mark.parametrize(("perturbation", "precondition"), VARIANTS)
def test_fp16_steps_use_unscaled_gradients(perturbation, precondition):
    """16-mixed equals the hand GradScaler loop (same fp16 autocast) to 1e-4 (measured: 0.0); ρ = 0
    and the other perturbation differ from it by more than 1e-3 (measured: 6e-3 to 7e-2), and a
    loss-scaled gradient reaching the optimizer by far more.

    A step is skipped exactly when the scale halves, and then no weight moves.
    """
    x, y = make_data(32, dtype=F32, target=1.0)
    optimizer = adam(0.02) if precondition else sgd(0.05)

    def hand(rho=0.1, kind=perturbation):
        ref = make_net(dtype=F32)
        scales = hand_amp_sam(
            ref,
            optimizer,
            batches(x, y, 8),
            rho,
            torch.float16,
            torch.amp.GradScaler("cpu"),
            kind,
            precondition,
        )
        return list(ref.parameters()), scales

    expected, hand_scales = hand()
    assert max_diff(expected, hand(rho=0.0)[0]) > 10 * FP16_TOL
    assert max_diff(expected, hand(kind=OTHER[perturbation])[0]) > 10 * FP16_TOL

    net = make_net(dtype=F32)
    before = [p.detach().clone() for p in net.parameters()]
    recorder = StepRecorder()
    module = TinySAM(net, optimizer=optimizer, rho=0.1, perturbation=perturbation, precondition=precondition)
    fit(module, loader(x, y, 8), plugins=[fp16()], callbacks=[recorder])
    assert recorder.scales == hand_scales
    scales = [65536.0, *recorder.scales]
    skipped = [i for i in range(4) if scales[i + 1] < scales[i]]
    assert skipped[0] == 0 and len(skipped) < 4
    for i, params in enumerate(recorder.params):
        if i in skipped:
            assert_params_close(params, before, atol=0)
        before = params
    assert_params_close(list(net.parameters()), expected, atol=FP16_TOL)
    assert max_diff(list(net.parameters()), recorder.params[0]) > 1e-3  # the kept steps moved the weights


BF16_TOL = 1e-4


@pytest.mark.parametrize(("perturbation", "precondition"), VARIANTS)
def test_bf16_mixed_follows_the_hand_loop_under_the_same_autocast(perturbation, precondition):
    """bf16-mixed equals the hand loop under bf16 autocast to 1e-4 (measured: 0.0), while ρ = 0 and
    the other perturbation differ from that loop by more than 1e-3 (measured: 6e-3 to 6e-2)."""
    x, y = make_data(32, dtype=F32)
    optimizer = adam(0.02) if precondition else sgd(0.05)

    def hand(rho=0.1, kind=perturbation):
        ref = make_net(dtype=F32)
        hand_amp_sam(ref, optimizer, batches(x, y, 8), rho, torch.bfloat16, None, kind, precondition)
        return list(ref.parameters())

    expected = hand()
    assert max_diff(expected, hand(rho=0.0)) > 10 * BF16_TOL
    assert max_diff(expected, hand(kind=OTHER[perturbation])) > 10 * BF16_TOL

    net = make_net(dtype=F32)
    module = TinySAM(net, optimizer=optimizer, rho=0.1, perturbation=perturbation, precondition=precondition)
    run = fit(module, loader(x, y, 8), precision="bf16-mixed")
    assert run.global_step == 4
    assert_params_close(list(net.parameters()), expected, atol=BF16_TOL)
