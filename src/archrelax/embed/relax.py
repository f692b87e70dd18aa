"""Model conversion: any nn.Module's conv layers -> their exact relaxations along the lattice, and ``transfer``.

``relax`` deep-copies the model, learns every conv's input shape from one forward pass of
``example_input`` (so residual connections, functionals in ``forward`` etc. need no special care), and
swaps each selected conv for a relaxed layer at the same module path. State-dict keys stay the same;
only the shapes of ``<path>.weight`` / ``<path>.bias`` change, and ``transfer`` maps tensors across.

Targets (:mod:`.targets`): ``"lc"`` (eLCN), ``"fc"`` (eFCN), ``"wide:K"`` / ``"wide:full"`` (locality released,
sharing kept), ``"tiled:T"`` (sharing released in tiles), ``"attn"`` (positional self-attention, :mod:`.attention`).
Already relaxed layers move further up the lattice when the target is above them: tiled -> lc / fc, eLCN -> fc,
wide -> fc; every move is exact. An attention layer moves nowhere.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
import torch
from torch import nn

from .attention import AttentionConv1d, AttentionConv2d, AttentionConvNd
from .base import RelaxedConv
from .connectivity import ConvGeometry
from .dense import DenseConv
from .footprint import ExampleInput, layer_geometries, param_count, probe, workspace_bound
from .locally_connected import LocallyConnected1d, LocallyConnected2d, LocallyConnectedNd
from .targets import NEXT, TARGET_FORMS, RelaxTarget, parse_target
from .tiled import TiledConv1d, TiledConv2d, TiledConvNd, tile_layout
from .wide import WideConv1d, WideConv2d, WideConvNd, wide_layout

__all__ = ["relax", "transfer", "relaxed_layers", "next_targets", "available_memory", "memory_need", "RelaxMemoryError"]

TARGETS = ("lc", "fc", "wide", "tiled", "attn")  # kinds; their string forms are in TARGET_FORMS
LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None
_LC = (LocallyConnected1d, LocallyConnected2d)
# relaxed layer class -> the target kinds it moves to (up the lattice); a conv moves to every kind
_NEXT: dict[type, tuple[str, ...]] = {TiledConvNd: NEXT["tiled"], LocallyConnectedNd: NEXT["lc"], WideConvNd: NEXT["wide"],
                                      DenseConv: NEXT["fc"], AttentionConvNd: NEXT["attn"]}
_NAMES = {"lc": "locally-connected (eLCN) layers", "wide": "wide convs", "tiled": "tiled convs"}


def next_targets(layer: nn.Module) -> tuple[str, ...]:
    """The target kinds ``layer`` can be relaxed to: every kind for a conv, the ones above it for a relaxed layer."""
    if not isinstance(layer, RelaxedConv):
        return TARGETS
    return next((v for k, v in _NEXT.items() if isinstance(layer, k)), ())


def relaxed_layers(model: nn.Module) -> dict[str, RelaxedConv]:
    """Every relaxed layer of ``model`` by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RelaxedConv)}


def _candidates(model: nn.Module, kind: str) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """``(candidates, blocked)`` by every module path (a shared module appears under each): the layers
    ``relax(..., to=kind)`` could act on (convs, and relaxed layers below ``kind`` on the lattice), and the
    relaxed layers that cannot go there (for error messages)."""
    cand, blocked = {}, {}
    for n, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, RelaxedConv):
            (cand if kind in next_targets(m) else blocked)[n] = m
        elif isinstance(m, nn.modules.conv._ConvNd):
            cand[n] = m
    return cand, blocked


def _blocked_detail(blocked: Mapping[str, nn.Module]) -> str:
    return "; ".join(f"{n!r} is a {type(m).__name__}, whose valid next targets are {list(next_targets(m))}"
                     for n, m in blocked.items())


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


def _check_supported(name: str, m: nn.Module, kind: str) -> None:
    if isinstance(m, RelaxedConv):
        return  # a relaxed layer is a candidate only for the targets above it
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        raise ValueError(
            f"layer {name!r} is a {type(m).__name__}; relax(to={kind!r}) supports only Conv1d and Conv2d (and relaxed "
            "layers below the target): exclude it with layers= (a list of names/globs or a predicate)"
        )
    if kind in _NAMES and m.padding_mode != "zeros":
        raise ValueError(
            f"layer {name!r} has padding_mode={m.padding_mode!r}; {_NAMES[kind]} support only zero padding: use "
            "to='fc' (every padding mode folds into the eFCN exactly) or exclude it with layers="
        )


