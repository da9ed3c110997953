"""FlatLoRATrainerCallback / BiLoRATrainerCallback in the transformers Trainer, and plain loops, against
the hand loops of tests/integration/test_successors_lightning.py: 2 epochs of 16 rows, batch 4, 2
micro-batches per step, SGD."""

from __future__ import annotations

import shutil

import torch
import torch.nn.functional as F
from test_successors_lightning import (
    BATCH,
    EPOCHS,
    LR,
    LR2,
    ROWS,
    TOL,
    K,
    bases,
    factors,
    hand_bilora,
    hand_flatlora,
    lora_net,
    max_diff,
)
from tiny.sam import Rows, make_data
from torch import nn


class LoraRegressor(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(x), labels)}


def hf_train(net, data, callbacks, tmp_path, resume=None, **extra):
    from transformers import Trainer, TrainingArguments

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    extra = {"save_strategy": "no", **extra}

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, gradient_accumulation_steps=K,
        num_train_epochs=EPOCHS, max_grad_norm=0.0, report_to="none", use_cpu=True,
        lr_scheduler_type="constant", disable_tqdm=True, seed=0, learning_rate=LR, **extra,
    )  # fmt: skip
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    trainer = OrderedTrainer(
        model=LoraRegressor(net), args=args, train_dataset=Rows(*data), callbacks=callbacks,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_flatlora_trainer_callback_equals_the_hand_loop(tmp_path):
    from lit_bar.hf import FlatLoRATrainerCallback

    data = make_data(ROWS)
    want = hand_flatlora(data, rho=0.5)
    assert max_diff(factors(hand_flatlora(data, rho=0.0)), factors(want)) > 1e3 * TOL  # "no noise"
    net = lora_net()
    trainer = hf_train(net, data, [FlatLoRATrainerCallback(rho=0.5)], tmp_path)
    assert trainer.state.global_step == ROWS // BATCH // K * EPOCHS
    assert max_diff(factors(net), factors(want)) < TOL
    assert max_diff(bases(net), bases(lora_net())) < 1e-14


def test_bilora_trainer_callback_equals_the_hand_loop(tmp_path):
    from lit_bar.hf import BiLoRATrainerCallback

    data, rho = make_data(ROWS), 0.02
    want_net, want_aux = hand_bilora(data, rho)
    assert max_diff(hand_bilora(data, rho, ascent=False)[1], want_aux) > 1e3 * TOL  # "ascent sign flipped"
    net = lora_net()
    callback = BiLoRATrainerCallback(rho=rho, aux_lr=LR2, aux_optimizer="sgd")
    hf_train(net, data, [callback], tmp_path)
    assert max_diff(factors(net), factors(want_net)) < TOL
    assert max_diff(callback.bilora.parameters(), want_aux) < TOL


def test_bilora_trainer_callback_resumes_its_auxiliary_pair(tmp_path):
    from lit_bar.hf import BiLoRATrainerCallback

    data, rho = make_data(ROWS), 0.02

    def callback():
        return BiLoRATrainerCallback(rho=rho, aux_lr=LR2)

    saving = {"save_strategy": "steps", "save_steps": 2}
    straight_net, straight_cb = lora_net(), callback()
    hf_train(straight_net, data, [straight_cb], tmp_path / "straight", **saving)
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / BiLoRATrainerCallback.FILENAME).is_file()
    resumed_net, resumed_cb = lora_net(), callback()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-2")  # resume_from_checkpoint=True picks it
    hf_train(resumed_net, data, [resumed_cb], tmp_path / "resumed", resume=True)
    lost_net, lost_cb = lora_net(), callback()  # "auxiliary state lost": the same resume without the file
    shutil.copytree(checkpoint, tmp_path / "lost" / "checkpoint-2")
    (tmp_path / "lost" / "checkpoint-2" / BiLoRATrainerCallback.FILENAME).unlink()
    hf_train(lost_net, data, [lost_cb], tmp_path / "lost", resume=True)
    assert max_diff(lost_cb.bilora.parameters(), straight_cb.bilora.parameters()) > 1e3 * TOL
    assert max_diff(factors(resumed_net), factors(straight_net)) < TOL
    assert max_diff(resumed_cb.bilora.parameters(), straight_cb.bilora.parameters()) < TOL


def test_plain_loops_with_the_pure_torch_pieces_equal_the_hand_loops():
    """The usage the docstrings of lit_bar.methods.FlatLoRA / BiLoRA show, in a hand-written loop."""
    from test_successors_lightning import STEPS, windows

    from lit_bar.methods import BiLoRA, FlatLoRA

    data = make_data(ROWS)
    net = lora_net()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    flat = FlatLoRA(net, rho=0.5, schedule="cosine", total_steps=STEPS)
    for step, window in enumerate(windows(data)):
        flat.perturb(step)
        for x, y in window:
            (F.mse_loss(net(x), y) / K).backward()
        optimizer.step()
        optimizer.zero_grad()
        flat.restore()
    assert max_diff(factors(net), factors(hand_flatlora(data, rho=0.5))) < TOL

    net = lora_net()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    bi = BiLoRA(net, rho=0.02)
    aux = torch.optim.SGD(bi.parameters(), lr=LR2, maximize=True)
    for window in windows(data):
        for x, y in window:
            (F.mse_loss(net(x), y) / K).backward()
        optimizer.step()
        aux.step()
        bi.project_()
        optimizer.zero_grad()
        aux.zero_grad()
    want_net, want_aux = hand_bilora(data, 0.02)
    assert max_diff(factors(net), factors(want_net)) < TOL
    assert max_diff(bi.parameters(), want_aux) < TOL


def test_trainer_callbacks_under_two_process_ddp_equal_one_process(tmp_path):
    """Flat-LoRA: the same ε on both ranks without communication; Bi-LoRA: the auxiliary gradients are
    averaged over the ranks by the callback (they are not DDP parameters)."""
    import subprocess
    import sys
    from pathlib import Path

    import successors_hf_ddp_script as script

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(Path(script.__file__)), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for method in script.METHODS:
        rank0, rank1 = (torch.load(tmp_path / f"{method}_rank{r}.pt") for r in (0, 1))
        one = script.run(method, str(tmp_path / "one"), 2 * script.PER_DEVICE)
        assert rank0["steps"] == one["steps"] == script.ROWS // (2 * script.PER_DEVICE)
        for key in ("lora", "base", "aux"):
            if one[key]:
                assert max_diff(rank0[key], rank1[key]) < TOL, (method, key)
                assert max_diff(rank0[key], one[key]) < TOL, (method, key)
        assert max_diff(one["lora"], factors(lora_net())) > 1e3 * TOL  # training moved the factors
