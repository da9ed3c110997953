"""A run whose loss turns NaN exits non-zero through ``lit-bar`` and writes no adapter (issue 19 §3).

``configs/defaults.yaml`` adds ``FiniteCheck``; ``AdapterExport`` refuses NaN/inf weights on its own
(here without ``FiniteCheck``, the weights poisoned at the end of training).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_artifacts import _data, _module, _trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import glue_cli_args, tiny_sst2

from lit_bar.algorithms.nonfinite import NonFiniteError
from lit_bar.callbacks import AdapterExport


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("finite"), train=16, validation=4)


def test_lit_bar_fit_with_a_diverging_learning_rate_exits_with_one_error_line(sst2_like, tmp_path):
    model, data = sst2_like
    out = tmp_path / "out"
    args = glue_cli_args(model, data, "lora", out, logger=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LIT_BAR_TRACEBACK", None)
    run = subprocess.run(
        [sys.executable, "-m", "lit_bar.cli", "fit", *args, "--model.init_args.optimizer.lr", "1e30"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert run.returncode != 0, run.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("lit-bar: error: training diverged: "), run.stderr[
        -3000:
    ]
    assert "at optimizer step" in errors[0] and "learning rate too high" in errors[0]
    assert "Traceback" not in run.stderr
    assert not list(out.rglob("adapter*")) and not list(out.rglob("*.ckpt"))


class Poison(Callback):
    """Turn one LoRA weight NaN when training ends: a diverged run that nothing stopped."""

    def on_train_end(self, trainer, pl_module) -> None:
        param = next(p for n, p in pl_module.named_parameters() if "lora_B" in n)
        with torch.no_grad():
            param[0, 0] = float("nan")


@pytest.mark.parametrize("merged", [None, "merged"])
def test_adapter_export_refuses_non_finite_weights_and_writes_nothing(sst2_like, tmp_path, merged):
    model, data = sst2_like
    module = _module(str(model))
    trainer = _trainer(tmp_path, [Poison(), AdapterExport(merged_dirname=merged)], max_steps=2)
    match = r"AdapterExport: refusing to export: 1 tensor\(s\) are NaN/inf at the end of training \(.*lora_B"
    with pytest.raises(NonFiniteError, match=match):
        trainer.fit(module, _data((str(model), str(data))))
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()


def test_adapter_export_still_writes_finite_weights(sst2_like, tmp_path):
    model, data = sst2_like
    trainer = _trainer(tmp_path, [AdapterExport()], max_steps=2)
    trainer.fit(_module(str(model)), _data((str(model), str(data))))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
