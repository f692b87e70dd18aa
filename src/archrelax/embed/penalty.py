"""Soft release: the squared distance of a relaxed model's parameters to a constrained subspace.

``constraint_penalty(model, toward)`` is Σ over relaxed layers of ‖θ − Pθ‖², θ = the layer's ``weight`` and
``bias``, P the orthogonal projection (in the layer's own parameter space) onto

- ``"local"``: locally-connected weights: entries outside ``local_mask()`` are zeroed, so the penalty is
  ‖θ_off-local‖² (biases are local);
- ``"shared"``: translation-invariant weights: for an eFCN the global-convolution subspace, i.e. every
  entry replaced by the mean of the entries with the same (output channel, input channel, relative offset
  ``q − p·s``) — the orbits of the ``"full"`` wide conv's index map, over every channel pair (groups are a
  matter of locality); biases by their mean per channel. For an eLCN or a tiled conv, shared ∩ local is the
  CNN, so ``"shared"`` is ``"cnn"`` there; a wide conv is shared already (0);
- ``"cnn"``: the CNN subspace (local and shared), the image of the layer's φ: ``φ((φᵀφ)⁺φᵀθ)``. With zero
  padding it is the intersection of the two; a reflect / replicate / circular-padded conv folds its border
  taps into other entries, so its eFCN is local but not translation invariant ("shared" is not 0 there).

Because P is an orthogonal projection the gradient is 2(θ − Pθ). Each relaxed layer computes its own term,
:meth:`~archrelax.embed.RelaxedConv.penalty`, from the same parts of θ − Pθ as its subspace norms (off-local,
off-sharing, unshared; local = off-local, cnn = off-local + off-sharing, shared = unshared): nothing dense is
built, everything goes through the index map. The eFCN's parts stream its weight in large chunks and run as
custom autograd Functions whose backward writes 2·g·(θ − Pθ) in one pass (:mod:`archrelax.embed.dense_residual`);
the small layers use plain differentiable ops.

``add_penalty_grad_(model, toward, lam)`` is the fused form for trainers: it adds λ·2(θ − Pθ) to each
``.grad`` in place, after ``loss.backward()`` (each layer's :meth:`~archrelax.embed.RelaxedConv.add_penalty_grad_`:
for the eFCN one pass over θ and its gradient), and returns the penalty only when asked. Same gradient, a
fraction of the cost (benchmarks/bench_lattice.py): the autograd form reads θ once more for the value, writes a weight-sized gradient, and autograd then adds it to the loss's
gradient out of place (the loss's eFCN weight gradient arrives as a transposed view, which autograd does not
accumulate into in place), i.e. one more weight-sized allocation per step.

With SGD, λ·lr must stay below 1 (the penalty's curvature is 2λ on the released directions: one step with
lr·2λ = 1 projects onto the subspace exactly, beyond 2 it diverges); a "very large" λ means lr·λ close to 1/2.

Exactly 0 right after an embedding, in any dtype: the eFCN takes every mean as ``ref + mean(entry − ref)``
with ``ref`` one entry of the same tie / orbit, so when all its entries are equal the differences are 0; the
other layers project with one refinement step (as ``nearest_cnn``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import TOWARD, RelaxedConv, _check_toward
from .relax import relaxed_layers

__all__ = ["constraint_penalty", "layer_penalty", "add_penalty_grad_", "TOWARD"]


def constraint_penalty(model: nn.Module, toward: str = "cnn") -> Tensor:
    """Σ over the relaxed layers of ``model`` of ‖θ − Pθ‖² (0-dim, differentiable; see module docstring).

    ``toward``: ``"cnn"``, ``"local"`` or ``"shared"``. Non-relaxed layers are in every subspace (they add 0).
    A model without relaxed layers gives a zero tensor.
    """
    _check_toward(toward)
    total: Tensor | None = None
    for layer in relaxed_layers(model).values():
        term = layer.penalty(toward)
        total = term if total is None else total + term
    if total is None:
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        return torch.zeros((), device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    return total


def layer_penalty(layer: RelaxedConv, toward: str = "cnn") -> Tensor:
    """‖θ − Pθ‖² of one relaxed layer (weight and bias), 0-dim, in the weight's dtype: ``layer.penalty(toward)``."""
    return layer.penalty(toward)


@torch.no_grad()
def add_penalty_grad_(model: nn.Module, toward: str = "cnn", lam: float = 1.0, *,
                      return_value: bool = False) -> float | None:
    """Add ``lam · ∇‖θ − Pθ‖² = lam · 2(θ − Pθ)`` to the ``.grad`` of every relaxed layer's parameters, in place.

    The same gradient as ``(lam * constraint_penalty(model, toward)).backward()``, for a trainer to call after
    ``loss.backward()``: eFCN weights get it in one pass over θ and their gradient (a missing ``.grad`` is
    created), the other (small) parameters through autograd of their own terms. Parameters that do not
    require grad are skipped. Returns the penalty (a float, θ before the update) when ``return_value``, else
    None (the value costs one more read of the eFCN weights).
    """
    _check_toward(toward)
    total = 0.0
    for layer in relaxed_layers(model).values():
        total += layer.add_penalty_grad_(toward, lam, value=return_value)
    return total if return_value else None
