"""Flat-LoRA / Bi-LoRA under DDP on CPU (gloo): run by tests/integration/test_successors_ddp.py.

    python successors_ddp_script.py --out DIR      # DIR/<method>_rank<r>.pt for flatlora and bilora

Two forked ranks (``ddp_fork``, as tests/integration/ddp_script.py) each read their half of every
global batch of 8 rows; each writes its final LoRA factors, base weights and (Bi-LoRA) auxiliary
factors. One process on the whole global batch is the reference (same seed, same noise).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package

from tiny.sam import IN, OUT, TinySAM, make_data, sgd, trainer

from lit_bar.callbacks import BiLoRACallback, FlatLoRACallback

GLOBAL_BATCH, STEPS = 8, 3
METHODS = ("flatlora", "bilora")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(IN, 6)
        self.out = nn.Linear(6, OUT)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def lora_net() -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["hidden", "out"], init_lora_weights=False)
    net = inject_adapter_in_model(config, Net()).double()
    for name, param in net.named_parameters():
        param.requires_grad_("lora_" in name)
    return net


def callback(method: str):
    if method == "flatlora":
        return FlatLoRACallback(rho=0.5, schedule="constant", seed=4)
    return BiLoRACallback(rho=0.02, aux_lr=0.3, aux_optimizer="sgd", seed=4)


class RankRows(TinySAM):
    """Rank r reads the r-th part of every global batch; saves its results at the end of fit."""

    def __init__(self, method: str, out: str | None) -> None:
        super().__init__(lora_net(), rho=0.0, optimizer=sgd(0.1))
        self.method, self.out, self.result = method, out, {}

    def train_dataloader(self) -> DataLoader:
        x, y = make_data(GLOBAL_BATCH * STEPS)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per = GLOBAL_BATCH // world
        rows = [s * GLOBAL_BATCH + rank * per + j for s in range(STEPS) for j in range(per)]
        return DataLoader(TensorDataset(x[rows], y[rows]), batch_size=per, shuffle=False)

    def on_fit_end(self) -> None:
        named = dict(self.net.named_parameters())
        self.result = {
            "lora": [p.detach().clone() for n, p in named.items() if "lora_" in n],
            "base": [p.detach().clone() for n, p in named.items() if "base_layer.weight" in n],
            "aux": [],
        }
        for cb in self.trainer.callbacks:
            if isinstance(cb, BiLoRACallback):
                self.result["aux"] = [t.detach().clone() for t in cb.bilora.parameters()]
        if self.out is not None:
            torch.save(
                self.result, os.path.join(self.out, f"{self.method}_rank{self.trainer.global_rank}.pt")
            )


def run(devices: int, method: str, out: str | None = None) -> RankRows:
    module = RankRows(method, out)
    strategy = "ddp_fork" if devices > 1 else "auto"
    fit_trainer = trainer(
        devices=devices, strategy=strategy, use_distributed_sampler=False, callbacks=[callback(method)]
    )
    torch.manual_seed(0)
    fit_trainer.fit(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for method in METHODS:
        run(2, method, args.out)


if __name__ == "__main__":
    main()
