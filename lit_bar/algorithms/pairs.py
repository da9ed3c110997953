"""Scale-invariant factor pairs and their balancedness (paper Sec. 2.2 and Theorem 1; docs/algorithms.md §1).

A *pair* (x, y) is two parameter tensors on which the loss depends only through a product that
is unchanged by (c·x, y/c). For peft LoRA, ``ΔW = s·B·A``: ``x = lora_A`` and ``y = lora_B``, so a
freshly initialised adapter (B = 0) has balancedness ½‖A‖² > 0::

        in ──► [ lora_A  (r × in) ]  = x ──► [ lora_B  (out × r) ] = y ──► out
                 B(x, y) = ½ (‖x‖²_F − ‖y‖²_F)

Pure torch: nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_bar.algorithms.sharded import global_norm_squares, local, shard_group

__all__ = [
    "FactorPair",
    "balancedness",
    "find_lora_pairs",
    "module_pairs",
    "pairs_from_names",
    "resolve_pairs",
]

# Factor names of peft's plain LoRA layer; any other factor (AdaLoRA's ``lora_E``) breaks the pair.
_LORA_FACTORS = {"lora_A": "lora_B", "lora_embedding_A": "lora_embedding_B"}
_LORA_EXTRAS = {"lora_magnitude_vector"}  # DoRA: a magnitude, not a factor; (A, B) stays a pair.


@dataclass(frozen=True)
class FactorPair:
    """One scale-invariant pair whose product is invariant to ``(c·x, y/c)``.

    Args:
        name: A readable name (used in logs), e.g. ``"encoder.layer.0.attention.self.query.default"``.
        x: The first factor (``lora_A`` for LoRA).
        y: The second factor (``lora_B`` for LoRA).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        for label, tensor in (("x", self.x), ("y", self.y)):
            if not isinstance(tensor, torch.Tensor):
                kind = type(tensor).__name__
                raise TypeError(f"FactorPair {self.name!r}: {label} must be a tensor, got {kind}")
        if self.x.device != self.y.device:
            raise ValueError(
                f"FactorPair {self.name!r}: x is on {self.x.device} but y is on {self.y.device}; "
                "both factors must live on one device"
            )


def balancedness(pairs: Sequence[FactorPair]) -> torch.Tensor:
    """Return ``½(‖x‖²_F − ‖y‖²_F)`` for every pair, as one 1-D tensor (docs/algorithms.md §1).

    The norms are taken with ``torch._foreach_norm``: one kernel launch per list, not one per pair.
    """
    if not pairs:
        raise ValueError("balancedness() needs at least one FactorPair, got an empty sequence")
    group = shard_group([t for p in pairs for t in (p.x, p.y)])
    x_norms = torch.stack(torch._foreach_norm([local(p.x).detach() for p in pairs]))
    y_norms = torch.stack(torch._foreach_norm([local(p.y).detach() for p in pairs]))
    dtype = torch.promote_types(torch.promote_types(x_norms.dtype, y_norms.dtype), torch.float32)
    x_sq, y_sq = x_norms.to(dtype).square(), y_norms.to(dtype).square()  # float64 stays float64
    if group is not None:  # FSDP2: the slices' squared norms, summed over processes in one all-reduce
        x_sq, y_sq = global_norm_squares(torch.cat([x_sq, y_sq]), group).split(len(pairs))
    return 0.5 * (x_sq - y_sq)


def _layer_pairs(module_name: str, layer: nn.Module) -> list[FactorPair]:
    """The (A, B) pairs of one peft LoRA layer: active, unmerged adapters with trainable factors."""
    pairs = []
    merged = set(getattr(layer, "merged_adapters", []))
    for adapter in layer.active_adapters:
        if adapter in merged:
            continue
        for a_name, b_name in _LORA_FACTORS.items():
            a_store, b_store = getattr(layer, a_name, {}), getattr(layer, b_name, {})
            if adapter not in a_store or adapter not in b_store:
                continue
            x, y = a_store[adapter], b_store[adapter]
            x = x if isinstance(x, torch.Tensor) else x.weight
            y = y if isinstance(y, torch.Tensor) else y.weight
            if x.requires_grad and y.requires_grad:
                pairs.append(FactorPair(f"{module_name}.{adapter}" if module_name else adapter, x, y))
    return pairs


