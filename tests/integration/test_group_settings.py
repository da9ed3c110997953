"""A parameter group's own ``rho`` / ``adaptive`` in SAMModule, SAMTrainer and SAMEngine (issue 19 §6).

``lit_bar.optim.SAM`` honours them; the step written once in ``lit_bar.engine`` must too: each group's
part of ε is ρ_group · d / ‖d‖ with ‖d‖ over all groups together (d = T² g with T = |w| on the weight
matrices of an adaptive group, g elsewhere; ‖d‖ is ‖T g‖). The reference is a few lines of plain
torch below; the wrong answers (the module's single ρ, or ASAM ignored) are shown to be far from it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_hf_sam_trainer import train
from tiny.sam import TinySAM, batches, fit, loader, make_data, make_net, max_diff, sgd

LR, STEPS = 0.1, 3
#: (layer index in make_net's Sequential, rho, adaptive) per group
GROUPS = [(0, 0.3, False), (3, 0.6, True)]


def hand_group_sam(net, steps, groups, lr=LR):
    """Plain-torch SAM + SGD with per-group ρ and ASAM flags (docs/algorithms.md §2)."""
    members = [(p, rho, adaptive) for layer, rho, adaptive in groups for p in net[layer].parameters()]
    params = [p for p, _, _ in members]
    for x, y in steps:
        g = torch.autograd.grad(F.mse_loss(net(x), y), params)
        t = [p.detach().abs() if a and p.ndim >= 2 else torch.ones_like(p) for p, _, a in members]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g, strict=True)))
        eps = [r * ti * ti * gi / norm for (_, r, _), ti, gi in zip(members, t, g, strict=True)]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        g2 = torch.autograd.grad(F.mse_loss(net(x), y), params)
        with torch.no_grad():
            for p, e, gi in zip(params, eps, g2, strict=True):
                p.sub_(e).sub_(lr * gi)


def group_list(net, groups=GROUPS):
    return [{"params": list(net[layer].parameters()), "rho": rho, "adaptive": a} for layer, rho, a in groups]


class GroupedSAM(TinySAM):
    def __init__(self, net, groups=GROUPS, **kwargs):
        super().__init__(net, **kwargs)
        self.groups = groups

    def parameter_groups(self):
        return group_list(self.net, self.groups)


def reference(x, y, groups=GROUPS):
    net = make_net()
    hand_group_sam(net, batches(x, y, 8), groups)
    return net


def test_the_reference_tells_the_group_settings_apart():
    x, y = make_data(8 * STEPS)
    ref = reference(x, y)
    single_rho = reference(x, y, [(0, 0.05, False), (3, 0.05, False)])  # the module's ρ, groups ignored
    no_asam = reference(x, y, [(0, 0.3, False), (3, 0.6, False)])
    assert max_diff(ref.parameters(), single_rho.parameters()) > 1e-3
    assert max_diff(ref.parameters(), no_asam.parameters()) > 1e-4


def test_sam_module_honours_each_groups_rho_and_adaptive():
    x, y = make_data(8 * STEPS)
    net = make_net()
    module = GroupedSAM(net, optimizer=sgd(LR), rho=0.05, accumulate_grad_batches=2)
    fit(module, loader(x, y, 4), max_steps=STEPS)
    torch.testing.assert_close(list(net.parameters()), list(reference(x, y).parameters()), atol=1e-10, rtol=0)


def test_sam_module_with_m_chunks_honours_the_groups():
    """With m = 8 (one chunk per optimizer step's batch of 8) the chunked path gives the same step."""
    x, y = make_data(8 * STEPS)
    net = make_net()
    fit(GroupedSAM(net, optimizer=sgd(LR), rho=0.05, m=8), loader(x, y, 8), max_steps=STEPS)
    torch.testing.assert_close(list(net.parameters()), list(reference(x, y).parameters()), atol=1e-10, rtol=0)


def test_a_group_with_rho_while_the_module_has_rho_zero_is_perturbed():
    x, y = make_data(8 * STEPS)
    net = make_net()
    fit(GroupedSAM(net, optimizer=sgd(LR), rho=0.0), loader(x, y, 8), max_steps=STEPS)
    torch.testing.assert_close(list(net.parameters()), list(reference(x, y).parameters()), atol=1e-10, rtol=0)


def test_sam_trainer_honours_each_groups_rho_and_adaptive(tmp_path):
    x, y = make_data(8 * STEPS)
    net = make_net()
    optimizer = torch.optim.SGD(group_list(net), lr=LR)
    train(net, x, y, tmp_path, rho=0.05, optimizers=(optimizer, None))
    torch.testing.assert_close(list(net.parameters()), list(reference(x, y).parameters()), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("groups", "extra", "match"),
    [
        ([(0, 0.3, False), (3, -1.0, False)], {}, r"param group 1: rho must be a finite number >= 0, got -1"),
        ([(0, 0.3, False), (3, 0.1, "yes")], {}, r"param group 1: adaptive must be True or False, got 'yes'"),
        ([(0, 0.3, True), (3, 0.1, False)], {"precondition": "adam"}, r"param group 0: adaptive=True and "),
    ],
    ids=["negative-rho", "adaptive-not-bool", "adaptive-and-precondition"],
)
def test_bad_group_settings_are_refused_before_training(groups, extra, match):
    x, y = make_data(8)
    net = make_net()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.AdamW if extra else torch.optim.SGD
    module = GroupedSAM(net, groups=groups, optimizer=lambda g: optimizer(g, lr=LR), **extra)
    with pytest.raises(ValueError, match=match):
        fit(module, loader(x, y, 8), max_steps=1)
    assert max_diff(before, list(net.parameters())) == 0.0


def test_sam_trainer_refuses_a_bad_group_rho(tmp_path):
    x, y = make_data(8)
    net = make_net()
    optimizer = torch.optim.SGD(group_list(net, [(0, 0.3, False), (3, float("nan"), False)]), lr=LR)
    with pytest.raises(ValueError, match=r"param group 1: rho must be a finite number >= 0, got nan"):
        train(net, x, y, tmp_path, rho=0.05, optimizers=(optimizer, None))
