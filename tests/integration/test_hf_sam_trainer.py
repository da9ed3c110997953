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
from tiny.sam import Rows, TinySAM, adamw, batches, fit, hand_sam, loader, make_data, make_net, max_diff
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


def train(net: nn.Module, x, y, tmp_path, trainer_cls=SAMTrainer, **kwargs) -> Trainer:
    options = {k: kwargs.pop(k) for k in ("bf16", "logging_steps", "optim") if k in kwargs}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=123,
        disable_tqdm=True,
        **{"optim": "adamw_torch", **options},
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


class LossScaledSAMTrainer(SAMTrainer):
    """accelerate's fp16 path without autocast (CPU has no fp16 autocast through accelerate): a
    GradScaler at scale 1024, which the Trainer's AcceleratedOptimizer unscales and steps with."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)


@pytest.mark.parametrize("perturbation", ["sam", "functional"])
def test_loss_scaling_is_applied_once_in_every_backward(tmp_path, perturbation):
    """Scaling by 1024 is exact in float64: the scaled run equals the unscaled one, which a seed
    scaled twice (a 1024× step) or a descent backward left unscaled (a 1/1024 step) would not."""
    x, y = make_data(8 * STEPS)
    scaled, plain = make_net(), make_net()
    common = dict(rho=RHO, perturbation=perturbation, optim="sgd", logging_steps=1)
    trainer = train(scaled, x, y, tmp_path, trainer_cls=LossScaledSAMTrainer, **common)
    reference = train(plain, x, y, tmp_path, **common)
    assert trainer.accelerator.scaler.get_scale() == 1024.0  # in use, no step skipped
    assert max_diff(params(plain), params(make_net())) > 1e-3  # it trained
    torch.testing.assert_close(params(scaled), params(plain), atol=1e-12, rtol=0)
    norms = [
        [e["ascent_grad_norm"] for e in t.state.log_history if "ascent_grad_norm" in e]
        for t in (trainer, reference)
    ]
    assert norms[0] == pytest.approx(norms[1], rel=1e-12) and len(norms[0]) == STEPS  # unscaled


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


def test_functional_sam_with_bf16_needs_compute_loss_func(tmp_path):
    x, y = make_data(8 * STEPS, dtype=torch.float32)
    with pytest.raises(ValueError, match="perturbation='functional' with fp16/bf16 needs compute_loss_func"):
        train(make_net(dtype=torch.float32), x, y, tmp_path, rho=RHO, bf16=True, perturbation="functional")
    net = make_net(dtype=torch.float32)
    loss = lambda outputs, labels, num_items_in_batch=None: F.mse_loss(outputs["logits"], labels)  # noqa: E731
    train(net, x, y, tmp_path, rho=RHO, bf16=True, perturbation="functional", compute_loss_func=loss)
    assert max_diff(params(net), params(make_net(dtype=torch.float32))) > 1e-3  # it trains


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


# ------------------------------------------------------------------ causal LM: num_items_in_batch
def tiny_opt() -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, ffn_dim=16, num_attention_heads=2,
        word_embed_proj_dim=8, max_position_embeddings=16, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return OPTForCausalLM(config).to(torch.float64)


class Tokens(Dataset):
    """Rows of 6 token ids; row i ignores (-100) its first i % 4 label positions, so micro-batches
    hold different numbers of predicted tokens."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, 16, (n, 6), generator=gen)
        self.labels = self.ids.clone()
        for i in range(n):
            self.labels[i, : 1 + i % 4] = -100

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def token_loss_sum(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over predicted tokens of −log p(next token): the causal shift written out by hand."""
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")


def hand_causal_sam(data: Tokens, rho: float, per_micro_batch_mean: bool = False) -> list[torch.Tensor]:
    """SAM on L = Σ_tokens CE / (number of predicted tokens in the whole window) (transformers'
    ``num_items_in_batch`` normalisation); ``per_micro_batch_mean``: the mean of micro-batch means."""
    model = tiny_opt()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)

    def window_gradient(rows: range) -> list[torch.Tensor]:
        micro = [rows[:2], rows[2:]]
        count = sum(int((data.labels[r, 1:] != -100).sum()) for r in rows)
        loss = 0.0
        for mb in micro:
            ids, labels = data.ids[list(mb)], data.labels[list(mb)]
            tokens = int((labels[:, 1:] != -100).sum())
            loss = loss + token_loss_sum(model, ids, labels) / (tokens * 2 if per_micro_batch_mean else count)
        return list(torch.autograd.grad(loss, params))

    for step in range(len(data) // 4):
        rows = range(4 * step, 4 * step + 4)
        g = window_gradient(rows)
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, g, strict=True):
                p.add_(rho * t / norm)
        descent = window_gradient(rows)
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        for p, d in zip(params, descent, strict=True):
            p.grad = d
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach() for p in params]


def test_causal_lm_loss_is_normalised_by_the_windows_token_count(tmp_path):
    data = Tokens(8)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        optim="adamw_torch", train_sampling_strategy="sequential", save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    model, plain = tiny_opt(), tiny_opt()
    trainer = SAMTrainer(model=model, args=args, train_dataset=data, rho=RHO)
    assert trainer.model_accepts_loss_kwargs  # the Trainer passes num_items_in_batch to the model
    trainer.train()
    Trainer(model=plain, args=args, train_dataset=data).train()
    expected = hand_causal_sam(data, RHO)
    per_micro_mean = hand_causal_sam(data, RHO, per_micro_batch_mean=True)
    assert max_diff(expected, per_micro_mean) > 1e-4  # the normalisation matters here
    assert max_diff(expected, params(plain)) > 1e-4  # and so does SAM
    # transformers' causal LM loss runs in float32 (logits.float()), hence 1e-6, not float64's 1e-10
    torch.testing.assert_close(params(model), expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ DDP through accelerate
def test_two_process_ddp_equals_hand_sam_on_the_global_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo): each step's 16 rows (2 processes × 2 micro-batches × 4) give
    one ε from their mean gradient, with one all-reduce per optimizer step (none in other micro-batches)."""
    import subprocess
    import sys
    from pathlib import Path

    import hf_ddp_script

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(Path(hf_ddp_script.__file__)), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert max_diff(rank0["params"], rank1["params"]) == 0, "ranks must hold identical parameters"
    x, y = make_data(16 * hf_ddp_script.STEPS)
    ref, one_device = make_net(), make_net()
    hand_sam(ref, adamw(LR, weight_decay=0.0), batches(x, y, 16), hf_ddp_script.RHO)
    hand_sam(one_device, adamw(LR, weight_decay=0.0), batches(x, y, 8), hf_ddp_script.RHO)
    assert max_diff(params(ref), params(one_device)) > 1e-3  # a per-process ε would be far off
    torch.testing.assert_close(rank0["params"], params(ref), atol=1e-10, rtol=0)
    assert rank0["calls"] == rank1["calls"] == [0, 1] * hf_ddp_script.STEPS
    assert len(rank0["norms"]) == hf_ddp_script.STEPS and rank0["norms"] == rank1["norms"]
    net = make_net()  # ascent_grad_norm of step 1: ‖mean gradient of the 16 rows‖, not 2× (a sum)
    grad = torch.autograd.grad(F.mse_loss(net(x[:16]), y[:16]), list(net.parameters()))
    assert rank0["norms"][0] == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in grad))), rel=1e-9)


@pytest.mark.parametrize("kwargs", [{}, {"m": 2}, {"perturbation": "functional"}, {"precondition": "adam"}])
def test_no_sync_charged_to_lit_bar(tmp_path, kwargs):
    """No host sync issued by lit_bar in SAMTrainer's steps (the Trainer's own are reported apart)."""
    from lit_bar.algorithms.syncs import SyncCounter

    x, y = make_data(8 * STEPS)
    with SyncCounter() as counter:
        train(make_net(dropout=0.2), x, y, tmp_path, rho=RHO, logging_steps=50, **kwargs)
    assert not counter.charged_to("lit_bar"), counter.report()
    assert not counter.charged_to("lit_bar", kind="host_copy"), counter.report()
