"""SAMModule under FSDP2 on 2 CPU processes (gloo) equals the 1-process run, for every method.

One subprocess (tests/integration/fsdp2_script.py) trains each method with ``--trainer.strategy
fsdp2`` and accumulation 2 on a tiny float64 peft-LoRA RoBERTa; here the same module trains in one
process on the same global batches. SAM's ε, ASAM's and the preconditioned norms, Functional-SAM's
seeded descent and BAR's factor norms are computed from local shards plus one all-reduce, so the
two agree to float64 rounding. DDP equals the 1-process run too (test_sam_ddp.py), so FSDP2 equals DDP.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsdp2_script
import pytest
import torch

SCRIPT = Path(fsdp2_script.__file__)
METHODS = list(fsdp2_script.METHODS)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {m: [torch.load(out / f"{m}_rank{r}.pt") for r in (0, 1)] for m in [*METHODS, "resumed"]}


@pytest.mark.parametrize("method", METHODS)
def test_fsdp2_equals_one_process(two_process_runs, method):
    rank0, rank1 = two_process_runs[method]
    _, reference = fsdp2_script.run(method, devices=1)
    initial = fsdp2_script.tiny_lora_model().state_dict()
    assert rank0["params"].keys() == reference["params"].keys()
    torch.testing.assert_close(rank0["balancedness"], reference["balancedness"], rtol=0, atol=1e-12)
    for name, expected in reference["params"].items():
        moved = (expected - initial[name.removeprefix("net.")]).abs().max()
        assert moved > 1e-3, f"{name} did not train: the comparison would prove nothing"
        torch.testing.assert_close(rank0["params"][name], expected, rtol=0, atol=1e-12, msg=name)
        assert torch.equal(rank1["params"][name], rank0["params"][name]), name  # one gathered tensor


def test_parameters_are_sharded_dtensors_and_each_rank_holds_half_the_frozen_base(two_process_runs):
    for rank in two_process_runs["sam"]:
        assert rank["all_sharded"]
        whole = rank["frozen_bytes_whole"]
        assert abs(rank["frozen_bytes"] - whole / 2) <= 0.02 * whole, (rank["frozen_bytes"], whole)


def test_collectives_per_step(two_process_runs):
    """SAM adds one scalar all-reduce per optimizer step (‖g‖) and one reduce-scatter per micro-batch
    and shard group (the ascent's); BAR one all-reduce per step (the stacked factor norms)."""
    steps = fsdp2_script.STEPS
    counts = {m: two_process_runs[m][0]["counts"] for m in METHODS}
    base = counts["lora"]  # what Lightning's own fit makes (e.g. its setup)
    scatter = next(k for k in base if k.startswith("reduce_scatter"))
    for method in ("sam", "asam", "fsam", "psam"):
        assert counts[method]["all_reduce"] == base["all_reduce"] + steps, method
        assert counts[method][scatter] == 2 * base[scatter], method
    for method in ("nbar", "obar"):
        assert counts[method]["all_reduce"] == base["all_reduce"] + steps, method
        assert counts[method][scatter] == base[scatter], method
    assert counts["sam_nbar"]["all_reduce"] == base["all_reduce"] + 2 * steps


def test_fsdp2_mid_epoch_resume_equals_the_straight_run(two_process_runs):
    """Stopped after optimizer step 1 of 3 (one epoch), checkpointed, resumed: bitwise the straight run
    (weights, AdamW state, loader position, RNG states and BAR's state all restored)."""
    straight = two_process_runs[fsdp2_script.RESUMED][0]["params"]
    for rank in two_process_runs["resumed"]:
        for name, expected in straight.items():
            assert torch.equal(rank["params"][name], expected), name


def test_no_host_sync_in_an_fsdp2_training_step(two_process_runs):
    """SAM + nBAR under FSDP2, no logging step: nothing in lit_bar makes the host wait for the device
    (``lit_bar.algorithms.syncs.SyncCounter`` over the whole fit, records of the training batches)."""
    for rank in two_process_runs[fsdp2_script.RESUMED]:
        assert rank["counted_syncs"] and rank["all_syncs"] > 0  # the counter was on and saw syncs
        assert rank["step_syncs"] == [], rank["step_syncs"]
