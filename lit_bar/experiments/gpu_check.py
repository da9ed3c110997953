"""GPU check: host syncs by source, the fp16 skip step, and a step-time / peak-memory table.

    python scripts/gpu_check.py                  # one GPU: roberta-large-sized random model, < 5 minutes
    python scripts/gpu_check.py --size tiny      # anywhere (the test runs this on CPU)

What it runs: :class:`lit_bar.tasks.prompt.PromptMLMClassifier` (the paper's RoBERTa-large few-shot
model, LoRA r = 8 on query/value) on a random model of roberta-large's shape, saved to a temporary
folder and loaded as a checkpoint would be, on random prompts with one ``<mask>`` each and some
padding (so transformers' attention-mask path runs). Rows: LoRA (ρ = 0), LoRA-nBAR, SAM, FSAM
(Functional-SAM), PSAM (Adam-preconditioned SAM); precisions ``16-mixed`` and ``bf16-mixed`` on CUDA,
``32-true`` on CPU.

Syncs: on CUDA every training step runs under ``torch.cuda.set_sync_debug_mode("warn")`` and each
warning is charged to the Python frame that issued it (:func:`lit_bar.algorithms.syncs.issuing_site`); on CPU
the same attribution comes from :class:`lit_bar.algorithms.syncs.SyncCounter`. Expected owners: ``torch``
(GradScaler's own ``.item()`` per fp16 step, by design), ``transformers`` (the model's attention-mask
check), ``lightning`` (its loop), ``autograd`` (ops replayed from backward); ``lit_bar`` must have none.
The run does not log (``log_every_n_steps`` beyond the run), so these are the non-logging steps.

fp16 skip step (CUDA; ``--fp16-skip-check`` runs the Lightning one on CPU too): a GradScaler whose
initial scale overflows fp16 must skip the first step entirely (no optimizer update and no BAR update)
and halve its scale, for ``SAMModule`` + ``BalancednessCallback`` under ``16-mixed`` and for the
transformers ``Trainer(fp16=True)`` + ``BalancednessTrainerCallback``.

FSDP2 on one device (CUDA; ``--fsdp2``: on CPU too, over gloo): SAM and nBAR, ``strategy="fsdp2"``,
``devices=1`` (every parameter a one-shard ``DTensor``: lit_bar.algorithms.sharded's paths run),
``bf16-mixed``
on CUDA, ``32-true`` on CPU, syncs charged as above. fp16 loss scaling is refused under FSDP2, so
there is no skip step: the check is that ``16-mixed`` + GradScaler is refused, naming ``bf16-mixed``.

Exit status 1 if lit_bar issued a sync, the skip check failed, or an FSDP2 check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins import MixedPrecision

from lit_bar.algorithms.sharded import is_sharded
from lit_bar.algorithms.syncs import SyncCounter, issuing_site, owner_of
from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.experiments.environment import bare_trainer
from lit_bar.experiments.methods import SAM_MODULE_ROWS

SIZES = {  # RobertaConfig fields: roberta-large's shape, and a tiny one for tests on CPU
    "large": {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096},
    "tiny": {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 48},
}  # fmt: skip
#: row -> (SAMModule arguments, BAR on?): the rows of lit_bar.experiments.methods that change the step
METHODS = {name: SAM_MODULE_ROWS[name] for name in ("LoRA", "LoRA-nBAR", "SAM", "FSAM", "PSAM")}
LABEL_WORDS = [10, 20]  # two label-word ids; <mask> is the vocabulary's last id, as in RoBERTa
SYNC_WARNING = "called a synchronizing CUDA operation"


def save_random_model(folder: Path, size: str) -> str:
    """A randomly initialised RobertaForMaskedLM of the given size, saved as a checkpoint folder."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    config = RobertaConfig(max_position_embeddings=514, type_vocab_size=1, **SIZES[size])
    RobertaForMaskedLM(config).save_pretrained(folder)
    return str(folder)


