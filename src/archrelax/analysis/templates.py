"""What the off-local weights learn: a relaxed layer's hidden units rendered as input-sized images.

A unit of a relaxed layer is one output (channel c at position p); its weights to the layer's input form a
(C_in, *in_spatial) array — for the first layer an image. For an eFCN the off-local part of that array is
what the relaxation added to the CNN; the vanilla FCN's units are shown whole for comparison.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from archrelax.store.results import TemplateRecord, TemplatesResult

from .ablation import relaxed_layers
from .context import Context, final_files, guard
from .registry import register_analysis

__all__ = ["Templates", "first_relaxed_layer", "unit_weights", "offlocal_templates", "to_display"]


@dataclasses.dataclass(frozen=True)
class Templates:
    """``weights``: raw (K, C, H, W) weights of the chosen units; ``images``: the same scaled into [0, 1]."""

    layer: str
    units: list[int]
    offlocal_norm: list[float]
    weights: torch.Tensor
    images: torch.Tensor


def first_relaxed_layer(model: nn.Module) -> tuple[str, nn.Module]:
    layers = relaxed_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no relaxed layer (RelaxedConv) to draw templates from")
    return next(iter(layers.items()))


@torch.no_grad()
def unit_weights(layer: nn.Module, part: str = "offlocal") -> torch.Tensor:
    """(U, C_in, *in_spatial) weights of every unit of a relaxed layer: "offlocal", "local" or "all" entries.

    Relies on the layer's weight (and local mask) holding, for each unit, its inputs in torch's flattened
    ``(C, *spatial)`` order as the trailing entries (true of DenseConv: a dense matrix on the flattened input).
    """
    if part not in ("offlocal", "local", "all"):
        raise ValueError(f"part must be 'offlocal', 'local' or 'all', got {part!r}")
    g = layer.geometry
    shape = (g.in_channels, *g.in_spatial)
    w = layer.weight.detach()
    if w.numel() % math.prod(shape):
        raise ValueError(f"{type(layer).__name__} weight {tuple(w.shape)} is not a stack of input-sized rows "
                         f"{shape}; templates need a dense (eFCN) layer")
    if part != "all":
        mask = layer.local_mask()
        w = w * (mask if part == "local" else ~mask)
    return w.reshape(-1, *shape)


def to_display(w: torch.Tensor) -> torch.Tensor:
    """(K, ...) weights -> [0, 1] per unit: 0.5 + 0.5·w / max|w|, so 0.5 is zero and signs stay comparable."""
    scale = w.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
    return (0.5 + 0.5 * w / scale.view(-1, *[1] * (w.dim() - 1))).clamp(0, 1)


def offlocal_templates(model: nn.Module, *, layer: str | None = None, units: Sequence[int] | None = None, count: int = 8,
              part: str = "offlocal") -> Templates:
    """Templates of chosen units of ``layer`` (default: the first relaxed layer).

    ``units=None`` picks the ``count`` units with the largest off-local weight norm (ties: lower index).
    """
    if layer is None:
        layer, mod = first_relaxed_layer(model)
    else:
        mod = relaxed_layers(model).get(layer)
        if mod is None:
            raise ValueError(f"layer {layer!r} is not a relaxed layer of the model; relaxed: {sorted(relaxed_layers(model))}")
    norms = unit_weights(mod, "offlocal").flatten(1).norm(dim=1)  # (U,)
    if units is None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        # stable sort: among equal norms the lower unit index comes first
        units = torch.sort(-norms, stable=True).indices[: min(count, len(norms))].tolist()
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < len(norms)]
    if bad:
        raise ValueError(f"units {bad} out of range; layer {layer!r} has {len(norms)} units")
    w = unit_weights(mod, part)[units].float().cpu()
    return Templates(layer, units, norms[units].tolist(), w, to_display(w))


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------
@register_analysis("templates", params=("template_count",), inputs=final_files)
def run(ctx: Context) -> tuple[TemplatesResult, dict[str, np.ndarray]]:
    """Units of the first finished eFCN with the largest off-local norm; the same units of every finished eFCN
    (off-local part) and vanilla FCN (whole weights). Images go to templates.npz beside the JSON."""
    res = TemplatesResult()
    runs = ctx.finished(ctx.of_kind("efcn"), res.missing) + ctx.finished(ctx.of_kind("fcn"), res.missing)
    arrays: dict[str, np.ndarray] = {}
    units = None
    for r in runs:
        def one() -> Templates:
            return offlocal_templates(ctx.load(ctx.folder(r).final_path), units=units, count=ctx.s.template_count,
                                      part="all" if r.kind == "fcn" else "offlocal")

        t = guard(res.missing, r, "templates", one)
        if t is None:
            continue
        units = t.units if units is None else units  # every later run shows the first eFCN's units
        key = f"r{len(res.runs)}"
        arrays[key] = t.images.numpy().astype(np.float32)
        arrays[key + "_raw"] = t.weights.numpy().astype(np.float32)
        res.layer = res.layer or t.layer
        res.input_shape = res.input_shape or list(t.weights.shape[1:])
        res.runs.append(TemplateRecord(**ctx.tag(r), key=key, units=t.units, offlocal_norm=t.offlocal_norm))
    return res, arrays
