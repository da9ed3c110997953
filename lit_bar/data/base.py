"""``TextDataModule``: the generic part of every text data family (splits, tokenizer, loaders, collation).

A family subclasses it and supplies three small things:

* :meth:`TextDataModule.required_columns` — the columns its rows must have (checked on load, with
  an error naming the missing column and the available ones, before any training);
* :meth:`TextDataModule.select_splits` — which loaded split plays train / validation / test (and any
  sampling, e.g. k examples per class);
* :meth:`TextDataModule.encode` — one raw row → a dict of token id lists and scalar targets.

Rows stay raw in the datasets and are encoded in the collator, batch by batch, so nothing is
tokenized that is never used (SST-2 has 67k training rows; a demo reads 2k of them). The data
module's :attr:`TextDataModule.task_info` reaches the model through ``lit_bar.cli`` 's link
(``data.task_info`` → ``model.init_args.task_info``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from typing_extensions import override

from lit_bar.data.checks import SplitSource
from lit_bar.io.hub import load_splits, resolve_pretrained

IGNORE_INDEX = -100  # label of a position without loss (torch's cross-entropy default)

__all__ = ["IGNORE_INDEX", "PAD_VALUES", "ResumableLoader", "TextDataModule", "pad_sequences"]

#: Padding value per key when the collator pads lists of ids; other list keys pad with 0.
PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader``, except that a state saved after the epoch's last batch
    starts the next epoch.

    Lightning saves a checkpoint at the end of the epoch's last batch before the loader has raised
    ``StopIteration``; restored as is, the loader would resume an exhausted epoch and Lightning would
    count the next one as done without a batch. Such a state is dropped instead: the fresh iterator
    reads the next epoch's order (the sampler's ``set_epoch``) at its first index.
    """

    #: Batches Lightning takes per epoch (``limit_train_batches``), when fewer than ``len(self)``.
    batches_per_epoch: int | None = None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        yielded = state_dict.get("_num_yielded")
        if yielded is None and "_snapshot" in state_dict:  # worker processes: snapshot + steps since
            yielded = state_dict["_snapshot"]["_snapshot_step"] + state_dict["_steps_since_snapshot"]
        if yielded is not None and yielded >= min(len(self), self.batches_per_epoch or len(self)):
            state_dict = {}
        super().load_state_dict(state_dict)


