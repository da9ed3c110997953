"""Every use of Lightning's private attributes in lit_bar, in one file (checked on lightning 2.6).

lit_bar needs two things Lightning has no public API for; a Lightning upgrade that renames the
attributes below touches this file only (``tests/unit/test_layering.py`` keeps the rest of the
package off them):

* :func:`release_training_loader`: ``trainer.estimated_stepping_batches`` builds the training loader
  before a checkpoint's loop state is restored, and the fit loop then never loads the checkpoint's
  loader position into it (Lightning #20550, ``_FitLoop.setup_data`` returns early). Dropping the
  early loader makes the fit loop build its own after the restore (:mod:`lit_bar.lightning.steps`).
* :func:`load_dropped_loader_state`: the same trap when a subclass built the loader anyway; load the
  pending position into the loader and restart the fetcher's iterator, as Lightning's resume does
  (:class:`lit_bar.SAMModule`).
* :func:`drop_earlier_step_values`: Lightning writes the step values logged *so far in the epoch* on
  every batch its own (micro-batch) counter picks, so under manual optimization with accumulation a
  value logged at optimizer step 4 is written again at step 6. ``SAMModule`` drops the step-only
  values of earlier batches at the start of each ``training_step``, so the loggers receive each
  value once, on the logging step (:func:`lit_bar.lightning.steps.is_logging_step`) that logged it.

* :data:`RICH_AVAILABLE`: whether Lightning's rich progress bar can be built (Lightning's own check,
  ``_RICH_AVAILABLE``), so :class:`lit_bar.callbacks.StepProgressBar` picks the bar Lightning would.

The attributes: ``fit_loop._combined_loader``, ``fit_loop._data_fetcher``,
``fit_loop._combined_loader_states_to_load``, ``CombinedLoader._load_state_dicts``, and
``trainer._results`` with its ``_ResultMetric._forward_cache``.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

#: Lightning's rich progress bar can be built (rich installed, in the version Lightning requires).
RICH_AVAILABLE = bool(_RICH_AVAILABLE)

__all__ = [
    "RICH_AVAILABLE",
    "drop_earlier_step_values",
    "has_training_loader",
    "load_dropped_loader_state",
    "release_training_loader",
]


def has_training_loader(trainer: pl.Trainer) -> bool:
    """Whether the fit loop has built its training loader already."""
    return trainer.fit_loop._combined_loader is not None


def release_training_loader(trainer: pl.Trainer) -> None:
    """Drop the fit loop's training loader (and shut its fetcher's workers down); it builds a new one."""
    fit_loop = trainer.fit_loop
    if fit_loop._data_fetcher is not None:  # shuts down any worker processes of the early iterator
        fit_loop._data_fetcher.teardown()
        fit_loop._data_fetcher = None
    fit_loop._combined_loader = None  # the fit loop builds it again after the checkpoint's restore


def load_dropped_loader_state(trainer: pl.Trainer) -> None:
    """Load a checkpoint's loader position that a loader built before the restore did not get.

    A no-op unless the fit loop is restarting with a pending position and a built loader and fetcher.
    """
    fit_loop = trainer.fit_loop
    pending = fit_loop._combined_loader_states_to_load
    loader, fetcher = fit_loop._combined_loader, fit_loop._data_fetcher
    if not pending or not fit_loop.restarting or loader is None or fetcher is None:
        return
    loader._load_state_dicts(pending)
    fit_loop._combined_loader_states_to_load = []
    iter(fetcher)


def drop_earlier_step_values(trainer: pl.Trainer) -> None:
    """Forget the step-only values (``on_step=True, on_epoch=False``) logged in earlier batches.

    Lightning keeps them for the whole epoch and writes them on each batch its logging counter picks;
    dropped, a batch that logs nothing writes nothing. ``callback_metrics`` and the progress bar keep
    their last values (Lightning holds those in its own dictionaries). Epoch-level values are untouched.
    """
    results = getattr(trainer, "_results", None)
    if results is None:
        return
    for metric in results.values():
        if metric.meta.on_step and not metric.meta.on_epoch:
            metric._forward_cache = None
