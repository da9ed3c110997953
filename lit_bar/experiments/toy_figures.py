"""Reproduce the paper's toy figures (Fig. 1 and 2): balancedness of SGD, SAM, nBAR and oBAR on NOP/OP.

Every run goes through ``lightning.pytorch.Trainer(...).fit(module, datamodule)`` with
:class:`lit_bar.toy.NOPModule` / :class:`lit_bar.toy.OPModule`; nBAR and oBAR are SGD plus
:class:`lit_bar.BalancednessCallback`. B_t = ½(‖x_t‖² − ‖y_t‖²) is recorded after every step.

    python scripts/reproduce_toy.py --out /tmp/toy_out            # full run (η=1e-3, ρ=0.5, 2500 steps)
    python scripts/reproduce_toy.py --out /tmp/toy_quick --quick  # smoke run, ~1-2 minutes on CPU

Writes ``OUT/balancedness.csv`` (problem,method,alpha,step,balancedness; ``alpha`` is the noise
scale α, larger = noisier, i.e. a lower SNR), ``OUT/summary.csv`` (|B_T|/|B_0| and seconds per run)
and the PNGs ``fig1a_nop_sgd_vs_sam.png``, ``fig1b_op_sgd_vs_sam.png``, ``fig2a_sam_by_alpha.png``,
``fig2b_bar_vs_sam.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_bar.callbacks.balancedness import BalancednessCallback
from lit_bar.experiments.environment import bare_trainer, pyplot
from lit_bar.toy import BalancednessTrace, NOPModule, OPModule, ToyNoiseDataModule

__all__ = ["FULL", "QUICK", "Settings", "main", "plot_figures", "run_one", "run_sweep", "write_csvs"]

PROBLEMS = ("nop", "op")
METHODS = ("sgd", "sam", "nbar", "obar")
#: (problem, method, α) → (optimizer steps, B_t after each)
Results = dict[tuple[str, str, float], tuple[list[int], list[float]]]


@dataclass(frozen=True)
class Settings:
    """One sweep's hyperparameters (shared by every run)."""

    lr: float
    rho: float
    mu: float
    steps: int
    alphas: tuple[float, ...]
    dim: int = 10
    seed: int = 0


FULL = Settings(lr=1e-3, rho=0.5, mu=1.0, steps=2500, alphas=(0.0, 0.5, 1.0, 2.0))
QUICK = Settings(lr=3e-3, rho=0.5, mu=1.0, steps=400, alphas=(0.0, 1.0, 2.0))


def run_one(problem: str, method: str, alpha: float, cfg: Settings) -> tuple[list[int], list[float], float]:
    """Train one (problem, method, α) with the Trainer; return the steps, B per step and seconds."""
    lr = cfg.lr
    rho = cfg.rho if method == "sam" else 0.0
    kwargs = {"alpha": alpha, "seed": cfg.seed, "rho": rho, "optimizer": lambda p: torch.optim.SGD(p, lr=lr)}
    if problem == "nop":
        module, shape = NOPModule(dim_x=cfg.dim, dim_y=cfg.dim, **kwargs), (cfg.dim, cfg.dim)
    else:
        module, shape = OPModule(dim=cfg.dim, **kwargs), ()
    trace = BalancednessTrace()
    callbacks = [trace]
    if method in ("nbar", "obar"):
        callbacks.append(BalancednessCallback(mode=method, mu=cfg.mu, pairs=module.pairs()))
    trainer = bare_trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=callbacks)
    data = ToyNoiseDataModule(shape=shape, steps=cfg.steps, seed=cfg.seed + 1)
    start = time.perf_counter()
    trainer.fit(module, data)
    return trace.steps, trace.values, time.perf_counter() - start


def alpha_label(alpha: float) -> str:
    """Legend text for a noise scale α (α = 0 is the noise-free control)."""
    return "α = 0 (no noise, control)" if alpha == 0 else f"α = {alpha:g}"


