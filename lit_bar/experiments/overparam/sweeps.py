"""The overparameterisation study's runs: one (sweep, size, method, seed) trained and scored.

Both sweeps train through the Lightning ``Trainer`` with :class:`lit_bar.SAMModule` (and
:class:`lit_bar.BalancednessCallback` for nBAR). (a) LoRA rank on the real all-MiniLM-L6-v2 and real
SST-2 (seeded subsamples of the train and validation splits; LoRA on query/value, head trained in
full; base = AdamW; nBAR's pairs are the adapters' (lora_A, lora_B)). (b) MLP width on a random
teacher's two-class task with a fraction of the training labels flipped: f(x) = W₂ ReLU(W₁ [x; 1])
without biases, so f(c·W₁, W₂/c) = f(W₁, W₂) for every c > 0 and (W₁, W₂) is the scale-invariant pair
nBAR regularises (ReLU is positively homogeneous); base = SGD + momentum.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_bar import BalancednessCallback, SAMModule
from lit_bar.experiments.environment import bare_trainer, minilm_folder
from lit_bar.tasks.lora import LoraSettings, apply_lora

__all__ = ["FULL", "METHODS", "QUICK", "Sweep", "run_lora", "run_mlp", "teacher_data"]

METHODS = ("base", "SAM", "nBAR")


@dataclass
class Sweep:
    """One sweep's settings (``--quick`` and the full run differ only here)."""

    sizes: list[int]
    seeds: list[int]
    steps: int
    n_train: int
    n_test: int
    batch: int
    lr: float
    rho: float
    mu: float


QUICK = {
    "lora": Sweep([1, 16], [0], 10, 160, 128, 16, 5e-4, 0.05, 1.0),
    "mlp": Sweep([4, 64, 512], [0], 100, 200, 2000, 50, 0.05, 0.1, 0.1),
}
FULL = {
    "lora": Sweep([1, 8, 64], [0], 30, 480, 256, 16, 2e-3, 0.05, 1.0),
    "mlp": Sweep([4, 16, 64, 256, 1024], [0, 1, 2], 400, 200, 4000, 50, 0.05, 0.1, 0.1),
}


