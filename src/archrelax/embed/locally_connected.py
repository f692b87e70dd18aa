"""Locally-connected layers (eLCN): a conv whose filters are not shared across output positions.

Layout, chosen for speed on CPU (see benchmarks/bench_lc_layer.py): the input is transposed once to a
small ``(groups, Q + 1, C_in/g, B)`` tensor (row Q is zeros: where padding taps read), then one
``index_select`` through the index map gathers whole contiguous rows straight into the unfolded layout
``(groups·P, T·C_in/g, B)``, and one ``bmm`` with the weight viewed as ``(groups·P, C_out/g, T·C_in/g)``
gives ``(groups·P, C_out/g, B)``. No strided transpose of the unfolded tensor is ever made (that, not the
arithmetic, is what makes the ``F.unfold(x).permute(...)`` formulation slow), and the batch ×
C_out × C_in × P × T product is never materialised.

Parameters:
- ``weight``: ``(groups, P, C_out/g, T, C_in/g)``: the filter of output channel o at position p.
  Entries of taps that read zero padding at a position are *dead*: they multiply zeros, get zero
  gradient, are outside ``local_mask()``, and are kept at 0 by φ and by ``reset_parameters()``.
- ``bias``: ``(C_out, *out_spatial)``: one bias per (channel, position), so bias sharing is released too.

Zero padding only: with reflect/replicate/circular padding the relaxation of a conv is the eFCN (DenseConv).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import RelaxedConv
from .connectivity import ConvGeometry

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnectedNd"]


class LocallyConnectedNd(RelaxedConv):
    """Locally-connected layer for ``geometry.dim`` spatial dims; use LocallyConnected1d / 2d."""

    _dim: int | None = None

    def __init__(self, geometry: ConvGeometry, *, device: Any = None, dtype: torch.dtype | None = None,
                 _init: bool = True) -> None:
        if not isinstance(geometry, ConvGeometry):
            raise TypeError(f"{type(self).__name__} takes a ConvGeometry, got {type(geometry).__name__}")
        if self._dim is not None and geometry.dim != self._dim:
            raise ValueError(f"{type(self).__name__} needs a {self._dim}d geometry, got dim={geometry.dim}; "
                             f"use LocallyConnected{geometry.dim}d")
        if geometry.padding_mode != "zeros":
            raise ValueError(
                f"a locally-connected layer supports padding_mode='zeros' only, got {geometry.padding_mode!r}: "
                "the padded input is not an input of the layer; relax this conv to 'fc' (DenseConv) instead"
            )
        super().__init__(geometry, device=device, dtype=dtype, _init=False)
        live = self.index >= 0  # (P, T)
        self.register_buffer("live", live, persistent=False)
        # gather rows into the transposed input; -1 (padding) reads the zero row Q
        self.register_buffer("gather_index", torch.where(live, self.index, geometry.Q).flatten(), persistent=False)
        if _init:
            self.reset_parameters()

    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        g = self.geometry
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(
            g.groups, g.P, g.out_channels // g.groups, g.T, g.in_channels // g.groups, **kw))
        self.bias = nn.Parameter(torch.empty(g.out_channels, *g.out_spatial, **kw)) if g.bias else None

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        return (self.geometry.out_channels, *self.geometry.out_spatial)

    @property
    def fan_in(self) -> int:
        return self.geometry.in_channels // self.geometry.groups * self.geometry.T

    def _live5(self) -> Tensor:
        return self.live[None, :, None, :, None]  # broadcasts against (g, P, C_out/g, T, C_in/g)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight.mul_(self._live5())  # dead taps stay 0

    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        g = self.geometry
        w = conv_weight.reshape(g.groups, 1, g.out_channels // g.groups, g.in_channels // g.groups, g.T)
        w = w.transpose(3, 4)  # (g, 1, C_out/g, T, C_in/g)
        return (w * self._live5().to(w.dtype)).contiguous()  # broadcast over P; dead taps 0

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        g = self.geometry
        s = (weight * self._live5().to(weight.dtype)).sum(1)  # (g, C_out/g, T, C_in/g)
        return s.transpose(2, 3).reshape(g.out_channels, g.in_channels // g.groups, g.T)

    def local_mask(self) -> Tensor:
        return self._live5().expand(self.weight.shape).clone()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        g = self.geometry
        B, G = x.shape[0], g.groups
        cig, cog = g.in_channels // G, g.out_channels // G
        xt = x.reshape(B, G, cig, g.Q).permute(1, 3, 2, 0)  # (G, Q, C_in/g, B), small
        xt = nn.functional.pad(xt, (0, 0, 0, 0, 0, 1))  # (G, Q+1, C_in/g, B): contiguous, zero row Q
        cols = xt.index_select(1, self.gather_index)  # (G, P·T, C_in/g, B): contiguous row copies
        cols = cols.view(G * g.P, g.T * cig, B)
        out = torch.bmm(self.weight.view(G * g.P, cog, g.T * cig), cols)  # (G·P, C_out/g, B)
        out = out.view(G, g.P, cog, B).permute(3, 0, 2, 1).reshape(B, g.out_channels, *g.out_spatial)
        return out if self.bias is None else out + self.bias


class LocallyConnected1d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, L)`` inputs (see module docstring)."""

    _dim = 1


class LocallyConnected2d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, H, W)`` inputs (see module docstring)."""

    _dim = 2
