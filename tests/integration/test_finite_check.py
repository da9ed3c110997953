"""A diverged run stops, names the step and the cause, and writes nothing non-finite (issue 19 §3).

``FiniteCheck`` keeps a device-side record and reads it every ``every_n_steps`` optimizer steps, before
checkpoint saves and at the end; ``SAMModule`` refuses to checkpoint and ``AdapterExport`` to export
NaN/inf weights. Where the first non-finite step is asserted, a plain-torch loop finds it independently.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from test_balancedness_callback import make_lora_net
from test_host_syncs import counted_fit
from tiny.sam import TinyPlain, TinySAM, batches, hand_sam, loader, make_data, make_net, sgd, trainer

from lit_bar.algorithms.nonfinite import NonFiniteError
from lit_bar.callbacks import BalancednessCallback, FiniteCheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LR = 1e3  # SGD on the float32 tiny net: the loss overflows after a few steps
EVERY = 4


def first_bad_step(x, y, lr=LR, rho=0.05, batch=4) -> int:
    """The first optimizer step whose loss (at the weights before it) or whose updated weights are
    not finite, from a plain-torch SAM loop (``tiny_sam.hand_sam``, one step per batch)."""
    net = make_net(dtype=torch.float32)
    for step, (bx, by) in enumerate(batches(x, y, batch), start=1):
        if not torch.isfinite(F.mse_loss(net(bx), by)):
            return step
        hand_sam(net, sgd(lr), [(bx, by)], rho)
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            return step
    raise AssertionError("the reference run did not diverge")


def finite_files(folder: Path) -> dict[str, bool]:
    out = {}
    for path in sorted(folder.glob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        out[path.name] = all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    return out


def saved_steps(folder: Path) -> list[int]:
    return sorted(
        torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in folder.glob("*.ckpt")
    )


def run(module, data, callbacks, **kwargs) -> pl.Trainer:
    fit_trainer = trainer(callbacks=callbacks, **kwargs)
    torch.manual_seed(123)
    fit_trainer.fit(module, data)
    return fit_trainer


def test_sam_run_with_a_too_high_learning_rate_stops_at_the_next_check_and_keeps_good_checkpoints(tmp_path):
    x, y = make_data(4 * 16, dtype=torch.float32)
    bad = first_bad_step(x, y)
    assert 2 < bad < 16 and bad % EVERY  # a check falls after it, and not on it
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(LR), rho=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    fit_trainer = trainer(callbacks=[FiniteCheck(every_n_steps=EVERY), ckpt], enable_checkpointing=True,
                          max_steps=16)  # fmt: skip
    with pytest.raises(NonFiniteError) as info:
        torch.manual_seed(123)
        fit_trainer.fit(module, loader(x, y, 4))
    message = str(info.value)
    assert f"became NaN/inf at optimizer step {bad} " in message, message
    assert "the loss" in message and f"lr={LR:g} now" in message and "learning rate too high" in message
    assert f"found before saving a checkpoint at step {bad}" in message  # the save of step `bad` was refused
    assert saved_steps(tmp_path) == list(range(1, bad)) and all(finite_files(tmp_path).values())


def test_without_checkpoints_the_run_stops_at_the_first_check_after_the_bad_step():
    x, y = make_data(4 * 16, dtype=torch.float32)
    bad = first_bad_step(x, y)
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(LR), rho=0.05)
    fit_trainer = trainer(callbacks=[FiniteCheck(every_n_steps=EVERY)], max_steps=16)
    with pytest.raises(NonFiniteError, match=f"at optimizer step {bad} "):
        fit_trainer.fit(module, loader(x, y, 4))
    assert fit_trainer.global_step == math.ceil(bad / EVERY) * EVERY  # the documented latency


def test_save_weights_only_checkpoints_are_refused_by_sam_module_itself(tmp_path):
    """No FiniteCheck, and weights-only saves skip callback hooks: SAMModule refuses NaN weights."""
    x, y = make_data(4 * 16, dtype=torch.float32)
    bad = first_bad_step(x, y)
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(LR), rho=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}",
                           save_weights_only=True)  # fmt: skip
    with pytest.raises(NonFiniteError, match=f"refusing to save a checkpoint at step {bad}: .* NaN/inf"):
        run(module, loader(x, y, 4), [ckpt], enable_checkpointing=True, max_steps=16)
    assert saved_steps(tmp_path) == list(range(1, bad)) and all(finite_files(tmp_path).values())


def test_nbar_with_automatic_optimization_stops(tmp_path):
    """LoRA + nBAR in Lightning's automatic optimization (BalancednessCallback), diverging."""
    x, y = make_data(4 * 16, dtype=torch.float32)
    module = TinyPlain(make_lora_net(torch.float32), optimizer=sgd(1e4))
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    callbacks = [BalancednessCallback(mode="nbar", mu=0.5), FiniteCheck(every_n_steps=2), ckpt]
    with pytest.raises(NonFiniteError, match=r"became NaN/inf at optimizer step (\d+) ") as info:
        run(module, loader(x, y, 4), callbacks, enable_checkpointing=True, max_steps=16)
    bad = int(re.search(r"optimizer step (\d+) ", str(info.value)).group(1))
    assert saved_steps(tmp_path) == list(range(1, bad)) and all(finite_files(tmp_path).values())
    assert not all(torch.isfinite(p).all() for p in module.parameters())  # it did diverge


