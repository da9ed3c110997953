"""``lit_bar.algorithms.syncs``: which ops count as a host sync or a host copy, and who is charged."""

from __future__ import annotations

import pytest
import torch

from lit_bar.algorithms.syncs import SyncCounter, issuing_site, owner_of

x = torch.arange(6.0)
mask = x > 2
index = torch.tensor([0, 2])

SYNCS = {
    "item": lambda: x.sum().item(),
    "bool": lambda: bool((x > 0).all()),
    "int": lambda: int(x.max()),
    "bool mask index": lambda: x[mask],
    "bool mask assign": lambda: x.clone().__setitem__(mask, 0.0),
    "nonzero": lambda: mask.nonzero(),
    "where(cond)": lambda: torch.where(mask),
    "masked_select": lambda: x.masked_select(mask),
    "unique": lambda: torch.unique(x),
    "equal": lambda: torch.equal(x, x),
    "repeat_interleave": lambda: torch.repeat_interleave(index),
}
FREE = {
    "long index": lambda: x[index],
    "where(cond, a, b)": lambda: torch.where(mask, x, 0.0),
    "masked_fill": lambda: x.masked_fill(mask, 0.0),
    "foreach scalars": lambda: torch._foreach_mul([x, x], [0.5, 2.0]),
    "sum": lambda: (x * 2).sum(),
    "repeat_interleave with output_size": lambda: torch.repeat_interleave(x[:2], index, output_size=2),
}


@pytest.mark.parametrize("name", list(SYNCS))
def test_syncing_ops_are_counted_and_charged_to_this_file(name):
    with SyncCounter() as counter:
        SYNCS[name]()
    syncs = [r for r in counter.records if r.kind == "sync"]
    assert syncs, f"{name}: no sync recorded"
    assert {r.file for r in syncs} == {__file__} and {r.owner for r in syncs} == {"other"}


@pytest.mark.parametrize("name", list(FREE))
def test_ops_that_do_not_wait_are_not_counted(name):
    with SyncCounter() as counter:
        FREE[name]()
    assert [r for r in counter.records if r.kind == "sync"] == [], counter.report()


def test_a_tensor_from_python_data_is_a_host_copy():
    with SyncCounter() as counter:
        torch.as_tensor([0.1, 0.2])
    assert [(r.kind, r.owner) for r in counter.records] == [("host_copy", "other")]


def test_issuing_site_skips_torch_plumbing_and_names_the_lit_bar_caller():
    import lit_bar.algorithms.bar

    lit = lit_bar.algorithms.bar.__file__
    frames = [
        ("/env/site-packages/torch/_tensor.py", 10, "__bool__"),
        ("/env/site-packages/transformers/masking_utils.py", 354, "_ignore_mask"),
        ("/env/site-packages/torch/nn/modules/module.py", 1, "_call_impl"),
        (lit, 42, "forward"),
    ]
    (file, line, function), via = issuing_site(frames)
    assert (file, line, function) == ("/env/site-packages/transformers/masking_utils.py", 354, "_ignore_mask")
    assert owner_of(file) == "transformers"
    assert via == "lit_bar/algorithms/bar.py:42"
    (file, _, _), via = issuing_site(frames[3:])
    assert owner_of(file) == "lit_bar" and via is None
    assert owner_of("/env/site-packages/lightning_fabric/x.py") == "lightning"
