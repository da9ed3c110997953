"""Training loaders of every data family resume where a checkpoint left them.

The loader's ``state_dict`` goes through ``torch.save`` / ``torch.load(weights_only=True)`` as in a
checkpoint; the reference is the uninterrupted loader's own sequence of batches. Each epoch's order
must depend on (seed, epoch) alone, so an epoch-boundary resume does not replay epoch 1.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from lit_bar.data.base import ResumableLoader, TextDataModule
from lit_bar.data.causal import CandidateDataModule
from lit_bar.data.glue import GlueDataModule
from lit_bar.data.prompt import PromptFewShotDataModule
from lit_bar.data.webnlg import WebNLGDataModule

ROWS, BATCH = 18, 4  # 5 batches per epoch, the last one partial


class Rows(torch.utils.data.Dataset):
    """``ROWS`` rows ``{"i": i}`` (a list would mean several training sets to TextDataModule)."""

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"i": i}


class IndexData(TextDataModule):
    """Rows ``{"i": i}``; a batch is the tensor of its row indices (no tokenizer needed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_dir="unused", batch_size=BATCH, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        self.datasets = {"train": Rows()}

    def collate_train(self, rows):
        return torch.tensor([row["i"] for row in rows])


def epoch(loader: ResumableLoader, number: int) -> list[list[int]]:
    """One epoch's batches, after ``set_epoch`` as Lightning calls it."""
    loader.sampler.set_epoch(number)
    return [batch.tolist() for batch in loader]


def through_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "family", [GlueDataModule, PromptFewShotDataModule, CandidateDataModule, WebNLGDataModule]
)
def test_every_family_trains_from_the_resumable_loader(family) -> None:
    assert family.train_dataloader is TextDataModule.train_dataloader
    assert (
        family._loader is TextDataModule._loader
        and family.resumable_loader is TextDataModule.resumable_loader
    )
    assert isinstance(IndexData().train_dataloader(), ResumableLoader)


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    straight = IndexData(seed=3).train_dataloader()
    orders = [epoch(straight, e) for e in range(3)]
    assert len({str(o) for o in orders}) == 3  # every epoch reshuffles
    fresh = IndexData(seed=3).train_dataloader()  # e.g. built again after an epoch-boundary resume
    assert epoch(fresh, 2) == orders[2]
    assert epoch(IndexData(seed=4).train_dataloader(), 2) != orders[2]


@pytest.mark.parametrize("workers", [0, 2], ids=["main_process", "two_workers"])
def test_mid_epoch_state_resumes_the_rest_of_the_epoch(workers: int) -> None:
    straight = IndexData(seed=3, num_workers=workers).train_dataloader()
    full = epoch(straight, 1)
    straight.sampler.set_epoch(1)
    iterator = iter(straight)
    seen = [next(iterator).tolist() for _ in range(2)]
    state = through_checkpoint(straight.state_dict())
    resumed = IndexData(seed=3, num_workers=workers).train_dataloader()
    resumed.load_state_dict(state)
    rest = epoch(resumed, 1)
    assert seen + rest == full
    assert epoch(IndexData(seed=3).train_dataloader(), 1)[: len(rest)] != rest  # without the state: repeats


def test_state_saved_after_the_last_batch_starts_the_next_epoch() -> None:
    straight = IndexData(seed=3).train_dataloader()
    straight.sampler.set_epoch(0)
    iterator = iter(straight)
    for _ in range(5):  # every batch taken, StopIteration not yet raised (as at Lightning's save)
        next(iterator)
    resumed = IndexData(seed=3).train_dataloader()
    resumed.load_state_dict(through_checkpoint(straight.state_dict()))
    assert epoch(resumed, 1) == epoch(IndexData(seed=3).train_dataloader(), 1)


class FakeTrainer:
    """What the data module reads from its trainer."""

    def __init__(self, world_size: int = 1, global_rank: int = 0, limit_train_batches: float = 1.0) -> None:
        self.world_size, self.global_rank, self.limit_train_batches = (
            world_size,
            global_rank,
            limit_train_batches,
        )


def loader_under(trainer: FakeTrainer) -> ResumableLoader:
    data = IndexData(seed=3)
    data.trainer = trainer
    return data.train_dataloader()


def test_last_batch_under_limit_train_batches_starts_the_next_epoch() -> None:
    straight = loader_under(FakeTrainer(limit_train_batches=3))
    assert straight.batches_per_epoch == 3
    straight.sampler.set_epoch(0)
    iterator = iter(straight)
    for _ in range(3):
        next(iterator)
    resumed = loader_under(FakeTrainer(limit_train_batches=3))
    resumed.load_state_dict(through_checkpoint(straight.state_dict()))
    assert epoch(resumed, 1) == epoch(IndexData(seed=3).train_dataloader(), 1)


def test_ranks_share_out_each_epoch() -> None:
    orders = []
    for rank in (0, 1):
        orders.append([i for batch in epoch(loader_under(FakeTrainer(2, rank)), 1) for i in batch])
    assert sorted(orders[0] + orders[1]) == list(range(ROWS))  # 18 rows, 9 per rank, no overlap
