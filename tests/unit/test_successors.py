"""Flat-LoRA and Bi-LoRA (lit_bar.methods) against few-line plain-torch references of each paper's rule.

Flat-LoRA (arXiv:2409.14396, Eq. 7): ε_ij ~ N(0, σ²/n ‖(W + s·BA)_i‖²) on the base weight, taken off
after the step. Bi-LoRA (arXiv:2508.19564): descent on (A₁, B₁), ascent on (A₂, B₂) from the same
backward at W₀ + s·B₁A₁ + B₂A₂, then global clipping of ‖Σ B₂A₂‖ to ρ. Each test first shows that
the plausible wrong answers differ from the reference by more than its tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from lit_bar.methods import BiLoRA, FlatLoRA, flat_sigma

IN, HID, OUT, R, ALPHA = 4, 6, 3, 2, 4
TOL = 1e-12


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(IN, HID)
        self.out = nn.Linear(HID, OUT)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def lora_net(dtype=torch.float64, **config) -> nn.Module:
    """Two peft LoRA layers with random A and B (so s·BA ≠ 0), only the factors trainable."""
    torch.manual_seed(0)
    options = dict(r=R, lora_alpha=ALPHA, target_modules=["hidden", "out"], init_lora_weights=False)
    net = inject_adapter_in_model(LoraConfig(**{**options, **config}), Net()).to(dtype)
    for name, param in net.named_parameters():
        param.requires_grad_("lora_" in name)
    return net


def parts(layer):
    """(W, A, B, s) of a peft LoRA layer, detached copies."""
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (
        layer.base_layer.weight.detach().clone(),
        a.detach().clone(),
        b.detach().clone(),
        layer.scaling["default"],
    )


def hand_normal(seed: int, step: int, index: int, shape) -> torch.Tensor:
    """The documented noise stream: a CPU generator seeded ((seed·1000003 + t)·9176467 + l) mod (2⁶³ − 1)."""
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 9_176_467 + index) % (2**63 - 1))
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def hand_flat_noise(w, a, b, s, sigma, z):
    """Eq. 7: row i of ε has std σ/√n · ‖(W + s·BA)_i‖."""
    return sigma / math.sqrt(w.shape[1]) * torch.linalg.norm(w + s * b @ a, dim=1, keepdim=True) * z


# ----------------------------------------------------------------------------------------------- Flat-LoRA
def test_flat_sigma_ramps():
    assert flat_sigma(0.1, 5, 10, "linear") == pytest.approx(0.05)
    assert flat_sigma(0.1, 5, 10, "cosine") == pytest.approx(0.05)
    assert flat_sigma(0.1, 2, 10, "cosine") == pytest.approx(0.1 * (1 - math.cos(math.pi * 0.2)) / 2)
    assert flat_sigma(0.1, 20, 10, "linear") == pytest.approx(0.1)  # stays at ρ after T
    assert flat_sigma(0.1, 0, None, "constant") == 0.1
    with pytest.raises(ValueError, match="total_steps"):
        flat_sigma(0.1, 1, None, "linear")


def test_flat_noise_is_eq7_on_the_merged_weight_and_comes_off():
    net = lora_net()
    layers = [net.hidden, net.out]
    before = [parts(layer) for layer in layers]
    flat = FlatLoRA(net, rho=0.2, schedule="constant", seed=7)
    flat.perturb(3)
    for index, (layer, (w, a, b, s)) in enumerate(zip(layers, before, strict=True)):
        z = hand_normal(7, 3, index, w.shape)
        want = w + hand_flat_noise(w, a, b, s, 0.2, z)
        got = layer.base_layer.weight.detach()
        wrong = {
            "no noise": w,
            "row norm of W only": w
            + 0.2 / math.sqrt(w.shape[1]) * torch.linalg.norm(w, dim=1, keepdim=True) * z,
            "no 1/sqrt(n)": w + 0.2 * torch.linalg.norm(w + s * b @ a, dim=1, keepdim=True) * z,
            "another step's draw": w + hand_flat_noise(w, a, b, s, 0.2, hand_normal(7, 4, index, w.shape)),
        }
        for name, value in wrong.items():
            assert (value - want).abs().max() > 100 * TOL, name
        assert (got - want).abs().max() < TOL
    # the optimizer moves A and B in between: the restore must not depend on them
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["default"].weight.mul_(3.0)
    flat.restore()
    for layer, (w, *_), index in zip(layers, before, range(2), strict=True):
        kept = layer.base_layer.weight.detach()
        noise = kept + hand_flat_noise(w, *parts(layer)[1:], 0.2, hand_normal(7, 3, index, w.shape)) - kept
        assert noise.abs().max() > 100 * TOL  # "noise not removed" would be off by this much
        assert (kept - w).abs().max() < TOL
    assert not flat.active


def test_flat_suspended_takes_the_same_noise_off_and_back():
    net = lora_net()
    flat = FlatLoRA(net, rho=0.1, schedule="constant")
    w0 = net.hidden.base_layer.weight.detach().clone()
    flat.perturb(0)
    noisy = net.hidden.base_layer.weight.detach().clone()
    with flat.suspended():
        assert (net.hidden.base_layer.weight - w0).abs().max() < TOL
    assert (net.hidden.base_layer.weight - noisy).abs().max() < TOL
    with pytest.raises(RuntimeError, match="still on the weights"):
        flat.perturb(1)


def test_flat_on_fan_in_fan_out_perturbs_output_rows():
    """GPT-2's Conv1D stores W as (in × out): the 'rows' of Eq. 7 are its columns, n its first dim."""
    from transformers.pytorch_utils import Conv1D

    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = Conv1D(OUT, IN)  # weight (IN, OUT)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    config = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["proj"], fan_in_fan_out=True, init_lora_weights=False
    )
    net = inject_adapter_in_model(config, ConvNet()).double()
    layer = net.proj
    w_stored, a, b, s = parts(layer)
    flat = FlatLoRA(net, rho=0.3, schedule="constant", seed=1)
    flat.perturb(0)
    w = w_stored.T  # (out × in)
    want = w + hand_flat_noise(w, a, b, s, 0.3, hand_normal(1, 0, 0, w.shape))
    assert (layer.base_layer.weight.detach().T - want).abs().max() < TOL


