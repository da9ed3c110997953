"""SAMTrainer under 2-process DDP on CPU (gloo), launched by tests/integration/test_hf_sam_trainer.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 hf_ddp_script.py --out DIR

accelerate gives each process every other batch of the sequential loader, so one optimizer step
(2 processes × 2 micro-batches × 4 rows) covers 16 consecutive rows. Each rank writes
``DIR/rank<r>.pt``: its final parameters and, per ``training_step`` call, how many
``torch.distributed.all_reduce`` calls it made (DDP's own gradient reduction runs in C++).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_hf_sam_trainer import Regressor, Rows
from tiny.sam import make_data, make_net
from transformers import TrainingArguments

from lit_bar.hf import SAMTrainer

STEPS, RHO, LR = 3, 0.2, 0.05
_CALLS = {"n": 0}
_all_reduce = torch.distributed.all_reduce


def _counting_all_reduce(*args, **kwargs):
    _CALLS["n"] += 1
    return _all_reduce(*args, **kwargs)


class CountingSAMTrainer(SAMTrainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        before = _CALLS["n"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.calls.append(_CALLS["n"] - before)
        return loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    torch.distributed.all_reduce = _counting_all_reduce
    x, y = make_data(16 * STEPS)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=STEPS,
        learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        optim="adamw_torch", train_sampling_strategy="sequential", save_strategy="no", report_to=[],
        use_cpu=True, ddp_backend="gloo", disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    net = make_net()
    trainer = CountingSAMTrainer(model=Regressor(net), args=args, train_dataset=Rows(x, y), rho=RHO)
    trainer.train()
    rank = trainer.args.process_index
    norms = [e["ascent_grad_norm"] for e in trainer.state.log_history if "ascent_grad_norm" in e]
    state = {"params": [p.detach().clone() for p in net.parameters()], "calls": trainer.calls, "norms": norms}
    torch.save(state, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
