"""SAMModule's hook order (I), clipping and LR schedule (J), and bad input (K)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from tiny.sam import (
    LossOnlySAM,
    TinyPlain,
    TinySAM,
    assert_params_close,
    batches,
    fit,
    hand_sam,
    loader,
    make_data,
    make_net,
    max_diff,
    sgd,
    snapshot,
)

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.lightning.schedules import WarmupLinearDecay


class HookRecorder(Callback):
    def __init__(self, events: list[tuple[str, int]]) -> None:
        self.events = events

    def _add(self, trainer, name):
        self.events.append((name, trainer.global_step))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._add(trainer, "on_train_batch_start")

    def on_before_backward(self, trainer, pl_module, loss):
        self._add(trainer, "on_before_backward")

    def on_after_backward(self, trainer, pl_module):
        self._add(trainer, "on_after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._add(trainer, "on_before_optimizer_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._add(trainer, "on_train_batch_end")


class RecordingSAM(TinySAM):
    def __init__(self, net, events, **kwargs) -> None:
        super().__init__(net, **kwargs)
        self.events = events

    def on_before_optimizer_step(self, optimizer):
        self.events.append(("module.on_before_optimizer_step", self.trainer.global_step))
        super().on_before_optimizer_step(optimizer)


# ------------------------------------------------------------------ I: hooks
@pytest.mark.parametrize("m", [None, 2])
def test_hook_sequence_of_one_sam_step_with_accumulation(m):
    events: list[tuple[str, int]] = []
    x, y = make_data(8)
    module = RecordingSAM(make_net(), events, optimizer=sgd(), rho=0.1, m=m, accumulate_grad_batches=2)
    run = fit(module, loader(x, y, 4), callbacks=[HookRecorder(events)])
    backward = [("on_before_backward", 0), ("on_after_backward", 0)]
    if m is None:  # both ascents first; all descent backwards in the window's last training_step
        first, second = [], backward * 2
    else:  # each chunk of m = 2 is ascended and descended inside its own micro-batch
        first, second = backward * 2, backward * 2
    assert events == [
        ("on_train_batch_start", 0),
        *first,
        ("on_train_batch_end", 0),
        ("on_train_batch_start", 0),
        *second,
        ("on_before_optimizer_step", 0),
        ("module.on_before_optimizer_step", 0),
        ("on_train_batch_end", 1),
    ]
    assert run.global_step == 1


# ------------------------------------------------------------------ J: clipping and LR schedule
@pytest.mark.parametrize(("algorithm", "clip"), [("norm", torch.nn.utils.clip_grad_norm_), ("value", None)])
def test_gradient_clipping_equals_torch_clipping_in_a_hand_loop(algorithm, clip):
    clip = clip or torch.nn.utils.clip_grad_value_
    x, y = make_data(16, target=2.0)
    net, ref, unclipped = make_net(), make_net(), make_net()
    module = TinySAM(
        net, optimizer=sgd(0.2), rho=0.1, gradient_clip_val=0.05, gradient_clip_algorithm=algorithm
    )
    fit(module, loader(x, y, 4))
    hand_sam(ref, sgd(0.2), batches(x, y, 4), 0.1, before_step=lambda n, o: clip(n.parameters(), 0.05))
    hand_sam(unclipped, sgd(0.2), batches(x, y, 4), 0.1)
    assert max_diff(list(ref.parameters()), list(unclipped.parameters())) > 1e-2  # clipping is active
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


def test_fp16_clipping_sees_unscaled_gradients():
    x, y = make_data(16, dtype=torch.float32, target=2.0)
    net, ref = make_net(dtype=torch.float32), make_net(dtype=torch.float32)
    module = TinySAM(net, optimizer=sgd(0.2), rho=0.1, gradient_clip_val=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(module, loader(x, y, 4), plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    clip = partial(torch.nn.utils.clip_grad_norm_, max_norm=0.05)
    hand_sam(ref, sgd(0.2), batches(x, y, 4), 0.1, before_step=lambda n, o: clip(n.parameters()))
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=2e-3, rtol=1e-2)


class LrRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_scheduler_steps_once_per_optimizer_step_with_accumulation():
    x, y = make_data(32)
    step_lr = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    sam_lrs, plain_lrs = LrRecorder(), LrRecorder()
    net, ref = make_net(), make_net()
    module = TinySAM(net, optimizer=sgd(0.2), lr_scheduler=step_lr, rho=0.1, accumulate_grad_batches=2)
    fit(module, loader(x, y, 4), callbacks=[sam_lrs])
    fit(
        TinyPlain(make_net(), sgd(0.2), step_lr),
        loader(x, y, 4),
        callbacks=[plain_lrs],
        accumulate_grad_batches=2,
    )
    assert sam_lrs.lrs == plain_lrs.lrs == pytest.approx([0.2, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])
    hand_sam(ref, sgd(0.2), batches(x, y, 8), 0.1, scheduler_factory=step_lr)
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


def test_warmup_linear_decay_learns_the_run_length_in_optimizer_steps():
    x, y = make_data(32)
    recorder = LrRecorder()
    schedule = partial(WarmupLinearDecay, warmup_steps=1)
    module = TinySAM(
        make_net(), optimizer=sgd(0.3), lr_scheduler=schedule, rho=0.1, accumulate_grad_batches=2
    )
    fit(module, loader(x, y, 4), callbacks=[recorder])
    # 8 micro-batches / 2 = 4 optimizer steps: factors 0, 1, 2/3, 1/3, 0 at steps 0..4
    assert recorder.lrs[1::2] == pytest.approx([0.3, 0.2, 0.1, 0.0])
    assert recorder.lrs[0] == 0.0


# ------------------------------------------------------------------ K: bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -0.1}, "rho must be a finite number >= 0"),
        ({"perturbation": "sharp"}, "unknown perturbation 'sharp'"),
    ],
)
def test_bad_sam_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TinySAM(make_net(), **kwargs)


def _fit_raises(module, match, **trainer_kwargs):
    x, y = make_data(8)
    start = snapshot(module)
    with pytest.raises(ValueError, match=match):
        fit(module, loader(x, y, 4), **trainer_kwargs)
    assert_params_close(snapshot(module), start, atol=0)  # raised before any step


def test_m_not_dividing_the_batch_size_raises_before_training():
    _fit_raises(TinySAM(make_net(), optimizer=sgd(), m=3), "m=3 does not divide the training batch size 4")


def test_functional_sam_needs_the_split_loss():
    module = LossOnlySAM(make_net(), optimizer=sgd(), perturbation="functional")
    _fit_raises(module, r"compute_outputs\(batch\) and loss_from_outputs\(outputs, batch\)")


def test_adam_preconditioning_with_sgd_raises():
    module = TinySAM(make_net(), optimizer=sgd(), precondition="adam")
    _fit_raises(module, "precondition='adam' reads Adam's second moment, but the optimizer is SGD")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "xbar"}, "unknown BAR mode 'xbar'"),
        ({"schedule": "exp"}, "unknown μ schedule 'exp'"),
        ({"mu": -1.0}, "mu must be a finite number >= 0, got -1.0"),
    ],
)
def test_bad_balancedness_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BalancednessCallback(**kwargs)


def test_balancedness_callback_without_pairs_says_what_it_looked_for():
    module = TinySAM(make_net(), optimizer=sgd())
    _fit_raises(module, "found no scale-invariant pairs.*lora_A/lora_B", callbacks=[BalancednessCallback()])


def test_balancedness_callback_on_frozen_pair_raises():
    module = TinySAM(make_net(), optimizer=sgd())
    module.net[0].weight.requires_grad_(False)
    callback = BalancednessCallback(pairs=[("net.0.weight", "net.3.weight")])
    _fit_raises(module, "requires_grad=False", callbacks=[callback])


def test_schedule_length_is_capped_by_the_epochs_when_max_steps_is_larger():
    """max_steps=100 with one epoch of 4 optimizer steps: the run (and the schedule) lasts 4 steps."""
    x, y = make_data(32)
    recorder = LrRecorder()
    schedule = partial(WarmupLinearDecay, warmup_steps=1)
    module = TinySAM(
        make_net(), optimizer=sgd(0.3), lr_scheduler=schedule, rho=0.1, accumulate_grad_batches=2
    )
    fit(module, loader(x, y, 4), callbacks=[recorder], max_steps=100)
    assert recorder.lrs[1::2] == pytest.approx([0.3, 0.2, 0.1, 0.0])


@pytest.mark.parametrize("sam", [False, True], ids=["automatic", "sam"])
def test_decaying_schedule_on_an_endless_run_raises(sam):
    x, y = make_data(8)
    net = make_net()
    module = TinySAM(net, optimizer=sgd(), rho=0.1) if sam else TinyPlain(net, sgd())
    callback = BalancednessCallback(schedule="linear", pairs=[("net.0.weight", "net.3.weight")])
    start = snapshot(module)
    with pytest.raises(ValueError, match="no finite length"):
        fit(module, loader(x, y, 4), callbacks=[callback], max_epochs=-1, max_steps=-1)
    assert_params_close(snapshot(module), start, atol=0)


@pytest.mark.parametrize(
    "trainer_kwargs, flag",
    [
        ({"accumulate_grad_batches": 2}, "accumulate_grad_batches"),
        ({"gradient_clip_val": 1.0}, "gradient_clip_val"),
    ],
)
def test_trainer_flags_refused_under_manual_optimization_name_their_new_place(trainer_kwargs, flag):
    _fit_raises(
        TinySAM(make_net(), optimizer=sgd()),
        rf"pass it to the module instead: TinySAM\({flag}=",
        **trainer_kwargs,
    )