def find_lora_pairs(model: nn.Module) -> list[FactorPair]:
    """Find one :class:`FactorPair` per peft LoRA layer and active, trainable, unmerged adapter.

    Covers LoRA on Linear, Embedding and Conv layers, several adapters, DoRA and rsLoRA (all keep
    their (A, B) pair). A peft layer that is not a plain two-factor pair (AdaLoRA's third factor
    ``lora_E``, LoHa, LoKr, ...) raises a ``ValueError``: pass your own pairs instead. peft's
    trainable-token layers (``LoraConfig(trainable_token_indices=...)``) hold no pair and are skipped.

    Args:
        model: Any module; peft layers are found wherever they sit in it.

    Returns:
        The pairs, in ``named_modules`` order; empty when the model holds no LoRA layer.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    pairs: list[FactorPair] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or _is_auxiliary(module):
            continue
        names = set(module.adapter_layer_names)
        extra = sorted(names - set(_LORA_FACTORS) - set(_LORA_FACTORS.values()) - _LORA_EXTRAS)
        if not isinstance(module, LoraLayer) or extra:
            raise ValueError(
                f"find_lora_pairs: layer {module_name!r} ({type(module).__name__}) holds adapter factors "
                f"{sorted(names)}, which is not a plain two-factor (lora_A, lora_B) pair"
                + (f" (extra factors: {extra})" if extra else "")
                + ". Pass the pairs yourself, e.g. BalancednessCallback(pairs=[(x_name, y_name), ...])."
            )
        pairs.extend(_layer_pairs(module_name, module))
    return pairs


def module_pairs(module: nn.Module) -> list[FactorPair]:
    """The scale-invariant pairs of ``module``: its own declaration, else its peft LoRA pairs.

    A module that knows its pairs (e.g. the toy problems' ``x yᵀ``) declares them with a method
    ``factor_pairs() -> list[FactorPair]``; anything else is searched with :func:`find_lora_pairs`.
    Every consumer of pairs (``BalancednessCallback``, monitoring, the transformers callback) asks here.
    """
    declared = getattr(module, "factor_pairs", None)
    if callable(declared):
        return list(declared())
    return find_lora_pairs(module)


def resolve_pairs(
    module: nn.Module, spec: Iterable[tuple[str, str]] | Iterable[FactorPair] | None, owner: str
) -> list[FactorPair]:
    """The pairs a BAR front end regularises: ``spec`` as given, or the module's own (``None``).

    Args:
        module: The model (names in ``spec`` are its parameter names).
        spec: ``None`` (:func:`module_pairs`), :class:`FactorPair` objects, or
            ``(x_parameter_name, y_parameter_name)`` tuples.
        owner: Who asks, for the error messages (e.g. ``"BalancednessCallback"``).

    Raises:
        ValueError: no pair was found, or a pair has a factor with ``requires_grad=False``.
    """
    if spec is None:
        pairs = module_pairs(module)
    else:
        spec = list(spec)
        pairs = spec if all(isinstance(p, FactorPair) for p in spec) else pairs_from_names(module, spec)
    if not pairs:
        raise ValueError(
            f"{owner} found no scale-invariant pairs in {type(module).__name__}: it looked for a "
            "factor_pairs() method and for peft LoRA layers (lora_A/lora_B, lora_embedding_A/B) with an "
            "active, unmerged, trainable adapter. Wrap the model with peft LoRA, or pass "
            "pairs=[(x_name, y_name), ...]"
        )
    frozen = [p.name for p in pairs if not (p.x.requires_grad and p.y.requires_grad)]
    if frozen:
        raise ValueError(
            f"{owner} needs gradients, but these pairs have a factor with requires_grad=False: "
            f"{frozen[:5]}{' ...' if len(frozen) > 5 else ''}"
        )
    return list(pairs)


def _is_auxiliary(module: nn.Module) -> bool:
    """A peft layer training whole tensors beside LoRA, not a pair (``trainable_token_indices``)."""
    try:
        from peft.tuners.trainable_tokens import TrainableTokensLayer
    except ImportError:  # peft too old to have it
        return False
    return isinstance(module, TrainableTokensLayer)


def pairs_from_names(model: nn.Module, names: Iterable[tuple[str, str]]) -> list[FactorPair]:
    """Build pairs from ``(x_parameter_name, y_parameter_name)`` tuples of ``model.named_parameters()``.

    Raises:
        ValueError: a name that is not a parameter of ``model`` (the message lists close matches).
    """
    params = dict(model.named_parameters())
    pairs = []
    for x_name, y_name in names:
        for name in (x_name, y_name):
            if name not in params:
                close = [n for n in params if name.split(".")[-1] in n][:5]
                raise ValueError(
                    f"pair parameter {name!r} is not a parameter of {type(model).__name__}; "
                    f"parameters with a similar name: {close or 'none'}"
                )
        pairs.append(FactorPair(f"{x_name}|{y_name}", params[x_name], params[y_name]))
    return pairs