def _check_geometry(name: str, m: nn.Module, geom: ConvGeometry, target: RelaxTarget) -> None:
    """Sizes a target gives per layer (kernel_size / tile against the conv's dim and extent), named by layer."""
    if isinstance(m, RelaxedConv) or target.kind not in ("wide", "tiled"):
        return
    try:
        if target.kind == "wide":
            wide_layout(geom, target.kernel_size)
        else:
            tile_layout(geom, target.tile)
    except ValueError as e:
        raise ValueError(f"relax(to={target.spec!r}): layer {name!r} ({geom.dim}d, kernel {geom.kernel_size}, "
                         f"dilation {geom.dilation}): {e}") from None


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


def _need(plan: Mapping[str, tuple[nn.Module, ConvGeometry]], target: RelaxTarget) -> dict[torch.device, int]:
    """Bytes the relaxed layers of ``plan`` need on each device: their parameters, plus an attention layer's chunk
    workspace (the largest: layers run one by one)."""
    need: dict[torch.device, int] = {}
    work: dict[torch.device, int] = {}
    for m, geom in plan.values():
        w = m.weight
        need[w.device] = need.get(w.device, 0) + param_count(geom, target.spec) * w.element_size()
        work[w.device] = max(work.get(w.device, 0), workspace_bound(geom, target.spec, w.element_size()))
    return {device: nbytes + work[device] for device, nbytes in need.items()}


def memory_need(model: nn.Module, to: str | RelaxTarget, example_input: ExampleInput = None,
                layers: LayerSelector = None) -> dict[torch.device, int]:
    """What ``relax(model, to, example_input, layers)``'s memory guard counts, without relaxing anything: bytes per
    device of the relaxed layers it would make (compare with :func:`available_memory`; ``archrelax run --dry-run``
    prints the verdict). The model is not changed."""
    target = parse_target(to)
    todo, geoms, _, _ = _layers_to_relax(model, target, layers, example_input, type(model).__name__)
    return _need({n: (m, geoms[n]) for n, m in todo.items()}, target)


def _guard_memory(plan: Mapping[str, tuple[nn.Module, ConvGeometry]], target: RelaxTarget) -> None:
    """Fail before allocating when the relaxed parameters alone would not fit on their device."""
    for device, nbytes in _need(plan, target).items():
        free = available_memory(device)
        if free is not None and nbytes > free:
            raise RelaxMemoryError(
                f"relax(to={target.spec!r}) needs about {nbytes / 1e9:.3g} GB for the relaxed parameters on {device}, "
                f"but only {free / 1e9:.3g} GB is available (see archrelax.footprint for the per-layer breakdown); relax "
                "fewer layers with layers=, or pass force=True to try anyway"
            )