def test_flat_refuses_low_precision_regenerate_dora_and_bad_arguments():
    with pytest.raises(ValueError, match="restore='copy'"):
        FlatLoRA(lora_net(torch.bfloat16), rho=0.1)
    net = lora_net(torch.bfloat16)
    w0 = net.hidden.base_layer.weight.detach().clone()
    flat = FlatLoRA(net, rho=0.1, schedule="constant", restore="copy")
    flat.perturb(0)
    assert not torch.equal(net.hidden.base_layer.weight, w0)
    flat.restore()
    assert torch.equal(net.hidden.base_layer.weight, w0)  # bit-exact
    with pytest.raises(ValueError, match="DoRA"):
        FlatLoRA(lora_net(use_dora=True))
    with pytest.raises(ValueError, match="schedule"):
        FlatLoRA(lora_net(), schedule="step")
    with pytest.raises(ValueError, match="rho"):
        FlatLoRA(lora_net(), rho=-1.0)
    with pytest.raises(ValueError, match="no peft LoRA layer"):
        FlatLoRA(Net())


# ----------------------------------------------------------------------------------------------- Bi-LoRA
def hand_bilora_step(net, aux, x, y, lr, lr2, rho, ascent=True, clip="global"):
    """One Bi-LoRA step by hand: merged weights, one backward, descent (1) / ascent (2), clipping."""
    leaves = []
    for layer, (a2, b2) in zip([net.hidden, net.out], aux, strict=True):
        w, a1, b1, s = parts(layer)
        leaves.append([w, layer.base_layer.bias.detach(), a1.requires_grad_(), b1.requires_grad_(), s,
                       a2.clone().requires_grad_(), b2.clone().requires_grad_()])  # fmt: skip
    h = x
    for i, (w, bias, a1, b1, s, a2, b2) in enumerate(leaves):
        h = F.linear(h, w + s * b1 @ a1 + b2 @ a2, bias)  # W₀ + s·B₁A₁ + B₂A₂
        h = torch.tanh(h) if i == 0 else h
    F.mse_loss(h, y).backward()
    sign = 1.0 if ascent else -1.0
    new_primary, new_aux = [], []
    for _, _, a1, b1, _, a2, b2 in leaves:
        new_primary.append((a1 - lr * a1.grad, b1 - lr * b1.grad))
        new_aux.append([a2 + sign * lr2 * a2.grad, b2 + sign * lr2 * b2.grad])
    norms = [torch.linalg.norm(b2 @ a2).detach() for a2, b2 in new_aux]
    if clip == "global":
        c = torch.sqrt(sum(n**2 for n in norms))
        factors = [math.sqrt(min(1.0, rho / float(c)))] * len(new_aux)
    elif clip == "layer":
        factors = [math.sqrt(min(1.0, rho / float(n))) for n in norms]
    else:
        factors = [1.0] * len(new_aux)
    new_aux = [(a2.detach() * f, b2.detach() * f) for (a2, b2), f in zip(new_aux, factors, strict=True)]
    return [(a.detach(), b.detach()) for a, b in new_primary], new_aux


