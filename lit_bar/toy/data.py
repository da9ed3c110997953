"""``ToyNoiseDataModule``: the toy problems' per-step noise, served as data.

The noise N (NOP) or n (OP) is the *data* of the toy problems, so it comes in the batch rather
than being drawn inside the loss: both SAM passes of a step then see the same sample, exactly as
with real data. The whole stream is drawn once from ``seed``, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

__all__ = ["NoiseDataset", "ToyNoiseDataModule"]


class NoiseDataset(Dataset):
    """``length`` samples of unit Gaussian noise of shape ``shape``, drawn once from ``seed``.

    Args:
        length: Number of samples.
        shape: Shape of one sample: ``(d₁, d₂)`` for NOP, ``()`` for OP.
        seed: Seed of the stream; the same seed gives the same samples.
    """

    def __init__(self, length: int, shape: Sequence[int] = (), seed: int = 0) -> None:
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must hold positive ints, got {tuple(shape)!r}")
        generator = torch.Generator().manual_seed(seed)
        self.samples = torch.randn((length, *shape), generator=generator)

    def __len__(self) -> int:
        return self.samples.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.samples[index]


class ToyNoiseDataModule(LightningDataModule):
    """Per-step noise for :class:`lit_bar.toy.NOPModule` / :class:`lit_bar.toy.OPModule`.

    One epoch is ``steps`` optimizer steps of ``batch_size`` noise samples each (the paper: one
    sample per step). Validation is not used by the toy problems.

    Args:
        shape: Shape of one noise sample: ``[d₁, d₂]`` for NOP (matrix N), ``[]`` for OP (scalar n).
        steps: Batches per epoch (with ``Trainer(max_epochs=1)``: the number of optimizer steps).
        batch_size: Noise samples per step; the loss averages over them.
        seed: Seed of the noise stream (independent of the module's initialisation seed).
    """

    def __init__(
        self, shape: Sequence[int] = (10, 10), steps: int = 5000, batch_size: int = 1, seed: int = 1
    ) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.shape = tuple(shape)
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: NoiseDataset | None = None

    @override
    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self.train_set = NoiseDataset(self.steps * self.batch_size, self.shape, self.seed)

    @override
    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)
