"""Where a relaxed model sits relative to the CNN subspace: δ, the distance to it, the way back, ablations.

All four work on any model: non-relaxed parameters count in ‖θ‖ and are left alone. Each relaxed layer
provides ``local_mask()`` (entries inside the conv's connectivity), ``project()`` (nearest CNN parameters)
and ``embed_weight/embed_bias`` (the map φ back), so nothing here depends on a layer's internal layout.
Pure functions: the input model is never changed; results are Python floats or new models.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import RelaxedConv
from .connectivity import ConvGeometry
from .relax import relaxed_layers

__all__ = ["offlocal_ratio", "cnn_distance", "to_cnn", "ablate"]


def _sq(t: torch.Tensor) -> float:
    # float64 accumulation: δ must read exactly 0 when the off-local part is zero, and stay accurate on
    # eFCN layers with ~1e8 entries
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64) ** 2)


def _total_sq(model: nn.Module) -> float:
    return sum(_sq(p) for p in model.parameters())


def _nearest_cnn(layer: RelaxedConv) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``layer.project()`` refined by one step, ``r + project(θ − φ(r))``, so that it is exact on the CNN
    subspace: a mean of n tied copies (sum, then times 1/n) is often an ulp off, but the residual
    θ − φ(r) = φ(w − r) is computed exactly, and adding its projection restores the last bits. Without
    this, to_cnn(relax(cnn)) would not return the CNN's weights bit for bit, nor cnn_distance read 0."""
    w, b = layer.project()
    w = w + layer.project_weight(layer.weight - layer.embed_weight(w))
    if b is not None:
        b = b + layer.project_bias(layer.bias - layer.embed_bias(b))
    return w.detach(), (None if b is None else b.detach())


@torch.no_grad()
def offlocal_ratio(model: nn.Module) -> float:
    """δ = ‖θ_off-local‖₂ / ‖θ‖₂, θ = all parameters of ``model`` (0.0 for a model with no relaxed layer).

    Off-local entries are the relaxed layers' weight entries outside their conv's connectivity.
    """
    off = sum(_sq(layer.weight.masked_fill(layer.local_mask(), 0)) for layer in relaxed_layers(model).values())
    total = _total_sq(model)
    return (off / total) ** 0.5 if total > 0 else 0.0


@torch.no_grad()
def cnn_distance(model: nn.Module) -> float:
    """‖θ − P_CNN θ‖₂ / ‖θ‖₂: distance to the exact CNN subspace (unshared local weights count too).

    P_CNN θ re-embeds each relaxed layer's projection, ``φ(project())``; other parameters are unchanged by it.
    """
    dist = 0.0
    for layer in relaxed_layers(model).values():
        cw, cb = _nearest_cnn(layer)
        dist += _sq(layer.embed_weight(cw).sub_(layer.weight))  # in place: one weight-sized temporary
        if layer.bias is not None:
            dist += _sq(layer.bias - layer.embed_bias(cb))
    total = _total_sq(model)
    return (dist / total) ** 0.5 if total > 0 else 0.0


@torch.no_grad()
def to_cnn(model: nn.Module, like: nn.Module) -> nn.Module:
    """The CNN nearest to ``model``: a copy of ``like`` (the CNN architecture ``model`` was relaxed from) whose
    conv parameters are the relaxed layers' projections and whose other parameters and buffers are copied
    from ``model``. Raises ValueError when the two structures do not correspond."""
    out = copy.deepcopy(like)
    state = model.state_dict()
    for path, layer in relaxed_layers(model).items():
        try:
            conv = out.get_submodule(path)
        except AttributeError:
            raise ValueError(f"to_cnn: `like` has no module at {path!r}, where `model` has a relaxed layer; pass the "
                             "CNN that `model` was relaxed from") from None
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
            raise ValueError(f"to_cnn: like.{path} is a {type(conv).__name__}, not a Conv1d/Conv2d; `like` must be the "
                             "CNN that `model` was relaxed from")
        geom = layer.geometry
        mine = ConvGeometry.from_conv(conv, geom.in_spatial)
        if mine != geom:
            raise ValueError(f"to_cnn: like.{path} has geometry {mine}, but the relaxed layer came from {geom}")
        prefix = f"{path}." if path else ""
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}  # drop the layer's own buffers too
        cw, cb = _nearest_cnn(layer)
        state[prefix + "weight"] = cw
        if cb is not None:
            state[prefix + "bias"] = cb
    try:
        out.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"to_cnn: `model` and `like` do not have the same structure outside the relaxed layers: {e}") from None
    return out


@torch.no_grad()
def ablate(model: nn.Module, keep: str = "local") -> nn.Module:
    """A copy of ``model`` keeping only the ``"local"`` or the ``"offlocal"`` part of each relaxed layer's weight.

    Biases belong to the local part (zeroed by ``keep="offlocal"``). Non-relaxed layers are untouched, so a
    model with no relaxed layer comes back unchanged.
    """
    if keep not in ("local", "offlocal"):
        raise ValueError(f"ablate: keep={keep!r}; use 'local' or 'offlocal'")
    out = copy.deepcopy(model)
    for layer in relaxed_layers(out).values():
        mask = layer.local_mask()
        layer.weight.masked_fill_(~mask if keep == "local" else mask, 0)
        if keep == "offlocal" and layer.bias is not None:
            layer.bias.zero_()
    return out
