"""What ``scripts/benchmark_step.py`` times: one runner per row of its table, and each row's peak memory.

Every runner trains the same peft LoRA model on the same batches and returns the per-step times
(wall clock and process CPU time) of one timed window: forward, backward, BAR, optimizer step.
Fetching the batch from the loader happens before the window opens in every runner.

Rows:

- ``LoRA``, ``LoRA-nBAR``, ``SAM``, ``FSAM``, ``PSAM``, ``PSAM+FSAM``: the Lightning ``Trainer`` with
  :class:`lit_bar.SAMModule` (and :class:`lit_bar.BalancednessCallback` for nBAR): the path users take.
  Window: ``on_train_batch_start`` → ``on_train_batch_end`` (the whole optimizer step runs in
  ``training_step``; BAR runs in ``on_before_optimizer_step``, inside it).
- ``Flat-LoRA``, ``Bi-LoRA``: the same with ρ = 0 and :class:`lit_bar.callbacks.FlatLoRACallback`
  (ρ = 0.05, constant: noise drawn, put on and taken off every step) or
  :class:`lit_bar.callbacks.BiLoRACallback` (ρ = 0.05, AdamW ascent): one forward/backward per step.
- ``torch loop``: a hand-written loop, the framework-overhead floor::

      logits = model(**batch); loss = cross_entropy(logits, labels); loss.backward()
      optimizer.step(); optimizer.zero_grad()

- ``HF Trainer`` (plain LoRA), ``HF Trainer+nBAR`` (``lit_bar.hf.BalancednessTrainerCallback``) and
  ``HF SAMTrainer`` (``lit_bar.hf.SAMTrainer``, ρ = 0.05), when lit_bar.hf provides them: the
  transformers ``Trainer`` with default arguments except no checkpoints, no reporting, no progress
  bar, and the same AdamW. Window: ``on_step_begin`` → ``on_step_end`` (the Trainer fetches the
  batches of a step before ``on_step_begin``; the window includes its own per-step work:
  the NaN-filter check of the loss, gradient-norm clipping at ``max_grad_norm=1`` (its default),
  the learning-rate scheduler step).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lit_bar import BalancednessCallback
from lit_bar.experiments.benchmark.models import (
    BenchModule,
    as_dicts,
    build_model,
    loss_from_logits,
    make_batches,
)
from lit_bar.experiments.environment import bare_trainer
from lit_bar.experiments.methods import SAM_MODULE_ROWS, SUCCESSORS

__all__ = [
    "HF_ROWS",
    "LIGHTNING",
    "Clock",
    "hf_available",
    "peak_memory",
    "profile",
    "reset_peak_rss",
    "run",
    "run_lightning",
    "status_kib",
]

LR = 1e-4

#: The Lightning rows: every method of :data:`lit_bar.experiments.methods.SAM_MODULE_ROWS`.
LIGHTNING = SAM_MODULE_ROWS
HF_ROWS = ("HF Trainer", "HF Trainer+nBAR", "HF SAMTrainer")


def hf_available() -> dict[str, bool]:
    """Which of the transformers rows this checkout can run (lit_bar.hf may not exist yet)."""
    found = {"HF Trainer": True, "HF Trainer+nBAR": False, "HF SAMTrainer": False}
    try:
        import lit_bar.hf as hf
    except ImportError as error:  # not written yet, or broken: say so, time the other rows
        print(f"lit_bar.hf does not import ({error}): its rows are skipped", flush=True)
        return found
    found["HF Trainer+nBAR"] = hasattr(hf, "BalancednessTrainerCallback")
    found["HF SAMTrainer"] = hasattr(hf, "SAMTrainer")
    return found


# ----------------------------------------------------------------------------- timing
class Clock:
    """Per-step wall and process CPU time; synchronises CUDA at both ends of the window."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])

    def result(self, warmup: int) -> dict[str, list[float]]:
        return {"wall": self.wall[warmup:], "cpu": self.cpu[warmup:]}


