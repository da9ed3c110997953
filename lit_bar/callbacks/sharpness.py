"""``SharpnessMonitor``: how sharp the final weights are, measured after ``fit`` and in ``lit-bar test``.

It measures :mod:`lit_bar.sharpness`'s three figures of the trainable parameters on a fixed set of
training batches and logs them::

    sharpness/worst        (+ _stderr)  max_{‖ε‖≤ρ} L_B(w+ε) − L_B(w), mean over the batches
    sharpness/average      (+ _stderr)  E_{‖δ‖=ρ_avg} L(w+δ) − L(w) over random directions
    sharpness/hessian_top  (+ _change)  top Hessian eigenvalue by power iteration

The batches: ``num_batches`` batches of ``batch_size`` rows (default: the training loader's) drawn
from the training set by a permutation seeded with ``seed`` alone, and collated by the training
loader's own ``collate_fn``: the same rows on every process, in every run of the same data, in
``fit`` and in ``test``. Every process measures them and rank 0's numbers are broadcast, so all
processes log the same values. The loss is the module's ``compute_loss(batch)`` (every lit_bar task
has it) under the precision plugin's autocast, in eval mode (no dropout); weights, every
submodule's train/eval mode and the torch/numpy/Python/CUDA random generators are as before
afterwards, and ``.grad`` is not touched, so training is unaffected.

* ``fit``: measured in ``on_train_end`` (the final weights, after the last checkpoint was written)
  and written straight to the loggers at the last step (Lightning's ``self.log`` is closed in that
  hook); also put in ``trainer.callback_metrics``.
* ``test``: measured in ``on_test_start`` and logged there, so the figures sit beside
  ``test/accuracy`` in the test's ``metrics.csv`` and in the dict ``trainer.test`` returns::

      lit-bar test --config ... --ckpt_path last.ckpt --trainer.callbacks+ SharpnessMonitor

  The training split is read through the data module's ``train_dataloader()``.

Cost with the defaults, LoRA on MiniLM-L6, 4 batches of 32 SST-2 sentences (max_length 64), on
this project's 2-core CPU while shared with other jobs: 85 CPU-seconds (worst-case 17, average 20,
top eigenvalue 40: one gradient and ≤ 4 Hessian-vector products of ~8 forward passes each), an
estimated 45 s of wall time on an idle 2-core machine (CPU-seconds over two threads). ``measures``,
``num_batches``, ``directions`` and ``power_iterations`` trade it against precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lit_bar.lightning.resume import collect_rng_states, restore_rng_states
from lit_bar.sharpness import DEFAULT_RHO, MEASURES, Estimate, measure_sharpness

__all__ = ["SPREAD_SUFFIXES", "SharpnessMonitor", "fixed_batches"]

#: What each figure's spread is, as the suffix of its logged key.
SPREAD_SUFFIXES = {"worst": "_stderr", "average": "_stderr", "hessian_top": "_change"}


class SharpnessMonitor(Callback):
    """Log the worst-case and average sharpness and the top Hessian eigenvalue of the final weights.

    Args:
        num_batches: Training batches measured on (≥ 1; the worst-case spread needs ≥ 2). The
            worst-case sharpness is taken per batch on all of them.
        pooled_batches: The average sharpness and the top eigenvalue are taken of the mean loss
            over the first ``pooled_batches`` of them (``None``: all). Their cost grows with it,
            their noise comes mostly from the random directions: one batch by default.
        batch_size: Rows per batch; ``None``: the training loader's batch size.
        measures: Which figures: any of ``worst``, ``average``, ``hessian_top``.
        rho: Radius ρ of the worst-case sharpness (L2 over all trainable tensors). 0.05 is SAM's
            default radius and the middle of the paper's grid (see :mod:`lit_bar.sharpness`).
        ascent_steps: Normalised ascent steps of the worst-case sharpness (1: SAM's estimate).
        average_rho: Radius of the random directions of the average sharpness. Random directions
            see the mean curvature tr(H)/d rather than the top one, so at ρ = 0.05 the change of the
            loss of a LoRA model is at float32's resolution; 1.0 lifts it well above that.
        directions: Antithetic direction pairs ±δ of the average sharpness.
        power_iterations: At most this many Hessian-vector products for the top eigenvalue.
        tolerance: Relative change of the eigenvalue that ends the power iteration early.
        seed: Seed of the batches' rows, the random directions and the power iteration's start.
        after_fit: Measure at the end of ``fit``.
        in_test: Measure at the start of ``test``.
    """

    def __init__(
        self,
        num_batches: int = 4,
        pooled_batches: int | None = 1,
        batch_size: int | None = None,
        measures: Sequence[str] = MEASURES,
        rho: float = DEFAULT_RHO,
        ascent_steps: int = 1,
        average_rho: float = 1.0,
        directions: int = 6,
        power_iterations: int = 4,
        tolerance: float = 1e-2,
        seed: int = 0,
        after_fit: bool = True,
        in_test: bool = True,
    ) -> None:
        for name, value in (
            ("num_batches", num_batches),
            ("ascent_steps", ascent_steps),
            ("directions", directions),
            ("power_iterations", power_iterations),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if pooled_batches is not None and (
            isinstance(pooled_batches, bool) or not isinstance(pooled_batches, int) or pooled_batches < 1
        ):
            raise ValueError(f"pooled_batches must be an int >= 1 or None, got {pooled_batches!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        measures = list(measures)
        if not measures or any(m not in MEASURES for m in measures):
            raise ValueError(f"measures must be a non-empty list of {', '.join(MEASURES)}; got {measures!r}")
        for name, value in (("rho", rho), ("average_rho", average_rho)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
        for name, value in (("after_fit", after_fit), ("in_test", in_test)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        self.num_batches = num_batches
        self.pooled_batches = pooled_batches
        self.batch_size = batch_size
        self.measures = measures
        self.rho = float(rho)
        self.ascent_steps = ascent_steps
        self.average_rho = float(average_rho)
        self.directions = directions
        self.power_iterations = power_iterations
        self.tolerance = float(tolerance)
        self.seed = seed
        self.after_fit = after_fit
        self.in_test = in_test
        self.results: dict[str, float] = {}  # the last measurement's logged values

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.after_fit:
            return
        loaders = [x for x in tree_flatten(trainer.train_dataloader)[0] if isinstance(x, DataLoader)]
        values = self.measure(trainer, pl_module, _single(loaders))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        for logger in trainer.loggers:  # self.log is closed in on_train_end
            logger.log_metrics(values, step=max(trainer.global_step - 1, 0))
            logger.save()

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.in_test:
            return
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        try:
            loader = source.train_dataloader()
        except Exception as err:  # a module without training data: say what is missing, not how
            raise ValueError(
                f"SharpnessMonitor measures on training batches, but {type(source).__name__}."
                f"train_dataloader() failed in the test stage: {err}"
            ) from err
        loaders = [x for x in tree_flatten(loader)[0] if isinstance(x, DataLoader)]
        for key, value in self.measure(trainer, pl_module, _single(loaders)).items():
            pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1)

    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader
    ) -> dict[str, float]:
        """The logged values of the current weights on this callback's batches of ``loader``
        (rank 0's, on every process); generators, weights and modes as before afterwards."""
        loss = getattr(pl_module, "compute_loss", None)
        if not callable(loss):
            raise ValueError(
                f"SharpnessMonitor needs the module's loss: {type(pl_module).__name__} has no "
                "compute_loss(batch) (lit_bar.SAMModule and every lit_bar task have it)"
            )
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"SharpnessMonitor: {type(pl_module).__name__} has no trainable parameters to measure"
            )
        states = collect_rng_states()
        try:
            with torch.inference_mode(False):  # the test loop runs under inference mode
                batches = fixed_batches(loader, self.num_batches, self.batch_size, self.seed)
                batches = [trainer.strategy.batch_to_device(b) for b in batches]
                loss_fn = _loss_under(trainer, loss)
                estimates = {}
                for measures, subset in (
                    ([m for m in self.measures if m == "worst"], batches),
                    ([m for m in self.measures if m != "worst"], batches[: self.pooled_batches]),
                ):
                    if measures:
                        estimates |= measure_sharpness(
                            loss_fn,
                            params,
                            subset,
                            measures,
                            self.rho,
                            self.ascent_steps,
                            self.directions,
                            self.average_rho,
                            self.power_iterations,
                            self.tolerance,
                            self.seed,
                            module=pl_module,
                        )
        finally:
            restore_rng_states(states)
        values = trainer.strategy.broadcast(_as_values(estimates), src=0)
        self.results = dict(values)
        return values


def fixed_batches(loader: DataLoader, num_batches: int, batch_size: int | None, seed: int) -> list[Any]:
    """``num_batches`` batches of ``batch_size`` rows of ``loader``'s dataset (the first rows of a
    permutation seeded with ``seed``), collated by ``loader.collate_fn``; fewer (and at least one,
    possibly short) when the dataset is smaller, with a warning."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
        raise ValueError(
            f"SharpnessMonitor draws fixed rows from the training set, which needs a map-style dataset "
            f"with a length; got {type(dataset).__name__}"
        )
    size = batch_size or loader.batch_size
    if size is None:
        raise ValueError(
            "the training loader has no batch_size (a custom batch sampler): "
            "set SharpnessMonitor(batch_size=...)"
        )
    rows = len(dataset)
    count = max(1, min(num_batches, rows // size))
    if count < num_batches:
        rank_zero_warn(
            f"SharpnessMonitor: the training set has {rows} rows, enough for {count} batch(es) of "
            f"{size}, not num_batches={num_batches}"
        )
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[: count * size].tolist()
    collate = loader.collate_fn
    return [collate([dataset[i] for i in order[j * size : (j + 1) * size]]) for j in range(count)]


def _single(loaders: list[DataLoader]) -> DataLoader:
    if len(loaders) != 1:
        raise ValueError(
            f"SharpnessMonitor measures on one training loader; this run has {len(loaders)} "
            f"({', '.join(type(x).__name__ for x in loaders) or 'none'})"
        )
    return loaders[0]


def _loss_under(trainer: pl.Trainer, loss: Any) -> Any:
    """``loss`` inside the precision plugin's forward context (autocast for mixed precision)."""

    def loss_fn(batch: Any) -> torch.Tensor:
        with trainer.precision_plugin.forward_context():
            return loss(batch)

    return loss_fn


def _as_values(estimates: dict[str, Estimate]) -> dict[str, float]:
    values = {}
    for name, estimate in estimates.items():
        values[f"sharpness/{name}"] = estimate.value
        values[f"sharpness/{name}{SPREAD_SUFFIXES[name]}"] = estimate.spread
    return values
