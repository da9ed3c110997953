"""Factor pairs: ``FactorPair``, ``balancedness`` (§1) and finding peft LoRA pairs on tiny models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn

from lit_bar.algorithms.pairs import FactorPair, balancedness, find_lora_pairs, pairs_from_names


class Tiny(nn.Module):
    """A named-layer model with every layer kind peft LoRA targets here (forward is never needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.tokens = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 4)
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(4, 2)


def lora_model(**config) -> nn.Module:
    """``Tiny`` with LoRA (r = 2) on ``emb``, ``lin`` and ``conv``; ``config`` overrides LoraConfig fields."""
    torch.manual_seed(0)
    return get_peft_model(Tiny(), LoraConfig(**{"r": 2, "target_modules": ["emb", "lin", "conv"], **config}))


def layer(model: nn.Module, name: str) -> nn.Module:
    """The peft layer that replaced ``Tiny.<name>``."""
    return getattr(model.base_model.model, name)


def hand_balancedness(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """B(x, y) = ½(‖x‖² − ‖y‖²) as a plain sum of squares."""
    return 0.5 * (x.detach().pow(2).sum() - y.detach().pow(2).sum())


def test_factor_pair_rejects_non_tensors_and_mixed_devices() -> None:
    with pytest.raises(TypeError, match="y must be a tensor, got list"):
        FactorPair("p", torch.ones(2), [1.0, 2.0])
    with pytest.raises(ValueError, match="both factors must live on one device"):
        FactorPair("p", torch.ones(2), torch.ones(2, device="meta"))


def test_balancedness_matches_hand_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [
        (torch.randn(3, 4, generator=gen), torch.randn(5, 3, generator=gen)),
        (
            torch.randn(2, 7, generator=gen, dtype=torch.float64),
            torch.randn(7, generator=gen, dtype=torch.float64),
        ),
        (3 * torch.randn(6, generator=gen), torch.zeros(6)),
    ]
    pairs = [FactorPair(f"p{i}", x, y) for i, (x, y) in enumerate(tensors)]
    got = balancedness(pairs)
    assert got.shape == (3,)
    for value, (x, y) in zip(got, tensors, strict=True):
        torch.testing.assert_close(value, hand_balancedness(x, y).to(got.dtype), atol=1e-6, rtol=1e-6)
    swapped = balancedness([FactorPair("s", y, x) for x, y in tensors])
    torch.testing.assert_close(swapped, -got)  # swapping roles flips the sign


def test_balancedness_of_no_pairs_raises() -> None:
    with pytest.raises(ValueError, match="at least one FactorPair"):
        balancedness([])


def test_lora_pairs_on_linear_embedding_and_conv_are_a_then_b() -> None:
    model = lora_model()
    pairs = {p.name.split(".")[-2]: p for p in find_lora_pairs(model)}
    assert sorted(pairs) == ["conv", "emb", "lin"]
    assert pairs["lin"].x is layer(model, "lin").lora_A["default"].weight
    assert pairs["lin"].y is layer(model, "lin").lora_B["default"].weight
    assert pairs["conv"].x is layer(model, "conv").lora_A["default"].weight
    assert pairs["conv"].y is layer(model, "conv").lora_B["default"].weight
    assert pairs["emb"].x is layer(model, "emb").lora_embedding_A["default"]
    assert pairs["emb"].y is layer(model, "emb").lora_embedding_B["default"]
    assert all(p.name.endswith(".default") for p in pairs.values())
    # A fresh LoRA (B = 0, x = A) starts with B(x, y) = ½‖A‖² > 0 (§1).
    lin = pairs["lin"]
    assert torch.count_nonzero(lin.y) == 0
    torch.testing.assert_close(balancedness([lin])[0], 0.5 * lin.x.detach().pow(2).sum())


def test_only_active_adapters_give_pairs() -> None:
    model = lora_model(target_modules=["lin"])
    model.add_adapter("second", LoraConfig(r=2, target_modules=["lin"]))
    lin = layer(model, "lin")
    for param in [lin.lora_A["second"].weight, lin.lora_B["second"].weight]:
        param.requires_grad_(True)  # trainable but inactive: activity alone must exclude it
    assert [p.name for p in find_lora_pairs(model)] == ["base_model.model.lin.default"]

    model.base_model.set_adapter(["default", "second"])
    pairs = find_lora_pairs(model)
    assert [p.name for p in pairs] == ["base_model.model.lin.default", "base_model.model.lin.second"]
    assert pairs[1].x is lin.lora_A["second"].weight


def test_merged_adapter_is_skipped() -> None:
    model = lora_model(target_modules=["lin"])
    model.add_adapter("second", LoraConfig(r=2, target_modules=["lin"]))
    model.base_model.set_adapter(["default", "second"])
    layer(model, "lin").merge(adapter_names=["second"])
    assert [p.name for p in find_lora_pairs(model)] == ["base_model.model.lin.default"]


def test_frozen_adapter_is_skipped() -> None:
    model = lora_model()
    layer(model, "lin").lora_A["default"].weight.requires_grad_(False)
    assert sorted(p.name.split(".")[-2] for p in find_lora_pairs(model)) == ["conv", "emb"]


@pytest.mark.parametrize("flag", ["use_dora", "use_rslora"])
def test_dora_and_rslora_keep_the_a_b_pair(flag: str) -> None:
    model = lora_model(target_modules=["lin"], **{flag: True})
    (pair,) = find_lora_pairs(model)
    assert pair.x is layer(model, "lin").lora_A["default"].weight
    assert pair.y is layer(model, "lin").lora_B["default"].weight


def test_trainable_token_layers_are_skipped_not_rejected() -> None:
    model = lora_model(target_modules=["lin"], trainable_token_indices={"tokens": [1, 2]})
    assert [p.name for p in find_lora_pairs(model)] == ["base_model.model.lin.default"]


def test_adalora_raises_a_clear_error() -> None:
    config = AdaLoraConfig(init_r=4, target_r=2, target_modules=["lin"], total_step=10)
    model = get_peft_model(Tiny(), config)
    with pytest.raises(ValueError, match=r"not a plain two-factor.*lora_E.*Pass the pairs yourself"):
        find_lora_pairs(model)


def test_model_without_lora_has_no_pairs() -> None:
    assert find_lora_pairs(Tiny()) == []


def test_pairs_from_names_uses_the_named_parameters() -> None:
    model = Tiny()
    (pair,) = pairs_from_names(model, [("lin.weight", "head.weight")])
    assert pair.x is model.lin.weight
    assert pair.y is model.head.weight
    assert pair.name == "lin.weight|head.weight"


def test_pairs_from_names_rejects_an_unknown_name_and_lists_close_ones() -> None:
    with pytest.raises(ValueError, match=r"'lin.wieght' is not a parameter of Tiny.*none"):
        pairs_from_names(Tiny(), [("lin.wieght", "head.weight")])
    with pytest.raises(ValueError, match=r"'lin2.weight' is not a parameter.*'emb.weight'"):
        pairs_from_names(Tiny(), [("lin.weight", "lin2.weight")])


def test_pure_torch_layer_imports_without_lightning() -> None:
    code = (
        "import sys, lit_bar, lit_bar.algorithms.pairs, lit_bar.algorithms.bar, lit_bar.optim\n"
        "lit_bar.balancedness\n"
        "lit_bar.optim.SAM\n"
        "assert 'lightning' not in sys.modules, 'lightning was imported'\n"
        "assert 'pytorch_lightning' not in sys.modules, 'pytorch_lightning was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