def plot_figures(results: Results, cfg: Settings, out: Path) -> None:
    """Fig. 1(a), 1(b), 2(a) and 2(b) in the paper's style: |B_t| over steps, log scale."""
    plt = pyplot("reproduce_toy.py: error: the figures")
    colors = dict(
        zip(
            cfg.alphas,
            plt.cm.viridis_r([0.15 + 0.75 * i / max(len(cfg.alphas) - 1, 1) for i in range(len(cfg.alphas))]),
            strict=True,
        )
    )
    b0 = abs(next(iter(results.values()))[1][0])
    subtitle = (
        "noise scale α: data = signal + α·noise (larger α = noisier, lower SNR)\n"
        f"SGD η={cfg.lr:g}, SAM ρ={cfg.rho:g}, BAR μ={cfg.mu:g} (constant), d={cfg.dim}, |B_0|={b0:.3g}"
    )

    def panel(ax, curves, title):  # curves: (problem, method, alpha, linestyle, label)
        for problem, method, alpha, style, label in curves:
            if (problem, method, alpha) in results:
                steps, values = results[(problem, method, alpha)]
                ax.plot(steps, [abs(v) for v in values], style, color=colors[alpha], label=label, lw=1.4)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step t")
        ax.set_ylabel("|B_t| = ½ |‖x_t‖² − ‖y_t‖²|")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, loc="lower left")

    def save(fig, name):
        fig.suptitle(subtitle, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    for problem, tag, title in (
        ("nop", "fig1a_nop", "(a) NOP, Eq. 11"),
        ("op", "fig1b_op", "(b) OP, Eq. 12"),
    ):
        fig, ax = plt.subplots(figsize=(5.2, 3.9))
        curves = [
            (problem, m, a, s, f"{m.upper()}, {alpha_label(a)}")
            for a in cfg.alphas
            for m, s in (("sgd", "--"), ("sam", "-"))
        ]
        panel(ax, curves, f"Fig. 1{title}: SGD (dashed) vs SAM (solid)")
        save(fig, f"{tag}_sgd_vs_sam.png")

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    for ax, problem in zip(axes, PROBLEMS, strict=True):
        panel(
            ax,
            [(problem, "sam", a, "-", f"SAM, {alpha_label(a)}") for a in cfg.alphas],
            f"Fig. 2(a): SAM on {problem.upper()} at several noise scales α",
        )
    save(fig, "fig2a_sam_by_alpha.png")

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    for ax, (problem, bar) in zip(axes, (("nop", "nbar"), ("op", "obar")), strict=True):
        curves = [
            (problem, m, a, s, f"{m.upper() if m == 'sam' else m[0] + 'BAR'}, {alpha_label(a)}")
            for a in cfg.alphas
            for m, s in (("sam", "-"), (bar, ":"))
        ]
        panel(ax, curves, f"Fig. 2(b): {bar[0]}BAR (dotted) vs SAM (solid) on {problem.upper()}")
    save(fig, "fig2b_bar_vs_sam.png")


def _quiet() -> None:
    """Worker setup: one thread, no Lightning banners."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)


def _order(key: tuple[str, str, float]) -> tuple[int, int, float]:
    problem, method, alpha = key
    return PROBLEMS.index(problem), METHODS.index(method), alpha


def main(argv: list[str] | None = None) -> None:
    """``scripts/reproduce_toy.py``: every (problem, method, α) run, the CSVs, the four figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for the CSVs and PNGs")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--steps", type=int, help="override the number of optimizer steps per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.steps:
        cfg = Settings(**{**cfg.__dict__, "steps": args.steps})
    args.out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    results, seconds = run_sweep(cfg, args.jobs)
    count = write_csvs(results, seconds, cfg, args.out)
    plot_figures(results, cfg, args.out)
    print(f"{count} runs in {time.perf_counter() - total:.0f} s; wrote {args.out}")


def run_sweep(cfg: Settings, jobs: int) -> tuple[Results, dict[tuple[str, str, float], float]]:
    """Every (problem, method, α) run, ``jobs`` processes at once (slowest first); B_t per step and the
    seconds of each run, in the order problem, method, α."""
    runs = [
        (p, m, a) for m in ("nbar", "obar", "sam", "sgd") for p in PROBLEMS for a in cfg.alphas
    ]  # slow first
    results, seconds = {}, {}
    with ProcessPoolExecutor(jobs, initializer=_quiet) as pool:
        futures = {pool.submit(run_one, *run, cfg): run for run in runs}
        for future in as_completed(futures):
            (problem, method, alpha), (steps, values, secs) = futures[future], future.result()
            results[(problem, method, alpha)], seconds[(problem, method, alpha)] = (steps, values), secs
            ratio = abs(values[-1]) / abs(values[0])
            print(
                f"{problem:3s} {method:4s} α={alpha:<4g} |B_T|/|B_0| = {ratio:8.4f}   {secs:6.1f} s",
                flush=True,
            )
    return {key: results[key] for key in sorted(results, key=_order)}, seconds


def write_csvs(
    results: Results, seconds: dict[tuple[str, str, float], float], cfg: Settings, out: Path
) -> int:
    """``balancedness.csv`` (B_t of every run and step) and ``summary.csv`` (|B_T|/|B_0| and seconds
    per run); returns the number of runs."""
    summary = [
        (*key, cfg.steps, f"{abs(values[-1]) / abs(values[0]):.4g}", f"{seconds[key]:.1f}")
        for key, (_, values) in results.items()
    ]
    with open(out / "balancedness.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["problem", "method", "alpha", "step", "balancedness"])
        for (problem, method, alpha), (steps, values) in results.items():
            writer.writerows(
                (problem, method, alpha, s, f"{v:.6g}") for s, v in zip(steps, values, strict=True)
            )
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["problem", "method", "alpha", "steps", "abs_ratio_final", "seconds"])
        writer.writerows(summary)
    return len(summary)
