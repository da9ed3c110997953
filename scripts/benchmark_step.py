"""Step time and peak memory of LoRA, BAR and SAM variants against a plain loop and the transformers Trainer.

    python scripts/benchmark_step.py --json docs/benchmark.json --markdown docs/benchmark.md
    python scripts/benchmark_step.py --model tiny --lm tiny --rounds 1 --steps 2 --warmup 1   # smoke

Timing: every row (see ``scripts/benchmark_runners.py``: the Lightning rows of lit_bar, a
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
SAM and Functional-SAM on a causal-LM objective (``--lm``); see ``benchmark_runners.peak_memory``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from benchmark_runners import (
    HF_ROWS,
    LIGHTNING,
    build_model,
    hf_available,
    make_batches,
    peak_memory,
    profile,
    quiet,
    run,
)

#: target rows: (numerator, denominator, limit)
TARGETS = [
    ("LoRA-nBAR", "LoRA", 1.02),
    ("SAM", "LoRA", 2.05),
    ("LoRA", "torch loop", 1.05),
    ("HF Trainer+nBAR", "HF Trainer", 1.02),
    ("HF SAMTrainer", "HF Trainer", 2.05),
]
#: causal-LM memory rows: "LM <Lightning row>[ bf16]" (bf16: Lightning's bf16-mixed precision)
LM_MEMORY_ROWS = ["LM LoRA", "LM SAM", "LM FSAM", "LM SAM bf16", "LM FSAM bf16", "LM Flat-LoRA", "LM Bi-LoRA"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--rows", nargs="+", help="rows to time (default: every available row)")
    parser.add_argument(
        "--memory-rows",
        nargs="*",
        help=f"rows whose peak memory to measure (default: all timed rows + {LM_MEMORY_ROWS})",
    )
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory process (default 3)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
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
    args.rows = args.rows or available
    bad = [r for r in args.rows if r not in available]
    if bad:
        parser.error(f"--rows {bad}: not available here; available: {available} (known: {known})")
    bad = [r for r in args.profile if r not in available]
    if bad:
        parser.error(f"--profile {bad}: not available here; available: {available}")
    if args.memory_rows is None:
        args.memory_rows = [*args.rows, *LM_MEMORY_ROWS]
    bad = [r for r in args.memory_rows if r not in [*available, *LM_MEMORY_ROWS]]
    if bad:
        parser.error(f"--memory-rows {bad}: unknown; choose from {[*available, *LM_MEMORY_ROWS]}")
    return args


# ----------------------------------------------------------------------------- statistics
def ratio_stats(a_rounds: list[list[float]], b_rounds: list[list[float]], seed: int = 0) -> dict[str, Any]:
    """Per-round ratios of medians, their median, min–max and bootstrap 95 % interval of the median."""
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(a_rounds, b_rounds, strict=True)]
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return {
        "median": statistics.median(ratios),
        "ci95": [boot[49], boot[1950]],
        "min": min(ratios),
        "max": max(ratios),
        "per_round": ratios,
    }


def verdict(stats: dict[str, Any], limit: float) -> str:
    low, high = stats["ci95"]
    if high <= limit:
        return "met"
    if low > limit:
        return "missed"
    return "inside the noise"


def summarise(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, Any]:
    rows = list(times["wall"])
    summary: dict[str, Any] = {"rows": {}, "targets": []}
    for clock, by_row in times.items():
        for row in rows:
            entry = summary["rows"].setdefault(row, {})
            entry[f"{clock}_median_s"] = statistics.median(t for run in by_row[row] for t in run)
            entry[f"{clock}_x_lora"] = ratio_stats(by_row[row], by_row["LoRA"]) if "LoRA" in rows else None
    for num, den, limit in TARGETS:
        if num in rows and den in rows:
            target = {"ratio": f"{num} / {den}", "limit": limit}
            for clock in times:
                stats = ratio_stats(times[clock][num], times[clock][den])
                target[clock] = {**stats, "verdict": verdict(stats, limit)}
            summary["targets"].append(target)
    return summary


# ----------------------------------------------------------------------------- output
def fmt_ratio(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "–"
    return f"{stats['median']:.3f} [{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]"


def markdown(result: dict[str, Any]) -> str:
    meta, summary = result["meta"], result["summary"]
    lines = [
        f"Machine: {meta['machine']}; load average (1, 5, 15 min) before / after: "
        f"{meta['load_before']} / {meta['load_after']}.",
        f"Model: {meta['model']}; batch {meta['batch']} × {meta['length']} tokens; device {meta['device']}; "
        f"torch threads {meta['threads']}; {meta['rounds']} rounds × {meta['steps']} steps "
        f"({meta['warmup']} warm-up dropped). Ratios: median of per-round ratios [bootstrap 95 % interval].",
        "",
        "| row | wall ms/step | × LoRA (wall) | CPU ms/step | × LoRA (CPU) | peak memory MiB (increase) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    memory = {m["row"]: m for m in result["memory"] if "peak_mib" in m}
    for row, entry in summary["rows"].items():
        mem = memory.get(row)
        mem_text = f"{mem['peak_mib']:.0f} (+{mem['increase_mib']:.0f})" if mem else "–"
        lines.append(
            f"| {row} | {1000 * entry['wall_median_s']:.1f} | {fmt_ratio(entry['wall_x_lora'])} | "
            f"{1000 * entry['cpu_median_s']:.1f} | {fmt_ratio(entry['cpu_x_lora'])} | {mem_text} |"
        )
    lines += [
        "",
        "| target | wall: ratio [95 %] | verdict | CPU: ratio [95 %] | verdict |",
        "|---|---:|---|---:|---|",
    ]
    for t in summary["targets"]:
        lines.append(
            f"| {t['ratio']} ≤ {t['limit']} | {fmt_ratio(t['wall'])} | {t['wall']['verdict']} | "
            f"{fmt_ratio(t['cpu'])} | {t['cpu']['verdict']} |"
        )
    lm_rows = [m for m in result["memory"] if m["row"].startswith("LM ")]
    if lm_rows:
        lines += [
            "",
            f"Causal-LM objective, {lm_rows[0].get('model', '')}, batch {meta['lm_shape'][0]} × "
            f"{meta['lm_shape'][1]}: {lm_rows[0].get('measure', '')}",
            "",
            "| row | peak MiB | increase over model + batches MiB |",
            "|---|---:|---:|",
        ]
        for m in lm_rows:
            lines.append(
                f"| {m['row']} | {m.get('peak_mib', float('nan')):.0f} "
                f"| {m.get('increase_mib', float('nan')):.0f} |"
            )
    if meta["unavailable"]:
        lines += ["", f"Not measured (not in this checkout): {', '.join(meta['unavailable'])}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driving
def memory_in_subprocess(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``--memory-child row`` in a fresh interpreter and parse its one JSON line."""
    cmd = [
        sys.executable,
        __file__,
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
    row = args.memory_child
    objective, name = ("lm", row[len("LM ") :]) if row.startswith("LM ") else ("cls", row)
    precision = "bf16-mixed" if name.endswith(" bf16") else "32-true"
    name = name.removesuffix(" bf16")
    shape = tuple(args.lm_shape) if objective == "lm" else (args.batch, args.length)
    size = args.lm if objective == "lm" else args.model
    result = peak_memory(name, objective, size, shape, args.memory_steps, args.device, precision)
    print("MEMORY " + json.dumps({**result, "row": row}), flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_rows(args: argparse.Namespace, backbone: torch.nn.Module, batches: list) -> dict[str, Any]:
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
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    if args.memory_child:
        memory_child(args)
        return
    load_before = load_average()
    torch.manual_seed(0)
    backbone, description = build_model("cls", args.model)
    batches = make_batches(backbone.config.vocab_size, args.batch, args.length, args.steps, "cls")
    print(f"timing {args.rows} on {description}, {args.rounds} rounds × {args.steps} steps", flush=True)
    if args.unavailable:
        print(f"not available in this checkout (lit_bar.hf): {args.unavailable}", flush=True)
    args.round_loads = []
    times = time_rows(args, backbone, batches)
    for row in args.profile:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        path = args.profile_dir / f"{row.replace(' ', '_').replace('+', '_')}.txt"
        path.write_text(profile(row, backbone, batches, torch.device(args.device)))
        print(f"profile of {row}: {path}", flush=True)
    memory = []
    for row in args.memory_rows:
        print(f"peak memory of {row} in its own process ...", flush=True)
        memory.append(memory_in_subprocess(row, args))
        print(f"  {memory[-1]}", flush=True)
    meta = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "load_before": load_before,
        "load_after": load_average(),
        "load_after_each_round": args.round_loads,
        "model": description,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "unavailable": args.unavailable,
        **{k: getattr(args, k) for k in ("batch", "length", "rounds", "steps", "warmup", "lm", "lm_shape")},
    }
    result = {"meta": meta, "times": times, "summary": summarise(times), "memory": memory}
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


if __name__ == "__main__":
    main()
