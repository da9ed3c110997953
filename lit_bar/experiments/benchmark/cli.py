"""Step time and peak memory of LoRA, BAR and SAM variants against a plain loop and the transformers Trainer.

    python scripts/benchmark_step.py --json docs/benchmark.json --markdown docs/benchmark.md
    python scripts/benchmark_step.py --model tiny --lm tiny --rounds 1 --steps 2 --warmup 1   # smoke

Timing: every row (see ``lit_bar/experiments/benchmark/runners.py``: the Lightning rows of lit_bar, a
hand-written PyTorch loop, the transformers ``Trainer``, and ``lit_bar.hf.SAMTrainer`` when it
exists) trains the same peft LoRA model on the same fixed batches, in ``--rounds`` interleaved
rounds (every row once per round, in a rotated order, so that load on the machine drifts into all
rows alike). In each run the first ``--warmup`` steps are dropped and the median of the rest is the
row's time in that round. A ratio A/B is taken per round (A's and B's medians of the same round);
reported are the median of those per-round ratios, their min–max, and a bootstrap 95 % interval
of the median (rounds resampled with replacement). A target ``A/B ≤ t`` is *met* when the whole
interval lies at or below t, *missed* when it lies above, and *inside the noise* otherwise. Both
the wall clock and the process CPU time are reported; on a loaded machine CPU time (with
``--threads 1``) is the steadier measure of the work a step does.

Peak memory: each row again, each in its own fresh process (``--memory-steps`` steps), including
SAM and Functional-SAM on a causal-LM objective (``--lm``); see ``runners.peak_memory`` there.

Distributed rows (opt-in, ``--strategies ddp fsdp2``): LoRA, nBAR and SAM under DDP and FSDP2 on
``--processes`` CPU processes, timed the same way, with peak memory per process and the ratios
SAM/LoRA, nBAR/LoRA under each strategy and FSDP2/DDP per method; see ``distributed`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from lit_bar.experiments.benchmark import distributed
from lit_bar.experiments.benchmark.models import build_model, make_batches
from lit_bar.experiments.benchmark.report import markdown, summarise, summarise_distributed
from lit_bar.experiments.benchmark.runners import HF_ROWS, LIGHTNING, hf_available, peak_memory, profile, run
from lit_bar.experiments.environment import ROOT, quiet_libraries

__all__ = ["LM_MEMORY_ROWS", "main", "parse_args"]

#: causal-LM memory rows: "LM <Lightning row>[ bf16]" (bf16: Lightning's bf16-mixed precision)
LM_MEMORY_ROWS = ["LM LoRA", "LM SAM", "LM FSAM", "LM SAM bf16", "LM FSAM bf16", "LM Flat-LoRA", "LM Bi-LoRA"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every bad value is refused with one line naming it and what is allowed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="interleaved rounds over all rows (default 10)"
    )
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per row per round (default 6)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="steps dropped at the start of each run (default 2)"
    )
    parser.add_argument("--batch", type=int, default=16, help="examples per batch (default 16)")
    parser.add_argument("--length", type=int, default=64, help="tokens per example (default 64)")
    parser.add_argument(
        "--model",
        choices=["minilm", "tiny"],
        default="minilm",
        help="classifier timed: the real all-MiniLM-L6-v2 (default) or a tiny random BERT",
    )
    parser.add_argument(
        "--lm", choices=["small", "tiny"], default="small", help="causal LM for the memory rows"
    )
    parser.add_argument(
        "--lm-shape", type=int, nargs=2, default=[8, 128], metavar=("BATCH", "LENGTH"), help="default 8 128"
    )
    parser.add_argument(
        "--rows", nargs="*", help="single-process rows to time (default: every available row; none if empty)"
    )
    parser.add_argument(
        "--memory-rows",
        nargs="*",
        help=f"rows whose peak memory to measure (default: all timed rows + {LM_MEMORY_ROWS} "
        "when single-process rows are timed, + the distributed rows)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=list(distributed.STRATEGIES),
        default=[],
        help="also time the distributed rows under these strategies, on --processes CPU processes",
    )
    parser.add_argument(
        "--distributed-methods",
        nargs="+",
        choices=distributed.METHODS,
        default=list(distributed.DEFAULT_METHODS),
        help=f"methods of the distributed rows (default {' '.join(distributed.DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="processes of the distributed rows (default 2)"
    )
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory process (default 3)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's; distributed rows: CPUs / --processes)",
    )
    parser.add_argument("--json", type=Path, help="write every measurement and the summary here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    parser.add_argument("--profile", nargs="+", default=[], help="rows to run once more under torch.profiler")
    parser.add_argument(
        "--profile-dir", type=Path, default=Path("outputs/benchmark_profile"), help="its tables"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args(argv)
    for flag in ("rounds", "steps", "batch", "length", "memory_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [0, --steps), got {args.warmup} with --steps {args.steps}")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device {args.device!r}: use cpu, or cuda where a GPU is visible")
    available = [*LIGHTNING, "torch loop", *(r for r, ok in hf_available().items() if ok)]
    known = [*LIGHTNING, "torch loop", *HF_ROWS]
    args.unavailable = [r for r in HF_ROWS if r not in available]
    args.rows = available if args.rows is None else args.rows
    if not args.rows and not args.strategies:
        parser.error("--rows is empty and no --strategies: nothing to time")
    bad = [r for r in args.rows if r not in available]
    if bad:
        parser.error(f"--rows {bad}: not available here; available: {available} (known: {known})")
    bad = [r for r in args.profile if r not in available]
    if bad:
        parser.error(f"--profile {bad}: not available here; available: {available}")
    dist_rows = distributed.row_names(args.strategies, args.distributed_methods)
    if args.strategies and (args.processes < 2 or args.batch % args.processes):
        parser.error(
            f"--processes {args.processes} with --batch {args.batch}: need >= 2 processes dividing the batch"
        )
    if args.memory_rows is None:
        args.memory_rows = ([*args.rows, *LM_MEMORY_ROWS] if args.rows else []) + dist_rows
    bad = [r for r in args.memory_rows if r not in [*available, *LM_MEMORY_ROWS, *dist_rows]]
    if bad:
        parser.error(f"--memory-rows {bad}: unknown; choose from {[*available, *LM_MEMORY_ROWS, *dist_rows]}")
    return args


def memory_in_subprocess(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``--memory-child row`` in a fresh interpreter and parse its one JSON line."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark_step.py"),
        "--memory-child",
        row,
        "--model",
        args.model,
        "--lm",
        args.lm,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--lm-shape",
        *map(str, args.lm_shape),
        "--memory-steps",
        str(args.memory_steps),
        "--device",
        args.device,
        "--rows",
        "LoRA",
        "--memory-rows",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")]
    if done.returncode != 0 or not lines:
        return {"row": row, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("MEMORY ") :])


def memory_child(args: argparse.Namespace) -> None:
    """``--memory-child ROW``: measure one row's peak memory in this fresh process; print one JSON line."""
    row = args.memory_child
    objective, name = ("lm", row[len("LM ") :]) if row.startswith("LM ") else ("cls", row)
    precision = "bf16-mixed" if name.endswith(" bf16") else "32-true"
    name = name.removesuffix(" bf16")
    shape = tuple(args.lm_shape) if objective == "lm" else (args.batch, args.length)
    size = args.lm if objective == "lm" else args.model
    result = peak_memory(name, objective, size, shape, args.memory_steps, args.device, precision)
    print("MEMORY " + json.dumps({**result, "row": row}), flush=True)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was around the measurement."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_rows(args: argparse.Namespace, backbone: torch.nn.Module, batches: list) -> dict[str, Any]:
    """``--rounds`` rounds over every row, in a rotated order each round (so that load on the machine
    drifts into all rows alike); per clock and row, one list of step times per round."""
    times: dict[str, dict[str, list[list[float]]]] = {c: {r: [] for r in args.rows} for c in ("wall", "cpu")}
    device = torch.device(args.device)
    for r in range(args.rounds):
        order = args.rows[r % len(args.rows) :] + args.rows[: r % len(args.rows)]
        for row in order:
            for clock, values in run(row, backbone, batches, device, args.warmup).items():
                times[clock][row].append(values)
        medians = ", ".join(
            f"{row} {1000 * statistics.median(times['wall'][row][-1]):.0f}" for row in args.rows
        )
        args.round_loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} (load {args.round_loads[-1]:.1f}) wall ms: {medians}", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    """``scripts/benchmark_step.py``: time the rows, profile the asked ones, measure memory, report."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    if args.memory_child:
        memory_child(args)
        return
    load_before = load_average()
    torch.manual_seed(0)
    backbone, description = build_model("cls", args.model)
    batches = make_batches(backbone.config.vocab_size, args.batch, args.length, args.steps, "cls")
    if args.unavailable:
        print(f"not available in this checkout (lit_bar.hf): {args.unavailable}", flush=True)
    args.round_loads = []
    times: dict[str, Any] = {"wall": {}, "cpu": {}}
    if args.rows:
        print(f"timing {args.rows} on {description}, {args.rounds} rounds × {args.steps} steps", flush=True)
        times = time_rows(args, backbone, batches)
    for row in args.profile:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        path = args.profile_dir / f"{row.replace(' ', '_').replace('+', '_')}.txt"
        path.write_text(profile(row, backbone, batches, torch.device(args.device)))
        print(f"profile of {row}: {path}", flush=True)
    memory = []
    dist_rows = distributed.row_names(args.strategies, args.distributed_methods)
    for row in (r for r in args.memory_rows if r not in dist_rows):
        print(f"peak memory of {row} in its own process ...", flush=True)
        memory.append(memory_in_subprocess(row, args))
        print(f"  {memory[-1]}", flush=True)
    result = {"meta": None, "times": times, "summary": summarise(times), "memory": memory}
    if args.strategies:
        result["distributed"] = distributed.measure(args)
        result["distributed"]["summary"] = summarise_distributed(result["distributed"]["times"])
    result["meta"] = describe_run(args, description, load_before)
    write_result(result, args)


def describe_run(args: argparse.Namespace, model: str, load_before: str) -> dict[str, Any]:
    """The result's ``meta``: machine, load before / after, model, device, threads and the settings."""
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "load_before": load_before,
        "load_after": load_average(),
        "load_after_each_round": args.round_loads,
        "model": model,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "unavailable": args.unavailable,
        **{k: getattr(args, k) for k in ("batch", "length", "rounds", "steps", "warmup", "lm", "lm_shape")},
    }


def write_result(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the tables; write the result to ``--json`` and the tables to ``--markdown`` when given."""
    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
        print(f"wrote {args.markdown}")
