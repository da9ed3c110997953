"""``lit_bar.hf.SAMTrainer`` against the hand SAM loop and ``SAMModule`` (issue 9 §1).

The model is ``tiny_sam.make_net`` behind a forward that returns ``{"loss", "logits"}`` as transformers
models do; the Trainer reads the rows in order (``train_sampling_strategy="sequential"``), with
AdamW, a constant learning rate, no clipping and 2 micro-batches of 4 per optimizer step. The hand
loop (``tiny_sam.hand_sam``) takes one SAM step per 8 rows: exact large-batch SAM.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_sam import TinySAM, adamw, batches, fit, hand_sam, loader, make_data, make_net, max_diff
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from lit_bar.hf import SAMTrainer

LR, RHO, STEPS = 0.05, 0.2, 3


class Regressor(nn.Module):
    """``make_net`` with the transformers calling convention: keyword inputs, a dict with the loss."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.mse_loss(logits, labels)
        return out


class Rows(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def train(net: nn.Module, x, y, tmp_path, trainer_cls=SAMTrainer, **kwargs) -> Trainer:
    options = {k: kwargs.pop(k) for k in ("bf16", "logging_steps") if k in kwargs}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        optim="adamw_torch",
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=123,
        disable_tqdm=True,
        **options,
    )
    trainer = trainer_cls(model=Regressor(net), args=args, train_dataset=Rows(x, y), **kwargs)
    trainer.train()
    return trainer


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in net.parameters()]


@pytest.mark.parametrize(
    ("kwargs", "hand"),
    [({}, {}), ({"adaptive": True, "rho": 0.5}, {"adaptive": True, "rho": 0.5}), ({"m": 2}, {"m": 2})],
    ids=["sam", "asam", "m2"],
)
def test_sam_trainer_equals_hand_sam_loop_and_sam_module(tmp_path, kwargs, hand):
    x, y = make_data(8 * STEPS)
    kwargs, hand = dict(kwargs), dict(hand)
    rho = hand.pop("rho", RHO)
    kwargs.pop("rho", None)
    net = make_net()
    train(net, x, y, tmp_path, rho=rho, **kwargs)
    ref = make_net()
    hand_sam(ref, adamw(LR, weight_decay=0.0), batches(x, y, 8), rho, **hand)
    plain = make_net()
    train(plain, x, y, tmp_path, trainer_cls=Trainer)
    assert max_diff(params(plain), params(ref)) > 1e-3  # the plain Trainer is far from SAM
    torch.testing.assert_close(params(net), params(ref), atol=1e-10, rtol=0)
    module_net = make_net()
    module = TinySAM(
        module_net, optimizer=adamw(LR, weight_decay=0.0), rho=rho, accumulate_grad_batches=2, **kwargs
    )
    fit(module, loader(x, y, 4), max_steps=STEPS)
    torch.testing.assert_close(params(net), params(module_net), atol=1e-10, rtol=0)


def test_rho_zero_equals_the_plain_trainer(tmp_path):
    x, y = make_data(8 * STEPS)
    sam, plain = make_net(dropout=0.3), make_net(dropout=0.3)
    train(sam, x, y, tmp_path, rho=0.0)
    train(plain, x, y, tmp_path, trainer_cls=Trainer)
    assert max_diff(params(sam), params(make_net())) > 1e-3  # it trained
    torch.testing.assert_close(params(sam), params(plain), atol=1e-12, rtol=0)


def test_dropout_masks_are_replayed_in_the_descent_pass(tmp_path):
    """ρ → 0 with dropout: the SAM step equals the plain Trainer only if both passes share masks."""
    x, y = make_data(8 * STEPS)
    sam, plain = make_net(dropout=0.5), make_net(dropout=0.5)
    train(sam, x, y, tmp_path, rho=1e-10)
    train(plain, x, y, tmp_path, trainer_cls=Trainer)
    torch.testing.assert_close(params(sam), params(plain), atol=1e-8, rtol=0)


