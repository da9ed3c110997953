"""``lit-bar fit`` with configs/method/flatlora.yaml and bilora.yaml: 4 steps on a tiny SST-2 RoBERTa and on
every other task family (prompt RoBERTa, OPT candidates and LM, GPT-2 WebNLG).

The exported ``adapter/`` must hold the primary LoRA factors (and the task head) only, equal to the
trained module's; Flat-LoRA must leave the base weights as they were; Bi-LoRA's auxiliary pair must
have moved (it was trained) without reaching the adapter.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_host_syncs import ROOT, families  # noqa: F401  (the fixture: one tiny run per task family)
from tiny.hf import glue_cli_args, read_metrics, tiny_sst2

from lit_bar.callbacks import BiLoRACallback, FlatLoRACallback
from lit_bar.cli import main


class Recorder(Callback):
    """Keeps the base weights and LoRA factors at the start and end of training (class attribute)."""

    seen: ClassVar[dict[str, Any]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        Recorder.seen = {"base_start": self._base(pl_module)}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        start, now = Recorder.seen["base_start"], self._base(pl_module)
        Recorder.seen["noise_seen"] = max((now[n] - start[n]).abs().max().item() for n in start)

    def on_train_end(self, trainer, pl_module) -> None:
        Recorder.seen["base_end"] = self._base(pl_module)
        Recorder.seen["lora_end"] = {
            n: p.detach().clone() for n, p in pl_module.named_parameters() if "lora_" in n
        }
        for callback in trainer.callbacks:
            if isinstance(callback, BiLoRACallback):
                Recorder.seen["aux_b"] = [b.detach().clone() for b in callback.bilora.b]
            if isinstance(callback, FlatLoRACallback):
                Recorder.seen["flat_layers"] = len(callback.flat.layers)

    @staticmethod
    def _base(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.named_parameters() if "base_layer.weight" in n}


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("successors"))


@pytest.mark.parametrize("method", ["flatlora", "bilora"])
def test_method_config_trains_and_exports_the_primary_adapter_only(
    sst2_like, tmp_path: Path, method: str
) -> None:
    model, data = sst2_like
    recorder = json.dumps({"class_path": f"{__name__}.Recorder"})
    main(["fit", *glue_cli_args(model, data, method, tmp_path), "--trainer.callbacks+", recorder])
    metrics = read_metrics(tmp_path / "logs")
    assert math.isfinite(metrics["train/loss"])
    seen = Recorder.seen
    (adapter,) = list((tmp_path / "logs").rglob("adapter_model.safetensors"))
    exported = load_file(adapter)
    lora_keys = [k for k in exported if "lora_" in k]
    other = [k for k in exported if "lora_" not in k]
    assert lora_keys and all(".lora_A." in k or ".lora_B." in k for k in lora_keys)
    assert all("classifier" in k for k in other)  # the task head (modules_to_save), nothing else
    trained = seen["lora_end"]
    assert len(lora_keys) == len(trained)  # one exported tensor per primary factor: no auxiliary pair
    for (
        key
    ) in lora_keys:  # peft drops the adapter name: "...query.lora_A.weight" <- "...lora_A.default.weight"
        suffix = key.removeprefix("base_model.model.").replace(".weight", ".default.weight")
        (match,) = [v for n, v in trained.items() if n.endswith(suffix)]
        assert torch.equal(match.cpu(), exported[key]), key
    if method == "flatlora":
        assert seen["flat_layers"] == len(trained) // 2
        assert seen["noise_seen"] > 1e-4  # the last step (σ ramped up) trained at W + ε
        for name, start in seen["base_start"].items():  # and the noise came off after every step
            assert (seen["base_end"][name] - start).abs().max() < 1e-6
    else:
        assert len(seen["aux_b"]) == len(trained) // 2
        assert all(b.abs().max() > 0 for b in seen["aux_b"])  # B₂ starts at 0: the ascent moved it
        assert "bilora/perturbation_norm" in metrics


@pytest.mark.parametrize("method", ["flatlora", "bilora"])
@pytest.mark.parametrize("family", ["prompt", "causal-candidates", "causal-squad-lm", "webnlg"])
def test_method_config_trains_every_task_family(families, family, method, tmp_path: Path) -> None:  # noqa: F811
    """OPT (Linear), GPT-2 (split q/k/v from Conv1D), prompt-based RoBERTa: 4 steps, the adapter written."""
    config, model, data, *extra = families[family]
    if family == "webnlg":
        extra += ["--model.init_args.lr_scheduler.init_args.warmup_steps", "1"]  # the file warms up 500 steps
    args = [
        "fit", "--config", str(ROOT / config), "--config", str(ROOT / f"configs/method/{method}.yaml"),
        "--config", str(ROOT / "configs/debug.yaml"),
        "--model.init_args.model_name_or_path", model, "--data.init_args.data_dir", data,
        "--data.init_args.batch_size", "4", "--trainer.default_root_dir", str(tmp_path), *extra,
        "--trainer.callbacks+", json.dumps({"class_path": f"{__name__}.Recorder"}),
    ]  # fmt: skip
    main(args)
    seen = Recorder.seen
    (adapter,) = list(tmp_path.rglob("adapter_model.safetensors"))
    exported = [k for k in load_file(adapter) if "lora_" in k]
    assert exported and all(".lora_A." in k or ".lora_B." in k for k in exported)
    assert all(torch.isfinite(v).all() for v in seen["lora_end"].values())
    if method == "flatlora":
        assert seen["flat_layers"] > 0 and seen["noise_seen"] > 0
        for name, start in seen["base_start"].items():
            assert (seen["base_end"][name] - start).abs().max() < 1e-6
    else:
        assert all(b.abs().max() > 0 for b in seen["aux_b"])
