"""FlatLoRATrainerCallback / BiLoRATrainerCallback in the transformers Trainer under 2-process DDP on CPU
(gloo), launched by tests/integration/test_successors_hf.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 successors_hf_ddp_script.py --out DIR

accelerate hands each process every other batch of 4 rows of the sequential loader, so one optimizer
step covers 8 consecutive rows, as one process with batch 8 does (``--devices 1``). Each rank writes
``DIR/<method>_rank<r>.pt``: its final LoRA factors, base weights and (Bi-LoRA) auxiliary factors.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_successors_hf import LoraRegressor
from test_successors_lightning import lora_net
from tiny.sam import Rows, make_data
from transformers import Trainer, TrainingArguments

from lit_bar.hf import BiLoRATrainerCallback, FlatLoRATrainerCallback

ROWS, PER_DEVICE, LR = 24, 4, 0.1
METHODS = ("flatlora", "bilora")


class OrderedTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)


def run(method: str, out: str, batch: int) -> dict:
    net = lora_net()
    callback = (
        FlatLoRATrainerCallback(rho=0.5, seed=3)
        if method == "flatlora"
        else BiLoRATrainerCallback(rho=0.02, aux_lr=0.3, aux_optimizer="sgd", seed=3)
    )
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, num_train_epochs=1, max_grad_norm=0.0,
        report_to="none", use_cpu=True, save_strategy="no", lr_scheduler_type="constant",
        disable_tqdm=True, seed=0, learning_rate=LR,
    )  # fmt: skip
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    trainer = OrderedTrainer(
        model=LoraRegressor(net), args=args, train_dataset=Rows(*make_data(ROWS)), callbacks=[callback],
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    named = dict(net.named_parameters())
    return {
        "lora": [p.detach().clone() for n, p in named.items() if "lora_" in n],
        "base": [p.detach().clone() for n, p in named.items() if "base_layer.weight" in n],
        "aux": [t.detach().clone() for t in callback.bilora.parameters()] if method == "bilora" else [],
        "steps": trainer.state.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    for method in METHODS:
        result = run(method, args.out, PER_DEVICE)
        torch.save(result, os.path.join(args.out, f"{method}_rank{rank}.pt"))


if __name__ == "__main__":
    main()