def _relaxed_layer(m: nn.Module, geom: ConvGeometry, target: RelaxTarget, name: str = "") -> nn.Module:
    kind, conv = target.kind, not isinstance(m, RelaxedConv)
    if kind == "fc":
        new = DenseConv.from_conv(m, geom.in_spatial) if conv else DenseConv.from_relaxed(m)
    elif kind == "lc":
        cls = LocallyConnected1d if geom.dim == 1 else LocallyConnected2d
        new = cls.from_conv(m, geom.in_spatial) if conv else m.to_lc()
    elif kind == "attn":  # W_k's draw: seeded by the global seed and the layer's path, without advancing the RNG
        seed = (torch.initial_seed() + zlib.crc32(name.encode())) % (1 << 63)
        new = (AttentionConv1d if geom.dim == 1 else AttentionConv2d).from_conv(
            m, geom.in_spatial, alpha=target.alpha, key_dim=target.key_dim, seed=seed, anneal_to=target.anneal_to,
            anneal_steps=target.anneal_steps)
    elif kind == "wide":
        new = (WideConv1d if geom.dim == 1 else WideConv2d).from_conv(m, geom.in_spatial, kernel_size=target.kernel_size)
    else:
        new = (TiledConv1d if geom.dim == 1 else TiledConv2d).from_conv(m, geom.in_spatial, tile=target.tile)
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
    to: str | RelaxTarget = "lc",
    example_input: ExampleInput = None,
    layers: LayerSelector = None,
    force: bool = False,
    *,
    kernel_size: int | tuple[int, ...] | str | None = None,
    tile: int | tuple[int, ...] | None = None,
    check: bool = True,
) -> nn.Module:
    """A copy of ``model`` with each selected conv replaced by its exact relaxation ``to``:

    - ``"lc"``: eLCN (sharing released); ``"fc"``: eFCN (both released);
    - ``"wide"`` with ``kernel_size=K`` (int, per-dim tuple or ``"full"``), or ``"wide:K"``/``"wide:full"``:
      a conv with a K-tap kernel, zero outside the original taps (locality released, sharing kept);
    - ``"tiled"`` with ``tile=T`` (int or per-dim tuple), or ``"tiled:T"``/``"tiled:TxT"``: a tiled conv,
      positions equal modulo T share a filter (sharing released partially; T is clamped to each layer's output);
    - ``"attn"`` (options ``"attn:alpha=A,dk=K,anneal_to=A2,anneal_steps=N"``): positional self-attention, one
      head per tap, the conv's function at the embedding (:mod:`.attention`); every padding mode.

    Already relaxed layers below the target on the lattice move up exactly (tiled -> lc / fc, eLCN -> fc,
    wide -> fc; hierarchical relaxation); the other moves are refused, naming the valid next targets.

    example_input: a tensor, or an input batch shape (a model's ``(C, H, W)`` ``input_shape`` gets a batch
        dimension; None uses ``model.input_shape``); for a forward() of several inputs, a tuple of those
        (positional arguments) or a dict of them (keyword arguments, or a forward(batch) taking a dict): see
        ``footprint.example_inputs``. One forward pass reveals input shapes (``footprint.probe``: in eval mode,
        at a batch of at least 2, on seeded random values shaped like the example; modes, buffers and RNG restored
        after it; convs that only run in train mode from a second pass in train mode); the check reuses its
        output. The input model is never changed.
    layers: None (all), names or fnmatch globs of module paths, or a predicate ``(name, module) -> bool``.
    force: skip the memory guard (which fails when the relaxed parameters exceed the available memory).
    check: compare the result's output with ``model``'s on a random input shaped like ``example_input`` (eval
        mode, modes and buffers restored) and raise :class:`~archrelax.embed.check.RelaxCheckError` when the
        relative error exceeds min(1024·eps, 0.1) of the output dtype (float32: 1.2e-4), naming the likely causes (a
        conv's parameter read outside the conv in ``forward``, a functional conv, an input-dependent branch);
        ``check=False`` skips it. The command line and the protocol always check (the trainer calls relax).
    """
    target = parse_target(to, kernel_size=kernel_size, tile=tile)
    spec = target.spec
    out = copy.deepcopy(model)
    todo, geoms, paths, probed = _layers_to_relax(out, target, layers, example_input, type(model).__name__)
    if not force:
        _guard_memory({n: (m, geoms[n]) for n, m in todo.items()}, target)
    names = list(todo)
    for n in names:
        # swap in layer by layer and drop the old one, so its memory is freed before the next is built
        old = todo.pop(n)
        new = _relaxed_layer(old, geoms[n], target, n)
        for path in paths[id(old)]:
            _set_submodule(out, path, new)
        del old, new
    if check:  # the relaxed model computes the source's function (.check): a forward() that defeats the swap raises
        from .check import check_relaxed

        check_relaxed(model, out, example_input, spec, names, reference=probed)
    return out


