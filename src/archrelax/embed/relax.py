"""Model conversion: any nn.Module's conv layers -> their exact eLCN / eFCN equivalents, and ``transfer``.

``relax`` deep-copies the model, learns every conv's input shape from one forward pass of
``example_input`` (so residual connections, functionals in ``forward`` etc. need no special care), and
swaps each selected conv for a relaxed layer at the same module path. State-dict keys stay the same;
only the shapes of ``<path>.weight`` / ``<path>.bias`` change, and ``transfer`` maps tensors across.
"""
from __future__ import annotations

import copy
import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .base import RelaxedConv
from .connectivity import ConvGeometry
from .dense import DenseConv
from .footprint import ExampleInput, layer_geometries, param_count
from .locally_connected import LocallyConnected1d, LocallyConnected2d

__all__ = ["relax", "transfer", "relaxed_layers", "available_memory", "RelaxMemoryError"]

TARGETS = ("lc", "fc")
LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None
_LC = (LocallyConnected1d, LocallyConnected2d)


def relaxed_layers(model: nn.Module) -> dict[str, RelaxedConv]:
    """Every relaxed layer of ``model`` by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RelaxedConv)}


def _candidates(model: nn.Module, to: str) -> dict[str, nn.Module]:
    """Layers ``relax(..., to)`` could act on, by every module path (a shared module appears under each)."""
    kinds = (nn.modules.conv._ConvNd,) + (_LC if to == "fc" else ())
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, kinds)}


def _select(candidates: Mapping[str, nn.Module], layers: LayerSelector) -> list[str]:
    if layers is None:
        return list(candidates)
    if callable(layers):
        return [n for n, m in candidates.items() if layers(n, m)]
    patterns = [layers] if isinstance(layers, str) else list(layers)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in candidates)]
    if unmatched:
        raise ValueError(
            f"layers={patterns!r}: {unmatched} match no conv layer of the model; available: {list(candidates)}"
        )
    return [n for n in candidates if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _check_supported(name: str, m: nn.Module, to: str) -> None:
    if isinstance(m, _LC):
        return
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        raise ValueError(
            f"layer {name!r} is a {type(m).__name__}; relax(to={to!r}) supports only Conv1d and Conv2d (and, for "
            "to='fc', LocallyConnected layers): exclude it with layers= (a list of names/globs or a predicate)"
        )
    if to == "lc" and m.padding_mode != "zeros":
        raise ValueError(
            f"layer {name!r} has padding_mode={m.padding_mode!r}; locally-connected layers support only zero "
            "padding: use to='fc' (every padding mode folds into the eFCN exactly) or exclude it with layers="
        )


class RelaxMemoryError(MemoryError, ValueError):
    """The relaxed parameters would not fit in free memory (a ValueError too, so the CLI reports it plainly)."""


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: MemAvailable for the CPU, ``torch.cuda.mem_get_info`` for CUDA; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _guard_memory(plan: Mapping[str, tuple[nn.Module, ConvGeometry]], to: str) -> None:
    """Fail before allocating when the relaxed parameters alone would not fit on their device."""
    need: dict[torch.device, int] = {}
    for m, geom in plan.values():
        w = m.weight
        need[w.device] = need.get(w.device, 0) + param_count(geom, to) * w.element_size()
    for device, nbytes in need.items():
        free = available_memory(device)
        if free is not None and nbytes > free:
            raise RelaxMemoryError(
                f"relax(to={to!r}) needs about {nbytes / 1e9:.3g} GB for the relaxed parameters on {device}, but only "
                f"{free / 1e9:.3g} GB is available (see archrelax.footprint for the per-layer breakdown); relax fewer "
                "layers with layers=, or pass force=True to try anyway"
            )


def _relaxed_layer(m: nn.Module, geom: ConvGeometry, to: str) -> nn.Module:
    if to == "fc":
        new = DenseConv.from_relaxed(m) if isinstance(m, _LC) else DenseConv.from_conv(m, geom.in_spatial)
    else:
        cls = LocallyConnected1d if geom.dim == 1 else LocallyConnected2d
        new = cls.from_conv(m, geom.in_spatial)
    # keep what the user set on the layer: frozen weights stay frozen, eval mode stays eval
    for pname in ("weight", "bias"):
        old_p, new_p = getattr(m, pname), getattr(new, pname)
        if old_p is not None and new_p is not None:
            new_p.requires_grad_(old_p.requires_grad)
    return new.train(m.training)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def relax(
    model: nn.Module,
    to: str = "lc",
    example_input: ExampleInput = None,
    layers: LayerSelector = None,
    force: bool = False,
) -> nn.Module:
    """A copy of ``model`` with each selected conv replaced by its exact eLCN (``to="lc"``) or eFCN (``"fc"``)
    equivalent; with ``to="fc"``, LocallyConnected layers are relaxed further (hierarchical relaxation).

    example_input: a tensor, or an input batch shape (a model's ``(C, H, W)`` ``input_shape`` gets a batch
        dimension; None uses ``model.input_shape``); for a forward() of several inputs, a tuple of those
        (positional arguments) or a dict of them (keyword arguments, or a forward(batch) taking a dict): see
        ``footprint.example_inputs``. One forward pass under no_grad reveals input shapes; buffers such as
        BatchNorm statistics are restored after it. The input model is never changed.
    layers: None (all), names or fnmatch globs of module paths, or a predicate ``(name, module) -> bool``.
    force: skip the memory guard (which fails when the relaxed parameters exceed the available memory).
    """
    if to not in TARGETS:
        raise ValueError(f"relax: to={to!r} is not a valid target; use 'lc' (eLCN) or 'fc' (eFCN)")
    out = copy.deepcopy(model)
    candidates = _candidates(out, to)
    selected = _select(candidates, layers)
    if not selected:
        detail = f"layers={layers!r} selected none of {list(candidates)}" if candidates else (
            f"it has no Conv1d/Conv2d{' or LocallyConnected' if to == 'fc' else ''} layer"
        )
        raise ValueError(f"relax(to={to!r}): nothing to relax in {type(model).__name__}: {detail}")
    for name in selected:
        _check_supported(name, candidates[name], to)
    # a module shared by several paths is one layer: named by its first selected path, swapped at all paths
    paths: dict[int, list[str]] = {}
    for n, m in candidates.items():
        paths.setdefault(id(m), []).append(n)
    first = {id(candidates[n]): n for n in reversed(selected)}
    todo = {n: candidates[n] for n in sorted(first.values(), key=selected.index)}
    geoms = layer_geometries(out, example_input, todo)
    if not force:
        _guard_memory({n: (m, geoms[n]) for n, m in todo.items()}, to)
    del candidates
    for n in list(todo):
        # swap in layer by layer and drop the old one, so its memory is freed before the next is built
        old = todo.pop(n)
        new = _relaxed_layer(old, geoms[n], to)
        for path in paths[id(old)]:
            _set_submodule(out, path, new)
        del old, new
    return out


# ---------------------------------------------------------------------------------------------------------
# transfer: tensors named like the source model's parameters -> the relaxed model's shapes


def _lc_to_dense(layer: DenseConv, tensor: torch.Tensor, pname: str) -> torch.Tensor | None:
    """An eLCN-shaped tensor through the eLCN -> eFCN map of ``layer``'s geometry (None if not eLCN-shaped).

    Goes through a temporary LocallyConnected layer and ``DenseConv.from_relaxed``, so the map is the one
    hierarchical relaxation uses.
    """
    geom = layer.geometry
    if geom.padding_mode != "zeros":  # no eLCN exists for this conv
        return None
    cls = LocallyConnected1d if geom.dim == 1 else LocallyConnected2d
    cuda = [tensor.device.index or 0] if tensor.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # its throw-away random init must not move the caller's RNG
        lc = cls(geom, device=tensor.device, dtype=tensor.dtype)
    if getattr(lc, pname) is None or getattr(lc, pname).shape != tensor.shape:
        return None
    for p in lc.parameters():
        p.zero_()
    getattr(lc, pname).copy_(tensor)
    return getattr(DenseConv.from_relaxed(lc), pname).detach()


def _map_tensor(key: str, tensor: torch.Tensor, layer: RelaxedConv, pname: str) -> torch.Tensor:
    geom = layer.geometry
    target = getattr(layer, pname)
    if target is None:
        raise ValueError(f"transfer: {key!r} given but the relaxed layer has no {pname} (the conv had bias=False)")
    if tensor.shape == target.shape:  # already in the relaxed layer's shape
        return tensor
    conv_shape = geom.conv_weight_shape if pname == "weight" else (geom.out_channels,)
    if tensor.shape == conv_shape:
        return layer.embed_weight(tensor) if pname == "weight" else layer.embed_bias(tensor)
    mapped = _lc_to_dense(layer, tensor, pname) if isinstance(layer, DenseConv) else None
    if mapped is not None:
        return mapped
    lc = " or the eLCN layer's shape" if isinstance(layer, DenseConv) else ""
    raise ValueError(f"transfer: {key!r} has shape {tuple(tensor.shape)}; valid for this {type(layer).__name__} are "
                     f"the conv's {tuple(conv_shape)}, the relaxed layer's {tuple(target.shape)}{lc}")


def transfer(tensors: Mapping[str, torch.Tensor], relaxed: nn.Module) -> dict[str, torch.Tensor]:
    """Map tensors named like the source model's parameters (weights, or optimiser buffers keyed by parameter
    name) onto ``relaxed``'s parameter shapes through the same embedding ``relax`` used.

    For each relaxed layer at path ``p``, ``p.weight`` / ``p.bias`` shaped like the conv go through
    ``embed_weight`` / ``embed_bias``; shaped like an eLCN layer (onto an eFCN layer: hierarchical
    relaxation) through the eLCN -> eFCN map; already shaped like the relaxed layer, unchanged. Other keys
    pass through unchanged.
    """
    out = dict(tensors)
    with torch.no_grad():
        for path, layer in relaxed_layers(relaxed).items():
            for pname in ("weight", "bias"):
                key = f"{path}.{pname}" if path else pname
                if key in tensors:
                    out[key] = _map_tensor(key, tensors[key], layer, pname)
    return out
