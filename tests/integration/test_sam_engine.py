"""The SAM step's logged statistics, precision and preconditioner fixes (issue 8 §1, §2.2, §2.6).

The references are few-line plain-torch computations on the same net and rows: the mean ascent
gradient of the optimizer step's whole batch, L(w + ε) − L(w) chunk by chunk, and the clipped
descent gradient (``tiny_sam.hand_sam_gradient``, then torch's clipping rule).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins import MixedPrecision
from tiny.sam import (
    TinySAM,
    adamw,
    assert_params_close,
    batches,
    fit,
    hand_sam,
    hand_sam_gradient,
    loader,
    make_data,
    make_net,
    max_diff,
    sgd,
)
from torch.utils._python_dispatch import TorchDispatchMode

from lit_bar.algorithms.syncs import SyncCounter
from lit_bar.optim.perturbation import adam_preconditioned

RHO, CLIP = 0.3, 0.05


def _norm(tensors) -> torch.Tensor:
    return torch.sqrt(sum((t**2).sum() for t in tensors))


def _mse_at(net, x, y, eps=None) -> torch.Tensor:
    with torch.no_grad():
        if eps is None:
            return F.mse_loss(net(x), y)
        for p, e in zip(net.parameters(), eps, strict=True):
            p.add_(e)
        loss = F.mse_loss(net(x), y)
        for p, e in zip(net.parameters(), eps, strict=True):
            p.sub_(e)
        return loss


def hand_stats(x: torch.Tensor, y: torch.Tensor, m: int | None) -> dict[str, float]:
    """One SAM step on the batch (x, y) from make_net(): the statistics SAMModule must log."""
    net = make_net()
    params = list(net.parameters())
    mean_grad = torch.autograd.grad(F.mse_loss(net(x), y), params)
    size = m or len(x)
    sharpness = 0.0
    for start in range(0, len(x), size):
        cx, cy = x[start : start + size], y[start : start + size]
        g = torch.autograd.grad(F.mse_loss(net(cx), cy), params)
        eps = [RHO * t / _norm(g) for t in g]
        sharpness += len(cx) / len(x) * float(_mse_at(net, cx, cy, eps) - _mse_at(net, cx, cy))
    descent = _norm(hand_sam_gradient(make_net(), x, y, RHO, m=m))
    clipped = descent * min(1.0, CLIP / (float(descent) + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
    return {
        "grad_norm": float(_norm(mean_grad)),
        "sharpness": sharpness,
        "descent_grad_norm": float(clipped),
        "loss": float(F.mse_loss(net(x), y)),
    }


@pytest.mark.parametrize("m", [None, 2], ids=["m_unset", "m2"])
def test_logged_statistics_equal_the_hand_computed_ones(m):
    """grad_norm = ‖mean ascent gradient‖ of all micro-batches (not the last chunk's), sharpness,
    and the post-clip descent gradient norm, on a logging step (accumulation 2 × batch 4)."""
    x, y = make_data(8)
    module = TinySAM(
        make_net(), optimizer=sgd(0.2), rho=RHO, m=m, accumulate_grad_batches=2, gradient_clip_val=CLIP
    )
    run = fit(module, loader(x, y, 4), max_steps=1, log_every_n_steps=1)
    expected = hand_stats(x, y, m)
    got = {k: float(run.callback_metrics[f"train/{k}"]) for k in expected}
    if m is not None:  # the old value, the last chunk's weighted gradient norm, is far off
        net = make_net()
        last = torch.autograd.grad(F.mse_loss(net(x[6:]), y[6:]), list(net.parameters()))
        assert abs(float(_norm(last)) / 4 - expected["grad_norm"]) > 1e-3
    assert expected["descent_grad_norm"] < CLIP + 1e-9 and expected["sharpness"] > 1e-3  # both active
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_grad_norm_covers_the_whole_window_when_only_its_last_batch_logs():
    """m = 2, accumulation 2, log_every_n_steps = 3: batch 6 (the 3rd step's second micro-batch)
    logs, batch 5 did not; the logged norm is still that of the whole step's mean ascent gradient."""
    x, y = make_data(24)
    module = TinySAM(make_net(), optimizer=sgd(0.2), rho=RHO, m=2, accumulate_grad_batches=2)
    run = fit(module, loader(x, y, 4), max_steps=3, log_every_n_steps=3)
    net = make_net()
    hand_sam(net, sgd(0.2), batches(x, y, 8)[:2], RHO, m=2)
    grad = torch.autograd.grad(F.mse_loss(net(x[16:]), y[16:]), list(net.parameters()))
    second_half = torch.autograd.grad(F.mse_loss(net(x[20:]), y[20:]), list(net.parameters()))
    assert abs(float(_norm(second_half)) / 2 - float(_norm(grad))) > 1e-3  # half a window is far off
    assert float(run.callback_metrics["train/grad_norm"]) == pytest.approx(float(_norm(grad)), rel=1e-9)


def test_statistics_are_not_computed_on_other_steps():
    """log_every_n_steps=4: only batches 4 and 8 log (no per-step work or host copy for the others)."""
    x, y = make_data(16)
    module = TinySAM(make_net(), optimizer=sgd(0.2), rho=RHO, m=2)
    seen = []
    module.on_train_batch_end = lambda *args: seen.append(
        "train/grad_norm" in module.trainer.callback_metrics
    )
    fit(module, loader(x, y, 2), max_steps=3, log_every_n_steps=4)
    assert seen == [False, False, False]
    fit(module, loader(x, y, 2), max_steps=8, log_every_n_steps=4)
    assert seen[3:] == [False, False, False, True, True, True, True, True]


# ------------------------------------------------------------------ bf16-mixed
def test_bf16_mixed_descends_at_the_perturbed_weights():
    """SAMModule under bf16-mixed equals the hand loop under one autocast per forward, not ρ = 0.

    (Lightning's autocast has its weight cache off; the engine also clears the cache after w += ε
    and after the restore, for front ends whose autocast region spans both passes.)"""
    x, y = make_data(16, dtype=torch.float32)
    net = make_net(dtype=torch.float32)
    fit(TinySAM(net, optimizer=sgd(0.2), rho=0.5), loader(x, y, 4), precision="bf16-mixed")
    ref, plain = make_net(dtype=torch.float32), make_net(dtype=torch.float32)
    hand_sam(ref, sgd(0.2), batches(x, y, 4), 0.5, autocast=torch.bfloat16)
    hand_sam(plain, sgd(0.2), batches(x, y, 4), 0.0, autocast=torch.bfloat16)
    assert max_diff(list(ref.parameters()), list(plain.parameters())) > 2e-2  # ρ matters at this tolerance
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=2e-3)


# ------------------------------------------------------------------ Functional-SAM's seed
class Float32Copies(TorchDispatchMode):
    """Records ops that produce a float32 tensor of a given shape (a copy of the outputs or of ∂L/∂f)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape, self.ops = shape, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not torch.ops.aten.stack.default:  # the loader's collate stacks the float32 targets
            for o in torch.utils._pytree.tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor) and o.dtype == torch.float32 and tuple(o.shape) == self.shape:
                    self.ops.append(str(func))
        return out


def test_functional_sam_seeds_the_descent_in_the_outputs_dtype():
    """bf16 outputs: the stored ∂L/∂f and the seeded backward stay bf16 (no float32 copies)."""
    x, y = make_data(10, dtype=torch.float32)
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.1), rho=0.1, perturbation="functional")
    with Float32Copies((5, 2)) as copies:
        fit(module, loader(x, y, 5), precision="bf16-true", max_steps=2)
    assert copies.ops == []


def test_functional_sam_under_fp16_seeds_with_the_loss_scale_once():
    """16-mixed with a GradScaler (scale 1024): the stored seed carries the scale, and the seeded
    backward must not scale it again (that would be a 1024× step) nor drop it (fp16 underflow)."""
    x, y = make_data(16, dtype=torch.float32)
    net = make_net(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    module = TinySAM(net, optimizer=sgd(0.1), rho=RHO, perturbation="functional")
    fit(module, loader(x, y, 4), plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() == 1024.0  # no step was skipped
    ref, sam = make_net(dtype=torch.float32), make_net(dtype=torch.float32)
    hand_sam(ref, sgd(0.1), batches(x, y, 4), RHO, functional=True)
    hand_sam(sam, sgd(0.1), batches(x, y, 4), RHO)
    assert max_diff(list(ref.parameters()), list(sam.parameters())) > 1e-2  # FSAM ≠ SAM at this tolerance
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=5e-4)


# ------------------------------------------------------------------ preconditioned SAM
class CrossDevice(TorchDispatchMode):
    """Records copies from the CPU onto another device (here "meta", standing in for a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {
            a.device.type
            for a in torch.utils._pytree.tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor)
        }
        outs = {
            o.device.type for o in torch.utils._pytree.tree_flatten(out)[0] if isinstance(o, torch.Tensor)
        }
        if "cpu" in ins and "meta" in outs and func.__name__.startswith(("_to_copy", "copy_")):
            self.ops.append(str(func))
        return out


def test_adam_preconditioner_copies_nothing_onto_the_device():
    """Adam keeps step counters on the CPU and moments on the device: P g uses them where they are."""
    shapes = [(3, 2), (2,)]
    owners = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    optimizer = torch.optim.Adam(owners, lr=0.1, betas=(0.9, 0.99))
    for p, s in zip(owners, shapes, strict=True):
        optimizer.state[p] = {"step": torch.tensor(3.0), "exp_avg_sq": torch.ones(s, device="meta")}
    with CrossDevice() as mode, SyncCounter() as counter:
        out = adam_preconditioned(owners, [torch.ones(s, device="meta") for s in shapes], optimizer)
    assert [o.device.type for o in out] == ["meta", "meta"]
    assert mode.ops == [] and not counter.charged_to("lit_bar", kind="host_copy"), counter.report()


def test_adam_preconditioner_value_on_cpu():
    """P g = g / (√(v / (1 − β₂ᵗ)) + ε) with the step counter read in place (Python float or tensor)."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=0.05)
    v = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    expected = g / ((v / (1 - 0.99**7)).sqrt() + 0.05)
    for step in (torch.tensor(7.0), 7):
        optimizer.state[p] = {"step": step, "exp_avg_sq": v}
        torch.testing.assert_close(adam_preconditioned([p], [g], optimizer)[0], expected, atol=1e-15, rtol=0)


def test_psam_trains_like_before_with_adamw():
    """Guard: the preconditioned trajectory still differs from SAM's (P is used, not dropped)."""
    x, y = make_data(16)
    psam, sam = make_net(), make_net()
    fit(TinySAM(psam, optimizer=adamw(0.05), rho=0.2, precondition="adam"), loader(x, y, 4))
    fit(TinySAM(sam, optimizer=adamw(0.05), rho=0.2), loader(x, y, 4))
    assert max_diff(list(psam.parameters()), list(sam.parameters())) > 1e-4