class TextDataModule(LightningDataModule):
    """Splits from local files or the hub, a tokenizer, and dataloaders that encode rows on the fly.

    Args:
        dataset_name: Hub dataset (e.g. ``glue``); unused when ``data_dir`` is given.
        dataset_config: Hub dataset configuration (e.g. ``sst2``).
        data_dir: Local folder with ``{train,validation,test}.{jsonl,csv,parquet}`` in the hub
            schema; takes precedence over ``dataset_name``.
        tokenizer_name_or_path: Tokenizer folder or hub name (linked from the model's
            ``model_name_or_path`` by ``lit-bar``).
        batch_size: Training batch size (per device, per micro-batch).
        eval_batch_size: Validation/test batch size; ``None`` uses ``batch_size``.
        max_length: Truncate encoded inputs to this many tokens.
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling (epoch e is shuffled with seed + e) and for any sampling a family does.
        trust_remote_code: Allow code from the hub for the dataset or tokenizer (off by default).
    """

    def __init__(
        self,
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        data_dir: str | None = None,
        tokenizer_name_or_path: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ValueError(f"eval_batch_size must be a positive int or None, got {eval_batch_size!r}")
        if data_dir is None and dataset_name is None:
            raise ValueError("pass data_dir (local split files) or dataset_name (a hub dataset)")
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.data_dir = data_dir
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.datasets: dict[str, Any] = {}
        self._tokenizer: Any = None

    # ----------------------------------------------------------------- the family's part
    def required_columns(self) -> list[str]:
        """Columns every used split must have (the family's text and label columns)."""
        return []

    def select_splits(self, raw: Any) -> dict[str, Any]:
        """Map roles ``train``/``validation``/``test`` to datasets (a list of datasets for several loaders).

        Args:
            raw: The loaded ``datasets.DatasetDict``.
        """
        return {role: raw[role] for role in ("train", "validation", "test") if role in raw}

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """One raw row → ``{"input_ids": [...], "attention_mask": [...], "labels": ...}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode(row)")

    @property
    def task_info(self) -> dict[str, Any]:
        """What the model needs from the data (e.g. ``num_labels``, label word ids); linked by ``lit-bar``."""
        return {}

    # ----------------------------------------------------------------- tokenizer and splits
    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use from a local folder or (when reachable) the hub."""
        if self._tokenizer is None:
            if self.tokenizer_name_or_path is None:
                raise ValueError("tokenizer_name_or_path is unset (lit-bar links it from model_name_or_path)")
            from transformers import AutoTokenizer

            path = resolve_pretrained(self.tokenizer_name_or_path, what="tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            if tokenizer.pad_token is None:  # causal LMs (OPT has one, GPT-2 not): pad with EOS
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def load_raw(self) -> Any:
        """The ``DatasetDict`` from ``data_dir`` or the hub (``lit_bar.io.hub.load_splits``)."""
        return load_splits(self.dataset_name, self.dataset_config, self.data_dir, self.trust_remote_code)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        raw = self.load_raw()
        self.datasets = self.select_splits(raw)
        for role, data in self.datasets.items():
            for i, part in enumerate(_as_list(data)):
                self.check_columns(part, f"{role}[{i}]" if isinstance(data, list) else role)

    def split_source(self, split: str) -> SplitSource:
        """Where split ``split`` comes from (its file in ``data_dir``, or the hub dataset), for messages."""
        hub = "/".join(n for n in (self.dataset_name, self.dataset_config) if n) or None
        return SplitSource(split, self.data_dir, hub)

    def check_columns(self, dataset: Any, where: str) -> None:
        """Raise ``ValueError`` naming each required column missing from ``dataset``."""
        available = list(dataset.column_names)
        for column in self.required_columns():
            if column not in available:
                source = self.data_dir or f"{self.dataset_name}/{self.dataset_config}"
                raise ValueError(
                    f"column {column!r} is not in the {where} split of {source}; available: {available}"
                )

    # ----------------------------------------------------------------- loaders
    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Encode ``rows`` and pad list-valued keys to the longest (per the tokenizer's padding side)."""
        encoded = [self.encode(row) for row in rows]
        batch: dict[str, torch.Tensor] = {}
        for key in encoded[0]:
            values = [e[key] for e in encoded]
            if isinstance(values[0], list | tuple):
                pad = self.tokenizer.pad_token_id if key == "input_ids" else PAD_VALUES.get(key, 0)
                batch[key] = pad_sequences(values, pad, left=self.tokenizer.padding_side == "left")
            else:
                batch[key] = torch.tensor(values)
        return batch

    def collate_train(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Training batches; the same as :meth:`collate` unless a family trains on other inputs."""
        return self.collate(rows)

    def lm_batch(self, sequences: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` and ``labels`` padded with -100 (no loss)."""
        return {
            "input_ids": pad_sequences(sequences, self.tokenizer.pad_token_id),
            "attention_mask": pad_sequences([[1] * len(s) for s in sequences], 0),
            "labels": pad_sequences(labels, IGNORE_INDEX),
        }

    def _loader(self, role: str, shuffle: bool) -> DataLoader | list[DataLoader]:
        if not self.datasets:
            self.setup()
        if role not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {role} split; splits: {sorted(self.datasets)}")
        parts = _as_list(self.datasets[role])
        if shuffle:
            collate = self.collate_train if role == "train" else self.collate
            loaders = [self.resumable_loader(part, collate) for part in parts]
        else:
            loaders = [
                DataLoader(
                    part,
                    batch_size=self.eval_batch_size,
                    collate_fn=self.collate,
                    num_workers=self.num_workers,
                )
                for part in parts
            ]
        return loaders if isinstance(self.datasets[role], list) else loaders[0]

    def resumable_loader(self, dataset: Any, collate_fn: Any) -> ResumableLoader:
        """A shuffled loader that resumes where a checkpoint left it, mid-epoch included.

        The order of epoch e is a permutation seeded by ``seed + e`` alone (Lightning calls the
        sampler's ``set_epoch``), never by the history of a generator, so a run resumed at an epoch
        boundary sees the same order as an uninterrupted one. Within an epoch the loader's
        ``state_dict`` (saved in the checkpoint and restored by Lightning) holds the position; the
        sampler reads its epoch at its first index, after Lightning's ``set_epoch``.
        Under DDP each rank takes its own share of that permutation (the sampler is a
        ``DistributedSampler``, which Lightning leaves in place).
        """
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = StatefulDistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        generator = torch.Generator().manual_seed(self.seed)  # worker seeds: the global RNG stays untouched
        loader = ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            generator=generator,
        )
        limit = trainer.limit_train_batches if trainer is not None else 1.0
        if isinstance(limit, int):  # as Lightning counts an epoch's batches
            loader.batches_per_epoch = min(len(loader), limit)
        elif limit < 1.0:
            loader.batches_per_epoch = int(len(loader) * limit)
        return loader

    @override
    def train_dataloader(self) -> ResumableLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader("validation", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """A ``predict`` split when the family selects one, else the test split(s)."""
        if not self.datasets:
            self.setup()
        return self._loader("predict" if "predict" in self.datasets else "test", shuffle=False)


def _as_list(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


def pad_sequences(sequences: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """Stack ``sequences`` into a ``(n, longest)`` tensor padded with ``value`` (on the left if asked)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if not len(seq):
            continue
        if left:
            out[i, longest - len(seq) :] = torch.as_tensor(seq)
        else:
            out[i, : len(seq)] = torch.as_tensor(seq)
    return out
