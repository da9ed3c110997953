"""peft's LoRA options through ``lit-bar fit``: all-linear, DoRA, rsLoRA under SAM and nBAR; LoRA+ groups.

A tiny random RoBERTa on the GLUE SST-2 config (4 debug steps). ``Recorder``, added to the
trainer's callbacks from the command line, keeps what the run built: each LoRA layer's scaling,
the LoRA+ learning rates per parameter, and the B factors before and after training.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny.hf import glue_cli_args, read_metrics, tiny_sst2

from lit_bar.cli import main


class Recorder(Callback):
    """Stores what the last run built in ``Recorder.seen`` (a class attribute: the CLI builds it)."""

    seen: ClassVar[dict[str, Any]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        groups = trainer.optimizers[0].param_groups
        Recorder.seen = {
            "initial_lr": {names[id(p)]: g["initial_lr"] for g in groups for p in g["params"]},
            "scaling": {
                n: m.scaling["default"]
                for n, m in pl_module.named_modules()
                if isinstance(getattr(m, "scaling", None), dict)  # peft's; attention has a float one
            },
            "b_start": {n: p.detach().clone() for n, p in pl_module.named_parameters() if "lora_B" in n},
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 2:  # mid-schedule (4 debug steps: warm-up, then decay to 0)
            names = {id(p): n for n, p in pl_module.named_parameters()}
            groups = trainer.optimizers[0].param_groups
            Recorder.seen["lr_mid"] = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}

    def on_train_end(self, trainer, pl_module) -> None:
        Recorder.seen["b_end"] = {
            n: p.detach().clone() for n, p in pl_module.named_parameters() if "lora_B" in n
        }
        Recorder.seen["names"] = [n for n, p in pl_module.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_sst2(tmp_path_factory.mktemp("lora"))


def fit(model: Path, data: Path, method: str, out: Path, *lora: str) -> dict[str, float]:
    """``lit-bar fit`` on the GLUE SST-2 file + a method file + debug, with ``lora`` overrides."""
    recorder = json.dumps({"class_path": f"{__name__}.Recorder"})
    main(["fit", *glue_cli_args(model, data, method, out), "--trainer.callbacks+", recorder, *lora])
    return read_metrics(out / "logs")


OPTIONS = [
    "--model.init_args.lora.target_modules", "all-linear",
    "--model.init_args.lora.use_dora", "true",
    "--model.init_args.lora.use_rslora", "true",
]  # fmt: skip


@pytest.mark.parametrize("method", ["sam", "nbar"])
def test_all_linear_dora_rslora_train_from_the_cli(sst2_like, tmp_path: Path, method: str) -> None:
    """One run per method with the three options together (each CLI run costs seconds)."""
    model, data = sst2_like
    metrics = fit(model, data, method, tmp_path, *OPTIONS)
    seen = Recorder.seen
    assert math.isfinite(metrics["train/loss"])
    moved = [not torch.equal(seen["b_start"][n], seen["b_end"][n]) for n in seen["b_start"]]
    assert moved and all(moved)  # every B factor trained (B starts at 0)
    layers = {n.split(".lora_A")[0].split(".")[-1] for n in seen["names"] if ".lora_A." in n}
    pairs = sum(".lora_A." in n for n in seen["names"])
    # all-linear: query, key, value, attention output, intermediate, output in each of 2 layers
    assert {"query", "key", "value", "dense"} <= layers and pairs >= 12
    assert sum("lora_magnitude_vector" in n for n in seen["names"]) == pairs  # DoRA
    scale = 16 / math.sqrt(8)  # rsLoRA: lora_alpha / √r with the config's lora_alpha 16, r 8 (not 16 / 8)
    assert seen["scaling"] and all(v == pytest.approx(scale) for v in seen["scaling"].values())
    if method == "nbar":
        assert metrics["bar/pairs_plus"] + metrics["bar/pairs_minus"] == pairs


def test_loraplus_ratio_gives_b_factors_their_own_learning_rate(sst2_like, tmp_path: Path) -> None:
    model, data = sst2_like
    fit(model, data, "sam", tmp_path, "--model.init_args.lora.loraplus_lr_ratio", "16")
    for key in ("initial_lr", "lr_mid"):  # what the schedule scales, and where it left the rates
        lrs = Recorder.seen[key]
        base = {lr for n, lr in lrs.items() if "lora_B" not in n}
        b_factors = {lr for n, lr in lrs.items() if "lora_B" in n}
        assert len(base) == 1 and len(b_factors) == 1 and sum("lora_B" in n for n in lrs) == 4
        assert base != {0.0} and b_factors.pop() == pytest.approx(16 * base.pop())
    assert Recorder.seen["initial_lr"] == {
        n: 4e-4 * (16 if "lora_B" in n else 1) for n in lrs
    }  # the config's lr
