"""``scripts/gpu_check.py --size tiny`` runs on CPU: every row trains, syncs are attributed, none to lit_bar.

On CPU the script counts syncs with ``lit_bar.algorithms.syncs.SyncCounter`` (no GPU result is claimed:
the table
says "CPU"); the fp16 skip-step check runs on CPU too when asked (``--fp16-skip-check``).
"""

from __future__ import annotations

import json


def test_gpu_check_tiny_runs_on_cpu_and_charges_no_sync_to_lit_bar(tmp_path, monkeypatch, capsys):
    from lit_bar.experiments import gpu_check

    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    out = tmp_path / "check.json"
    status = gpu_check.main(
        ["--size", "tiny", "--steps", "2", "--warmup", "1", "--fp16-skip-check", "--json", str(out)]
    )
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert report["device"].startswith("CPU")
    assert [r["method"] for r in report["rows"]] == ["LoRA", "LoRA-nBAR", "SAM", "FSAM", "PSAM"]
    for row in report["rows"]:
        assert row["step_ms"] > 0 and row["peak_gib"] is None
        assert "lit_bar" not in row["syncs_per_step"], row["sync_sites"]
        # the model's own SDPA mask check, once per forward: two forwards per SAM step, one otherwise
        forwards = 1 if row["method"].startswith("LoRA") else 2
        assert row["syncs_per_step"]["transformers"] == forwards, row["sync_sites"]
    skip = report["fp16_skip"]["lightning"]
    assert skip["ok"] and skip["max_param_change"] == 0.0 and "hf_trainer" not in report["fp16_skip"]
    assert "| LoRA-nBAR | 32-true |" in printed and "lit_bar syncs per step (all rows): 0; OK" in printed


def test_gpu_check_fsdp2_section_runs_on_cpu_with_sharded_parameters_and_no_lit_bar_sync(tmp_path, capsys):
    """``--fsdp2`` on CPU: SAM and nBAR under ``strategy="fsdp2"`` with one process (gloo) train with
    every parameter a sharded DTensor and no sync charged to lit_bar; fp16 loss scaling is refused
    naming bf16-mixed; the process is left without a process group or launcher variables."""
    import os

    import torch.distributed

    from lit_bar.experiments import gpu_check

    out = tmp_path / "check.json"
    argv = [
        "--size",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--methods",
        "SAM",
        "--fsdp2",
        "--json",
        str(out),
    ]
    status = gpu_check.main(argv)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert status == 0, printed
    (plain,) = report["rows"]
    assert plain["strategy"] == "auto" and not plain["all_sharded"]  # the check can tell the two apart
    rows = report["fsdp2"]["rows"]
    assert [(r["method"], r["strategy"], r["precision"]) for r in rows] == [
        ("SAM", "fsdp2", "32-true"),
        ("LoRA-nBAR", "fsdp2", "32-true"),
    ]
    for row in rows:
        assert row["all_sharded"] and row["step_ms"] > 0
        assert "lit_bar" not in row["syncs_per_step"], row["sync_sites"]
        forwards = 1 if row["method"].startswith("LoRA") else 2  # the model's SDPA mask check per forward
        assert row["syncs_per_step"]["transformers"] == forwards, row["sync_sites"]
    fp16 = report["fsdp2"]["fp16"]
    assert fp16["ok"] and "--trainer.precision 16-mixed under FSDP2" in fp16["refused"]
    assert "## FSDP2 on one device" in printed and "lit_bar syncs per step (all rows): 0; OK" in printed
    assert not torch.distributed.is_initialized() and "LOCAL_RANK" not in os.environ
