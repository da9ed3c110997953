"""SAMModule under 2-process DDP on CPU equals the 1-process run on the same global batch (point E),
and, with accumulation and dropout together, a plain-torch DDP SAM loop with the same dropout masks.

Everything is float64: the ascent all-reduce runs in the gradients' own dtype, so 2 processes
match 1 to 1e-12 (a float32 reduce is ~1e-8 off).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ddp_script
import pytest
import torch
import torch.nn.functional as F
from tiny.sam import assert_params_close, make_data, make_net, max_diff, sgd

SCRIPT = Path(ddp_script.__file__)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Final parameters of each rank for (perturbation, m) with m unset (0) or 2, from one 2-process run."""
    out = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, str(SCRIPT), "--devices", "2", "--m", "0", "2", "--out", str(out)]
    command += ["--perturbation", *PERTURBATIONS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {
        (p, m): [torch.load(out / f"{p}_m{m}_rank{r}.pt") for r in (0, 1)]
        for p in PERTURBATIONS
        for m in (0, 2)
    }


PERTURBATIONS = ("sam", "functional")


def _one_process(m: int | None, perturbation: str = "sam") -> list[torch.Tensor]:
    return [p.detach() for p in ddp_script.run(devices=1, m=m, perturbation=perturbation).net.parameters()]


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_ddp_sam_equals_one_process_sam_on_the_global_batch(two_process_runs, perturbation):
    rank0, rank1 = two_process_runs[perturbation, 0]
    assert max_diff(rank0["params"], rank1["params"]) == 0, "ranks must hold identical parameters"
    assert_params_close(rank0["params"], _one_process(None, perturbation), atol=1e-12)
    # the ascent gradient is all-reduced exactly once per optimizer step (ε from the global batch)
    assert rank0["all_reduce_calls"] == rank1["all_reduce_calls"] == [1] * ddp_script.STEPS


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_ddp_m_sharpness_does_not_depend_on_the_number_of_processes(two_process_runs, perturbation):
    rank0, rank1 = two_process_runs[perturbation, 2]
    assert max_diff(rank0["params"], rank1["params"]) == 0
    one_process = _one_process(2, perturbation)
    assert_params_close(rank0["params"], one_process, atol=1e-12)
    assert (
        max_diff(one_process, _one_process(None, perturbation)) > 1e-3
    )  # m changes the result: the check can fail
    # each chunk's ascent is local: no all-reduce besides DDP's own descent reduction
    assert rank0["all_reduce_calls"] == rank1["all_reduce_calls"] == [0] * ddp_script.STEPS


# ------------------------------------------------------------------ accumulation + dropout
WORLD, ACCUMULATE, DROPOUT = 2, 2, 0.3


@pytest.fixture(scope="module")
def accumulation_run(tmp_path_factory):
    """Both ranks' records from one 2-process run with 2 micro-batches per step and dropout."""
    out = tmp_path_factory.mktemp("ddp_accumulate")
    command = [sys.executable, str(SCRIPT), "--devices", str(WORLD), "--out", str(out)]
    command += ["--accumulate", str(ACCUMULATE), "--dropout", str(DROPOUT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return [torch.load(out / f"accumulate_rank{r}.pt") for r in range(WORLD)]


def _mean_gradient(net, x, y, window: list[dict], shift: int) -> list[torch.Tensor]:
    """Mean of ∇L over the window's micro-batches, micro-batch i with the masks of record i + shift."""
    params = list(net.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i, rec in enumerate(window):
        torch.set_rng_state(window[(i + shift) % len(window)]["rng"])
        loss = F.mse_loss(net(x[rec["rows"]]), y[rec["rows"]])
        for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            t.add_(g / len(window))
    return total


def hand_ddp_sam(records: list[list[dict]], replay: bool = True):
    """Plain-torch DDP SAM: per step, g = mean over ranks and micro-batches of ∇L (each forward with
    the dropout masks drawn from its recorded RNG state), ε = ρ g/‖g‖, the descent gradient the same
    mean at w + ε (``replay=False``: with the next micro-batch's masks instead), SGD with momentum."""
    x, y = make_data(ddp_script.GLOBAL_BATCH * ddp_script.STEPS)
    net = make_net(dropout=DROPOUT)
    params = list(net.parameters())
    optimizer = sgd(0.2, momentum=0.5)(params)
    norms = []
    for step in range(ddp_script.STEPS):
        window = [rec for rank in records for rec in rank[step * ACCUMULATE : (step + 1) * ACCUMULATE]]

        g = _mean_gradient(net, x, y, window, 0)
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        norms.append(float(norm))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, g, strict=True):
                p.add_(ddp_script.RHO * t / norm)
        descent = _mean_gradient(net, x, y, window, 0 if replay else 1)
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        for p, d in zip(params, descent, strict=True):
            p.grad = d
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach() for p in params], norms


def test_ddp_with_accumulation_and_dropout_equals_plain_torch_ddp_sam(accumulation_run):
    rank0, rank1 = accumulation_run
    assert max_diff(rank0["params"], rank1["params"]) == 0, "ranks must hold identical parameters"
    records = [rank0["records"], rank1["records"]]
    expected, norms = hand_ddp_sam(records)
    wrong_masks, _ = hand_ddp_sam(records, replay=False)
    assert max_diff(expected, wrong_masks) > 1e-4  # the descent must replay each ascent's masks
    assert_params_close(rank0["params"], expected, atol=1e-12)
    # one ascent all-reduce per optimizer step, in the window's last micro-batch
    assert rank0["all_reduce_calls"] == [0, 1] * ddp_script.STEPS
    # train/grad_norm = ‖mean ascent gradient‖ over both processes (the sum's norm is 2× that)
    logged = [rec["grad_norm"] for rec in rank0["records"][ACCUMULATE - 1 :: ACCUMULATE]]
    assert logged == pytest.approx(norms, rel=1e-12)
