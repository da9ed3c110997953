"""Preconditioned SAM (docs/algorithms.md §5) through ``SAMModule``, and bad-input errors.

The module records the weights and Adam's state each time it computes outputs: the ascent pass
sees w, the descent pass w + ε, so ε = w_descent − w_ascent. The test recomputes, independently,
g = ∇L(w) with autograd and P = diag(1 / (√(v / (1 − β₂ᵗ)) + ε_adam)) from the recorded
``exp_avg_sq`` and ``step``, and checks ε = ρ P g / ‖P g‖ (so ‖ε‖ = ρ and ε ∥ P g).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_bar.lightning.module import SAMModule
from lit_bar.optim import SAM

DTYPE = torch.float64
N, BATCH, IN, HIDDEN, OUT = 16, 4, 3, 5, 2
RHO = 0.2
ADAMW = partial(torch.optim.AdamW, lr=0.05, betas=(0.9, 0.99), eps=0.05)  # eps ~ √v̂: bias correction matters


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).to(DTYPE)


def make_loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, IN, generator=gen, dtype=DTYPE)
    y = torch.randn(N, OUT, generator=gen, dtype=DTYPE) * 3.0
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class Recording(SAMModule):
    """MSE on a net; every ``compute_outputs`` call records (batch, weights, Adam state)."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.calls: list[dict] = []

    def compute_outputs(self, batch):
        optimizer = self.optimizers().optimizer
        state = [dict(optimizer.state.get(p, {})) for p in self.net.parameters()]
        self.calls.append(
            {
                "batch": batch,
                "w": [p.detach().clone() for p in self.net.parameters()],
                "v": [s["exp_avg_sq"].clone() if "exp_avg_sq" in s else None for s in state],
                "step": [float(s["step"]) if "step" in s else 0.0 for s in state],
            }
        )
        return self.net(batch[0])

    def loss_from_outputs(self, outputs, batch):
        return F.mse_loss(outputs, batch[1])


def fit(module: SAMModule, max_steps: int) -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, make_loader())


def clean_gradient(net: nn.Module, w: list[torch.Tensor], batch) -> list[torch.Tensor]:
    """∇L(w) for the recorded weights, on a fresh copy of the net."""
    with torch.no_grad():
        for p, value in zip(net.parameters(), w, strict=True):
            p.copy_(value)
    return list(torch.autograd.grad(F.mse_loss(net(batch[0]), batch[1]), list(net.parameters())))


def preconditioned(grads: list[torch.Tensor], call: dict) -> torch.Tensor:
    """P g, flattened, with P from the recorded (bias-corrected) Adam second moment; P = I unstepped."""
    _, beta2 = ADAMW.keywords["betas"]
    eps = ADAMW.keywords["eps"]
    parts = []
    for g, v, step in zip(grads, call["v"], call["step"], strict=True):
        parts.append(g if v is None else g / ((v / (1 - beta2**step)).sqrt() + eps))
    return torch.cat([p.reshape(-1) for p in parts])


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("perturbation", ["sam", "functional"])
def test_epsilon_has_norm_rho_and_is_parallel_to_preconditioned_gradient(perturbation):
    module = Recording(make_net(), optimizer=ADAMW, rho=RHO, perturbation=perturbation, precondition="adam")
    fit(module, max_steps=4)
    assert len(module.calls) == 8  # ascent + descent per step
    probe = make_net()
    for step in range(1, 4):  # Adam has state from step 1 on
        ascent, descent = module.calls[2 * step], module.calls[2 * step + 1]
        assert all(v is not None for v in ascent["v"]) and ascent["step"][0] == step
        eps = flat(descent["w"]) - flat(ascent["w"])
        g = clean_gradient(probe, ascent["w"], ascent["batch"])
        pg = preconditioned(g, ascent)
        cosine_g_pg = torch.dot(flat(g), pg) / (flat(g).norm() * pg.norm())
        assert cosine_g_pg < 0.99, "P must turn the direction, or this test could not tell P g from g"
        torch.testing.assert_close(eps.norm(), torch.tensor(RHO, dtype=DTYPE), atol=1e-10, rtol=0)
        torch.testing.assert_close(eps, RHO * pg / pg.norm(), atol=1e-9, rtol=0)


def test_before_the_first_adam_step_the_preconditioner_is_identity_so_it_equals_sam():
    psam = Recording(make_net(), optimizer=ADAMW, rho=RHO, precondition="adam")
    sam = Recording(make_net(), optimizer=ADAMW, rho=RHO)
    fit(psam, max_steps=1)
    fit(sam, max_steps=1)
    eps = flat(psam.calls[1]["w"]) - flat(psam.calls[0]["w"])
    g = flat(clean_gradient(make_net(), psam.calls[0]["w"], psam.calls[0]["batch"]))
    torch.testing.assert_close(eps, RHO * g / g.norm(), atol=1e-10, rtol=0)
    for p, q in zip(psam.net.parameters(), sam.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)
    # ... and only from the second step on does preconditioning change the trajectory.
    psam2 = Recording(make_net(), optimizer=ADAMW, rho=RHO, precondition="adam")
    sam2 = Recording(make_net(), optimizer=ADAMW, rho=RHO)
    fit(psam2, max_steps=3)
    fit(sam2, max_steps=3)
    assert (flat(list(psam2.net.parameters())) - flat(list(sam2.net.parameters()))).abs().max() > 1e-4


# ------------------------------------------------------------------ bad input
def test_unknown_perturbation_name():
    with pytest.raises(ValueError, match=r"unknown perturbation 'functionl'; allowed: sam, functional"):
        SAMModule(perturbation="functionl")


@pytest.mark.parametrize(
    "make",
    [
        lambda: SAMModule(precondition="shampoo"),
        lambda: SAM(make_net().parameters(), torch.optim.AdamW, precondition="shampoo", lr=0.1),
    ],
    ids=["sam_module", "sam_optimizer"],
)
def test_unknown_preconditioner_name(make):
    with pytest.raises(ValueError, match=r"unknown preconditioner 'shampoo'; allowed: None, adam"):
        make()


def test_adam_preconditioner_with_sgd_base_in_sam_optimizer():
    with pytest.raises(ValueError, match=r"precondition='adam' reads Adam's second moment.*SGD"):
        SAM(make_net().parameters(), torch.optim.SGD, precondition="adam", lr=0.1)


def test_adam_preconditioner_with_sgd_base_in_sam_module():
    module = Recording(make_net(), optimizer=partial(torch.optim.SGD, lr=0.1), rho=RHO, precondition="adam")
    with pytest.raises(ValueError, match=r"precondition='adam' reads Adam's second moment.*SGD"):
        fit(module, max_steps=1)


def test_adaptive_and_preconditioned_are_exclusive():
    with pytest.raises(ValueError, match="adaptive=True and precondition are exclusive"):
        SAMModule(adaptive=True, precondition="adam")
