"""SAMModule under DDP on CPU (gloo): run by tests/integration/test_sam_ddp.py in a subprocess.

    python ddp_script.py --devices 2 --m 0 2 --out DIR      # one run per m; m = 0 means m unset

``strategy="ddp_fork"`` forks the ranks from this process (the same DDPStrategy and reducer as
``"ddp"``, without re-importing torch and Lightning in every rank, which costs seconds per run), so
one script runs several configurations. Each rank trains on its own ordered rows of a fixed global
batch (no DistributedSampler) and writes ``DIR/m<m>_rank<r>.pt``: its final parameters and, per
training step, how many ``torch.distributed.all_reduce`` calls the step made (DDP's own gradient
all-reduce runs in C++ and is not counted).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny_sam import TinySAM, make_data, make_net, sgd, trainer

GLOBAL_BATCH = 8
STEPS = 3
RHO = 0.3


class RankRowsSAM(TinySAM):
    """Each rank reads rows [rank·b, (rank+1)·b) of every global batch, in order (b = batch / world)."""

    def __init__(self, m: int | None, perturbation: str = "sam", out: str | None = None) -> None:
        super().__init__(
            make_net(), optimizer=sgd(0.2, momentum=0.5), rho=RHO, m=m, perturbation=perturbation
        )
        self.out = out
        self.all_reduce_calls: list[int] = []
        self._calls_before = 0

    def train_dataloader(self) -> DataLoader:
        x, y = make_data(GLOBAL_BATCH * STEPS)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per = GLOBAL_BATCH // world
        rows = [s * GLOBAL_BATCH + rank * per + i for s in range(STEPS) for i in range(per)]
        return DataLoader(TensorDataset(x[rows], y[rows]), batch_size=per, shuffle=False)

    def on_train_batch_start(self, batch, batch_idx):
        self._calls_before = _COUNTER["calls"]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.all_reduce_calls.append(_COUNTER["calls"] - self._calls_before)

    def on_fit_end(self):  # runs in every rank (the forked ranks return nothing else to the parent)
        if self.out is not None:
            params = [p.detach().clone() for p in self.net.parameters()]
            name = f"{self.perturbation}_m{self.m or 0}_rank{self.trainer.global_rank}.pt"
            torch.save(
                {"params": params, "all_reduce_calls": self.all_reduce_calls}, os.path.join(self.out, name)
            )


_COUNTER = {"calls": 0}
_all_reduce = torch.distributed.all_reduce


def _counting_all_reduce(*args, **kwargs):
    _COUNTER["calls"] += 1
    return _all_reduce(*args, **kwargs)


def run(devices: int, m: int | None, perturbation: str = "sam", out: str | None = None) -> RankRowsSAM:
    """Train on ``devices`` CPU processes (forked DDP when more than one) and return the module."""
    torch.distributed.all_reduce = _counting_all_reduce
    module = RankRowsSAM(m, perturbation, out)
    strategy = "ddp_fork" if devices > 1 else "auto"
    fit_trainer = trainer(devices=devices, strategy=strategy, use_distributed_sampler=False)
    torch.manual_seed(0)
    fit_trainer.fit(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--m", type=int, nargs="+", default=[0])
    parser.add_argument("--perturbation", nargs="+", default=["sam"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for perturbation in args.perturbation:
        for m in args.m:
            run(args.devices, m or None, perturbation, args.out)


if __name__ == "__main__":
    main()
