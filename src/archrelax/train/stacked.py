"""Stacked models: R models of one architecture as one module over stacked ``(R, ...)`` parameters.

The stacked module takes the *member-major merged batch*: rows ``r·B .. (r+1)·B - 1`` of an ``(R·B, ...)``
input are member r's batch, and so are those of the output. Only the leaves that hold parameters (and the
random ones) are replaced; every other module, the model's own ``forward`` included, runs unchanged on the
merged batch, which is right for everything that treats samples independently (activations, pooling,
flatten, reshapes). Each replaced leaf computes R independent layers, *batched* (the default on CUDA: what
keeps a large GPU busy) in one call:

- ``DenseConv`` / ``nn.Linear``: one ``baddbmm``, ``(R, B, in) x (R, in, out)``, no copy of the input;
- ``nn.Conv1d/2d``: one grouped conv, the members' channels side by side (``groups = R·groups``);
- ``LocallyConnected1d/2d``: the eLCN kernel itself on the same side-by-side layout with ``groups = R·groups``
  (an eLCN of several groups is exactly several eLCNs: one batched GEMM per class over ``R·groups·n_c``);
- dropout (torch's dropout family): member by member, each drawing from its own RNG state (``rng``), so every
  member draws exactly what a run of its own would (same op, same generator state, same shape);
- the other relaxed layers (the lattice's ``WideConv``, ``TiledConv``, the ``AttentionConv`` layers, any
  ``RelaxedConv``): member by member in both modes, each member's slice through the layer's own ``forward`` (a
  parameter-free copy of the layer given the member's parameters for the call: weight, bias and the others, such
  as an attention layer's α, offsets and content maps), so they are exact but not batched.

or *member by member* (the default elsewhere): each member's slice through the very op its own layer calls
(``F.linear``, ``F.conv2d``, the eLCN kernel), on views from ``unbind`` (whose backward stacks the gradients in
one copy). On a CPU batching saves no arithmetic and costs cache locality: the weight gradient of a
VanillaCNN eFCN first layer as one ``bmm`` takes 1.7x the time of the members' ``mm`` (6 members, batch 100, 1
thread), and member by member the numbers are each member's own, bit for bit. The batched layers equal the
members' to float tolerance (different GEMM/conv kernels; tests/test_lockstep.py runs both on CPU).

Anything else that holds parameters or persistent buffers (BatchNorm, LayerNorm, embeddings, user layers)
raises :class:`NotStackable` naming it, and ``check_stacked`` compares the stacked forward with each member's
on a random batch, which catches a ``forward`` that mixes the samples of a batch.

The members' parameters become views of the stacked ones (``p.data = stacked[r]``): the members' models stay
usable as they are (state dicts, δ, snapshots) and always hold the current weights, at no extra memory.
Their state dicts are views too: clone before ``torch.save`` (which would otherwise write the whole stack).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archrelax.embed.base import RelaxedConv
from archrelax.embed.dense import DenseConv
from archrelax.embed.locally_connected import LocallyConnectedNd, LocallyConnectedFn

from .checkpoint import rng_state, set_rng_state

__all__ = ["NotStackable", "Members", "stack_models", "check_stacked", "SUPPORTED"]

SUPPORTED = ("DenseConv", "LocallyConnected1d/2d",
             "other relaxed layers (WideConv, TiledConv, AttentionConv1d/2d: member by member)",
             "nn.Conv1d/2d", "nn.Linear", "dropout (nn.Dropout, Dropout1d/2d/3d)",
             "parameter-free modules that treat samples independently (activations, pooling, flatten, ...)")


class NotStackable(ValueError):
    """The models cannot be trained as one stacked model; the message names the module and what is supported."""


class Members:
    """What the stacked leaves share: the member count ``R``, each member's RNG state (``rng_state`` format,
    advanced by the random leaves; None: the member draws from the global generator like the others), and
    whether the layers run batched (one call for all members) or member by member (module docstring)."""

    def __init__(self, n: int, rng: Sequence[dict[str, Any] | None], device: torch.device, batched: bool):
        self.R, self.rng, self.device, self.batched = n, list(rng), device, batched

    def split(self, x: Tensor) -> int:
        """The per-member batch size B of a merged ``(R·B, ...)`` batch."""
        if x.shape[0] % self.R:
            raise ValueError(f"a stacked model of {self.R} members takes (R·B, ...) inputs; got batch {x.shape[0]}")
        return x.shape[0] // self.R


class _Stacked(nn.Module):
    """Base of the stacked leaves: ``weight`` ``(R, *member shape)`` and ``bias`` (or None) as parameters.
    ``forward`` runs ``_batched`` (one call for all members) or ``_member`` (one member's own layer op) on each
    member's slice, as ``members.batched`` says."""

    def __init__(self, members: Members, weight: Tensor, bias: Tensor | None):
        super().__init__()
        object.__setattr__(self, "members", members)  # shared, not a submodule
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        m = self.members
        B = m.split(x)
        if m.batched:
            return self._batched(x, m.R, B)
        # member by member: unbind's backward stacks the members' gradients in one copy
        ws = self.weight.unbind(0)
        bs = self.bias.unbind(0) if self.bias is not None else (None,) * m.R
        return torch.cat([self._member(xr, w, b) for xr, w, b in zip(x.split(B), ws, bs)])


class StackedLinear(_Stacked):
    """R ``nn.Linear`` / ``DenseConv`` layers: ``(R·B, *, in) -> (R·B, *, out)`` by one ``baddbmm``. ``out_shape``:
    the per-sample output shape of a DenseConv ((C_out, *out_spatial)), None for a Linear."""

    def __init__(self, members: Members, weight: Tensor, bias: Tensor | None, out_shape: tuple[int, ...] | None):
        super().__init__(members, weight, bias)
        self.out_shape = out_shape

    def _member(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # as DenseConv / nn.Linear
        if self.out_shape is None:
            return F.linear(x, w, b)
        return F.linear(x.flatten(1), w, b).view(-1, *self.out_shape)

    def _batched(self, x: Tensor, R: int, B: int) -> Tensor:
        if self.out_shape is not None:  # DenseConv: the flattened input
            x = x.flatten(1)
        lead = x.shape[:-1]
        xs = x.reshape(R, -1, x.shape[-1])  # (R, B·*, in): a view of the merged batch
        if self.bias is None:
            y = torch.bmm(xs, self.weight.mT)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xs, self.weight.mT)  # (R, B·*, out)
        return y.view(B * R, *self.out_shape) if self.out_shape is not None else y.view(*lead, -1)


def _side_by_side(x: Tensor, R: int) -> Tensor:
    """(R·B, C, *sp) member-major -> (B, R·C, *sp): the members' channels side by side (one copy)."""
    B = x.shape[0] // R
    return x.reshape(R, B, *x.shape[1:]).transpose(0, 1).reshape(B, R * x.shape[1], *x.shape[2:])


def _member_major(y: Tensor, R: int) -> Tensor:
    """(B, R·C, *sp) -> (R·B, C, *sp) (one copy)."""
    B, C = y.shape[0], y.shape[1] // R
    return y.reshape(B, R, C, *y.shape[2:]).transpose(0, 1).reshape(R * B, C, *y.shape[2:])


class StackedConv(_Stacked):
    """R ``nn.Conv1d/2d`` layers as one grouped conv over the members' channels side by side."""

    def __init__(self, members: Members, conv: nn.Conv1d | nn.Conv2d, weight: Tensor, bias: Tensor | None):
        super().__init__(members, weight, bias)
        self.dim = conv.weight.dim() - 2
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.padding_mode, self.pad_twice = conv.padding_mode, conv._reversed_padding_repeated_twice

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None, groups: int) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv*d does
            x, padding = F.pad(x, self.pad_twice, mode=self.padding_mode), 0
        return (F.conv1d if self.dim == 1 else F.conv2d)(x, w, b, self.stride, padding, self.dilation, groups)

    def _member(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return self._conv(x, w, b, self.groups)

    def _batched(self, x: Tensor, R: int, B: int) -> Tensor:
        w = self.weight.reshape(-1, *self.weight.shape[2:])  # (R·C_out, C_in/g, *k)
        b = None if self.bias is None else self.bias.reshape(-1)
        return _member_major(self._conv(_side_by_side(x, R), w, b, R * self.groups), R)


class StackedLocallyConnected(_Stacked):
    """R eLCN layers: the eLCN kernel with ``groups = R·groups`` on the members' channels side by side. The
    weight ``(R, G, P, C_out/g, T, C_in/g)`` is, viewed as ``(R·G, ...)``, that grouped layer's weight."""

    def __init__(self, members: Members, lc: LocallyConnectedNd, weight: Tensor, bias: Tensor | None):
        super().__init__(members, weight, bias)
        self.geometry = lc.geometry
        self.register_buffer("gather_index", lc.gather_index, persistent=False)  # spatial only: the same for any R
        self._geoms: dict[int, Any] = {}

    def _geometry(self, R: int):
        g = self._geoms.get(R)
        if g is None:
            s = self.geometry
            g = self._geoms[R] = dataclasses.replace(s, in_channels=R * s.in_channels, out_channels=R * s.out_channels,
                                                     groups=R * s.groups)
        return g

    def _member(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # as LocallyConnectedNd.forward
        out = LocallyConnectedFn.apply(x, w, self.gather_index, self.geometry)
        return out if b is None else out + b.to(out.dtype)

    def _batched(self, x: Tensor, R: int, B: int) -> Tensor:
        g = self._geometry(R)
        w = self.weight.reshape(-1, *self.weight.shape[2:])  # (R·G, P, C_out/g, T, C_in/g)
        out = LocallyConnectedFn.apply(_side_by_side(x, R), w, self.gather_index, g)  # (B, R·C_out, *out_sp)
        if self.bias is not None:
            out = out + self.bias.reshape(-1, *self.bias.shape[2:]).to(out.dtype)
        return _member_major(out, R)


class StackedRelaxed(_Stacked):
    """R relaxed layers of a kind without a batched form (WideConv, TiledConv, AttentionConv, ...): member by member
    in both modes, each slice through the layer's own ``forward``, on a copy of the layer that holds no parameters
    (``inner``) and is given the member's parameters for the call: ``weight``, ``bias`` and any others the layer has
    (an attention layer's α, offsets and content maps, stacked here under their own names, in the layer's order)."""

    def __init__(self, members: Members, layer: RelaxedConv, weight: Tensor, bias: Tensor | None,
                 extra: dict[str, Tensor] | None = None):
        super().__init__(members, weight, bias)
        self.extra = tuple(extra or ())
        for name, t in (extra or {}).items():
            setattr(self, name, nn.Parameter(t))
        memo = {id(p): None for p in layer.parameters(recurse=False)}
        inner = copy.deepcopy(layer, memo)
        for name in ("weight", "bias", *self.extra):
            inner._parameters.pop(name, None)
        self.inner = inner

    def _call(self, x: Tensor, params: dict[str, Tensor | None]) -> Tensor:
        inner = self.inner
        for name, t in params.items():  # plain attributes: the layer's forward reads self.weight, self.alpha, ...
            setattr(inner, name, t)
        try:
            return inner(x)
        finally:
            for name in params:
                setattr(inner, name, None)

    def forward(self, x: Tensor) -> Tensor:
        m = self.members
        B = m.split(x)
        names = ("weight", "bias", *self.extra)
        # unbind's backward stacks the members' gradients in one copy
        slices = {n: (None,) * m.R if getattr(self, n) is None else getattr(self, n).unbind(0) for n in names}
        return torch.cat([self._call(xr, {n: s[r] for n, s in slices.items()}) for r, xr in enumerate(x.split(B))])


class StackedRandom(nn.Module):
    """A random parameter-free leaf (dropout) applied member by member, each with its own RNG state, in training
    mode; in eval mode (no draws) on the merged batch."""

    def __init__(self, members: Members, inner: nn.Module):
        super().__init__()
        object.__setattr__(self, "members", members)
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.inner(x)
        m = self.members
        xs = x.reshape(m.R, m.split(x), *x.shape[1:])
        outs = []
        saved = rng_state(m.device)
        try:
            for r in range(m.R):
                if m.rng[r] is not None:
                    set_rng_state(m.rng[r], m.device)
                outs.append(self.inner(xs[r]))
                if m.rng[r] is not None:
                    m.rng[r] = rng_state(m.device)
        finally:
            set_rng_state(saved, m.device)
        return torch.cat(outs)


_RANDOM = (nn.modules.dropout._DropoutNd,)
_MIXING = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _leaf_kind(path: str, m: nn.Module) -> str:
    """'dense', 'linear', 'conv', 'lc', 'relaxed', 'random', 'free' (left as it is); NotStackable otherwise."""
    if isinstance(m, DenseConv):
        return "dense"
    if isinstance(m, LocallyConnectedNd):
        return "lc"
    if isinstance(m, RelaxedConv):
        if any(n not in m._non_persistent_buffers_set for n, b in m._buffers.items() if b is not None):
            # a schedule's state (an annealed attention layer's alpha_shift), which the stack's copy would not follow
            raise NotStackable(f"module {path!r} ({type(m).__name__}) holds persistent buffers "
                               f"({', '.join(n for n in m._buffers if n not in m._non_persistent_buffers_set)}), "
                               "set by the trainer per step: it trains as a run of its own")
        return "relaxed"
    if type(m) in (nn.Conv1d, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _RANDOM):
        return "random"
    own = [p for p in m._parameters.values() if p is not None] + [
        b for n, b in m._buffers.items() if b is not None and n not in m._non_persistent_buffers_set]
    if own or isinstance(m, _MIXING):
        raise NotStackable(f"module {path or '<root>'!r} ({type(m).__name__}) cannot be stacked for lockstep training; "
                           f"supported: {'; '.join(SUPPORTED)}")
    return "free"


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _stacked_param(models: Sequence[nn.Module], name: str) -> Tensor | None:
    """One ``(R, *shape)`` tensor from parameter ``name`` of every model, each model's parameter then re-pointed at
    its slice (filled one member at a time: peak memory is the stack plus one member's tensor)."""
    params = [m.get_parameter(name) for m in models]
    first = params[0]
    out = torch.empty((len(params), *first.shape), dtype=first.dtype, device=first.device)
    for r, p in enumerate(params):
        out[r].copy_(p.detach())
        p.data = out[r]
    return out


def stack_models(models: Sequence[nn.Module], rng: Sequence[dict[str, Any] | None] | None = None,
                 batched: bool | None = None) -> tuple[nn.Module, Members]:
    """``(stacked module, members)`` for ``models`` of one architecture (same parameter names, shapes, dtypes,
    devices; relaxed layers of equal geometry). The stacked module's parameters have the members' names and a
    leading member dim; afterwards each member's parameters are views of them (module docstring).

    ``rng``: each member's RNG state for its random leaves (default: None each). ``batched``: one call per layer
    for all members (default on CUDA) or each member's own layer op in turn (default elsewhere); see the module
    docstring. Raises :class:`NotStackable` naming what differs or what is not supported; nothing is changed then.
    """
    if not models:
        raise ValueError("stack_models needs at least one model")
    ref = models[0]
    sig = [(n, tuple(p.shape), p.dtype, p.device) for n, p in ref.named_parameters()]
    for i, m in enumerate(models[1:], 1):
        other = [(n, tuple(p.shape), p.dtype, p.device) for n, p in m.named_parameters()]
        if other != sig:
            diff = next((a, b) for a, b in zip(sig + [None] * len(other), other + [None] * len(sig)) if a != b)
            raise NotStackable(f"model {i} differs from model 0 in its parameters: {diff[1]} vs {diff[0]}")
    kinds = {}
    for path, mod in ref.named_modules():
        if next(mod.children(), None) is None:  # a leaf
            if not path:
                raise NotStackable(f"the model is a single {type(mod).__name__} layer; wrap it in an nn.Sequential")
            kinds[path] = _leaf_kind(path, mod)
        elif any(p is not None for p in mod._parameters.values()):
            raise NotStackable(f"module {path or '<root>'!r} ({type(mod).__name__}) holds parameters of its own "
                               f"besides its children; supported leaves: {'; '.join(SUPPORTED)}")
        elif any(n not in mod._non_persistent_buffers_set for n, _ in mod.named_buffers(recurse=False)):
            raise NotStackable(f"module {path or '<root>'!r} ({type(mod).__name__}) holds persistent buffers")
    for path, kind in kinds.items():
        if kind in ("dense", "lc", "relaxed"):
            geoms = {(m.get_submodule(path).geometry, repr(getattr(m.get_submodule(path), "target", None)))
                     for m in models}
            if len(geoms) > 1:
                raise NotStackable(f"relaxed layer {path!r} has different geometries across the models: {geoms}")
    device = next(ref.parameters()).device if sig else torch.device("cpu")
    if batched is None:
        batched = device.type == "cuda"
    members = Members(len(models), rng if rng is not None else [None] * len(models), device, batched)
    # the skeleton: the model's structure without copies of its parameters (placeholders, replaced below)
    memo = {id(p): torch.empty(0) for p in ref.parameters()}
    net = copy.deepcopy(ref, memo)
    for path, kind in kinds.items():
        if kind == "free":
            continue
        if kind == "random":
            _set(net, path, StackedRandom(members, copy.deepcopy(ref.get_submodule(path))))
            continue
        mod = ref.get_submodule(path)
        w = _stacked_param(models, f"{path}.weight")
        b = _stacked_param(models, f"{path}.bias") if getattr(mod, "bias", None) is not None else None
        if kind == "dense":
            g = mod.geometry
            new: nn.Module = StackedLinear(members, w, b, (g.out_channels, *g.out_spatial))
        elif kind == "linear":
            new = StackedLinear(members, w, b, None)
        elif kind == "conv":
            new = StackedConv(members, mod, w, b)
        elif kind == "relaxed":
            extra = {n: _stacked_param(models, f"{path}.{n}") for n, _ in mod.named_parameters(recurse=False)
                     if n not in ("weight", "bias")}
            new = StackedRelaxed(members, mod, w, b, extra)
        else:
            new = StackedLocallyConnected(members, mod, w, b)
        _set(net, path, new)
    net.train(ref.training)
    names = [n for n, _ in net.named_parameters()]
    if names != [n for n, *_ in sig]:  # every parameter went into a stacked leaf, in the model's order
        raise NotStackable(f"stacked parameters {names} do not match the model's {[n for n, *_ in sig]}")
    return net, members


@torch.no_grad()
def check_stacked(net: nn.Module, models: Sequence[nn.Module], examples: Tensor, rtol: float = 1e-2) -> None:
    """Raise :class:`NotStackable` unless the stacked forward of ``examples`` ``(R, B, ...)`` (eval mode; member r
    on ``examples[r]``) matches each member's own forward to ``rtol`` of its largest output. A sanity check (TF32
    convs on CUDA differ by ~1e-3): a ``forward`` that mixes the samples of a batch differs by O(1)."""
    was = [m.training for m in models], net.training
    for m in models:
        m.eval()
    net.eval()
    try:
        R, B = examples.shape[:2]
        out = net(examples.reshape(R * B, *examples.shape[2:])).reshape(R, B, -1)
        for r, m in enumerate(models):
            own = m(examples[r]).reshape(B, -1)
            err = (out[r].float() - own.float()).abs().max().item()
            scale = own.float().abs().max().item()
            if not err <= rtol * scale + 1e-6:
                raise NotStackable(f"the stacked forward differs from member {r}'s own by {err:.3g} (outputs up to "
                                   f"{scale:.3g}): the model's forward() does not treat the samples of a batch "
                                   "independently, or uses a layer the stacking does not know")
    finally:
        for m, t in zip(models, was[0]):
            m.train(t)
        net.train(was[1])
