"""Functional-SAM (docs/algorithms.md §5) against an explicit-Jacobian computation.

The reference builds the full Jacobian J_f of a tiny network's outputs with respect to the flat
parameter vector (``torch.autograd.functional.jacobian``) and forms every gradient as a matrix–vector
product: the clean ∇L = J_f(w)ᵀ ∂L/∂f(w), SAM's ∇L(w + ε) = J_f(w + ε)ᵀ ∂L/∂f(w + ε) and
Functional-SAM's g̃ = J_f(w + ε)ᵀ ∂L/∂f(w). One SGD step with lr = 1 from w makes the code's
descent gradient readable as w − w_new, both for the plain-loop helper and for ``SAMModule``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch import nn
from torch.autograd.functional import jacobian
from torch.utils.data import DataLoader, TensorDataset

from lit_bar.lightning.module import SAMModule
from lit_bar.optim import SAM, functional_backward, functional_sam_step

DTYPE = torch.float64
N, IN, HIDDEN, OUT = 6, 3, 5, 4
RHO = 0.5
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_net(linear: bool = False, seed: int = 0) -> nn.Module:
    """Linear → Tanh → Linear (nonlinear in w), or a single Linear (f linear in w)."""
    torch.manual_seed(seed)
    net = (
        nn.Linear(IN, OUT)
        if linear
        else nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT))
    )
    return net.to(DTYPE)


def make_data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, IN, generator=gen, dtype=DTYPE), torch.randint(0, OUT, (N,), generator=gen)


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Nonlinear in the outputs: ∂L/∂f changes between w and w + ε."""
    return F.cross_entropy(outputs, labels)


def linear_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Linear in the outputs: ∂L/∂f = c/N is the same at every point."""
    c = torch.linspace(-1.0, 2.0, OUT, dtype=outputs.dtype)
    return (outputs * c).sum(dim=1).mean() + 0.0 * labels.sum()


def explicit_forward(flat: torch.Tensor, shapes: list[torch.Size], x: torch.Tensor) -> torch.Tensor:
    """The network written out over a flat parameter vector (same layout as ``net.parameters()``)."""
    params, start = [], 0
    for shape in shapes:
        params.append(flat[start : start + shape.numel()].view(shape))
        start += shape.numel()
    if len(params) == 2:  # nn.Linear: weight, bias
        return x @ params[0].T + params[1]
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def reference_gradients(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss
) -> dict[str, torch.Tensor]:
    """Clean, SAM and Functional-SAM descent gradients from explicit Jacobians (flat vectors)."""
    shapes = [p.shape for p in net.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def f(theta: torch.Tensor) -> torch.Tensor:
        return explicit_forward(theta, shapes, x).reshape(-1)

    def dl_df(theta: torch.Tensor) -> torch.Tensor:
        return jacobian(lambda out: loss(out.view(N, OUT), y), f(theta).detach())

    clean = jacobian(f, w).T @ dl_df(w)
    eps = RHO * clean / clean.norm()
    jac_perturbed = jacobian(f, w + eps)
    return {"clean": clean, "sam": jac_perturbed.T @ dl_df(w + eps), "functional": jac_perturbed.T @ dl_df(w)}


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def helper_descent_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """One ``functional_sam_step`` with SGD(lr=1): the update is minus the descent gradient."""
    before = flat(net)
    optimizer = SAM(net.parameters(), torch.optim.SGD, rho=RHO, lr=1.0)
    functional_sam_step(optimizer, lambda: net(x), lambda out: loss(out, y))
    return before - flat(net)


class TinyFunctional(SAMModule):
    """The split ``compute_outputs`` + ``loss_from_outputs`` over a given net and loss."""

    def __init__(self, net: nn.Module, loss: Loss, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.loss = loss

    def compute_outputs(self, batch):
        return self.net(batch[0])

    def loss_from_outputs(self, outputs, batch):
        return self.loss(outputs, batch[1])


class LossOnly(SAMModule):
    """A user subclass that implements only ``compute_loss``."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net

    def compute_loss(self, batch):
        return F.cross_entropy(self.net(batch[0]), batch[1])


