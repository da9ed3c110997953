"""How sharp a trained model is: worst-case and average sharpness, and the Hessian's top eigenvalue.

Pure torch (no Lightning): a loss function ``loss_fn(batch) -> Tensor`` (the mean loss of one batch),
the trainable tensors ``params`` (w, d numbers in all) and a list of batches. L_B is the loss of batch
B, L the mean of L_B over the batches, ‖·‖ the L2 norm over all of ``params`` together::

    worst-case  S_max = mean_B [ max_{‖ε‖ ≤ ρ} L_B(w + ε) − L_B(w) ]     (:func:`worst_case_sharpness`)
    average     S_avg = E_δ L(w + δ) − L(w),  δ uniform on the sphere ‖δ‖ = ρ  (:func:`average_sharpness`)
    Hessian     λ_top = the largest eigenvalue of ∇²L(w)                  (:func:`hessian_top_eigenvalue`)

* Worst-case sharpness is the inner maximum of SAM's objective (Foret et al., "Sharpness-Aware
  Minimization for Efficiently Improving Generalization", ICLR 2021, Eq. 1), taken per batch as
  its m-sharpness (Sec. 4) and as Andriushchenko et al. measure it ("A Modern Look at the
  Relationship between Sharpness and Generalization", ICML 2023, Sec. 2: the expectation over
  batches of the per-batch maximum). It descends from Keskar et al.'s sharpness ("On Large-Batch
  Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, Metric 2.1), which
  maximises over a box instead of a ball. The maximum is estimated from below by k projected,
  normalised ascent steps ε ← Π_ρ(ε + ρ g/‖g‖); k = 1 gives SAM's ε̂ = ρ g/‖g‖ (Foret et al.,
  Eq. 2). Andriushchenko et al. use Auto-PGD; any feasible ε gives a lower bound, and the best
  iterate is kept.
* Average sharpness is Andriushchenko et al.'s average-case sharpness (Sec. 2) with directions
  uniform on the ρ-sphere (they draw Gaussians; on the sphere the radius is exactly ρ). For a
  quadratic it is ρ² tr(H) / (2d). Directions come in antithetic pairs ±δ, whose mean
  ½(L(w + δ) + L(w − δ)) − L(w) has the same expectation and no first-order term.
* The top eigenvalue is found by power iteration on Hessian-vector products (double backward), as
  PyHessian does (Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian", IEEE
  BigData 2020, Alg. 1); v_{t+1} = Hv_t / ‖Hv_t‖ and λ_t = v_tᵀ H v_t.

Each function returns an :class:`Estimate` (value, spread, samples) and leaves the weights bitwise
as they were, the RNG states (CPU and the parameters' CUDA devices) as they were and, when given the
``module``, every submodule's train/eval mode as it was (measurements run in eval mode: no
dropout). Gradients are taken with ``torch.autograd.grad``: ``.grad`` is never touched.

The radius ρ is absolute, over all trainable tensors together. Its default, 0.05, is SAM's default
radius (Foret et al.) and the middle of the paper's grid {0.01, 0.05, 0.1, 0.2} (the grid's SAM
rows train with these radii, so S_max at ρ = 0.05 is the quantity SAM at that radius minimises).
Over LoRA's parameters it is a small move: the trainable tensors of a rank-8 LoRA (query, value) on
MiniLM-L6 with its classifier and pooler have a norm of about 6.7 at initialisation (A factors at
their Kaiming initialisation, B = 0), so ρ = 0.05 is under 1 % of it; measured there on SST-2
(4 batches of 32), S_max = 0.025 ± 0.003 against a loss of 0.69: well resolved, yet local.
Average sharpness needs a larger radius (``average_rho`` of :func:`measure_sharpness`): random
directions see the mean curvature tr(H)/d, not the top one, and at ρ = 0.05 the same model gave
5e-8 ± 3e-8, the float32 resolution of the loss; at ρ = 1 it gave 3e-5 ± 1e-5.
"""

from lit_bar.sharpness.measures import (
    DEFAULT_RHO,
    MEASURES,
    Estimate,
    average_sharpness,
    hessian_top_eigenvalue,
    measure_sharpness,
    worst_case_sharpness,
)

__all__ = [
    "DEFAULT_RHO",
    "MEASURES",
    "Estimate",
    "average_sharpness",
    "hessian_top_eigenvalue",
    "measure_sharpness",
    "worst_case_sharpness",
]