def test_nan_regression_targets_are_named_as_the_cause():
    x, y = make_data(4 * 8, dtype=torch.float32)
    y[4 * 4 + 2, 1] = float("nan")  # a row of the 5th batch: optimizer step 5 with batches of 4
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01), rho=0.05, accumulate_grad_batches=1)
    with pytest.raises(NonFiniteError) as info:
        run(module, loader(x, y, 4), [FiniteCheck(every_n_steps=3)], max_steps=8)
    message = str(info.value)
    assert "the training batch (inputs or targets)" in message and "at optimizer step 5 " in message
    assert "NaN/inf values in the data" in message and "found at step 6" in message


def test_accumulation_names_the_optimizer_step_of_a_bad_micro_batch():
    x, y = make_data(4 * 8, dtype=torch.float32)
    y[4 * 3, 0] = float("nan")  # micro-batch 4 of 8 = the 2nd micro-batch of optimizer step 2
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01), rho=0.05, accumulate_grad_batches=2)
    with pytest.raises(NonFiniteError, match=r"at optimizer step 2 \(found at step 2;"):
        run(module, loader(x, y, 4), [FiniteCheck(every_n_steps=1)], max_steps=4)


def test_a_checkpoint_with_nan_weights_is_refused_before_training(tmp_path):
    x, y = make_data(4 * 8, dtype=torch.float32)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="good", save_top_k=1, every_n_train_steps=2)
    run(TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01)), loader(x, y, 4), [ckpt],
        enable_checkpointing=True, max_steps=2)  # fmt: skip
    state = torch.load(tmp_path / "good.ckpt", map_location="cpu", weights_only=True)
    state["state_dict"]["net.0.weight"][1, 2] = float("nan")
    torch.save(state, tmp_path / "corrupt.ckpt")
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01))
    fit_trainer = trainer(callbacks=[FiniteCheck()], max_steps=4)
    with pytest.raises(
        NonFiniteError, match=r"before training starts \(net\.0\.weight\): the checkpoint .*corrupt"
    ):
        fit_trainer.fit(module, loader(x, y, 4), ckpt_path=str(tmp_path / "corrupt.ckpt"))
    assert fit_trainer.global_step == 2  # restored, never stepped


def test_a_checkpoint_with_huge_finite_weights_is_named_as_the_cause(tmp_path):
    x, y = make_data(4 * 8, dtype=torch.float32)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="good", save_top_k=1, every_n_train_steps=2)
    run(TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01)), loader(x, y, 4), [ckpt],
        enable_checkpointing=True, max_steps=2)  # fmt: skip
    state = torch.load(tmp_path / "good.ckpt", map_location="cpu", weights_only=True)
    state["state_dict"]["net.3.weight"][0, 0] = 3e38  # finite, but the output overflows
    torch.save(state, tmp_path / "corrupt.ckpt")
    fit_trainer = trainer(callbacks=[FiniteCheck(every_n_steps=1)], max_steps=4)
    module = TinySAM(make_net(dtype=torch.float32), optimizer=sgd(0.01))
    with pytest.raises(NonFiniteError, match=r"at optimizer step 3 .*likely cause: a corrupted checkpoint"):
        fit_trainer.fit(module, loader(x, y, 4), ckpt_path=str(tmp_path / "corrupt.ckpt"))


