"""RelaxedConv: what every relaxed (eLCN / eFCN) layer shares.

A relaxed layer holds free parameters ``weight`` and ``bias`` and a linear embedding φ from the conv's
parameters onto them, with f_relaxed(φ(θ_conv)) = f_conv(θ_conv). Everything here derives from the
connectivity :func:`~archrelax.embed.connectivity.index_map`, kept as a non-persistent buffer so that
state-dict keys stay ``weight`` / ``bias`` exactly like the conv's.

Projection onto the CNN subspace (the image of φ) is the least-squares preimage (φᵀφ)⁺ φᵀ θ. The
Gram matrix φᵀφ acts on the tap axis only and is the same ``(T, T)`` matrix for every (out, in) channel
pair (:func:`~archrelax.embed.connectivity.tap_gram`): diagonal (tie counts, so the projection is the mean
of tied entries) under zero padding; with reflect/replicate/circular padding two taps of one position may
read the same input and then it is solved with a pseudo-inverse. A *dead* tap (one that reads padding at
every position) never influences the output, so its conv weight is unidentifiable: projection returns 0
for it, and ``project(embed(w))`` equals ``w`` everywhere else.

Where θ sits relative to the two nested subspaces, CNN = range(φ) ⊂ local (entries inside the conv's
connectivity): P_CNN = φ(φᵀφ)⁺φᵀ is an orthogonal projection with range in the local subspace, so θ − P_CNN θ
splits into two orthogonal parts, the off-local part θ − P_local θ and the off-sharing part P_local θ − P_CNN θ:
cnn² = offlocal² + offsharing². A layer computes the squared norm of each part (:meth:`RelaxedConv.offlocal_sq`,
:meth:`RelaxedConv.offsharing_sq`, and :meth:`RelaxedConv.unshared_sq` for the distance to translation-invariant
weights), and both the soft-release penalty (:meth:`RelaxedConv.penalty`, :meth:`RelaxedConv.add_penalty_grad_`)
and the subspace norms (:meth:`RelaxedConv.subspace_sq_norms`: δ, off-sharing and CNN distance) are made of
these same parts; a layer with a faster way to a part overrides it there, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .connectivity import ConvGeometry, index_map, tap_gram

__all__ = ["RelaxedConv", "SubspaceSqNorms", "sq_norm", "sq_sum", "TOWARD"]

TOWARD = ("cnn", "local", "shared")  # the subspaces a penalty pulls toward (archrelax.embed.penalty)


def sq_sum(t: Tensor) -> Tensor:
    """Σ t² as a 0-dim float64 tensor (no gradient), accumulated in float64 from float32 (or the tensor's own
    dtype) partial sums of 4096-element rows: no full-size float64 copy, relative error ~1e-7, and exactly 0 for
    a zero tensor."""
    t = t.detach().reshape(-1)
    n = t.numel() - t.numel() % 4096
    total = t[n:].double().square().sum()
    if n:
        # per-row norms (one fused pass, no temporary), squared in float64; sqrt then square is 1 ulp
        total = total + torch.linalg.vector_norm(t[:n].view(-1, 4096), dim=1).double().square().sum()
    return total


def sq_norm(t: Tensor) -> float:
    """:func:`sq_sum` as a Python float."""
    return float(sq_sum(t))


def _check_toward(toward: str) -> None:
    if toward not in TOWARD:
        raise ValueError(f"constraint penalty: toward={toward!r} is not valid; use one of {TOWARD}")


@dataclass(frozen=True)
class SubspaceSqNorms:
    """Squared norms (float64 sums) of one relaxed layer's parameters θ = (weight, bias), see module docstring.

    ``total``: ‖θ‖²; ``offlocal``: ‖θ_off-local‖² (weight entries outside the conv's connectivity);
    ``offsharing``: ‖θ_local − P_CNN θ‖² (how far the local weights and the biases are from being shared);
    ``cnn``: ‖θ − P_CNN θ‖² = offlocal + offsharing (up to rounding).
    """

    total: float
    offlocal: float
    offsharing: float
    cnn: float


class RelaxedConv(nn.Module):
    """Base of the relaxed layers. Subclasses allocate ``weight``/``bias`` in ``_allocate`` and implement
    ``embed_weight``, ``adjoint_weight``, ``local_mask`` and ``fan_in``."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    # 1 or 2 in the Conv1d/Conv2d-like classes, set by ``class TiledConv2d(TiledConvNd, dim=2)`` (see
    # __init_subclass__); None: any
    _dim: int | None = None

    def __init__(self, geometry: ConvGeometry, *, device: Any = None, dtype: torch.dtype | None = None,
                 _init: bool = True) -> None:
        super().__init__()
        self._check_geometry(geometry)
        self.geometry = geometry
        # (P, T) source index; non-persistent so it follows .to(device) without entering the state dict
        self.register_buffer("index", index_map(geometry).to(device), persistent=False)
        self._allocate(device, dtype)
        if _init:
            self.reset_parameters()

    def _check_geometry(self, geometry: ConvGeometry, from_conv: str = "conv, in_spatial") -> None:
        """Refuse what this class cannot be built from, naming what to use instead: not a ConvGeometry (the
        arguments of ``from_conv`` that start from a conv), or a geometry of the other dimension (the class of
        that dimension). Subclasses call it before anything of theirs that reads the geometry."""
        name = type(self).__name__
        if not isinstance(geometry, ConvGeometry):
            raise TypeError(f"{name} takes a ConvGeometry, got {type(geometry).__name__}; "
                            f"use {name}.from_conv({from_conv}) to start from a conv")
        if self._dim is not None and geometry.dim != self._dim:
            raise ValueError(f"{name} needs a {self._dim}d geometry, got dim={geometry.dim}; "
                             f"use {name.removesuffix(f'{self._dim}d')}{geometry.dim}d")

    # ---- to implement -----------------------------------------------------------------------------------
    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        raise NotImplementedError

    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        """φ: conv-shaped ``(C_out, C_in/g, *kernel)`` → shaped like ``self.weight``."""
        raise NotImplementedError

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        """φᵀ: shaped like ``self.weight`` → ``(C_out, C_in/g, T)`` (sum over tied entries)."""
        raise NotImplementedError

    def local_mask(self) -> Tensor:
        """Bool tensor shaped like ``weight``: True on entries inside the conv's connectivity."""
        raise NotImplementedError

    @property
    def fan_in(self) -> int:
        """Connections per output unit (for the nn.Linear-style initialisation)."""
        raise NotImplementedError

    # ---- bias: one value per (out channel, position), in both layers --------------------------------------
    def embed_bias(self, conv_bias: Tensor) -> Tensor:
        """φ_b: ``(C_out,)`` → shaped like ``self.bias`` (the value repeated over positions)."""
        g = self.geometry
        return conv_bias.reshape(g.out_channels, 1).expand(g.out_channels, g.P).reshape(self._bias_shape).clone()

    def adjoint_bias(self, bias: Tensor) -> Tensor:
        return bias.reshape(self.geometry.out_channels, self.geometry.P).sum(1)

    # ---- shared -----------------------------------------------------------------------------------------
    def tap_gram(self) -> Tensor:
        """``(T, T)`` int64 φᵀφ on the tap axis (see module docstring)."""
        return tap_gram(self.index)

    def project_weight(self, weight: Tensor | None = None) -> Tensor:
        """Conv weight ``(C_out, C_in/g, *kernel)`` nearest (least squares) to ``weight`` (default: own)."""
        weight = self.weight if weight is None else weight
        return self._solve_gram(self.adjoint_weight(weight)).reshape(self.geometry.conv_weight_shape)

    def _solve_gram(self, adj: Tensor) -> Tensor:
        """(φᵀφ)⁺ on the tap axis: ``adj`` ``(..., T)`` -> ``(..., T)``."""
        gram = self.tap_gram().cpu().to(torch.float64)  # (T, T), small; float64 on CPU (MPS has none)
        diag = gram.diagonal()
        if torch.equal(gram, torch.diag(diag)):
            # tie counts: the mean of tied entries; dead taps (count 0) are unidentifiable -> 0
            inv = torch.where(diag > 0, 1.0 / diag.clamp(min=1), 0.0)
            out = adj * inv.to(adj)
        else:
            pinv = torch.linalg.pinv(gram)  # symmetric, shared by all channel pairs
            out = adj @ pinv.to(adj)
        return out

    def project_bias(self, bias: Tensor | None = None) -> Tensor | None:
        """Conv bias ``(C_out,)`` nearest to ``bias`` (default: own): the mean over positions."""
        bias = self.bias if bias is None else bias
        if bias is None:
            return None
        return self.adjoint_bias(bias) / self.geometry.P

    def project(self) -> tuple[Tensor, Tensor | None]:
        """Nearest CNN parameters ``(conv_weight, conv_bias | None)`` (detached)."""
        with torch.no_grad():
            return self.project_weight().detach(), (None if self.bias is None else self.project_bias().detach())

    def nearest_cnn(self) -> tuple[Tensor, Tensor | None]:
        """:meth:`project` refined by one step, ``r + project(θ − φ(r))``, so that it is exact on the CNN subspace:
        a mean of n tied copies (sum, then times 1/n) is often an ulp off, but the residual θ − φ(r) = φ(w − r)
        is computed exactly, and adding its projection restores the last bits. So ``to_cnn(relax(cnn))``
        returns the CNN's weights bit for bit, and the CNN distance of an embedded CNN reads exactly 0."""
        with torch.no_grad():
            w, b = self.project()
            w = w + self.project_weight(self.weight - self.embed_weight(w))
            if b is not None:
                b = b + self.project_bias(self.bias - self.embed_bias(b))
        return w.detach(), (None if b is None else b.detach())

    # ---- the parts of θ − Pθ: what the penalty and the subspace norms are made of --------------------------
    def offlocal_sq(self) -> Tensor:
        """‖θ − P_local θ‖²: the squared weight entries outside ``local_mask()`` (biases are local), 0-dim float64,
        differentiable. Summed over those entries themselves (never total − local), so it is exactly 0 when
        they are."""
        return self.weight.masked_fill(self.local_mask(), 0).square().sum(dtype=torch.float64)

    def offsharing_sq(self) -> Tensor:
        """‖P_local θ − P_CNN θ‖², weight and bias: how far the local weights and the biases are from being
        shared; 0-dim float64, differentiable. P_CNN θ is φ of the refined projection (as :meth:`nearest_cnn`),
        so an embedded CNN reads exactly 0."""
        w = self.weight
        r = self.project_weight(w)
        r = r + self.project_weight(w - self.embed_weight(r))
        d = self.embed_weight(r).sub_(w).mul_(self._local_factor())  # in place on φ(r), a fresh tensor
        return d.square().sum(dtype=torch.float64) + self._bias_offsharing_sq()

    def _local_factor(self) -> Tensor:
        """1 on the local entries, 0 elsewhere, broadcastable against ``weight`` (default: ``local_mask()``;
        layers with a smaller broadcastable mask give it, to spare a weight-sized one)."""
        return self.local_mask()

    def _bias_offsharing_sq(self) -> Tensor:
        """The bias's part of :meth:`offsharing_sq` (a bias is local: its distance to the shared, refined mean)."""
        b = self.bias
        if b is None:
            return torch.zeros((), dtype=torch.float64, device=self.weight.device)
        r = self.project_bias(b)
        r = r + self.project_bias(b - self.embed_bias(r))
        return (self.embed_bias(r) - b).square().sum(dtype=torch.float64)

    def unshared_sq(self) -> Tensor:
        """‖θ − P_shared θ‖², P_shared the projection onto translation-invariant weights (0-dim float64,
        differentiable). For a local layer (eLCN, tiled) shared ∩ local is the CNN, so this default is the
        CNN distance, offlocal + offsharing; the eFCN and the wide conv override it."""
        return self.offlocal_sq() + self.offsharing_sq()

    def penalty(self, toward: str = "cnn") -> Tensor:
        """‖θ − Pθ‖² of this layer's weight and bias, P the orthogonal projection onto the ``"local"``, the
        ``"shared"`` or the ``"cnn"`` subspace (see :mod:`archrelax.embed.penalty`): 0-dim, differentiable, in the
        weight's dtype. Made of the parts above: local = offlocal, cnn = offlocal + offsharing, shared =
        unshared."""
        _check_toward(toward)
        if toward == "local":
            value = self.offlocal_sq()
        elif toward == "cnn":
            value = self.offlocal_sq() + self.offsharing_sq()
        else:
            value = self.unshared_sq()
        return value.to(self.weight.dtype)

    def add_penalty_grad_(self, toward: str = "cnn", lam: float = 1.0, *, value: bool = False) -> float:
        """Add ``lam · ∇‖θ − Pθ‖² = lam · 2(θ − Pθ)`` to the ``.grad`` of this layer's weight and bias (created
        when missing; parameters that do not require grad are skipped). Returns the penalty (θ before any
        update) when ``value``, else 0.0. This default goes through autograd of :meth:`penalty`; the eFCN
        overrides it with one pass over its weight and gradient."""
        params = [p for p in (self.weight, self.bias) if p is not None and p.requires_grad]
        with torch.enable_grad():
            term = self.penalty(toward)
        if params and term.requires_grad:
            for p, g in zip(params, torch.autograd.grad(term, params, allow_unused=True)):
                if g is not None:
                    if p.grad is None:
                        p.grad = g * lam
                    else:
                        p.grad.add_(g, alpha=lam)
        return float(term) if value else 0.0

    def subspace_sq_norms(self) -> SubspaceSqNorms:
        """Squared norms of θ and of its parts relative to the local and the CNN subspaces (see
        :class:`SubspaceSqNorms`), float64 sums. This default is built from the interface only (RelaxedConv's
        own :meth:`offlocal_sq` and :meth:`offsharing_sq`: ``local_mask``, ``embed_weight``, ``project_weight``),
        so it holds for every subclass and is the reference faster layers are tested against; it makes a few
        weight-sized temporaries. A subclass that overrides a part overrides this too, from the same parts
        (DenseConv, LocallyConnectedNd do; class creation checks it)."""
        with torch.no_grad():
            offlocal = float(RelaxedConv.offlocal_sq(self))
            offsharing = float(RelaxedConv.offsharing_sq(self))
            total = sq_norm(self.weight) + (0.0 if self.bias is None else sq_norm(self.bias))
        return SubspaceSqNorms(total, offlocal, offsharing, offlocal + offsharing)

    def __init_subclass__(cls, dim: int | None = None, **kwargs: Any) -> None:
        """``dim``: the class is of that dimension, its geometry checked to be of it (a subclass without ``dim``
        keeps its base's). Refuses a class whose subspace norms would disagree with its parts."""
        super().__init_subclass__(**kwargs)
        if dim is not None:
            if dim not in (1, 2):
                raise ValueError(f"{cls.__name__}: dim={dim!r} must be 1 or 2")
            cls._dim = dim
        parts = [n for n in ("offlocal_sq", "offsharing_sq") if getattr(cls, n) is not getattr(RelaxedConv, n)]
        if parts and cls.subspace_sq_norms is RelaxedConv.subspace_sq_norms:
            raise TypeError(f"{cls.__name__} overrides {', '.join(parts)}: override subspace_sq_norms too, from the "
                            "same parts (RelaxedConv's default is the interface-only reference)")

    def load_conv_(self, conv_weight: Tensor, conv_bias: Tensor | None = None) -> "RelaxedConv":
        """Set own parameters to φ(conv parameters), in place (no gradient)."""
        with torch.no_grad():
            self._load_weight_(conv_weight)
            if self.bias is not None:
                if conv_bias is None:
                    raise ValueError("this layer has a bias but no conv bias was given")
                self.bias.copy_(self.embed_bias(conv_bias))
        return self

    def _load_weight_(self, conv_weight: Tensor) -> None:
        self.weight.copy_(self.embed_weight(conv_weight))

    @classmethod
    def from_conv(cls, conv: nn.Module, in_spatial: int | tuple[int, ...]) -> "RelaxedConv":
        """The exact relaxation of ``conv`` on inputs of spatial shape ``in_spatial``."""
        geom = ConvGeometry.from_conv(conv, in_spatial)
        layer = cls(geom, device=conv.weight.device, dtype=conv.weight.dtype, _init=False)
        return layer.load_conv_(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())

    def reset_parameters(self) -> None:
        """uniform(±1/sqrt(fan_in)) for weight and bias, like nn.Linear."""
        bound = 1.0 / math.sqrt(self.fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _check_input(self, x: Tensor) -> None:
        g = self.geometry
        if x.dim() != g.dim + 2 or tuple(x.shape[1:]) != (g.in_channels, *g.in_spatial):
            raise ValueError(
                f"{type(self).__name__} was built for inputs (B, {g.in_channels}, {', '.join(map(str, g.in_spatial))}), "
                f"got {tuple(x.shape)}; a relaxed layer is tied to one input size (relax again for another)"
            )

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        g = self.geometry
        pad = "" if g.padding_mode == "zeros" else f", padding_mode={g.padding_mode}"
        return (f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
                f"padding={g.padding}, dilation={g.dilation}, groups={g.groups}{pad}, "
                f"in_spatial={g.in_spatial}, out_spatial={g.out_spatial}, bias={g.bias}")
