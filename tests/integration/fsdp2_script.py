"""SAMModule under FSDP2 (``--trainer.strategy fsdp2``) on 2 CPU processes (gloo): run by
tests/integration/test_fsdp2.py in a subprocess, and importable for the 1-process reference.

    python fsdp2_script.py --out DIR [--methods sam nbar ...] [--resume]

For each method, a tiny float64 peft-LoRA RoBERTa trains :data:`STEPS` optimizer steps of
:data:`GLOBAL_BATCH` rows in 2 micro-batches (``accumulate_grad_batches=2``); rank r reads the r-th
half of every micro-batch's rows, so the 2-process run sees the 1-process run's batches. Rank r
writes ``DIR/<method>_rank<r>.pt``: the full trainable tensors, whether every parameter was a
DTensor, its bytes of frozen base weights, and the collectives the run made (all-reduces,
reduce-scatters). ``--resume`` adds ``DIR/resumed_rank<r>.pt``: SAM + nBAR stopped and checkpointed
after optimizer step 1, then resumed to the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import sys
from typing import Any

import torch
import torch.distributed
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

from lit_bar import SAMModule
from lit_bar.algorithms.pairs import balancedness, module_pairs
from lit_bar.algorithms.sharded import is_sharded, local
from lit_bar.algorithms.syncs import SyncCounter
from lit_bar.callbacks import BalancednessCallback

GLOBAL_BATCH, ACCUMULATE, STEPS, LENGTH, VOCAB = 8, 2, 3, 12, 50
RESUMED = "sam_nbar"  # the method whose resumed run the test compares with its straight run

METHODS: dict[str, dict[str, Any]] = {
    "lora": {"rho": 0.0},
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5, "adaptive": True},
    "fsam": {"rho": 0.05, "perturbation": "functional"},
    "psam": {"rho": 0.05, "precondition": "adam"},
    "nbar": {"rho": 0.0, "bar": "nbar"},
    "obar": {"rho": 0.0, "bar": "obar"},
    "sam_nbar": {"rho": 0.05, "bar": "nbar"},
}


def tiny_lora_model() -> torch.nn.Module:
    """A 2-layer RoBERTa classifier (hidden 32), float64, LoRA r=4 on query/value, no dropout."""
    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=LENGTH + 4, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = RobertaForSequenceClassification(config).double()
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
    model = get_peft_model(model, lora)
    with torch.no_grad():  # lora_B starts at 0: make the pairs unbalanced both ways from step 0
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model


class TinyLoRA(SAMModule):
    def __init__(self, **sam: Any) -> None:
        super().__init__(
            optimizer=functools.partial(torch.optim.AdamW, lr=0.02), accumulate_grad_batches=ACCUMULATE, **sam
        )
        self.net = tiny_lora_model()

    def compute_outputs(self, batch: Any) -> torch.Tensor:
        return self.net(input_ids=batch[0]).logits

    def loss_from_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.cross_entropy(outputs, batch[1])


def batches(world: int, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches: micro-batch i of step s is block i of step s's rows, split by rank."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (STEPS * GLOBAL_BATCH, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (STEPS * GLOBAL_BATCH,), generator=generator)
    micro, out = GLOBAL_BATCH // ACCUMULATE, []
    for start in range(0, STEPS * GLOBAL_BATCH, micro):
        part = slice(start + rank * micro // world, start + (rank + 1) * micro // world)
        out.append((ids[part], labels[part]))
    return out


def run(
    method: str,
    devices: int,
    precision: str = "64-true",
    steps: int = STEPS,
    checkpoints: str | None = None,
    ckpt_path: str | None = None,
    count_syncs: bool = False,
) -> tuple[TinyLoRA, dict[str, Any]]:
    """Train ``method`` for ``steps`` optimizer steps; with ``checkpoints``, save one there after
    every optimizer step; with ``ckpt_path``, resume from it (the loader is stateful, as lit_bar's)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torchdata.stateful_dataloader import StatefulDataLoader

    settings = dict(METHODS[method])
    bar = settings.pop("bar", None)
    module = TinyLoRA(**settings)
    callbacks = [BalancednessCallback(mode=bar, mu=1.0)] if bar else []
    if checkpoints is not None:
        callbacks.append(ModelCheckpoint(checkpoints, "{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy="fsdp2" if devices > 1 else "auto",
        max_steps=steps, precision=precision, logger=False, enable_checkpointing=checkpoints is not None,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50, callbacks=callbacks,
        use_distributed_sampler=False,
    )  # fmt: skip
    rank = int(os.environ.get("LOCAL_RANK", 0))
    loader = StatefulDataLoader(batches(devices, rank), batch_size=None)
    syncs = SyncCounter(trace_backward=True)
    callbacks.append(_Phases(syncs))
    with _counting() as counts, syncs if count_syncs else contextlib.nullcontext():
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    frozen = [p for p in module.parameters() if not p.requires_grad]
    record = {
        "params": {
            n: (p.full_tensor() if is_sharded(p) else p).detach().clone() for n, p in trainable.items()
        },
        "all_sharded": all(is_sharded(p) for p in module.parameters()),
        "frozen_bytes": sum(local(p).numel() * p.element_size() for p in frozen),
        "frozen_bytes_whole": sum(p.numel() * p.element_size() for p in frozen),
        "counts": dict(counts),
        "balancedness": balancedness(module_pairs(module)),  # under FSDP2: slices + one all-reduce
        "step_syncs": [str(r) for r in syncs.charged_to("lit_bar") if r.phase.startswith("batch")],
        "counted_syncs": count_syncs,
        "all_syncs": len(syncs.records),  # torch's, lightning's, ...: the counter saw the run
    }
    return module, record


class _Phases(Callback):
    """Stamps the sync counter's records with the training batch that issued them."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.counter.phase = f"batch {batch_idx}"

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        self.counter.phase = "between batches"


class _counting:
    """Count torch.distributed.all_reduce and reduce-scatter calls (by name) inside the block."""

    NAMES = ("all_reduce", "reduce_scatter_tensor", "reduce_scatter_single", "reduce_scatter")

    def __enter__(self) -> collections.Counter:
        self.counts, self.saved = collections.Counter(), {}
        for name in self.NAMES:
            original = getattr(torch.distributed, name, None)
            if original is None:
                continue
            self.saved[name] = original

            def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(torch.distributed, name, counted)
        return self.counts

    def __exit__(self, *exc: object) -> None:
        for name, original in self.saved.items():
            setattr(torch.distributed, name, original)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--precision", default="64-true")
    parser.add_argument("--resume", action="store_true", help="also the mid-epoch resume of sam_nbar")
    args = parser.parse_args()
    for method in args.methods:
        _, record = run(method, devices=2, precision=args.precision, count_syncs=method == RESUMED)
        rank = torch.distributed.get_rank()
        record["rank"] = rank
        torch.save(record, os.path.join(args.out, f"{method}_rank{rank}.pt"))
    if args.resume:  # SAM + nBAR: stop after optimizer step 1 (mid-epoch), then resume to the end
        folder = os.path.join(args.out, "checkpoints")
        run(RESUMED, devices=2, steps=1, checkpoints=folder)
        _, record = run(RESUMED, devices=2, ckpt_path=os.path.join(folder, "step=1.ckpt"))
        torch.save(record, os.path.join(args.out, f"resumed_rank{torch.distributed.get_rank()}.pt"))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