def test_bilora_one_backward_descends_primary_ascends_auxiliary_and_clips_globally():
    net = lora_net()
    bi = BiLoRA(net, rho=0.05, seed=3)
    with torch.no_grad():  # a non-zero B₂ so that both auxiliary factors get a gradient, and c > ρ
        for b2 in bi.b:
            b2.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(5))
    aux = [(a.detach().clone(), b.detach().clone()) for a, b in zip(bi.a, bi.b, strict=True)]
    x = torch.randn(8, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lr, lr2 = 0.1, 0.2
    want_primary, want_aux = hand_bilora_step(net, aux, x, y, lr, lr2, 0.05)

    primary = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(primary, lr=lr)
    opt_aux = torch.optim.SGD(bi.parameters(), lr=lr2, maximize=True)
    F.mse_loss(net(x), y).backward()
    opt.step()
    opt_aux.step()
    bi.project_()
    got_primary = [
        (m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach())
        for m in (net.hidden, net.out)
    ]
    got_aux = list(zip(bi.a, bi.b, strict=True))

    def diff(xs, ys):
        return max(
            (p - q).abs().max().item()
            for pair_x, pair_y in zip(xs, ys, strict=True)
            for p, q in zip(pair_x, pair_y, strict=True)
        )

    for name, kwargs in {"ascent sign flipped": {"ascent": False}, "no clipping": {"clip": None},
                         "per-layer clipping": {"clip": "layer"}}.items():  # fmt: skip
        wrong = hand_bilora_step(lora_net(), aux, x, y, lr, lr2, 0.05, **kwargs)[1]
        assert diff(wrong, want_aux) > 1e-6, name
    assert diff(got_primary, want_primary) < TOL
    assert diff(got_aux, want_aux) < TOL
    assert float(bi.perturbation_norm()) == pytest.approx(0.05, rel=1e-9)  # on the sphere after clipping


def test_bilora_ascent_step_is_plain_sgd_ascent_and_eval_drops_the_pair():
    net = lora_net()
    bi = BiLoRA(net, rho=10.0)
    x = torch.randn(5, IN, dtype=torch.float64)
    clean = net.eval()(x).detach().clone()
    with torch.no_grad():
        for b2 in bi.b:
            b2.fill_(0.3)
    assert torch.equal(net.eval()(x), clean)  # eval: W₀ + s·B₁A₁ only
    net.train()
    assert (net(x) - clean).abs().max() > 1e-3  # training: + B₂A₂
    net(x).sum().backward()
    before = [p.detach().clone() for p in bi.parameters()]
    grads = [p.grad.clone() for p in bi.parameters()]
    bi.ascent_step(0.5)
    for p, p0, g in zip(bi.parameters(), before, grads, strict=True):
        assert (p - (p0 + 0.5 * g)).abs().max() < TOL
    bi.remove()
    assert torch.equal(net(x), clean)  # train mode, hooks removed
    assert not any(
        "lora_" not in n for n, p in net.named_parameters() if p.requires_grad
    )  # nothing registered


def test_bilora_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        BiLoRA(lora_net(), rho=0.0)
    with pytest.raises(ValueError, match="rank"):
        BiLoRA(lora_net(), rank=0)
    with pytest.raises(ValueError, match="DoRA"):
        BiLoRA(lora_net(use_dora=True))


def test_the_pure_torch_pieces_import_no_lightning():
    import subprocess
    import sys

    code = (
        "import sys, lit_bar.methods; print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
