"""FlatLoRACallback and BiLoRACallback against hand-written plain-torch loops (accumulation, both
optimization modes), resume, bf16-mixed, and the combinations they allow and refuse.

The references share no code with lit_bar: Flat-LoRA's noise of step t and layer l is the documented
stream (a CPU generator seeded ((seed·1000003 + t)·9176467 + l) mod (2⁶³ − 1)) scaled per row by
σ_t/√n‖(W + s·BA)_i‖ (arXiv:2409.14396, Eq. 7), σ_t = ρ(1 − cos πt/T)/2; Bi-LoRA's step is one backward at
W₀ + s·B₁A₁ + B₂A₂, SGD descent on (A₁, B₁), SGD ascent on (A₂, B₂), global clipping to ρ
(arXiv:2508.19564).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from peft import LoraConfig, inject_adapter_in_model
from tiny.sam import IN, OUT, TinyPlain, TinySAM, adamw, batches, fit, loader, make_data, sgd, trainer
from torch import nn

from lit_bar.callbacks import BalancednessCallback, BiLoRACallback, FlatLoRACallback

LR, LR2, K, ROWS, BATCH, EPOCHS = 0.1, 0.3, 2, 16, 4, 2
STEPS = ROWS // BATCH // K * EPOCHS  # 4 optimizer steps
TOL = 1e-10


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(IN, 6)
        self.out = nn.Linear(6, OUT)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def lora_net(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["hidden", "out"], init_lora_weights=False)
    net = inject_adapter_in_model(config, Net()).to(dtype)
    for name, param in net.named_parameters():
        param.requires_grad_("lora_" in name)
    return net


def layers(net):
    return [net.hidden, net.out]


def factors(net) -> list[torch.Tensor]:
    return [
        t.detach().clone()
        for m in layers(net)
        for t in (m.lora_A["default"].weight, m.lora_B["default"].weight)
    ]


def bases(net) -> list[torch.Tensor]:
    return [m.base_layer.weight.detach().clone() for m in layers(net)]


def max_diff(xs, ys) -> float:
    return max((x - y).abs().max().item() for x, y in zip(xs, ys, strict=True))


def windows(data):
    rows = batches(*data, BATCH) * EPOCHS
    return [rows[i : i + K] for i in range(0, len(rows), K)]


# ---------------------------------------------------------------------------------------- Flat-LoRA by hand
def hand_noise(seed, step, index, w, a, b, s, sigma):
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 9_176_467 + index) % (2**63 - 1))
    z = torch.randn(w.shape, generator=generator, dtype=w.dtype)
    return sigma / math.sqrt(w.shape[1]) * torch.linalg.norm(w + s * b @ a, dim=1, keepdim=True) * z


def hand_flatlora(data, rho, seed=0, remove=True, cosine=True):
    """Flat-LoRA by hand: per step ε on W, k micro-batches of L/k at W + ε, SGD on (A, B), W ← W − ε."""
    net = lora_net()
    lora = [p for p in net.parameters() if p.requires_grad]
    for step, window in enumerate(windows(data)):
        sigma = rho * 0.5 * (1 - math.cos(math.pi * step / STEPS))  # the paper's cosine-increasing σ
        sigma = sigma if cosine else rho * step / STEPS
        noise = []
        with torch.no_grad():
            for index, m in enumerate(layers(net)):
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                w = m.base_layer.weight
                noise.append(hand_noise(seed, step, index, w.detach(), a, b, m.scaling["default"], sigma))
                w.add_(noise[-1])
        for x, y in window:
            (F.mse_loss(net(x), y) / K).backward()
        with torch.no_grad():
            for p in lora:
                p -= LR * p.grad
                p.grad = None
            for m, e in zip(layers(net), noise, strict=True):
                if remove:
                    m.base_layer.weight.sub_(e)
    return net


@pytest.mark.parametrize("mode", ["sam_module", "automatic"])
def test_flatlora_callback_matches_the_hand_loop_with_accumulation(mode):
    data = make_data(ROWS)
    want = hand_flatlora(data, rho=0.5)
    plain = hand_flatlora(data, rho=0.0)  # "no noise": plain LoRA
    kept = hand_flatlora(data, rho=0.5, remove=False)  # "noise not removed"
    linear = hand_flatlora(data, rho=0.5, cosine=False)  # "a linear ramp instead of the paper's cosine"
    assert max_diff(factors(linear), factors(want)) > 1e3 * TOL
    assert max_diff(factors(plain), factors(want)) > 1e3 * TOL
    assert max_diff(bases(kept), bases(want)) > 1e3 * TOL
    net = lora_net()
    flat = FlatLoRACallback(rho=0.5, schedule="cosine")
    if mode == "sam_module":
        module, extra = TinySAM(net, rho=0.0, optimizer=sgd(LR), accumulate_grad_batches=K), {}
    else:
        module, extra = TinyPlain(net, sgd(LR)), {"accumulate_grad_batches": K}
    fit(module, loader(*data, BATCH), max_epochs=EPOCHS, callbacks=[flat], **extra)
    assert flat.flat.total_steps == STEPS
    assert max_diff(factors(net), factors(want)) < TOL
    assert max_diff(bases(net), bases(lora_net())) < 1e-14  # the base is back where it started


class ValidatedPlain(TinyPlain):
    """Records, at every validation and training step, how far the base weights are from ``start``."""

    def __init__(self, net, optimizer, start) -> None:
        super().__init__(net, optimizer)
        self.start, self.val_offsets, self.train_offsets = start, [], []

    def _offset(self) -> float:
        return max_diff(bases(self.net), self.start)

    def training_step(self, batch, batch_idx):
        self.train_offsets.append(self._offset())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_offsets.append(self._offset())


def test_flatlora_validation_inside_a_window_sees_the_clean_weights():
    data = make_data(ROWS)
    net = lora_net()
    module = ValidatedPlain(net, sgd(LR), bases(net))
    run = trainer(max_epochs=EPOCHS, accumulate_grad_batches=K, val_check_interval=1, limit_val_batches=1,
                  callbacks=[FlatLoRACallback(rho=0.5)])  # fmt: skip
    run.fit(module, loader(*data, BATCH), loader(*data, BATCH))
    assert len(module.val_offsets) == ROWS // BATCH * EPOCHS  # after every micro-batch, mid-window included
    assert max(module.train_offsets) > 1e-3  # training steps do see W + ε ...
    assert max(module.val_offsets) < 1e-14  # ... validation never does
    assert max_diff(factors(net), factors(hand_flatlora(data, rho=0.5))) < TOL  # the same ε came back


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def resumable_run(folder, callback, stop=False, ckpt_path=None):
    """TinySAM (ρ = 0) + ``callback`` for 2 epochs (4 steps), a checkpoint after each epoch."""
    module = TinySAM(lora_net(), rho=0.0, optimizer=sgd(LR), accumulate_grad_batches=K)
    checkpoint = ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1)
    callbacks = [callback, checkpoint, *([StopAfterFirstEpoch()] if stop else [])]
    fit(module, loader(*make_data(ROWS), BATCH), max_epochs=EPOCHS, callbacks=callbacks,
        enable_checkpointing=True, ckpt_path=ckpt_path)  # fmt: skip
    return module


def test_flatlora_resumed_run_draws_the_same_noise(tmp_path):
    straight = resumable_run(tmp_path / "straight", FlatLoRACallback(rho=0.5))
    other_seed = resumable_run(tmp_path / "other", FlatLoRACallback(rho=0.5, seed=5))
    resumable_run(tmp_path / "part", FlatLoRACallback(rho=0.5), stop=True)
    (checkpoint,) = (tmp_path / "part").glob("*.ckpt")
    resumed = resumable_run(
        tmp_path / "resumed", FlatLoRACallback(rho=0.5, seed=5), ckpt_path=str(checkpoint)
    )
    assert max_diff(factors(other_seed.net), factors(straight.net)) > 1e3 * TOL  # the seed matters
    assert max_diff(factors(resumed.net), factors(straight.net)) < TOL  # the checkpoint's seed and T won


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_flatlora_and_bilora_train_under_mixed_precision(precision):
    """16-mixed: the auxiliary step goes through the GradScaler (unscaled, skipped on inf like the base)."""
    data = make_data(ROWS, dtype=torch.float32)
    for callback in (FlatLoRACallback(rho=0.5, schedule="constant"), BiLoRACallback(rho=0.05, aux_lr=0.1)):
        net = lora_net(torch.float32)
        start, base = factors(net), bases(net)
        scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
        plugin = MixedPrecision(precision, "cpu", scaler=scaler)
        fit(TinyPlain(net, sgd(LR)), loader(*data, BATCH), plugins=[plugin], callbacks=[callback])
        assert all(torch.isfinite(t).all() for t in factors(net))
        assert max_diff(factors(net), start) > 1e-4
        assert max_diff(bases(net), base) < 1e-6  # Flat-LoRA's noise is off again; Bi-LoRA never touches W
    assert all(
        torch.isfinite(b).all() and b.abs().max() > 0 for b in callback.bilora.b
    )  # the ascent moved B₂


# ----------------------------------------------------------------------------------------- Bi-LoRA by hand
def hand_bilora(data, rho, seed=0, ascent=True, clip=True):
    """Bi-LoRA by hand: k micro-batches of L/k at W₀ + s·B₁A₁ + B₂A₂, SGD descent / ascent, global clip."""
    net = lora_net()
    generator = torch.Generator().manual_seed(seed)
    aux = []
    for m in layers(net):
        n_in, n_out = m.base_layer.weight.shape[1], m.base_layer.weight.shape[0]
        a2 = torch.empty(2, n_in, dtype=torch.float64).uniform_(
            -1 / math.sqrt(n_in), 1 / math.sqrt(n_in), generator=generator
        )
        aux.append([a2.requires_grad_(), torch.zeros(n_out, 2, dtype=torch.float64, requires_grad=True)])
    primary = [
        (m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]) for m in layers(net)
    ]
    for window in windows(data):
        for x, y in window:
            h = x
            for i, (m, (a1, b1, s), (a2, b2)) in enumerate(zip(layers(net), primary, aux, strict=True)):
                h = F.linear(h, m.base_layer.weight + s * b1 @ a1 + b2 @ a2, m.base_layer.bias)
                h = torch.tanh(h) if i == 0 else h
            (F.mse_loss(h, y) / K).backward()
        with torch.no_grad():
            for a1, b1, _ in primary:
                for p in (a1, b1):
                    p -= LR * p.grad
                    p.grad = None
            for pair in aux:
                for p in pair:
                    p += (LR2 if ascent else -LR2) * p.grad
                    p.grad = None
            c = torch.sqrt(sum(torch.linalg.norm(b2 @ a2) ** 2 for a2, b2 in aux))
            if clip and c > rho:
                for pair in aux:
                    for p in pair:
                        p *= math.sqrt(rho / c)
    return net, [t.detach() for pair in aux for t in pair]


@pytest.mark.parametrize("mode", ["sam_module", "automatic"])
def test_bilora_callback_matches_the_hand_loop_with_accumulation(mode):
    data, rho = make_data(ROWS), 0.02
    want_net, want_aux = hand_bilora(data, rho)
    flipped_net, flipped_aux = hand_bilora(data, rho, ascent=False)
    _, unclipped_aux = hand_bilora(data, rho, clip=False)
    assert (
        max_diff(flipped_aux, want_aux) > 1e3 * TOL
        and max_diff(factors(flipped_net), factors(want_net)) > 1e3 * TOL
    )
    assert max_diff(unclipped_aux, want_aux) > 1e3 * TOL
    net = lora_net()
    bi = BiLoRACallback(rho=rho, aux_lr=LR2, aux_optimizer="sgd")
    if mode == "sam_module":
        module, extra = TinySAM(net, rho=0.0, optimizer=sgd(LR), accumulate_grad_batches=K), {}
    else:
        module, extra = TinyPlain(net, sgd(LR)), {"accumulate_grad_batches": K}
    fit(module, loader(*data, BATCH), max_epochs=EPOCHS, callbacks=[bi], **extra)
    assert max_diff(factors(net), factors(want_net)) < TOL
    assert max_diff(bi.bilora.parameters(), want_aux) < TOL
    assert not any("lora_" not in n for n in module.state_dict() if "base_layer" not in n and "lora" in n)
    assert sorted(n for n, p in module.named_parameters() if p.requires_grad) == sorted(
        n for n in module.state_dict() if "lora_" in n
    )  # only the primary factors are the module's trainable parameters


def test_bilora_resumes_its_auxiliary_pair_and_optimizer(tmp_path):
    straight_cb = BiLoRACallback(rho=0.02, aux_lr=LR2)
    straight = resumable_run(tmp_path / "straight", straight_cb)
    resumable_run(tmp_path / "part", BiLoRACallback(rho=0.02, aux_lr=LR2), stop=True)
    (checkpoint,) = (tmp_path / "part").glob("*.ckpt")
    resumed_cb = BiLoRACallback(rho=0.02, aux_lr=LR2)
    resumed = resumable_run(tmp_path / "resumed", resumed_cb, ckpt_path=str(checkpoint))
    fresh_cb = BiLoRACallback(rho=0.02, aux_lr=LR2)  # "auxiliary state lost on resume"
    fresh = TinySAM(lora_net(), rho=0.0, optimizer=sgd(LR), accumulate_grad_batches=K)
    fresh.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    fit(fresh, loader(*make_data(ROWS), BATCH), max_epochs=1, callbacks=[fresh_cb])
    assert max_diff(fresh_cb.bilora.parameters(), straight_cb.bilora.parameters()) > 1e3 * TOL
    assert max_diff(factors(resumed.net), factors(straight.net)) < TOL
    assert max_diff(resumed_cb.bilora.parameters(), straight_cb.bilora.parameters()) < TOL


class SaveInsideWindowAndStop(Callback):
    """Saves a checkpoint after the first micro-batch of the second window, then stops."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == K:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


