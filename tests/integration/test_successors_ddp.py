"""Flat-LoRA and Bi-LoRA under 2-process DDP on CPU equal one process on the same global batch.

Flat-LoRA: every rank draws the same ε from (seed, step, layer), so the ranks' base weights agree
at every step without communication. Bi-LoRA: the auxiliary gradients are not DDP parameters, so
BiLoRACallback all-reduces them itself; without that the ranks' auxiliary pairs would drift apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import successors_ddp_script as script
import torch

TOL = 1e-12


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("successors_ddp")
    done = subprocess.run(
        [sys.executable, str(Path(script.__file__)), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {m: [torch.load(out / f"{m}_rank{r}.pt") for r in (0, 1)] for m in script.METHODS}


def max_diff(xs, ys) -> float:
    return max((x - y).abs().max().item() for x, y in zip(xs, ys, strict=True))


@pytest.mark.parametrize("method", script.METHODS)
def test_ddp_equals_one_process_on_the_global_batch(two_process_runs, method):
    rank0, rank1 = two_process_runs[method]
    one = script.run(1, method).result
    start = script.lora_net()
    moved = [p.detach() for n, p in start.named_parameters() if "lora_" in n]
    assert max_diff(one["lora"], moved) > 1e3 * TOL  # training moved the factors
    for key in ("lora", "base", "aux"):
        assert len(rank0[key]) == len(one[key])
        if one[key]:
            assert max_diff(rank0[key], rank1[key]) < TOL, key
            assert max_diff(rank0[key], one[key]) < TOL, key
    if method == "bilora":
        assert max(t.abs().max().item() for t in one["aux"][1::2]) > 0  # B₂ moved from 0