def fit_one_step(module: SAMModule, x: torch.Tensor, y: torch.Tensor) -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=N))


def module_descent_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """One ``SAMModule(perturbation="functional")`` step with SGD(lr=1) through the Trainer."""
    before = flat(net)
    module = TinyFunctional(
        net, loss, optimizer=partial(torch.optim.SGD, lr=1.0), rho=RHO, perturbation="functional"
    )
    fit_one_step(module, x, y)
    return before - flat(net)


RUNNERS = {"plain_loop": helper_descent_gradient, "sam_module": module_descent_gradient}


@pytest.mark.parametrize("runner", RUNNERS.values(), ids=RUNNERS.keys())
def test_descent_gradient_equals_explicit_jacobian_vjp(runner):
    x, y = make_data()
    ref = reference_gradients(make_net(), x, y, cross_entropy)
    # The three gradients differ here, so matching "functional" is specific to Functional-SAM.
    assert (ref["functional"] - ref["sam"]).abs().max() > 1e-3
    assert (ref["functional"] - ref["clean"]).abs().max() > 1e-3
    got = runner(make_net(), x, y, cross_entropy)
    torch.testing.assert_close(got, ref["functional"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("runner", RUNNERS.values(), ids=RUNNERS.keys())
def test_loss_linear_in_outputs_gives_sams_descent_gradient(runner):
    x, y = make_data()
    ref = reference_gradients(make_net(), x, y, linear_loss)
    assert (ref["sam"] - ref["clean"]).abs().max() > 1e-3  # ε does move the gradient
    got = runner(make_net(), x, y, linear_loss)
    torch.testing.assert_close(got, ref["sam"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("runner", RUNNERS.values(), ids=RUNNERS.keys())
def test_model_linear_in_parameters_gives_the_clean_gradient(runner):
    x, y = make_data()
    ref = reference_gradients(make_net(linear=True), x, y, cross_entropy)
    assert (ref["sam"] - ref["clean"]).abs().max() > 1e-3  # SAM itself would differ
    got = runner(make_net(linear=True), x, y, cross_entropy)
    torch.testing.assert_close(got, ref["clean"], atol=1e-6, rtol=0)


def test_helper_replays_dropout_masks_in_both_passes():
    """With ρ → 0 the functional descent gradient is the clean one only if both passes share masks."""
    x, y = make_data()
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Dropout(0.5), nn.Linear(HIDDEN, OUT)).to(DTYPE)
    start = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(7)
    loss = cross_entropy(net(x), y)
    expected = torch.autograd.grad(loss, list(net.parameters()))
    with torch.no_grad():
        for p, s in zip(net.parameters(), start, strict=True):
            p.copy_(s)
    torch.manual_seed(7)
    optimizer = SAM(net.parameters(), torch.optim.SGD, rho=1e-12, lr=1.0)
    functional_sam_step(optimizer, lambda: net(x), lambda out: cross_entropy(out, y))
    for p, s, g in zip(net.parameters(), start, expected, strict=True):
        torch.testing.assert_close(s - p.detach(), g, atol=1e-9, rtol=0)


def test_functional_backward_rejects_outputs_of_another_shape():
    net = make_net()
    x, _ = make_data()
    with pytest.raises(ValueError, match=r"shape \(6, 4\) at w \+ ε but \(3, 4\) at w"):
        functional_backward(net(x), [torch.zeros(3, OUT, dtype=DTYPE)])
    with pytest.raises(ValueError, match="1 outputs but 2 stored"):
        functional_backward(net(x), [torch.zeros(N, OUT, dtype=DTYPE)] * 2)


def test_subclass_with_only_compute_loss_asked_for_functional_names_the_split():
    x, y = make_data()
    module = LossOnly(
        make_net(), optimizer=partial(torch.optim.SGD, lr=0.1), rho=RHO, perturbation="functional"
    )
    with pytest.raises(ValueError, match=r"compute_outputs\(batch\) and loss_from_outputs\(outputs, batch\)"):
        fit_one_step(module, x, y)