class Classifier(SAMModule):
    """Cross-entropy classifier over any network; ``batch`` is ``(inputs..., labels)`` or a dict."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = net

    def compute_outputs(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.net(batch[0])

    def loss_from_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        return F.cross_entropy(outputs.float(), labels)


def train(
    net: nn.Module, method: str, sweep: Sweep, loader: DataLoader, optimizer: Any, pairs: Any
) -> Classifier:
    """Fit ``net`` for ``sweep.steps`` optimizer steps with ``method`` and return the module."""
    module = Classifier(net, optimizer=optimizer, rho=sweep.rho if method == "SAM" else 0.0)
    callbacks = []
    if method == "nBAR":
        callbacks.append(BalancednessCallback(mode="nbar", mu=sweep.mu, schedule="linear", pairs=pairs))
    trainer = bare_trainer(
        accelerator="cpu", devices=1, max_steps=sweep.steps, max_epochs=-1, callbacks=callbacks
    )
    trainer.fit(module, loader)
    if trainer.interrupted or trainer.global_step != sweep.steps:  # e.g. Ctrl-C: never record it as done
        raise SystemExit(f"training stopped at step {trainer.global_step} of {sweep.steps}; not recorded")
    return module


def result_row(
    part: str,
    size: int,
    params: int,
    method: str,
    seed: int,
    sweep: Sweep,
    module: Classifier,
    train_loader: DataLoader,
    test_loader: DataLoader,
    start: float,
) -> dict[str, Any]:
    """One row of ``results.csv``; ``seconds`` counts from ``start`` to the end of scoring."""
    train_acc, test_acc = accuracy(module, train_loader), accuracy(module, test_loader)
    return {
        "part": part, "size": size, "params": params, "n_train": sweep.n_train,
        "overparam": params / sweep.n_train, "method": method, "seed": seed,
        "train_acc": train_acc, "test_acc": test_acc, "seconds": time.perf_counter() - start,
    }  # fmt: skip


@torch.no_grad()
def accuracy(module: Classifier, loader: DataLoader) -> float:
    """The fraction of examples whose argmax logit is the label (eval mode)."""
    module.eval()
    correct = total = 0
    for batch in loader:
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        correct += int((module.compute_outputs(batch).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


# ----------------------------------------------------------------------------- (b) MLP width
def teacher_data(seed: int, n_train: int, n_test: int, dim: int = 10, noise: float = 0.2) -> tuple[Any, Any]:
    """Inputs with a constant-1 column; labels of a random teacher MLP; ``noise`` of train labels flipped."""
    gen = torch.Generator().manual_seed(1000 + seed)
    w1, w2 = torch.randn(8, dim, generator=gen), torch.randn(8, generator=gen)
    x = torch.randn(n_train + n_test, dim, generator=gen)
    hidden = torch.relu(x @ w1.T)
    labels = (hidden @ w2 > (hidden @ w2).median()).long()
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    train_y = labels[:n_train].clone()
    flip = torch.rand(n_train, generator=gen) < noise
    train_y[flip] = 1 - train_y[flip]
    return (x[:n_train], train_y), (x[n_train:], labels[n_train:])


def run_mlp(width: int, method: str, seed: int, sweep: Sweep) -> dict[str, Any]:
    """One run of sweep (b): the bias-free MLP of ``width`` on the teacher task, trained with ``method``."""
    (xtr, ytr), (xte, yte) = teacher_data(seed, sweep.n_train, sweep.n_test)
    seed_everything(seed, verbose=False)
    net = nn.Sequential(
        nn.Linear(xtr.shape[1], width, bias=False), nn.ReLU(), nn.Linear(width, 2, bias=False)
    )
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=sweep.batch, shuffle=True)
    optimizer = partial(torch.optim.SGD, lr=sweep.lr, momentum=0.9)
    start = time.perf_counter()
    module = train(net, method, sweep, loader, optimizer, pairs=[("net.0.weight", "net.2.weight")])
    params = sum(p.numel() for p in net.parameters())
    scored = (DataLoader(TensorDataset(x, y), batch_size=500) for x, y in ((xtr, ytr), (xte, yte)))
    return result_row("mlp_width", width, params, method, seed, sweep, module, *scored, start)


# ----------------------------------------------------------------------------- (a) LoRA rank
def sample_rows(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of a JSON-lines split, drawn without replacement with ``seed`` (all when fewer)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def text_loader(tokenizer: Any, rows: list[dict[str, Any]], batch: int, shuffle: bool) -> DataLoader:
    """Dynamic padding per batch (SST-2 sentences are short), max 64 tokens."""

    def collate(chunk: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            [r["sentence"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor([r["label"] for r in chunk])}

    return DataLoader(rows, batch_size=batch, shuffle=shuffle, collate_fn=collate)


def run_lora(rank: int, method: str, seed: int, sweep: Sweep, data_dir: Path) -> dict[str, Any]:
    """One run of sweep (a): LoRA of ``rank`` on MiniLM, trained on SST-2 with ``method``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_folder("overparam_study.py: error: the LoRA sweep", hint="or --parts mlp")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_rows = sample_rows(data_dir / "sst2" / "train.jsonl", sweep.n_train, seed)
    test_rows = sample_rows(data_dir / "sst2" / "validation.jsonl", sweep.n_test, 42)
    seed_everything(seed, verbose=False)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = LoraSettings(
        r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    net = apply_lora(model, lora).eval()  # from_pretrained's mode, kept by Lightning: no dropout, as measured
    optimizer = partial(torch.optim.AdamW, lr=sweep.lr, weight_decay=0.0)
    start = time.perf_counter()
    module = train(
        net, method, sweep, text_loader(tokenizer, train_rows, sweep.batch, True), optimizer, pairs=None
    )
    params = sum(p.numel() for n, p in net.named_parameters() if p.requires_grad and "lora_" in n)
    scored = (text_loader(tokenizer, rows, 64, False) for rows in (train_rows, test_rows))
    return result_row("lora_rank", rank, params, method, seed, sweep, module, *scored, start)