@pytest.mark.parametrize("successor", ["flatlora", "bilora"])
def test_resume_from_inside_an_accumulation_window_is_exact(tmp_path, successor):
    """Flat-LoRA: the checkpoint holds the clean base weights and the resumed window draws the same ε;
    Bi-LoRA: the auxiliary gradients of the window's first micro-batch come back."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def make_callback():
        return FlatLoRACallback(rho=0.5) if successor == "flatlora" else BiLoRACallback(rho=0.02, aux_lr=LR2)

    def run(callbacks, ckpt_path=None):
        module = TinySAM(lora_net(), rho=0.0, optimizer=sgd(LR), accumulate_grad_batches=K)
        data = StatefulDataLoader(torch.utils.data.TensorDataset(*make_data(ROWS)), batch_size=BATCH)
        fit(module, data, max_epochs=1, callbacks=callbacks, ckpt_path=ckpt_path)
        return module, callbacks[0]

    straight, straight_cb = run([make_callback()])
    path = tmp_path / "inside.ckpt"
    run([make_callback(), SaveInsideWindowAndStop(path)])
    saved = torch.load(path, weights_only=True)
    assert "sam_window" in saved  # SAMModule saved the primary's partial window
    clean = bases(lora_net())
    for name, start in zip(("net.hidden.base_layer.weight", "net.out.base_layer.weight"), clean, strict=True):
        assert (saved["state_dict"][name] - start).abs().max() < 1e-14  # never the noisy weights
    resumed, resumed_cb = run([make_callback()], ckpt_path=str(path))
    assert max_diff(factors(resumed.net), factors(straight.net)) < TOL
    if successor == "bilora":
        assert "bilora_window" in saved
        assert max_diff(resumed_cb.bilora.parameters(), straight_cb.bilora.parameters()) < TOL


# ------------------------------------------------------------------------------------------- combinations
def test_successors_refuse_sam_and_each_other_and_combine_with_nbar():
    data = make_data(ROWS)
    with pytest.raises(ValueError, match="replaces SAM's ascent"):
        fit(
            TinySAM(lora_net(), rho=0.05, optimizer=sgd(LR)),
            loader(*data, BATCH),
            callbacks=[FlatLoRACallback()],
        )
    with pytest.raises(ValueError, match="replaces SAM's ascent"):
        fit(
            TinySAM(lora_net(), rho=0.05, optimizer=sgd(LR)),
            loader(*data, BATCH),
            callbacks=[BiLoRACallback()],
        )
    with pytest.raises(ValueError, match="choose one"):
        fit(
            TinyPlain(lora_net(), sgd(LR)),
            loader(*data, BATCH),
            callbacks=[FlatLoRACallback(), BiLoRACallback()],
        )
    for successor in (FlatLoRACallback(rho=0.5), BiLoRACallback(rho=0.02)):
        bar = BalancednessCallback(mode="nbar", mu=0.5)
        net = lora_net()
        fit(TinySAM(net, rho=0.0, optimizer=sgd(LR)), loader(*data, BATCH), callbacks=[successor, bar])
        assert len(bar.pairs) == 2  # the primary pairs only (Bi-LoRA's auxiliary pair is no peft factor)
        assert int(bar.branch_counts.sum()) == 2 * ROWS // BATCH


@pytest.mark.parametrize("successor", ["flatlora", "bilora"])
def test_no_host_sync_charged_to_lit_bar_in_successor_steps(successor):
    """Noise, ascent and projection stay on the device (lit_bar.algorithms.syncs.SyncCounter; as in
    test_host_syncs)."""
    from lit_bar.algorithms.syncs import SyncCounter

    callback = FlatLoRACallback(rho=0.5) if successor == "flatlora" else BiLoRACallback(rho=0.02)
    module = TinySAM(lora_net(), rho=0.0, optimizer=adamw(), accumulate_grad_batches=K)
    counter = SyncCounter(trace_backward=True)
    with counter:
        fit(module, loader(*make_data(ROWS), BATCH), callbacks=[callback, BalancednessCallback(mu=0.5)],
            log_every_n_steps=1000)  # fmt: skip
    assert not counter.charged_to("lit_bar"), counter.report()
    assert not counter.charged_to("lit_bar", "host_copy"), counter.report()


def test_bilora_auxiliary_step_is_skipped_when_the_fp16_scaler_skips():
    """Scale 65536 overflows the first step (target shifted by 3, as in the nBAR test): the GradScaler
    skips the primary's step, and the auxiliary ascent is skipped with it (B₂ stays 0); later steps move."""

    class FirstStep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self.aux_b = [b.detach().clone() for b in bi.bilora.b]
                self.primary = factors(pl_module.net)
                self.scale = trainer.precision_plugin.scaler.get_scale()

    x, y = make_data(ROWS, dtype=torch.float32, target=3.0)
    net = lora_net(torch.float32)
    start = factors(net)
    bi, first = BiLoRACallback(rho=0.05, aux_lr=0.1), FirstStep()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    fit(TinyPlain(net, sgd(LR)), loader(x, y, BATCH), callbacks=[bi, first], plugins=[plugin])
    assert first.scale == 32768.0  # the first step overflowed and was skipped
    assert max_diff(first.primary, start) == 0.0
    assert all(b.abs().max() == 0 for b in first.aux_b)  # the ascent was skipped too
    assert all(torch.isfinite(b).all() and b.abs().max() > 0 for b in bi.bilora.b)  # later steps ascended


@pytest.mark.parametrize("strategy", ["fsdp", "model_parallel"])
def test_successors_refuse_sharded_strategies(strategy):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    from lit_bar.callbacks.flatlora import refuse_combinations

    sharded = {"fsdp": FSDPStrategy, "model_parallel": ModelParallelStrategy}[strategy]()
    trainer = SimpleNamespace(strategy=sharded, callbacks=[])
    with pytest.raises(ValueError, match=rf"does not support --trainer.strategy {type(sharded).__name__}"):
        refuse_combinations(trainer, TinyPlain(lora_net(), sgd(LR)), "FlatLoRACallback")
