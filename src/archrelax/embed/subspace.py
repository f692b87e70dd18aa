"""Where a relaxed model sits relative to the CNN subspace: δ, the off-sharing ratio, the distance to it, the way
back, ablations.

All work on any model: non-relaxed parameters count in ‖θ‖ and are left alone. Each relaxed layer
provides ``local_mask()`` (entries inside the conv's connectivity), ``nearest_cnn()`` (nearest CNN parameters),
``embed_weight/embed_bias`` (the map φ back) and ``subspace_sq_norms()`` (its part of the three distances,
computed without full-size temporaries by the eFCN and eLCN layers), so nothing here depends on a layer's
internal layout. Pure functions: the input model is never changed; results are Python floats or new models.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .attention import AttentionConvNd
from .base import sq_norm
from .connectivity import ConvGeometry
from .relax import relaxed_layers

__all__ = ["SubspaceDistances", "subspace_distances", "offlocal_ratio", "offsharing_ratio", "cnn_distance", "to_cnn",
           "ablate"]


@dataclass(frozen=True)
class SubspaceDistances:
    """Where θ (all parameters of a model) sits, each as a fraction of ‖θ‖₂ (0.0 for a model with no relaxed
    layer or no parameters).

    ``offlocal_ratio`` δ = ‖θ_off-local‖ / ‖θ‖ (weight entries outside each relaxed layer's conv connectivity);
    ``offsharing_ratio`` = ‖θ_local − P_CNN θ‖ / ‖θ‖ (how far the local weights and the biases are from
    being shared); ``cnn_distance`` = ‖θ − P_CNN θ‖ / ‖θ‖, the distance to the CNN subspace. P_CNN θ re-embeds
    each relaxed layer's nearest conv parameters; other parameters are unchanged by it. cnn_distance² =
    offlocal_ratio² + offsharing_ratio² (P_CNN is an orthogonal projection onto a part of the local subspace).
    """

    offlocal_ratio: float
    offsharing_ratio: float
    cnn_distance: float


@torch.no_grad()
def subspace_distances(model: nn.Module) -> SubspaceDistances:
    """δ, the off-sharing ratio and the CNN distance of ``model`` in one pass over its parameters (see
    :class:`SubspaceDistances`); each relaxed layer computes its part with ``subspace_sq_norms()``, which counts its
    weight and bias: an attention layer's α, offsets and content maps are no weights of the CNN's parameter space
    (α alone, 80 per head, would swamp ‖θ‖) and are measured by ``attention_measures`` instead."""
    layers = relaxed_layers(model).values()
    own = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
    total = sum(sq_norm(p) for p in model.parameters() if id(p) not in own)
    off = share = dist = 0.0
    for layer in layers:
        n = layer.subspace_sq_norms()
        total, off, share, dist = total + n.total, off + n.offlocal, share + n.offsharing, dist + n.cnn
    if total <= 0:
        return SubspaceDistances(0.0, 0.0, 0.0)
    return SubspaceDistances((off / total) ** 0.5, (share / total) ** 0.5, (dist / total) ** 0.5)


def offlocal_ratio(model: nn.Module) -> float:
    """δ = ‖θ_off-local‖₂ / ‖θ‖₂, θ = all parameters of ``model`` (0.0 for a model with no relaxed layer).

    Off-local entries are the relaxed layers' weight entries outside their conv's connectivity.
    """
    return subspace_distances(model).offlocal_ratio


def offsharing_ratio(model: nn.Module) -> float:
    """‖θ_local − P_CNN θ‖₂ / ‖θ‖₂: how far the local weights (and biases) are from being shared."""
    return subspace_distances(model).offsharing_ratio


def cnn_distance(model: nn.Module) -> float:
    """‖θ − P_CNN θ‖₂ / ‖θ‖₂: distance to the exact CNN subspace (unshared local weights count too).

    P_CNN θ re-embeds each relaxed layer's projection, ``φ(nearest_cnn())``; other parameters are unchanged by it.
    """
    return subspace_distances(model).cnn_distance


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
        cw, cb = layer.nearest_cnn()
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
    model with no relaxed layer comes back unchanged. A model with attention layers is refused: their weights are
    the conv's value maps, all local, and their reach beyond the conv is in the attention, not in weight entries.
    """
    if keep not in ("local", "offlocal"):
        raise ValueError(f"ablate: keep={keep!r}; use 'local' or 'offlocal'")
    attn = [n for n, m in relaxed_layers(model).items() if isinstance(m, AttentionConvNd)]
    if attn:
        raise ValueError(f"ablate: {attn} are attention layers, which have no off-local weights to ablate (their "
                         "weights are the conv's value maps; what they reach beyond the conv is in the attention): "
                         "measure it with archrelax.attention_measures, or take the conv back with to_cnn")
    out = copy.deepcopy(model)
    for layer in relaxed_layers(out).values():
        mask = layer.local_mask()
        layer.weight.masked_fill_(~mask if keep == "local" else mask, 0)
        if keep == "offlocal" and layer.bias is not None:
            layer.bias.zero_()
    return out
