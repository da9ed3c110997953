"""SAMModule against plain Lightning training and hand-written plain-torch SAM (points A–D)."""

from __future__ import annotations

import pytest
import torch
from tiny.sam import (
    TinyPlain,
    TinySAM,
    adam,
    adamw,
    assert_params_close,
    batches,
    fit,
    hand_sam,
    loader,
    make_data,
    make_net,
    max_diff,
    sgd,
)

VARIANTS = [("sam", None), ("functional", None), ("sam", "adam"), ("functional", "adam")]


# ------------------------------------------------------------------ A: rho = 0 and dropout masks
@pytest.mark.parametrize("optimizer", [sgd(0.1, momentum=0.9), adamw(0.05)], ids=["sgd", "adamw"])
def test_rho_zero_with_dropout_equals_automatic_optimization(optimizer):
    x, y = make_data(16)
    plain, sam = make_net(dropout=0.3), make_net(dropout=0.3)
    fit(TinyPlain(plain, optimizer), loader(x, y, 4))
    fit(TinySAM(sam, optimizer=optimizer, rho=0.0), loader(x, y, 4))
    assert max_diff(list(sam.parameters()), list(make_net().parameters())) > 1e-3  # it trained
    assert_params_close(list(sam.parameters()), list(plain.parameters()), atol=1e-6)


def test_both_sam_passes_see_the_same_dropout_masks():
    """With ρ = 1e-10 SAM's descent gradient is the clean one only if both passes drop the same units."""
    x, y = make_data(16)
    plain, sam = make_net(dropout=0.5), make_net(dropout=0.5)
    fit(TinyPlain(plain, sgd(0.1)), loader(x, y, 4))
    rng_plain = torch.get_rng_state()
    fit(TinySAM(sam, optimizer=sgd(0.1), rho=1e-10), loader(x, y, 4))
    rng_sam = torch.get_rng_state()
    assert_params_close(list(sam.parameters()), list(plain.parameters()), atol=1e-6)
    assert torch.equal(rng_sam, rng_plain), "SAM's two passes must leave the RNG stream where one pass does"


def test_rho_zero_with_accumulation_equals_lightning_accumulation():
    x, y = make_data(16)
    plain, sam = make_net(dropout=0.3), make_net(dropout=0.3)
    fit(TinyPlain(plain, adamw(0.05)), loader(x, y, 4), accumulate_grad_batches=2)
    fit(TinySAM(sam, optimizer=adamw(0.05), rho=0.0, accumulate_grad_batches=2), loader(x, y, 4))
    assert_params_close(list(sam.parameters()), list(plain.parameters()), atol=1e-6)


# ------------------------------------------------------------------ B: SAM = the hand loop
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("optimizer", [sgd(0.2, momentum=0.5), adamw(0.05)], ids=["sgd", "adamw"])
def test_sam_equals_hand_written_sam_loop(adaptive, optimizer):
    x, y = make_data(16)
    rho = 0.5 if adaptive else 0.1
    net, ref = make_net(), make_net()
    fit(TinySAM(net, optimizer=optimizer, rho=rho, adaptive=adaptive), loader(x, y, 4))
    hand_sam(ref, optimizer, batches(x, y, 4), rho, adaptive=adaptive)
    plain = make_net()
    hand_sam(plain, optimizer, batches(x, y, 4), 0.0)
    assert max_diff(list(ref.parameters()), list(plain.parameters())) > 1e-3  # ρ matters at this tolerance
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


# ------------------------------------------------------------------ C: accumulation = large-batch SAM
@pytest.mark.parametrize(("perturbation", "precondition"), VARIANTS)
def test_accumulation_equals_one_sam_step_on_the_concatenated_batch(perturbation, precondition):
    x, y = make_data(16)
    optimizer = adam(0.05) if precondition else sgd(0.2)
    net, ref = make_net(), make_net()
    module = TinySAM(
        net,
        optimizer=optimizer,
        rho=0.2,
        perturbation=perturbation,
        precondition=precondition,
        accumulate_grad_batches=2,
    )
    run = fit(module, loader(x, y, 4))
    assert run.global_step == 2
    hand_sam(
        ref,
        optimizer,
        batches(x, y, 8),
        0.2,
        functional=perturbation == "functional",
        precondition=precondition,
    )
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)


def test_functional_sam_differs_from_sam_on_this_model():
    """Guards the functional tests: on this net and loss the two descent gradients are far apart."""
    x, y = make_data(16)
    sam, functional = make_net(), make_net()
    hand_sam(sam, sgd(0.2), batches(x, y, 8), 0.2)
    hand_sam(functional, sgd(0.2), batches(x, y, 8), 0.2, functional=True)
    assert max_diff(list(sam.parameters()), list(functional.parameters())) > 1e-4


# ------------------------------------------------------------------ D: m-sharpness
@pytest.mark.parametrize(("batch_size", "accumulate"), [(8, 1), (4, 2)])
@pytest.mark.parametrize("perturbation", ["sam", "functional"])
def test_m_sharpness_equals_per_chunk_hand_loop_whatever_the_accumulation(
    batch_size, accumulate, perturbation
):
    x, y = make_data(16)
    net, ref, whole = make_net(), make_net(), make_net()
    module = TinySAM(
        net, optimizer=sgd(0.2), rho=0.3, m=2, perturbation=perturbation, accumulate_grad_batches=accumulate
    )
    fit(module, loader(x, y, batch_size))
    functional = perturbation == "functional"
    hand_sam(ref, sgd(0.2), batches(x, y, 8), 0.3, m=2, functional=functional)
    hand_sam(whole, sgd(0.2), batches(x, y, 8), 0.3, functional=functional)
    assert max_diff(list(ref.parameters()), list(whole.parameters())) > 1e-4  # m changes the result
    assert_params_close(list(net.parameters()), list(ref.parameters()), atol=1e-6)
