"""``SAMModule``: a LightningModule base whose training step is SAM (Alg. 1), written once.

A subclass builds its network in ``__init__`` (passing ``**kwargs`` up) and implements
``compute_loss(batch) -> Tensor``; Functional-SAM also needs the split ``compute_outputs(batch)``
+ ``loss_from_outputs(outputs, batch)``. One optimizer step over k micro-batches (ALGORITHMS.md §2)::

    ascent   for each micro-batch i:  fork RNG_i;  g += ∇(L_i / k)      (autograd.grad: no DDP hook)
             [DDP, m unset: all-reduce g once]
    perturb  ε = ρ g/‖g‖ (adaptive / preconditioned forms: lit_bar.optim.perturbation); save w; w += ε
    descent  for each micro-batch i:  replay RNG_i;  manual_backward(L_i(w + ε) / k)
             (Functional-SAM: backward of f_i(w + ε) seeded with the stored clean ∂L_i/∂f)
             [DDP: only the last backward all-reduces]
    restore  w ← saved copy (exact)
    step     opt.step() → precision plugin: unscale → on_before_optimizer_step (callbacks, then
             this module: gradient clipping) → scaler.step (skips non-finite) → scaler.update
             then LR schedulers with interval "step"

With ``m`` set each chunk of m examples gets its own ε and is ascended, perturbed, descended and
restored on its own (m-sharpness), so the result is independent of devices and micro-batching.
With ``rho=0`` there is no ascent: one pass per micro-batch, i.e. plain training (the cost of
LoRA, and of BAR on top of it).

Hooks in the SAM path (pinned by tests/integration/test_sam_module_hooks.py): the ascent uses
``torch.autograd.grad`` and fires no backward hook; each descent backward fires
[``on_before_backward`` → ``on_after_backward``]. With ``m`` unset the k descent backwards of a window
all run inside its *last* micro-batch's ``training_step`` (ε needs every micro-batch's gradient
first), so the earlier micro-batches fire only ``on_train_batch_start``/``on_train_batch_end``; with
``m`` set (or ρ = 0) each micro-batch's ``training_step`` runs its own descent backwards (one per chunk).
The last ``training_step`` then fires ``on_before_optimizer_step`` (callbacks, then the module) once
per optimizer step, before that micro-batch's ``on_train_batch_end``. ``trainer.global_step`` counts
optimizer steps: during the n-th step's ``on_before_optimizer_step`` it reads n − 1, at the following
``on_train_batch_end`` n.

Lightning refuses ``Trainer(accumulate_grad_batches>1)`` and ``Trainer(gradient_clip_val>0)`` under
manual optimization, so they are arguments of this module under the same names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils._pytree import tree_flatten, tree_map
from typing_extensions import override

from lit_bar.optim.perturbation import global_norm, sam_perturbation, validate_precondition
from lit_bar.optim.sam import validate_rho
from lit_bar.step_utils import batch_size, frozen_batchnorm, is_batched, rng_state, set_rng_state

__all__ = ["PERTURBATIONS", "SAMModule"]

PERTURBATIONS = ("sam", "functional")


class SAMModule(LightningModule):
    """LightningModule base class with the SAM step built in (manual optimization).

    Args:
        optimizer: Factory ``params -> base optimizer`` (LightningCLI ``OptimizerCallable``).
        lr_scheduler: Optional factory ``optimizer -> LR scheduler``, stepped by this module.
        lr_scheduler_interval: ``"step"`` (once per optimizer step) or ``"epoch"``.
        rho: SAM radius ρ ≥ 0; 0 means plain training (one pass, no perturbation).
        adaptive: Adaptive SAM (ASAM): ε = ρ T² g/‖T g‖, T = |w| on weight matrices.
        m: m-sharpness: each chunk of ``m`` examples gets its own ε (Sec. 4, App. C.3); ``None``
            perturbs the whole optimizer-step batch (all micro-batches, all devices) at once.
        perturbation: ``"sam"``, or ``"functional"`` (Functional-SAM, seed 002: descent gradient
            J_f(w+ε)ᵀ ∂L/∂f(w); needs ``compute_outputs`` and ``loss_from_outputs``).
        precondition: ``None``, or ``"adam"``: ε ∝ P g with Adam's diagonal preconditioner, ‖ε‖ = ρ.
        accumulate_grad_batches: Micro-batches per optimizer step (takes over the Trainer flag);
            by default exact large-batch SAM over all of them.
        gradient_clip_val: Clip the unscaled descent gradients to this value (Trainer's flag moved here).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        rho: float = 0.05,
        adaptive: bool = False,
        m: int | None = None,
        perturbation: Literal["sam", "functional"] = "sam",
        precondition: Literal["adam"] | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.rho = validate_rho(rho)
        self.adaptive = bool(adaptive)
        self.perturbation = _check_choice("perturbation", perturbation, PERTURBATIONS)
        self.precondition = validate_precondition(precondition)
        self.lr_scheduler_interval = _check_choice(
            "lr_scheduler_interval", lr_scheduler_interval, ("step", "epoch")
        )
        self.gradient_clip_algorithm = _check_choice(
            "gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value")
        )
        if adaptive and precondition is not None:
            raise ValueError("adaptive=True and precondition are exclusive: choose one way to shape ε")
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"m must be a positive int (examples per perturbation chunk) or None, got {m!r}")
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}")
        if gradient_clip_val is not None and not gradient_clip_val >= 0:
            raise ValueError(f"gradient_clip_val must be >= 0 or None, got {gradient_clip_val!r}")
        self.m = m
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self._window: list[tuple[Any, torch.Tensor, Any]] = []  # (batch, rng state, ∂L/∂f) per micro-batch
        self._ascent: list[torch.Tensor] | None = None
        self._loss_sum: torch.Tensor | None = None

    # ----------------------------------------------------------------- the subclass's part
    def compute_loss(self, batch: Any) -> torch.Tensor:
        """The scalar training loss of ``batch`` (mean over its examples). Override this, or the split."""
        return self.loss_from_outputs(self.compute_outputs(batch), batch)

    def compute_outputs(self, batch: Any) -> torch.Tensor:
        """The outputs f the loss is taken of (logits, candidate scores); Functional-SAM needs it."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither compute_loss(batch) nor compute_outputs(batch) + "
            "loss_from_outputs(outputs, batch)"
        )

    def loss_from_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss of ``outputs`` (from :meth:`compute_outputs`) on ``batch``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement loss_from_outputs(outputs, batch)"
        )

    def parameter_groups(self) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer factory receives: the trainable parameters (override for groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- Lightning plumbing
    @override
    def setup(self, stage: str) -> None:
        if self.perturbation == "functional" and not _overrides(self, "compute_outputs", "loss_from_outputs"):
            raise ValueError(
                f"perturbation='functional' needs the network's outputs apart from the loss: "
                f"{type(self).__name__} must implement compute_outputs(batch) and "
                "loss_from_outputs(outputs, batch) "
                "(compute_loss then defaults to their composition)"
            )

    @override
    def configure_callbacks(self) -> Any:
        """Refuse the Trainer flags this module took over, naming their new place.

        Lightning calls this before its own check of manual optimization, whose message would not
        say where the flags went. Subclasses that add callbacks call ``super().configure_callbacks()``.
        """
        trainer = self.trainer
        moved = {
            "accumulate_grad_batches": trainer.accumulate_grad_batches
            if trainer.accumulate_grad_batches != 1
            else None,
            "gradient_clip_val": trainer.gradient_clip_val or None,
        }
        for flag, value in moved.items():
            if value is not None:
                raise ValueError(
                    f"Trainer({flag}={value!r}): {type(self).__name__} optimizes manually (SAM), and "
                    f"Lightning refuses that flag then; pass it to the module instead: "
                    f"{type(self).__name__}({flag}={value!r}) "
                    f"(--model.init_args.{flag}={value!r} on the command line)"
                )
        return []

    @override
    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if not groups:
            raise ValueError(
                f"{type(self).__name__} has no trainable parameters (every requires_grad is False)"
            )
        optimizer = self.optimizer(groups)
        if self.precondition == "adam" and not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            raise ValueError(
                "precondition='adam' reads Adam's second moment, but the optimizer is "
                f"{type(optimizer).__name__}; "
                "use torch.optim.Adam or AdamW, or precondition=None"
            )
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        if getattr(scheduler, "total_steps", 0) is None and hasattr(scheduler, "set_total_steps"):
            scheduler.set_total_steps(self.estimated_optimizer_steps())
        config = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def estimated_optimizer_steps(self) -> int:
        """Total optimizer steps of the run: ⌈batches per epoch / accumulation⌉ × epochs, capped by
        ``max_steps`` (whichever ends the run first, as the Trainer does)."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018  (makes the trainer load the training data)
        per_epoch, epochs = trainer.num_training_batches, trainer.max_epochs
        total = float("inf")
        if epochs not in (None, -1) and not math.isinf(per_epoch):
            total = math.ceil(per_epoch / self.accumulate_grad_batches) * max(epochs, 1)
        if trainer.max_steps != -1:
            total = min(total, trainer.max_steps)
        if math.isinf(total):
            raise ValueError(
                "the run has no finite length (max_steps=-1 and max_epochs=-1, or a training set without "
                "len()), so a schedule over the whole run cannot be built: set max_steps, or pass total_steps"
            )
        return int(total)

    @override
    def on_train_start(self) -> None:
        if self.m is None or self.rho == 0:
            return
        loaders = tree_flatten(self.trainer.train_dataloader)[0]
        for loader in loaders:
            size = getattr(loader, "batch_size", None)
            if size is not None and size % self.m:
                raise ValueError(
                    f"m={self.m} does not divide the training batch size {size}; choose m dividing it"
                )

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the final, unscaled gradients (``gradient_clip_val``); subclasses call ``super()``."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    @override
    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def evaluation_step(self, batch: Any, stage: str) -> torch.Tensor:
        """One validation (``stage="val"``) or test (``"test"``) batch; logs ``{stage}/loss``.

        Task modules override this one method (not ``validation_step``/``test_step``) to add metrics.
        """
        loss = self.compute_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch_size(batch))
        return loss

    def on_evaluation_epoch_end(self, stage: str) -> None:
        """End of a validation (``"val"``) or test (``"test"``) epoch: log epoch-level metrics here."""

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.evaluation_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.evaluation_step(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self.on_evaluation_epoch_end("val")

    @override
    def on_test_epoch_end(self) -> None:
        self.on_evaluation_epoch_end("test")

    # ----------------------------------------------------------------- the SAM step
    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        last = (batch_idx + 1) % self.accumulate_grad_batches == 0 or self.trainer.is_last_batch
        if self.rho == 0:
            loss = self._plain_micro_step(batch, last)
        elif self.m is not None:
            loss = self._chunked_micro_step(batch, last)
        else:
            loss = self._ascent_micro_step(batch)
            if last:
                self._descend_window()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if last:
            self._optimizer_step()
        return loss

    def _plain_micro_step(self, batch: Any, last: bool) -> torch.Tensor:
        with self._sync(last):
            loss = self.compute_loss(batch)
            self.manual_backward(loss / self.accumulate_grad_batches)
        return loss.detach()

    def _ascent_micro_step(self, batch: Any) -> torch.Tensor:
        rng = rng_state()
        loss, grads, out_grad = self._ascent_grads(batch, 1.0 / self.accumulate_grad_batches)
        if self._ascent is None:
            self._ascent = grads
        else:
            torch._foreach_add_(self._ascent, grads)
        self._window.append((batch, rng, out_grad))
        return loss

    def _descend_window(self) -> None:
        grads, self._ascent = self._ascent, None
        if self.trainer.world_size > 1:
            grads = self._all_reduce_sum(grads)  # ε only needs the direction: sum = mean
        window, self._window = self._window, []
        with self._perturbed(grads):
            for i, (batch, rng, out_grad) in enumerate(window):
                set_rng_state(rng)
                self._descent_backward(
                    batch, out_grad, 1.0 / self.accumulate_grad_batches, last=i == len(window) - 1
                )

    def _chunked_micro_step(self, batch: Any, last: bool) -> torch.Tensor:
        size = batch_size(batch)
        starts = range(0, size, self.m)
        loss = torch.zeros((), device=self.device)
        for j, start in enumerate(starts):
            chunk = tree_map(lambda t, s=start: t[s : s + self.m] if is_batched(t, size) else t, batch)
            weight = min(self.m, size - start) / size / self.accumulate_grad_batches
            rng = rng_state()
            chunk_loss, grads, out_grad = self._ascent_grads(chunk, weight)
            with self._perturbed(grads):
                set_rng_state(rng)
                self._descent_backward(chunk, out_grad, weight, last=last and j == len(starts) - 1)
            loss = loss + chunk_loss * (weight * self.accumulate_grad_batches)
        return loss

    def _ascent_grads(self, batch: Any, weight: float) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
        """∇(weight · L) at w via autograd.grad (loss-scaled under fp16), and ∂L/∂f for Functional-SAM."""
        params = self._trainable()
        outputs = None
        if self.perturbation == "functional":
            outputs = self.compute_outputs(batch)
            loss = self.loss_from_outputs(outputs, batch)
        else:
            loss = self.compute_loss(batch)
        targets = [*params, outputs] if outputs is not None else params
        grads = torch.autograd.grad(self._scale(loss * weight), targets, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, targets, strict=True)]
        out_grad = None
        if outputs is not None:  # clean ∂(weight·L)/∂f at w, unscaled, fp32 (no fp16 underflow)
            out_grad = grads.pop().float() / self._scale(torch.ones((), device=loss.device))
        return loss.detach(), grads, out_grad

    def _descent_backward(self, batch: Any, out_grad: Any, weight: float, last: bool) -> None:
        with self._sync(last):
            if out_grad is None:
                target = self.compute_loss(batch) * weight
            else:  # Functional-SAM: backward through f(w+ε) seeded with the clean ∂L/∂f(w)
                outputs = self.compute_outputs(batch)
                target = torch.sum(outputs.float() * out_grad)
            self.manual_backward(target)

    @contextlib.contextmanager
    def _perturbed(self, grads: list[torch.Tensor]) -> Iterator[None]:
        """w ← w + ε for the duration, then w ← its exact saved copy; BatchNorm stats frozen."""
        params = self._trainable()
        optimizer = self.optimizers().optimizer if self.precondition else None
        eps = sam_perturbation(params, grads, self.rho, self.adaptive, optimizer, self.precondition)
        self.log("train/grad_norm", global_norm(grads) / self._scale(torch.ones((), device=self.device)))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_add_(params, eps)
        del eps, grads
        after = rng_state()
        try:
            with frozen_batchnorm(self):
                yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
            set_rng_state(after)

    def _optimizer_step(self) -> None:
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.log("train/loss", self._loss_sum / self.accumulate_grad_batches, prog_bar=True)
        self._loss_sum = None
        self._step_schedulers("step")

    def _step_schedulers(self, interval: str) -> None:
        count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            if config.reduce_on_plateau:
                metric = self.trainer.callback_metrics.get(config.monitor)
                if metric is None:
                    raise ValueError(f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged")
                config.scheduler.step(metric)
            else:
                config.scheduler.step()

    # ----------------------------------------------------------------- helpers
    def _trainable(self) -> list[torch.Tensor]:
        optimizer = self.optimizers().optimizer
        return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def _scale(self, tensor: torch.Tensor) -> torch.Tensor:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler.scale(tensor) if scaler is not None else tensor

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return contextlib.nullcontext() if last or block is None else block()

    def _all_reduce_sum(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        return [
            part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
        ]


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def _overrides(module: SAMModule, *names: str) -> bool:
    return all(getattr(type(module), n) is not getattr(SAMModule, n) for n in names)
