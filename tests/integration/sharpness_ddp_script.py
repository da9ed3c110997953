"""SharpnessMonitor under DDP on CPU (gloo): run by tests/integration/test_sharpness_monitor.py.

    python sharpness_ddp_script.py --devices 2 --out DIR

Trains a tiny SAMModule for a few steps with ``strategy="ddp_fork"`` (Lightning's DistributedSampler
gives each rank its own rows) and a SharpnessMonitor measuring after fit. Each rank writes
``DIR/rank<r>.pt``: its final parameters, the monitor's logged values, and the estimates it computed
itself before rank 0's were broadcast (to show that every rank measured the same batches).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package

from tiny.sam import TinySAM, make_data, make_net, sgd, trainer

import lit_bar.callbacks.sharpness as monitor_module
from lit_bar.callbacks import SharpnessMonitor

MONITOR = {
    "num_batches": 3,
    "pooled_batches": 2,
    "batch_size": 4,
    "directions": 3,
    "power_iterations": 4,
    "ascent_steps": 2,
}
ROWS = 32


def dataset() -> TensorDataset:
    return TensorDataset(*make_data(ROWS))


class SavingSAM(TinySAM):
    def __init__(self, out: str) -> None:
        super().__init__(make_net(dropout=0.2), optimizer=sgd(0.2), rho=0.1)
        self.out = out
        self.local: dict = {}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(dataset(), batch_size=4, shuffle=True)

    def on_fit_end(self) -> None:  # after the callbacks' on_train_end, in every rank
        monitor = next(c for c in self.trainer.callbacks if isinstance(c, SharpnessMonitor))
        state = {
            "params": [p.detach().clone() for p in self.net.parameters()],
            "results": monitor.results,
            "local": self.local,
        }
        torch.save(state, os.path.join(self.out, f"rank{self.trainer.global_rank}.pt"))


def run(devices: int, out: str) -> None:
    module = SavingSAM(out)
    measure = monitor_module.measure_sharpness

    def recording(*args, **kwargs):
        estimates = measure(*args, **kwargs)
        module.local.update({k: (e.value, e.spread) for k, e in estimates.items()})
        return estimates

    monitor_module.measure_sharpness = recording
    strategy = "ddp_fork" if devices > 1 else "auto"
    fit_trainer = trainer(
        devices=devices, strategy=strategy, max_steps=3, callbacks=[SharpnessMonitor(**MONITOR)]
    )
    torch.manual_seed(0)
    fit_trainer.fit(module)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    run(args.devices, args.out)


if __name__ == "__main__":
    main()