def _layers_to_relax(out: nn.Module, target: RelaxTarget, layers: LayerSelector, example_input: ExampleInput,
                     model_name: str) -> tuple[dict[str, nn.Module], dict[str, ConvGeometry], dict[int, list[str]], Any]:
    """The layers of ``out`` that relax() swaps, by the path that names each (a module shared by several paths is
    one layer), their geometries, every path of each (by module id), and the probe's output (``footprint.probe``,
    None when every selected layer is already relaxed: the check's reference); the refusals, naming the layers."""
    spec = target.spec
    candidates, blocked = _candidates(out, target.kind)
    if blocked and layers is not None and not callable(layers):
        patterns = [layers] if isinstance(layers, str) else list(layers)
        hit = {n: m for n, m in blocked.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        if hit:
            raise ValueError(f"relax(to={spec!r}): cannot move these layers there: {_blocked_detail(hit)} "
                             "(a relaxed layer only moves up the lattice: tiled -> lc -> fc, wide -> fc)")
    selected = _select(candidates, layers)
    if not selected:
        if blocked:
            detail = f"its relaxed layers cannot go to {spec!r}: {_blocked_detail(blocked)}"
        elif candidates:
            detail = f"layers={layers!r} selected none of {list(candidates)}"
        else:
            detail = "it has no Conv1d/Conv2d layer"
        raise ValueError(f"relax(to={spec!r}): nothing to relax in {model_name}: {detail}")
    for name in selected:
        _check_supported(name, candidates[name], target.kind)
    # a module shared by several paths is one layer: named by its first selected path, swapped at all paths
    paths: dict[int, list[str]] = {}
    for n, m in candidates.items():
        paths.setdefault(id(m), []).append(n)
    first = {id(candidates[n]): n for n in reversed(selected)}
    todo = {n: candidates[n] for n in sorted(first.values(), key=selected.index)}
    # one forward pass of the source (eval mode, batch >= 2, modes and buffers restored): the convs' input shapes,
    # and the output the check compares the relaxed model with
    convs = {n: m for n, m in todo.items() if not isinstance(m, RelaxedConv)}
    probed = probe(out, example_input, convs) if convs else None
    geoms = layer_geometries(out, example_input, todo, probed=probed)
    for n, m in todo.items():
        _check_geometry(n, m, geoms[n], target)
    return todo, geoms, paths, probed


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


def _through_source(src: nn.Module | None, layer: RelaxedConv, tensor: torch.Tensor, pname: str) -> torch.Tensor | None:
    """A tensor shaped like the source model's relaxed layer ``src`` (tiled, wide, eLCN) through the same move up the
    lattice ``relax`` made (None when ``src`` is not such a layer or the shapes do not fit)."""
    if not isinstance(src, RelaxedConv) or getattr(src, pname, None) is None or getattr(src, pname).shape != tensor.shape:
        return None
    kind = "fc" if isinstance(layer, DenseConv) else "lc" if isinstance(layer, LocallyConnectedNd) else None
    if kind is None or kind not in next_targets(src) or src.geometry != layer.geometry:
        return None
    tmp = copy.deepcopy(src)  # a small layer (tiled / wide / eLCN); its parameters are overwritten
    for p in tmp.parameters():
        p.zero_()
    getattr(tmp, pname).copy_(tensor)
    moved = DenseConv.from_relaxed(tmp) if kind == "fc" else tmp.to_lc()
    return getattr(moved, pname).detach()


def _map_tensor(key: str, tensor: torch.Tensor, layer: RelaxedConv, pname: str, src: nn.Module | None) -> torch.Tensor:
    geom = layer.geometry
    target = getattr(layer, pname)
    if target is None:
        raise ValueError(f"transfer: {key!r} given but the relaxed layer has no {pname} (the conv had bias=False)")
    if tensor.shape == target.shape:  # already in the relaxed layer's shape
        return tensor
    conv_shape = geom.conv_weight_shape if pname == "weight" else (geom.out_channels,)
    if tensor.shape == conv_shape:
        return layer.embed_weight(tensor) if pname == "weight" else layer.embed_bias(tensor)
    mapped = _through_source(src, layer, tensor, pname)
    if mapped is None and isinstance(layer, DenseConv):
        mapped = _lc_to_dense(layer, tensor, pname)
    if mapped is not None:
        return mapped
    lc = " or the eLCN layer's shape" if isinstance(layer, DenseConv) else ""
    hint = "" if src is not None else " (tensors of a tiled or wide source layer need source=the source model)"
    raise ValueError(f"transfer: {key!r} has shape {tuple(tensor.shape)}; valid for this {type(layer).__name__} are "
                     f"the conv's {tuple(conv_shape)}, the relaxed layer's {tuple(target.shape)}{lc}{hint}")


def transfer(tensors: Mapping[str, torch.Tensor], relaxed: nn.Module,
             source: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map tensors named like the source model's parameters (weights, or optimiser buffers keyed by parameter
    name) onto ``relaxed``'s parameter shapes through the same embedding ``relax`` used.

    For each relaxed layer at path ``p``, ``p.weight`` / ``p.bias`` shaped like the conv go through
    ``embed_weight`` / ``embed_bias``; shaped like the ``source`` model's relaxed layer at ``p`` (a tiled, wide
    or eLCN layer that ``relax`` moved up the lattice) through that same move; shaped like an eLCN layer (onto
    an eFCN layer: hierarchical relaxation) through the eLCN -> eFCN map even without ``source``; already
    shaped like the relaxed layer, unchanged. Other keys pass through unchanged.
    """
    out = dict(tensors)
    with torch.no_grad():
        for path, layer in relaxed_layers(relaxed).items():
            src = None
            if source is not None:
                try:
                    src = source.get_submodule(path)
                except AttributeError:
                    src = None
            for pname in ("weight", "bias"):
                key = f"{path}.{pname}" if path else pname
                if key in tensors:
                    out[key] = _map_tensor(key, tensors[key], layer, pname, src)
    return out
