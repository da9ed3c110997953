"""Unit tests of the toy problems (App. A.4): losses and gradients against closed forms, init, data."""

from __future__ import annotations

import pytest
import torch

from lit_bar import FactorPair, balancedness
from lit_bar.toy import NoiseDataset, NOPModule, OPModule, ToyNoiseDataModule


def test_nop_loss_and_gradient_match_closed_form():
    module = NOPModule(dim_x=4, dim_y=3, alpha=0.7, seed=5)
    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    loss = module.compute_loss(noise)
    grad_x, grad_y = torch.autograd.grad(loss, [module.x, module.y])

    x, y, a = module.x.detach(), module.y.detach(), module.target
    losses, gx, gy = [], torch.zeros(4), torch.zeros(3)
    for n in noise:  # ½ Σ_ij (x_i y_j − A_ij − α N_ij)², gradients R y and Rᵀ x, averaged over the batch
        r = x[:, None] * y[None, :] - a - 0.7 * n
        losses.append(0.5 * (r**2).sum())
        gx += r @ y / 2
        gy += r.T @ x / 2
    torch.testing.assert_close(loss, sum(losses) / 2)
    torch.testing.assert_close(grad_x, gx)
    torch.testing.assert_close(grad_y, gy)


def test_op_loss_and_gradient_match_closed_form():
    module = OPModule(dim=5, target=1.5, alpha=2.0, seed=3)
    noise = torch.tensor([0.3, -1.2, 0.8])
    loss = module.compute_loss(noise)
    grad_x, grad_y = torch.autograd.grad(loss, [module.x, module.y])

    x, y = module.x.detach(), module.y.detach()
    r = float((x * y).sum()) - (1.5 + 2.0 * noise)  # residual per sample; ∂/∂x ½r² = r y
    torch.testing.assert_close(loss, 0.5 * (r**2).mean())
    torch.testing.assert_close(grad_x, r.mean() * y)
    torch.testing.assert_close(grad_y, r.mean() * x)


@pytest.mark.parametrize("cls", [NOPModule, OPModule])
def test_loss_has_no_randomness_of_its_own(cls):
    """Both SAM passes must see the same sample: the noise comes only from the batch.

    The global RNG is re-seeded differently before each call (a loss drawing its own noise would
    change), and each value is the closed form ½‖f − (target + α N)‖² of the batch given (a loss
    using noise of its own, fixed or not, would not match it for two different batches).
    """
    module = cls(alpha=2.0)
    x, y = module.x.detach(), module.y.detach()
    f = torch.outer(x, y) if cls is NOPModule else (x * y).sum()
    shape = (1, 10, 10) if cls is NOPModule else (1,)
    for seed in (0, 1):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(10 + seed))
        values = []
        for global_seed in (seed, seed + 100):
            torch.manual_seed(global_seed)
            values.append(module.compute_loss(noise).detach())
        assert values[0] == values[1]
        expected = 0.5 * (f - (module.target + 2.0 * noise[0])).square().sum()
        torch.testing.assert_close(values[0], expected)


@pytest.mark.parametrize("cls", [NOPModule, OPModule])
def test_paper_initialisation(cls):
    module = cls(seed=0)
    assert module.x.shape == module.y.shape == (10,)
    torch.testing.assert_close(module.x.norm(), torch.tensor(3.0))
    torch.testing.assert_close(module.y.norm(), torch.tensor(0.3))
    (pair,) = module.pairs()
    assert isinstance(pair, FactorPair) and pair.x is module.x and pair.y is module.y
    torch.testing.assert_close(balancedness(module.pairs()), torch.tensor([0.5 * (9.0 - 0.09)]))
    again, other = cls(seed=0), cls(seed=1)
    assert torch.equal(again.x, module.x) and torch.equal(again.y, module.y)
    assert not torch.equal(other.x, module.x)


def test_nop_target_is_rank_one():
    target = NOPModule(dim_x=6, dim_y=4, seed=2).target
    assert target.shape == (6, 4)
    assert torch.linalg.matrix_rank(target) == 1


def test_noise_is_deterministic_per_seed():
    first = NoiseDataset(8, (3, 2), seed=4).samples
    assert first.shape == (8, 3, 2)
    assert torch.equal(first, NoiseDataset(8, (3, 2), seed=4).samples)
    assert not torch.equal(first, NoiseDataset(8, (3, 2), seed=5).samples)

    data = ToyNoiseDataModule(shape=(), steps=5, batch_size=2, seed=7)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert [b.shape for b in batches] == [(2,)] * 5
    again = ToyNoiseDataModule(shape=(), steps=5, batch_size=2, seed=7)
    again.setup("fit")
    assert all(torch.equal(a, b) for a, b in zip(batches, again.train_dataloader(), strict=True))


def test_errors_quote_the_bad_value():
    with pytest.raises(ValueError, match="-1"):
        NOPModule(alpha=-1)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        NOPModule().compute_loss(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="0"):
        ToyNoiseDataModule(steps=0)