def make_loader(args: argparse.Namespace, count: int) -> torch.utils.data.DataLoader:
    """Random prompts: one ``<mask>`` per row, the second half of the rows padded to 3/4 length."""
    vocab, batch_size, length = SIZES[args.size]["vocab_size"], args.batch_size, args.length
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        ids = torch.randint(4, vocab - 1, (batch_size, length), generator=gen)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[batch_size // 2 :, 3 * length // 4 :] = 0
        ids[:, 0] = 0  # <s>
        ids[:, length // 2] = vocab - 1  # <mask>
        ids[mask == 0] = 1  # <pad>
        labels = torch.randint(0, len(LABEL_WORDS), (batch_size,), generator=gen)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return torch.utils.data.DataLoader(batches, batch_size=None)


def build_module(model_dir: str, args: argparse.Namespace, **kwargs: Any) -> Any:
    """The prompt few-shot task module (LoRA r = 8 on query/value) on the saved random model."""
    from lit_bar.tasks.prompt import PromptMLMClassifier

    mask = SIZES[args.size]["vocab_size"] - 1
    return PromptMLMClassifier(
        model_dir,
        task_info={"label_word_ids": LABEL_WORDS, "mask_token_id": mask},
        optimizer=partial(torch.optim.AdamW, lr=1e-4),
        **kwargs,
    )


def make_trainer(device: torch.device, max_steps: int, callbacks: list, **kwargs: Any) -> Trainer:
    """A Trainer that never logs within the run (``log_every_n_steps`` beyond it): non-logging steps."""
    return bare_trainer(
        accelerator=device.type, devices=1, max_steps=max_steps, log_every_n_steps=max_steps + 1,
        callbacks=callbacks, **kwargs,
    )  # fmt: skip


class StepRecorder(Callback):
    """Step times (CUDA events: no sync) and the sync records of each training step."""

    def __init__(self, device: torch.device, counter: SyncCounter | None) -> None:
        self.device, self.counter = device, counter
        self.marks: list[Any] = []
        self.cuda_syncs: list[tuple[str, str, str]] = []  # (owner, where, via)
        self._debug: str | None = None

    def _now(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.counter is not None:
            self.counter.phase = f"batch {batch_idx}"
        if self.device.type == "cuda" and self._debug is None:
            torch.cuda.set_sync_debug_mode("warn")
            self._debug = "warn"
        self.marks.append(self._now())

    def on_train_end(self, trainer, pl_module):
        self.marks.append(self._now())
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        if self.counter is not None:
            self.counter.phase = "end"

    def step_seconds(self, warmup: int) -> list[float]:
        """Seconds between consecutive step starts (the last to the end of training), warm-up dropped."""
        marks = self.marks
        if self.device.type == "cuda":
            gaps = [a.elapsed_time(b) / 1000 for a, b in itertools.pairwise(marks)]
        else:
            gaps = [b - a for a, b in itertools.pairwise(marks)]
        return gaps[warmup:]


def _charge_warning(recorder: StepRecorder):
    """A ``warnings.showwarning`` that records each CUDA sync warning with the frame that issued it."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING not in str(message):
            return previous(message, category, filename, lineno, file, line)
        frames = []
        frame = sys._getframe(1)
        while frame is not None:
            frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
            frame = frame.f_back
        frames = [f for f in frames if not f[0].endswith("warnings.py")]
        (file_, line_, function), via = issuing_site(frames)
        owner = owner_of(file_)
        if frames and "/torch/autograd/" in frames[0][0]:
            owner = "autograd"  # replayed by the autograd engine at the end of a backward
        recorder.cuda_syncs.append((owner, f"{file_}:{line_} ({function})", via or ""))
        return None

    return show


def run_row(args, model_dir: str, method: str, precision: str, device: torch.device,
            strategy: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Train one row for ``--steps`` steps; return its timing, memory and syncs by owner."""
    kwargs, bar = METHODS[method]
    module = build_module(model_dir, args, **kwargs)
    counter = SyncCounter() if device.type != "cuda" else None
    recorder = StepRecorder(device, counter)
    callbacks = [recorder, *([BalancednessCallback("nbar")] if bar else [])]
    trainer = make_trainer(device, args.steps, callbacks, precision=precision, strategy=strategy)
    loader = make_loader(args, args.steps)
    if device.type == "cuda":  # the previous row's module and trainer hold reference cycles: free them first
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _charge_warning(recorder)
        if counter is not None:
            with counter:
                trainer.fit(module, loader)
        else:
            trainer.fit(module, loader)
    syncs = recorder.cuda_syncs or [  # CPU: the counter's device syncs issued during the steps
        (r.owner, r.where, r.lit_bar_frame or "")
        for r in counter.records
        if r.phase.startswith("batch") and r.kind == "sync"
    ]
    times = recorder.step_seconds(args.warmup)
    return {
        "method": method,
        "strategy": strategy,
        "all_sharded": all(is_sharded(p) for p in module.parameters()),  # FSDP2: every one a DTensor
        "precision": precision,
        "step_ms": 1000 * statistics.median(times) if times else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "syncs_per_step": {o: c / args.steps for o, c in Counter(o for o, _, _ in syncs).items()},
        "sync_sites": dict(Counter(f"{o}  {w}  {'[from ' + v + ']' if v else ''}" for o, w, v in syncs)),
    }


def fp16_skip_check(model_dir: str, device: torch.device, args) -> dict[str, Any]:
    """SAM + nBAR under 16-mixed with a scale that overflows fp16: step 1 must change nothing."""
    module = build_module(model_dir, args, rho=0.05)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**40)
    plugin = MixedPrecision("16-mixed", device.type, scaler=scaler)
    trainer = make_trainer(device, 1, [BalancednessCallback("nbar")], plugins=[plugin])
    trainer.fit(module, make_loader(args, 1))
    after = {n: p.detach().to("cpu") for n, p in module.named_parameters() if p.requires_grad}
    moved = max(float((after[n].float() - before[n].float()).abs().max()) for n in before)
    ok = moved == 0.0 and scaler.get_scale() == 2.0**39
    return {"max_param_change": moved, "scale_after": scaler.get_scale(), "ok": ok}


def hf_fp16_skip_check(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """transformers ``Trainer(fp16=True)`` + peft LoRA + ``BalancednessTrainerCallback`` with a scale that
    overflows fp16: the first step must move no LoRA factor (neither AdamW nor BAR). CUDA only: accelerate
    ignores ``fp16=True`` on a CPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForMaskedLM, Trainer, TrainingArguments

    from lit_bar.hf import BalancednessTrainerCallback

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(model_dir), config)
    rows = []
    for batch in make_loader(args, 1):
        targets = torch.full_like(batch["input_ids"], -100)
        targets[:, args.length // 2] = torch.tensor(LABEL_WORDS)[batch["labels"]]  # the word at <mask>
        rows += [{"input_ids": i, "attention_mask": m, "labels": t} for i, m, t in
                 zip(batch["input_ids"], batch["attention_mask"], targets, strict=True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=1, fp16=True,
            report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=training, train_dataset=rows, callbacks=[BalancednessTrainerCallback("nbar")]
        )
        trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer.train()
    moved = max(
        float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters() if n in before
    )
    scale = trainer.accelerator.scaler.get_scale()
    ok = moved == 0.0 and scale == 2.0**39  # skipped: nothing moved, and the scaler backed off once
    return {"max_param_change": moved, "scale_after": scale, "ok": ok}


@contextlib.contextmanager
def _leave_no_process_group() -> Iterator[None]:
    """Undo what Lightning's launcher leaves (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_*`` in ``os.environ``,
    a process group): later Trainers, and processes started from this one, would think themselves ranks."""
    saved, started = dict(os.environ), not torch.distributed.is_initialized()
    try:
        yield
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def fsdp2_fp16_refusal(model_dir: str, device: torch.device, args) -> dict[str, Any]:
    """``16-mixed`` with a GradScaler under FSDP2 must be refused before any step, naming ``bf16-mixed``."""
    plugin = MixedPrecision("16-mixed", device.type, scaler=torch.amp.GradScaler(device.type))
    trainer = make_trainer(device, 1, [BalancednessCallback("nbar")], plugins=[plugin], strategy="fsdp2")
    try:
        trainer.fit(build_module(model_dir, args, rho=0.05), make_loader(args, 1))
    except ValueError as error:
        return {"refused": str(error), "ok": "bf16-mixed" in str(error)}
    return {"refused": None, "ok": False}


def fsdp2_section(args, model_dir: str, device: torch.device) -> dict[str, Any]:
    """The ``--fsdp2-methods`` rows under ``strategy="fsdp2"`` on one device, and the fp16 refusal."""
    precision = "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    with _leave_no_process_group():
        rows = [run_row(args, model_dir, m, precision, device, strategy="fsdp2") for m in args.fsdp2_methods]
        return {"rows": rows, "fp16": fsdp2_fp16_refusal(model_dir, device, args)}


def _print_rows(rows: list[dict[str, Any]]) -> None:
    print("| method | precision | step (ms) | peak memory (GiB) | syncs/step by owner |")
    print("|---|---|---|---|---|")
    for row in rows:
        memory = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "n/a (CPU)"
        owners = ", ".join(f"{o} {c:g}" for o, c in sorted(row["syncs_per_step"].items())) or "none"
        print(f"| {row['method']} | {row['precision']} | {row['step_ms']:.1f} | {memory} | {owners} |")
    print("\nSync sites (count over the run):")
    for row in rows:
        for site, count in sorted(row["sync_sites"].items(), key=lambda kv: -kv[1]):
            print(f"  {row['method']:9s} {row['precision']:10s} {count:4d}  {site}")


def print_report(rows: list[dict[str, Any]], device_name: str, skip: dict[str, Any] | None,
                 fsdp2: dict[str, Any] | str | None = None) -> None:  # fmt: skip
    """The table (step time, peak memory, syncs per step by owner), every sync site, the skip check;
    then the FSDP2 section (``fsdp2``: its result, or why it did not run)."""
    print(f"\n## gpu_check on {device_name}\n")
    _print_rows(rows)
    if skip is not None:
        print(f"\nfp16 skip step: {json.dumps(skip)}")
    if isinstance(fsdp2, str):
        print(f"\nFSDP2: {fsdp2}")
    elif fsdp2 is not None:
        print("\n## FSDP2 on one device (strategy fsdp2, world size 1)\n")
        _print_rows(fsdp2["rows"])
        print(f"\nevery parameter a sharded DTensor: {[r['all_sharded'] for r in fsdp2['rows']]}")
        print(f"fp16 (16-mixed + GradScaler) under FSDP2: {json.dumps(fsdp2['fp16'])}")


def main(argv: list[str] | None = None) -> int:
    """``scripts/gpu_check.py``: every row at every precision, the skip check, the FSDP2 rows, the
    report; 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--steps", type=int, default=None, help="steps per row (default 12; tiny: 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 2; tiny: 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (tiny: 4)")
    parser.add_argument("--length", type=int, default=None, help="tokens per prompt (default 128; tiny: 16)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--fp16-skip-check",
        action="store_true",
        help="run the fp16 skip-step check on CPU too (always on CUDA)",
    )
    parser.add_argument("--fsdp2", action="store_true", help="run the FSDP2 rows on CPU too (always on CUDA)")
    parser.add_argument(
        "--fsdp2-methods", nargs="+", choices=list(METHODS), default=["SAM", "LoRA-nBAR"], help="FSDP2 rows"
    )
    args = parser.parse_args(argv)
    tiny = args.size == "tiny"
    args.steps = args.steps or (3 if tiny else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.batch_size = args.batch_size or (4 if tiny else 16)
    args.length = args.length or (16 if tiny else 128)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = (
        torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (no GPU: syncs by SyncCounter)"
    )
    precisions = ["16-mixed", "bf16-mixed"] if device.type == "cuda" else ["32-true"]
    fsdp2: dict[str, Any] | str = "not run on CPU (--fsdp2 runs it there, over gloo)"
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_random_model(Path(folder) / "model", args.size)
        rows = [run_row(args, model_dir, m, p, device) for p in precisions for m in args.methods]
        run_skip = device.type == "cuda" or args.fp16_skip_check
        skip = {"lightning": fp16_skip_check(model_dir, device, args)} if run_skip else None
        if device.type == "cuda":
            skip["hf_trainer"] = hf_fp16_skip_check(model_dir, args)
        if device.type == "cuda" or args.fsdp2:
            fsdp2 = fsdp2_section(args, model_dir, device)
    print_report(rows, device_name, skip, fsdp2)
    fsdp2_rows = fsdp2["rows"] if isinstance(fsdp2, dict) else []
    if args.json is not None:
        report = {"device": device_name, "rows": rows, "fp16_skip": skip}
        if isinstance(fsdp2, dict):
            report["fsdp2"] = fsdp2
        args.json.write_text(json.dumps(report, indent=1))
    lit_bar_syncs = sum(r["syncs_per_step"].get("lit_bar", 0) for r in [*rows, *fsdp2_rows])
    failed = lit_bar_syncs > 0 or (skip is not None and not all(check["ok"] for check in skip.values()))
    if isinstance(fsdp2, dict):
        failed = failed or not fsdp2["fp16"]["ok"] or not all(r["all_sharded"] for r in fsdp2_rows)
    print(f"\nlit_bar syncs per step (all rows): {lit_bar_syncs:g}; {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0
