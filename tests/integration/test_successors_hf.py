"""FlatLoRATrainerCallback / BiLoRATrainerCallback in the transformers Trainer against the same hand loops
as the Lightning callbacks (tests/integration/test_successors_lightning.py): 2 epochs of 16 rows, batch 4,
2 micro-batches per step, SGD."""

from __future__ import annotations

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
from tiny_sam import Rows, make_data
from torch import nn


class LoraRegressor(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(x), labels)}


def hf_train(net, data, callbacks, tmp_path):
    from transformers import Trainer, TrainingArguments

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, gradient_accumulation_steps=K,
        num_train_epochs=EPOCHS, max_grad_norm=0.0, report_to="none", use_cpu=True, save_strategy="no",
        lr_scheduler_type="constant", disable_tqdm=True, seed=0, learning_rate=LR,
    )  # fmt: skip
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    trainer = OrderedTrainer(
        model=LoraRegressor(net), args=args, train_dataset=Rows(*data), callbacks=callbacks,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
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
