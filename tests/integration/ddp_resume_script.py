"""Exact resume under 2-process DDP on CPU (gloo): run by tests/integration/test_resume.py.

    python ddp_resume_script.py --out DIR

Trains ``TinySAM`` (dropout 0.3, 2 micro-batches per optimizer step) for two epochs on a shuffled
``TextDataModule`` (each rank reads its share of every epoch), saving checkpoints after
micro-batch 3 (inside a window of epoch 1) and 8 (inside a window of epoch 2); then resumes from
each in the same process (``ddp_fork``). Each rank writes ``DIR/<run>_rank<r>.pt``: its final
parameters.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package

from tiny.sam import IN, OUT, TinySAM, make_net, sgd, trainer

from lit_bar.data.base import TextDataModule

ROWS = 40  # 5 batches of 4 per rank and epoch: windows of 2 micro-batches, the last one alone


class Regression(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(ROWS, IN, generator=gen), torch.randn(ROWS, OUT, generator=gen)

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class RegressionData(TextDataModule):
    """The shuffled, resumable training loader of ``TextDataModule`` over a tensor regression set."""

    def __init__(self) -> None:
        super().__init__(data_dir="unused", batch_size=4, seed=11)

    def setup(self, stage: str | None = None) -> None:
        self.datasets = {"train": Regression(), "validation": Regression()}

    def collate(self, rows):
        return torch.stack([r[0] for r in rows]).double(), torch.stack([r[1] for r in rows]).double()


class SaveAfter(pl.Callback):
    """Checkpoints after the chosen micro-batches; each rank's final parameters at the end."""

    def __init__(self, folder: Path, after: tuple[int, ...], name: str) -> None:
        self.folder, self.after, self.seen, self.name = folder, set(after), 0, name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen in self.after:
            trainer.save_checkpoint(self.folder / f"after{self.seen}.ckpt")

    def on_train_end(self, trainer, pl_module) -> None:
        params = [p.detach().clone() for p in pl_module.parameters()]
        torch.save(params, self.folder / f"{self.name}_rank{trainer.global_rank}.pt")


def run(out: Path, name: str, ckpt_path: Path | None = None) -> None:
    pl.seed_everything(3)
    module = TinySAM(
        make_net(dropout=0.3), optimizer=sgd(0.2, momentum=0.5), rho=0.3, accumulate_grad_batches=2
    )
    callbacks = [SaveAfter(out, (3, 8), name)]
    fit = trainer(strategy="ddp_fork", devices=2, max_epochs=2, limit_val_batches=0, callbacks=callbacks)
    fit.fit(module, RegressionData(), ckpt_path=ckpt_path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    run(out, "straight")
    for n in (3, 8):
        (out / f"r{n}").mkdir(exist_ok=True)
        run(out / f"r{n}", "resumed", ckpt_path=out / f"after{n}.ckpt")


if __name__ == "__main__":
    main()