class LightningClock(Callback):
    """The Lightning rows' window: ``on_train_batch_start`` → ``on_train_batch_end``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.clock.start()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clock.stop()


def run_lightning(
    name: str,
    backbone: torch.nn.Module,
    batches: list,
    device: torch.device,
    clock: Clock,
    precision: str = "32-true",
    strategy: str = "auto",
    devices: int = 1,
    extra_callbacks: Sequence[Callback] = (),
) -> BenchModule:
    """A Lightning row: :class:`BenchModule` with the row's SAMModule arguments, BAR and successors.

    ``strategy`` and ``devices`` > 1 (the distributed rows, :mod:`.distributed`): each process is
    handed its own ``batches`` (no distributed sampler).
    """
    kwargs, with_bar = LIGHTNING[name]
    module = BenchModule(backbone, optimizer=partial(torch.optim.AdamW, lr=LR), **kwargs)
    callbacks: list[Callback] = [LightningClock(clock), *extra_callbacks]
    if with_bar:
        callbacks.append(BalancednessCallback(mode="nbar", mu=1.0, schedule="linear"))
    if name in SUCCESSORS:
        callbacks.append(SUCCESSORS[name]())
    trainer = bare_trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_steps=len(batches),
        callbacks=callbacks,
        **({"use_distributed_sampler": False} if devices > 1 else {}),
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return module


def run_torch_loop(backbone: torch.nn.Module, batches: list, device: torch.device, clock: Clock) -> None:
    """The hand-written loop: forward, loss, backward, AdamW step, zero_grad (the overhead floor)."""
    backbone.to(device).train()
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=LR)
    for batch in DataLoader(batches, batch_size=None):
        ids, mask, labels = (t.to(device) for t in batch)
        clock.start()
        logits = backbone(input_ids=ids, attention_mask=mask).logits
        loss_from_logits(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        clock.stop()


def run_hf(name: str, backbone: torch.nn.Module, batches: list, device: torch.device, clock: Clock) -> None:
    """A transformers ``Trainer`` row; its window is ``on_step_begin`` → ``on_step_end``."""
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    class StepClock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.stop()

    callbacks: list[Any] = [StepClock()]
    trainer_class: Any = HFTrainer
    extra: dict[str, Any] = {}
    if name == "HF Trainer+nBAR":
        from lit_bar.hf import BalancednessTrainerCallback

        callbacks.append(
            BalancednessTrainerCallback(mode="nbar", mu=1.0, schedule="linear", total_steps=len(batches))
        )
    elif name == "HF SAMTrainer":
        from lit_bar.hf import SAMTrainer

        trainer_class, extra = SAMTrainer, {"rho": 0.05}
    dicts = as_dicts(batches)

    class FixedBatches(trainer_class):  # the same batches, in the same order, as every other row
        def get_train_dataloader(self) -> DataLoader:
            return DataLoader(dicts, batch_size=None)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=len(batches),
            per_device_train_batch_size=len(batches[0][0]),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
        )
        optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=LR)
        trainer = FixedBatches(
            model=backbone,
            args=args,
            train_dataset=dicts,
            optimizers=(optimizer, None),
            callbacks=callbacks,
            **extra,
        )
        trainer.remove_callback(PrinterCallback)  # its end-of-training print is not ours
        trainer.train()


def train(
    name: str,
    backbone: torch.nn.Module,
    batches: list,
    device: torch.device,
    clock: Clock,
    precision: str = "32-true",
) -> None:
    """Train row ``name`` over ``batches`` with its runner, timing each step on ``clock``."""
    if name in LIGHTNING:
        run_lightning(name, backbone, batches, device, clock, precision)
    elif name == "torch loop":
        run_torch_loop(backbone, batches, device, clock)
    elif name in HF_ROWS:
        run_hf(name, backbone, batches, device, clock)
    else:
        raise ValueError(f"unknown row {name!r}; rows: {[*LIGHTNING, 'torch loop', *HF_ROWS]}")


def run(
    name: str,
    backbone: torch.nn.Module,
    batches: list,
    device: torch.device,
    warmup: int,
    precision: str = "32-true",
) -> dict[str, list[float]]:
    """Train row ``name`` over ``batches``; the step times after the first ``warmup`` steps.

    ``precision`` (a Lightning precision flag) applies to the Lightning rows only.
    """
    clock = Clock(device)
    if precision != "32-true" and name not in LIGHTNING:
        raise ValueError(f"precision={precision!r} is implemented for the Lightning rows only, not {name!r}")
    train(name, backbone, batches, device, clock, precision)
    if len(clock.wall) != len(batches):
        raise RuntimeError(f"{name}: timed {len(clock.wall)} steps, expected {len(batches)} (one per batch)")
    return clock.result(warmup)


def profile(name: str, backbone: torch.nn.Module, batches: list, device: torch.device, top: int = 25) -> str:
    """``torch.profiler`` table (ops by self CPU time) of row ``name`` over the timed steps of one run."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    clock, tables = Clock(device), []

    def keep(prof: Any) -> None:
        tables.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))

    plan = schedule(wait=0, warmup=1, active=len(batches) - 1)
    with profile(activities=activities, schedule=plan, on_trace_ready=keep) as prof:
        original = clock.stop

        def stop_and_step() -> None:
            original()
            prof.step()

        clock.stop = stop_and_step  # one profiler step per training step; the first is warm-up
        train(name, backbone, batches, device, clock)
    if not tables:
        raise RuntimeError(f"profile of {name}: no table (needs at least 2 steps)")
    return f"{name}: {len(batches) - 1} steps after 1 warm-up step\n" + tables[-1]


# ----------------------------------------------------------------------------- peak memory
def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (``VmRSS``: resident now; ``VmHWM``: peak resident)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Set this process's peak resident set (``VmHWM``) to its current one (Linux ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_memory(
    name: str,
    objective: str,
    size: str,
    shape: tuple[int, int],
    steps: int,
    device_name: str,
    precision: str = "32-true",
) -> dict[str, Any]:
    """Peak memory of ``steps`` steps of row ``name`` in this (fresh) process, in MiB.

    CPU: the process's peak resident set (``VmHWM``), reset right before training by writing 5 to
    ``/proc/self/clear_refs``, so ``increase`` is what training added on top of the model and batches.
    CUDA: ``torch.cuda.max_memory_allocated`` (peak statistics reset right before training).
    """
    device = torch.device(device_name)
    torch.manual_seed(0)
    backbone, description = build_model(objective, size)
    batches = make_batches(backbone.config.vocab_size, *shape, steps, objective)
    backbone.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        before = status_kib("VmRSS") * 1024
    run(name, backbone, batches, device, warmup=0, precision=precision)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_kib("VmHWM") * 1024
    mib = 2.0**20
    return {
        "row": name,
        "objective": objective,
        "precision": precision,
        "model": description,
        "measure": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)",
        "before_mib": before / mib,
        "peak_mib": peak / mib,
        "increase_mib": (peak - before) / mib,
    }
