"""SAMModule under DDP on CPU (gloo): run by tests/integration/test_sam_ddp.py in a subprocess.

    python ddp_script.py --devices 2 --m 0 2 --out DIR      # one run per m; m = 0 means m unset

``strategy="ddp_fork"`` forks the ranks from this process (the same DDPStrategy and reducer as
``"ddp"``, without re-importing torch and Lightning in every rank, which costs seconds per run), so
one script runs several configurations. Each rank trains on its own ordered rows of a fixed global
batch (no DistributedSampler) and writes ``DIR/<perturbation>_m<m>_rank<r>.pt``: its final
parameters and, per training step, how many ``torch.distributed.all_reduce`` calls the step made
(DDP's own gradient all-reduce runs in C++ and is not counted).

    python ddp_script.py --devices 2 --accumulate 2 --dropout 0.3 --out DIR   # DIR/accumulate_rank<r>.pt

runs SAM with 2 micro-batches per optimizer step and dropout, logging every step, and also
records each micro-batch's rows and the RNG state its ascent pass started from, and the logged
``train/grad_norm``: enough for a plain-torch reference with the same dropout masks.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package

from tiny.sam import TinySAM, make_data, make_net, sgd, trainer

GLOBAL_BATCH = 8
STEPS = 3
RHO = 0.3


class RankRowsSAM(TinySAM):
    """Each rank reads its own ordered rows of every global batch (b = batch / world / accumulate):
    micro-batch i of a step takes block i of the step's rows, and rank r the r-th part of that block."""

    def __init__(
        self,
        m: int | None,
        perturbation: str = "sam",
        out: str | None = None,
        accumulate: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            make_net(dropout=dropout),
            optimizer=sgd(0.2, momentum=0.5),
            rho=RHO,
            m=m,
            perturbation=perturbation,
            accumulate_grad_batches=accumulate,
        )
        self.out = out
        self.all_reduce_calls: list[int] = []
        self.records: list[dict] = []  # per micro-batch: rows, RNG state before its ascent, logged grad_norm
        self._calls_before = 0

    def rows(self, world: int, rank: int) -> list[int]:
        block = GLOBAL_BATCH // self.accumulate_grad_batches
        per = block // world
        return [
            s * GLOBAL_BATCH + i * block + rank * per + j
            for s in range(STEPS)
            for i in range(self.accumulate_grad_batches)
            for j in range(per)
        ]

    def train_dataloader(self) -> DataLoader:
        x, y = make_data(GLOBAL_BATCH * STEPS)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        rows = self.rows(world, rank)
        per = GLOBAL_BATCH // self.accumulate_grad_batches // world
        return DataLoader(TensorDataset(x[rows], y[rows]), batch_size=per, shuffle=False)

    def on_train_batch_start(self, batch, batch_idx):
        self._calls_before = _COUNTER["calls"]
        per = len(batch[0])
        rows = self.rows(self.trainer.world_size, self.trainer.global_rank)[
            batch_idx * per : (batch_idx + 1) * per
        ]
        self.records.append({"rows": rows, "rng": torch.get_rng_state()})

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.all_reduce_calls.append(_COUNTER["calls"] - self._calls_before)
        norm = self.trainer.callback_metrics.get("train/grad_norm")
        self.records[-1]["grad_norm"] = None if norm is None else float(norm)

    def on_fit_end(self):  # runs in every rank (the forked ranks return nothing else to the parent)
        if self.out is not None:
            params = [p.detach().clone() for p in self.net.parameters()]
            rank = self.trainer.global_rank
            name = (
                f"accumulate_rank{rank}.pt"
                if self.accumulate_grad_batches > 1
                else f"{self.perturbation}_m{self.m or 0}_rank{rank}.pt"
            )
            state = {"params": params, "all_reduce_calls": self.all_reduce_calls, "records": self.records}
            torch.save(state, os.path.join(self.out, name))


_COUNTER = {"calls": 0}
_all_reduce = torch.distributed.all_reduce


def _counting_all_reduce(*args, **kwargs):
    _COUNTER["calls"] += 1
    return _all_reduce(*args, **kwargs)


def run(
    devices: int,
    m: int | None,
    perturbation: str = "sam",
    out: str | None = None,
    accumulate: int = 1,
    dropout: float = 0.0,
) -> RankRowsSAM:
    """Train on ``devices`` CPU processes (forked DDP when more than one) and return the module.

    With accumulation every step is a logging step (``train/grad_norm`` recorded per step)."""
    torch.distributed.all_reduce = _counting_all_reduce
    module = RankRowsSAM(m, perturbation, out, accumulate, dropout)
    strategy = "ddp_fork" if devices > 1 else "auto"
    log_every = 1 if accumulate > 1 else 50
    fit_trainer = trainer(
        devices=devices, strategy=strategy, use_distributed_sampler=False, log_every_n_steps=log_every
    )
    torch.manual_seed(0)
    fit_trainer.fit(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--m", type=int, nargs="+", default=[0])
    parser.add_argument("--perturbation", nargs="+", default=["sam"])
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.accumulate > 1:
        run(args.devices, None, "sam", args.out, args.accumulate, args.dropout)
        return
    for perturbation in args.perturbation:
        for m in args.m:
            run(args.devices, m or None, perturbation, args.out)


if __name__ == "__main__":
    main()
