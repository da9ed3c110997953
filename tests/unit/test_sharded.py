"""lit_bar.algorithms.sharded on one process (gloo, world size 1): which modules FSDP2 shards, the local-slice
reductions, and the finiteness checks of empty slices."""

from __future__ import annotations

import pytest
import torch
import torch.distributed
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from lit_bar.algorithms.nonfinite import _local_slices, all_finite
from lit_bar.algorithms.sharded import fully_shard_blocks, is_sharded, local, shard_group
from lit_bar.optim.perturbation import global_norm


@pytest.fixture
def mesh(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def _tiny_mlm():
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=20)  # fmt: skip
    return RobertaForMaskedLM(config)


def test_blocks_then_roots_are_sharded_and_a_tied_block_stays_with_its_root(mesh):
    holder = torch.nn.Module()
    holder.model = _tiny_mlm()  # the LM head's weight is the word embeddings' (tied)
    done = fully_shard_blocks(holder, mesh)
    kinds = [type(m).__name__.removeprefix("FSDP") for m in done]  # fully_shard renames the class
    assert kinds.count("RobertaLayer") == 2 and "RobertaEmbeddings" not in kinds  # tied: not its own group
    assert isinstance(holder.model, FSDPModule) and not isinstance(holder, FSDPModule)
    assert all(is_sharded(p) for p in holder.parameters())
    assert fully_shard_blocks(holder, mesh) == []  # a second call (configure_model again) changes nothing


def test_parameters_held_directly_are_refused(mesh):
    holder = torch.nn.Module()
    holder.scale = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"holds parameters directly \(scale\)"):
        fully_shard_blocks(holder, mesh)


def test_norms_and_finiteness_read_local_slices(mesh):
    holder = torch.nn.Module()
    holder.net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    expected = torch.linalg.vector_norm(torch.cat([p.detach().reshape(-1) for p in holder.parameters()]))
    fully_shard_blocks(holder, mesh, blocks=())
    params = list(holder.parameters())
    assert shard_group(params) is not None
    torch.testing.assert_close(global_norm(params), expected)
    assert bool(all_finite(params))
    with torch.no_grad():
        local(params[0])[0, 0] = float("nan")
    assert not bool(all_finite(params))


def test_an_empty_slice_counts_as_finite():
    (empty,) = _local_slices([torch.zeros(0, 3)])
    assert empty.numel() == 1 and bool(all_finite([torch.zeros(0, 3), torch.ones(2)]))


def test_m_sharpness_under_fsdp2_is_refused(mesh):
    from lit_bar.engine import SAMEngine

    holder = torch.nn.Module()
    holder.net = torch.nn.Linear(4, 2)
    fully_shard_blocks(holder, mesh, blocks=())
    with pytest.raises(ValueError, match=r"m=2 \(m-sharpness\) under sharded training \(FSDP2\)"):
        SAMEngine(rho=0.05, m=2).micro_step(None, None, list(holder.parameters()), 1.0, last=True)
