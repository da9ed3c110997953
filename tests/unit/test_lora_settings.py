"""``LoraSettings`` mirrors peft's ``LoraConfig``; LoRA+ groups get lr × ratio on the B factors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from peft import LoraConfig
from torch import nn

from lit_bar.optim import LR_SCALE, apply_lr_scales
from lit_bar.tasks.lora import LoraSettings, apply_lora, lora_parameter_groups

BOOKKEEPING = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path"}
BOOKKEEPING |= {"revision", "inference_mode"}


class Net(nn.Module):
    """Two named Linear layers and a head (what ``target_modules`` selects from)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query, self.value, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.value(torch.tanh(self.query(x)))))


def test_every_configurable_peft_field_is_exposed_under_peft_name_and_default() -> None:
    ours = {f.name: f for f in dataclasses.fields(LoraSettings)}
    for f in dataclasses.fields(LoraConfig):
        if f.name in BOOKKEEPING:
            assert f.name not in ours
            continue
        assert f.name in ours, f.name
        if f.default is not dataclasses.MISSING:
            assert ours[f.name].default == f.default, f.name
    assert set(ours) - {f.name for f in dataclasses.fields(LoraConfig)} == {
        "loraplus_lr_ratio",
        "alpha",
        "dropout",
    }
    assert "Lora alpha" in LoraSettings.__doc__  # peft's help text is the --help text


def test_to_peft_passes_every_value_through() -> None:
    settings = LoraSettings(
        r=4,
        lora_alpha=32,
        lora_dropout=0.1,
        target_modules=["query", "value"],
        bias="lora_only",
        init_lora_weights="gaussian",
        rank_pattern={"query": 2},
        alpha_pattern={"query": 8},
        layers_to_transform=[0],
        layers_pattern="layers",
        use_dora=True,
        use_rslora=True,
        modules_to_save=["head"],
    )
    config = settings.to_peft()
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (4, 32, 0.1, "lora_only")
    assert set(config.target_modules) == {"query", "value"} and config.init_lora_weights == "gaussian"
    assert config.rank_pattern == {"query": 2} and config.alpha_pattern == {"query": 8}
    assert config.layers_to_transform == [0] and config.use_dora and config.use_rslora
    assert config.modules_to_save == ["head"]


def test_dict_round_trip_rebuilds_nested_configs() -> None:
    """Checkpoints keep the settings as ``dataclasses.asdict``; the dict must build them again."""
    settings = LoraSettings(r=2, target_modules=["query"])
    again = LoraSettings(**dataclasses.asdict(settings))
    assert again == LoraSettings(**dataclasses.asdict(again))
    assert type(again.to_peft().runtime_config).__name__ == "LoraRuntimeConfig"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 16}, "lora.alpha is now lora.lora_alpha"),
        ({"dropout": 0.1}, "lora.dropout is now lora.lora_dropout"),
        ({"r": 0}, "positive int, got 0"),
        ({"lora_dropout": 1.0}, r"\[0, 1\), got 1.0"),
        ({"bias": "some"}, r"lora.bias must be one of \['none', 'all', 'lora_only'\], got 'some'"),
        ({"init_lora_weights": "eva"}, "init_lora_weights='eva' needs a pass over data"),
        ({"loraplus_lr_ratio": 0.0}, "loraplus_lr_ratio must be a number > 0 or None, got 0.0"),
    ],
)
def test_bad_settings_raise_naming_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoraSettings(**kwargs)


@pytest.mark.parametrize("option", ["all-linear", "dora", "rslora"])
def test_peft_options_reach_the_layers(option: str) -> None:
    settings = {
        "all-linear": LoraSettings(r=2, lora_alpha=4, target_modules="all-linear"),
        "dora": LoraSettings(r=2, lora_alpha=4, target_modules=["query", "value"], use_dora=True),
        "rslora": LoraSettings(r=4, lora_alpha=4, target_modules=["query", "value"], use_rslora=True),
    }[option]
    model = apply_lora(Net(), settings)
    names = [n for n, _ in model.named_parameters()]
    layer = model.base_model.model.query
    if option == "all-linear":  # every Linear except the output layer peft recognises (none here)
        assert {n.split(".")[-4] for n in names if "lora_A" in n} == {"query", "value", "head"}
    if option == "dora":
        assert any("lora_magnitude_vector" in n for n in names)
    expected = 4 / math.sqrt(4) if option == "rslora" else 4 / 2
    assert layer.scaling["default"] == pytest.approx(expected)


def test_loraplus_puts_b_factors_in_a_group_with_lr_times_ratio() -> None:
    model = apply_lora(
        Net(),
        LoraSettings(r=2, target_modules=["query", "value"], modules_to_save=["head"], loraplus_lr_ratio=8),
    )
    groups = lora_parameter_groups(model, LoraSettings(loraplus_lr_ratio=8))
    optimizer = apply_lr_scales(torch.optim.AdamW(groups, lr=1e-3))
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs and all(lr == pytest.approx(8e-3 if "lora_B" in n else 1e-3) for n, lr in lrs.items())
    assert sum("lora_B" in n for n in lrs) == 2 and any("head" in n for n in lrs)
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert optimizer.param_groups[-1][LR_SCALE] == 8.0
    apply_lr_scales(optimizer)  # a second call does not scale again
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(8e-3)

    plain = lora_parameter_groups(model, LoraSettings())
    assert isinstance(plain, list) and all(isinstance(p, torch.Tensor) for p in plain)
    with pytest.raises(ValueError, match="loraplus_lr_ratio=8 needs LoRA B factors"):
        lora_parameter_groups(Net(), LoraSettings(loraplus_lr_ratio=8))