def test_functional_sam_equals_hand_loop(tmp_path):
    x, y = make_data(8 * STEPS)
    net, ref, sam = make_net(), make_net(), make_net()
    train(net, x, y, tmp_path, rho=RHO, perturbation="functional")
    hand_sam(ref, adamw(LR, weight_decay=0.0), batches(x, y, 8), RHO, functional=True)
    hand_sam(sam, adamw(LR, weight_decay=0.0), batches(x, y, 8), RHO)
    assert max_diff(params(ref), params(sam)) > 1e-4  # Functional-SAM is not SAM here
    torch.testing.assert_close(params(net), params(ref), atol=1e-10, rtol=0)


def test_bf16_equals_sam_module_bf16_mixed_and_the_hand_loop_under_autocast(tmp_path):
    """bf16 on CPU (accelerate ignores fp16 there): equals SAMModule under bf16-mixed with the same
    micro-batches exactly, and the hand loop (one batch of 8, each forward under bf16 autocast) up to
    bf16 rounding; fp32 SAM and bf16 plain training are further away than both tolerances."""
    x, y = make_data(8 * STEPS, dtype=torch.float32)
    net = make_net(dtype=torch.float32)
    train(net, x, y, tmp_path, rho=0.5, bf16=True)
    module_net, fp32 = make_net(dtype=torch.float32), make_net(dtype=torch.float32)
    for target, precision in ((module_net, "bf16-mixed"), (fp32, "32-true")):
        module = TinySAM(target, optimizer=adamw(LR, weight_decay=0.0), rho=0.5, accumulate_grad_batches=2)
        fit(module, loader(x, y, 4), max_steps=STEPS, precision=precision)
    assert max_diff(params(module_net), params(fp32)) > 2e-3  # bf16 changes the result at this tolerance
    torch.testing.assert_close(params(net), params(module_net), atol=1e-6, rtol=0)
    ref, plain = make_net(dtype=torch.float32), make_net(dtype=torch.float32)
    hand_sam(ref, adamw(LR, weight_decay=0.0), batches(x, y, 8), 0.5, autocast=torch.bfloat16)
    hand_sam(plain, adamw(LR, weight_decay=0.0), batches(x, y, 8), 0.0, autocast=torch.bfloat16)
    assert max_diff(params(ref), params(plain)) > 1e-2  # ρ matters at this tolerance
    torch.testing.assert_close(params(net), params(ref), atol=1e-3, rtol=0)


def test_logs_ascent_grad_norm_and_sharpness_on_logging_steps(tmp_path):
    x, y = make_data(8 * STEPS)
    trainer = train(make_net(), x, y, tmp_path, rho=RHO, logging_steps=2)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    assert [e["step"] for e in logged] == [2]
    net = make_net()
    # replay the first step by hand to know the weights before step 2
    hand_sam(net, adamw(LR, weight_decay=0.0), batches(x, y, 8)[:1], RHO)
    x2, y2 = x[8:16], y[8:16]
    grad = torch.autograd.grad(F.mse_loss(net(x2), y2), list(net.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grad))
    with torch.no_grad():
        clean = F.mse_loss(net(x2), y2)
        for p, g in zip(net.parameters(), grad, strict=True):
            p.add_(RHO * g / norm)
        perturbed = F.mse_loss(net(x2), y2)
    assert logged[0]["ascent_grad_norm"] == pytest.approx(float(norm), rel=1e-9)
    assert logged[0]["sharpness"] == pytest.approx(float(perturbed - clean), rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -1.0}, "rho must be a finite number >= 0"),
        ({"perturbation": "sharp"}, "unknown perturbation 'sharp'"),
        ({"m": 0}, "m must be a positive int"),
        ({"precondition": "shampoo"}, "unknown preconditioner 'shampoo'"),
    ],
)
def test_bad_sam_arguments_raise(tmp_path, kwargs, match):
    x, y = make_data(8)
    with pytest.raises(ValueError, match=match):
        train(make_net(), x, y, tmp_path, **kwargs)


def test_adam_preconditioning_with_sgd_raises(tmp_path):
    x, y = make_data(8)
    with pytest.raises(
        ValueError, match="precondition='adam' reads Adam's second moment, but the optimizer is SGD"
    ):
        SAMTrainer(
            model=Regressor(make_net()),
            args=TrainingArguments(output_dir=str(tmp_path), optim="sgd", use_cpu=True, report_to=[]),
            train_dataset=Rows(x, y),
            precondition="adam",
        ).create_optimizer()
