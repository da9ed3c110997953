"""Tiny networks, data, Lightning modules and hand-written plain-torch reference loops.

The reference loops (``hand_sam``) are the independent computation the integration tests compare
``SAMModule`` and ``BalancednessCallback`` against: a few lines of plain torch per rule, written
from docs/algorithms.md §2, §3 and §5, sharing no code with ``lit_bar``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lit_bar.lightning.module import SAMModule

IN, OUT = 4, 2


def make_net(
    dropout: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64, width: int = 6
) -> nn.Module:
    """Linear → Tanh → Dropout → Linear: nonlinear in w, so Functional-SAM differs from SAM."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(IN, width), nn.Tanh(), nn.Dropout(dropout), nn.Linear(width, OUT))
    return net.to(dtype)


def make_data(n: int = 16, seed: int = 1, dtype: torch.dtype = torch.float64, target: float = 0.0):
    """``n`` rows of (x, y); ``target`` shifts y (a large shift makes fp16 gradients overflow)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=gen, dtype=dtype)
    y = torch.randn(n, OUT, generator=gen, dtype=dtype) + target
    return x, y


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def sgd(lr: float = 0.1, **kwargs) -> Callable:
    return partial(torch.optim.SGD, lr=lr, **kwargs)


def adamw(lr: float = 0.05, **kwargs) -> Callable:
    return partial(torch.optim.AdamW, lr=lr, **kwargs)


def adam(lr: float = 0.05, **kwargs) -> Callable:
    return partial(torch.optim.Adam, lr=lr, **kwargs)


class TinySAM(SAMModule):
    """SAMModule over a given net with an MSE loss, in the split form Functional-SAM needs."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net

    def compute_outputs(self, batch):
        return self.net(batch[0])

    def loss_from_outputs(self, outputs, batch):
        return F.mse_loss(outputs, batch[1])


class LossOnlySAM(SAMModule):
    """A subclass that implements only ``compute_loss``."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net

    def compute_loss(self, batch):
        return F.mse_loss(self.net(batch[0]), batch[1])


class TinyPlain(LightningModule):
    """The same net and loss trained by Lightning's automatic optimization (the reference)."""

    def __init__(self, net: nn.Module, optimizer: Callable, lr_scheduler: Callable | None = None) -> None:
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"},
        }


def trainer(**kwargs) -> Trainer:
    options = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return Trainer(**options)


def fit(
    module: LightningModule, data: DataLoader, seed: int = 123, ckpt_path: str | None = None, **trainer_kwargs
) -> Trainer:
    """Fit from a fixed global RNG state (dropout masks), return the trainer."""
    run = trainer(**trainer_kwargs)
    torch.manual_seed(seed)
    run.fit(module, data, ckpt_path=ckpt_path)
    return run


def snapshot(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def assert_params_close(
    actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], atol: float, rtol: float = 0
):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e.detach(), atol=atol, rtol=rtol)


def max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------- plain-torch reference loops
def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def hand_epsilon(params, grads, rho, adaptive=False, optimizer=None, precondition=None):
    """ε of docs/algorithms.md §2/§5: ρ g/‖g‖, ASAM ρ T²g/‖Tg‖ (T = |w| on matrices), or ρ Pg/‖Pg‖."""
    if adaptive:
        scale = [p.detach().abs() if p.ndim >= 2 else torch.ones_like(p) for p in params]
        tg = [s * g for s, g in zip(scale, grads, strict=True)]
        norm = _norm(tg)
        return [rho * s * t / norm for s, t in zip(scale, tg, strict=True)]
    if precondition == "adam":
        direction = []
        for p, g in zip(params, grads, strict=True):
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                direction.append(g)
                continue
            group = next(gr for gr in optimizer.param_groups if any(q is p for q in gr["params"]))
            v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
            direction.append(g / (v_hat.sqrt() + group["eps"]))
        norm = _norm(direction)
        return [rho * d / norm for d in direction]
    norm = _norm(grads)
    return [rho * g / norm for g in grads]


def _mse_grad(net, params, x, y, autocast=None):
    """∇ MSE; ``autocast`` (a dtype) runs the forward under CPU autocast, one context per forward
    (a context held across optimizer steps would reuse its stale cached casts of the weights)."""
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = F.mse_loss(net(x), y)
    return torch.autograd.grad(loss, params)


def _functional_descent(net, params, eps, x, y):
    """J_f(w+ε)ᵀ · ∂L/∂f(w), with the Jacobian from torch.autograd.functional.jacobian."""
    out = net(x)
    dl_df = torch.autograd.grad(F.mse_loss(out, y), out)[0]
    names = [n for n, _ in net.named_parameters()]

    def f(*values):
        return functional_call(net, dict(zip(names, values, strict=True)), (x,))

    shifted = tuple((p + e).detach() for p, e in zip(params, eps, strict=True))
    jac = torch.autograd.functional.jacobian(f, shifted)
    return [torch.tensordot(dl_df, j, dims=dl_df.ndim) for j in jac]


def hand_sam_gradient(
    net, x, y, rho, adaptive=False, m=None, functional=False, optimizer=None, precondition=None, autocast=None
):
    """The SAM descent gradient of one optimizer-step batch (x, y): mean over chunks of m examples."""
    params = [p for p in net.parameters() if p.requires_grad]
    size = len(x)
    chunk = m or size
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, size, chunk):
        cx, cy = x[start : start + chunk], y[start : start + chunk]
        weight = len(cx) / size
        if rho == 0:
            grads = _mse_grad(net, params, cx, cy, autocast)
        else:
            clean = _mse_grad(net, params, cx, cy, autocast)
            eps = hand_epsilon(params, clean, rho, adaptive, optimizer, precondition)
            if functional:
                grads = _functional_descent(net, params, eps, cx, cy)
            else:
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.add_(e)
                grads = _mse_grad(net, params, cx, cy, autocast)
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(e)
        for t, g in zip(total, grads, strict=True):
            t.add_(weight * g)
    return total


def hand_sam(
    net: nn.Module,
    optimizer_factory: Callable,
    steps: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rho: float,
    before_step: Callable | None = None,
    scheduler_factory: Callable | None = None,
    **kwargs,
):
    """Plain-torch SAM: one optimizer step per (x, y) in ``steps``; returns the optimizer."""
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = optimizer_factory(params)
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    for x, y in steps:
        grads = hand_sam_gradient(net, x, y, rho, optimizer=optimizer, **kwargs)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        if before_step is not None:
            before_step(net, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
    return optimizer


class Rows(torch.utils.data.Dataset):
    """Rows ``{"x": x[i], "labels": y[i]}``: :func:`make_data` for the transformers ``Trainer``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}