def test_ddp_every_process_stops_at_the_same_check_with_the_same_message(tmp_path):
    """Only rank 1 sees the NaN batch; both ranks must stop together, naming it (no hang, no split)."""
    script = Path(__file__).with_name("finite_ddp_script.py")
    command = [sys.executable, str(script), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "stopped:" in done.stdout, (done.stdout + done.stderr)[-3000:]
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert messages[0] == messages[1], messages
    assert "the training batch (inputs or targets), the loss and the trainable weights" in messages[0]
    assert "at optimizer step 3 (found at step 4;" in messages[0]


# ------------------------------------------------------------------ fp16: skipped steps stay skipped
def fp16_trainer(callbacks, init_scale=2.0**16, **kwargs) -> pl.Trainer:
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)  # 65536 (the default) overflows at once
    return trainer(callbacks=callbacks, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], **kwargs)


def test_fp16_overflow_skips_do_not_stop_the_run():
    x, y = make_data(4 * 16, dtype=torch.float32, target=300.0)
    net = make_net(dtype=torch.float32)
    before = [p.detach().clone() for p in net.parameters()]
    fit_trainer = fp16_trainer([FiniteCheck(every_n_steps=1)], max_steps=16)
    fit_trainer.fit(TinySAM(net, optimizer=sgd(1e-4), rho=0.05), loader(x, y, 4))
    scale = fit_trainer.precision_plugin.scaler.get_scale()
    assert scale < 65536.0  # steps were skipped (non-finite gradients) ...
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(
        not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)
    )  # ... then it trained


class NanLoss(TinySAM):
    """The loss is NaN at the optimizer steps listed in ``nan_steps`` (1-based)."""

    def __init__(self, *args, nan_steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_steps = set(nan_steps)

    def loss_from_outputs(self, outputs, batch):
        loss = super().loss_from_outputs(outputs, batch)
        return loss * float("nan") if self.trainer.global_step + 1 in self.nan_steps else loss


def test_fp16_a_transient_nan_loss_is_a_skipped_step():
    x, y = make_data(4 * 8, dtype=torch.float32)
    module = NanLoss(make_net(dtype=torch.float32), optimizer=sgd(1e-2), rho=0.05, nan_steps={3})
    fit_trainer = fp16_trainer([FiniteCheck(every_n_steps=1)], max_steps=8)
    fit_trainer.fit(module, loader(x, y, 4))
    assert fit_trainer.global_step == 8 and all(torch.isfinite(p).all() for p in module.parameters())


def test_fp16_a_persistent_nan_loss_stops_once_the_scaler_has_given_up():
    """Every skip halves the scale: from 1024 (no overflow in steps 1–2) the skips of steps 3, 4, ...
    take it to 1 after step 12 and below 1 after step 13, where the run stops."""
    x, y = make_data(4 * 40, dtype=torch.float32)
    module = NanLoss(make_net(dtype=torch.float32), optimizer=sgd(1e-2), rho=0.05, nan_steps=range(3, 100))
    fit_trainer = fp16_trainer([FiniteCheck(every_n_steps=1)], init_scale=1024.0, max_steps=40)
    with pytest.raises(
        NonFiniteError, match=r"the loss became NaN/inf at optimizer step 13 .*16-mixed"
    ) as info:
        fit_trainer.fit(module, loader(x, y, 4))
    assert "GradScaler" in str(info.value) and fit_trainer.precision_plugin.scaler.get_scale() == 0.5
    assert all(torch.isfinite(p).all() for p in module.parameters())  # every NaN step was skipped


# ------------------------------------------------------------------ cost: no sync in the step
def test_no_host_sync_outside_the_checks():
    counter = counted_fit(TinySAM(make_net(), optimizer=sgd(0.01)), [FiniteCheck()], log_every_n_steps=1000)
    ours = counter.charged_to("lit_bar")  # FiniteCheck.on_train_end runs before Phases marks "end"
    assert [(r.phase, r.function) for r in ours] == [("batch 3", "_check")], counter.report()
    assert not [r for r in counter.charged_to("lit_bar", "host_copy") if r.phase.startswith("batch")]


def test_periodic_checks_sync_once_each():
    counter = counted_fit(TinySAM(make_net(), optimizer=sgd(0.01)), [FiniteCheck(every_n_steps=2)],
                          log_every_n_steps=1000)  # fmt: skip
    records = [(r.phase, r.function) for r in counter.charged_to("lit_bar")]
    assert records == [("batch 1", "_check"), ("batch 3", "_check"), ("batch 3", "_check")], counter.report()


def test_bad_every_n_steps_is_refused():
    with pytest.raises(ValueError, match=r"every_n_steps must be an int >= 0 or None, got -1"):
        FiniteCheck(every_n_steps=-1)
