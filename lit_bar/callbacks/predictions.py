"""``PredictionWriter``: ``lit-bar predict`` streams one JSON line per example into the run's log directory.

``lit-bar`` always has it (``configs/defaults.yaml``). Each task module's ``predict_step`` returns one
dict per example; this writer adds the example's index in the predicted split (Lightning's batch
indices) and appends the rows to ``<log_dir>/predictions.jsonl`` as batches arrive::

    {"index": 0, "label": 1, "label_name": "positive", "probabilities": [0.08, 0.92]}   GLUE classes
    {"index": 0, "value": 3.71}                                                          GLUE regression
    {"index": 0, "label": 0, "label_word": " terrible", "probabilities": [...]}          prompt MLM, OPT
    {"index": 0, "text": "Alan Bean was born in Wheeler, Texas."}                         SQuAD, WebNLG

``<log_dir>`` is ``trainer.log_dir`` (the logger's version folder, or ``default_root_dir`` without a
logger). With several predict dataloaders (MNLI's matched and mismatched splits) rows also carry
``dataloader_idx``; with several processes each writes ``predictions-rank<k>.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Append ``predict_step``'s rows, with their example index, to ``<log_dir>/<filename>`` (JSON lines).

    Args:
        filename: File name under the run's log directory.
        require_trained_weights: Refuse to predict with a module that neither loaded a checkpoint
            (``--ckpt_path``, ``load_from_checkpoint``) nor an adapter (``adapter_path``): its head and
            adapters would be untrained. ``False`` allows it (e.g. zero-shot prompting).
    """

    def __init__(self, filename: str = "predictions.jsonl", require_trained_weights: bool = True) -> None:
        super().__init__(write_interval="batch")
        if not isinstance(filename, str) or not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.filename = filename
        self.require_trained_weights = require_trained_weights
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._rows = 0

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.require_trained_weights and not _has_trained_weights(trainer, pl_module):
            raise ValueError(
                f"predict needs trained weights, but {type(pl_module).__name__} holds the pretrained base "
                "with an untrained head/adapter: pass --ckpt_path PATH.ckpt (a lit-bar checkpoint) or "
                "--model.init_args.adapter_path DIR (the adapter/ folder lit-bar fit writes)"
            )
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: log_dir broadcasts
        name = self.filename
        if trainer.world_size > 1:
            name = f"{Path(name).stem}-rank{trainer.global_rank}{Path(name).suffix}"
        self.path = log_dir / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        self._rows = 0

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, list) or not all(isinstance(row, dict) for row in prediction):
            raise ValueError(
                f"{type(pl_module).__name__}.predict_step must return a list of dicts (one per example) "
                f"for PredictionWriter, got {type(prediction).__name__}"
            )
        if batch_indices is None or len(batch_indices) != len(prediction):
            raise ValueError(
                f"predict batch {batch_idx}: {len(prediction)} rows but batch indices {batch_indices!r} "
                "(PredictionWriter needs a torch DataLoader, one row per example)"
            )
        several = len(trainer.num_predict_batches) > 1
        for index, row in zip(batch_indices, prediction, strict=True):
            extra = {"dataloader_idx": dataloader_idx} if several else {}
            self._file.write(json.dumps({"index": int(index), **extra, **row}) + "\n")
        self._rows += len(prediction)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        rank_zero_info(f"PredictionWriter: wrote {self._rows} predictions to {self.path}")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _has_trained_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """A checkpoint was restored, or the module loaded weights itself (its ``weights_source``)."""
    return trainer.ckpt_path is not None or getattr(pl_module, "weights_source", None) is not None
