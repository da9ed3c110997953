"""FiniteCheck under 2-process DDP on CPU (gloo): run by tests/integration/test_finite_check.py.

    python finite_ddp_script.py --out DIR

Only rank 1's rows of optimizer step 3 hold a NaN target. DDP's all-reduce spreads the NaN
gradient to both ranks' weights, but only rank 1 saw the bad batch: each rank writes the error it
stopped with to ``DIR/rank<r>.txt`` (``on_exception``); both must name the batch, the same step and
the same check, and neither may hang (the forked ranks skip ``on_exception``: the check itself writes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package

from tiny.sam import TinySAM, make_data, make_net, sgd, trainer

from lit_bar.algorithms.nonfinite import NonFiniteError
from lit_bar.callbacks import FiniteCheck


class RankRows(TinySAM):
    def train_dataloader(self) -> DataLoader:
        x, y = make_data(16, dtype=torch.float32)  # 8 steps of 2 rows per rank
        rank = self.global_rank
        x, y = x[rank::2].clone(), y[rank::2].clone()
        if rank == 1:
            y[2 * 2, 0] = float("nan")  # rank 1's first row of optimizer step 3
        return DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)


class ReportingCheck(FiniteCheck):
    def __init__(self, out: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out = out

    def _check(self, trainer, where: str) -> None:
        try:
            super()._check(trainer, where)
        except NonFiniteError as err:
            (self.out / f"rank{trainer.global_rank}.txt").write_text(str(err))
            raise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    module = RankRows(make_net(dtype=torch.float32), optimizer=sgd(0.01), rho=0.05)
    fit_trainer = trainer(devices=2, strategy="ddp_fork", use_distributed_sampler=False, max_steps=8,
                          callbacks=[ReportingCheck(out, every_n_steps=2)])  # fmt: skip
    try:
        fit_trainer.fit(module)
    except Exception as err:  # the forked ranks' error, re-raised here
        print(f"stopped: {type(err).__name__}")
        return
    print("finished without an error")


if __name__ == "__main__":
    main()
