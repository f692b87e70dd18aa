"""Locally-connected layers (eLCN): a conv whose filters are not shared across output positions.

Layout, chosen for speed on CPU (see benchmarks/bench_lc_layer.py): the input is transposed once to a
small ``(groups, Q + 1, C_in/g, B)`` tensor (row Q is zeros: where padding taps read), then one
``index_select`` through the index map gathers whole contiguous rows straight into the unfolded layout
``(groups·P, T·C_in/g, B)``, and one ``bmm`` with the weight viewed as ``(groups·P, C_out/g, T·C_in/g)``
gives ``(groups·P, C_out/g, B)``. No strided transpose of the unfolded tensor is ever made (that, not the
arithmetic, is what makes the ``F.unfold(x).permute(...)`` formulation slow), and the batch ×
C_out × C_in × P × T product is never materialised. The unfolded input is not kept for backward: backward
gathers it again into a reused per-thread CPU workspace (fresh 100 MB allocations are page-faulted in on
every call, which costs as much as the gather), then writes the unfolded input gradient into that same
buffer and scatters it back with ``index_add_``. Peak memory is thus about weights (+ their gradient) +
activations + one unfolded input. Double backward (Hessian-vector products) goes through plain ops.

Parameters:
- ``weight``: ``(groups, P, C_out/g, T, C_in/g)``: the filter of output channel o at position p.
  Entries of taps that read zero padding at a position are *dead*: they multiply zeros, get zero
  gradient, are outside ``local_mask()``, and are kept at 0 by φ and by ``reset_parameters()``.
- ``bias``: ``(C_out, *out_spatial)``: one bias per (channel, position), so bias sharing is released too.

Zero padding only: with reflect/replicate/circular padding the relaxation of a conv is the eFCN (DenseConv).
"""
from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import Tensor, nn

from .base import RelaxedConv
from .connectivity import ConvGeometry

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnectedNd", "release_workspaces"]


def _transpose_in(x: Tensor, geom: ConvGeometry) -> Tensor:
    """(B, C_in, *in_spatial) -> (G, Q+1, C_in/g·B): small copy; row Q is the zero row padding taps read."""
    B, G = x.shape[0], geom.groups
    xt = x.reshape(B, G, geom.in_channels // G, geom.Q).permute(1, 3, 2, 0)  # (G, Q, C_in/g, B)
    return nn.functional.pad(xt, (0, 0, 0, 0, 0, 1)).view(G, geom.Q + 1, -1)


def _transpose_out(out: Tensor, geom: ConvGeometry, B: int) -> Tensor:
    """(G·P, C_out/g, B) -> contiguous (B, C_out, *out_spatial) (a permuted view would break ``.view`` calls
    downstream, and elementwise ops would keep its strides)."""
    G = geom.groups
    out = out.view(G, geom.P, geom.out_channels // G, B).permute(3, 0, 2, 1)
    return out.reshape(B, geom.out_channels, *geom.out_spatial).contiguous()


def _bmm_shapes(geom: ConvGeometry, B: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    G = geom.groups
    k = geom.T * (geom.in_channels // G)
    return (G * geom.P, geom.out_channels // G, k), (G * geom.P, k, B)  # weight view, unfolded input


def _lc_forward_graph(x: Tensor, weight: Tensor, gather_index: Tensor, geom: ConvGeometry) -> Tensor:
    """The forward pass in plain differentiable ops (used for double backward, e.g. Hessian-vector products)."""
    wshape, cshape = _bmm_shapes(geom, x.shape[0])
    cols = _transpose_in(x, geom).index_select(1, gather_index).view(cshape)
    return _transpose_out(torch.bmm(weight.view(wshape), cols), geom, x.shape[0])


_workspaces = threading.local()


def _workspace(numel: int, like: Tensor) -> Tensor:
    """A reusable flat buffer for the unfolded input (CPU only).

    On CPU every fresh allocation above glibc's mmap threshold (32 MB) is page-faulted in again on every
    call, which costs as much as the gather itself; reusing one buffer per thread, device and dtype (grown
    to the largest layer seen) keeps that cost away. The buffer is only held inside one forward or one
    backward call, never between them, so several forwards before a backward are safe.
    """
    if like.device.type != "cpu":
        return torch.empty(numel, device=like.device, dtype=like.dtype)  # caching allocators do this already
    cache = _workspaces.__dict__.setdefault("buffers", {})
    key = like.dtype
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache.pop(key, None)  # free the old one first: peak memory stays one buffer
        buf = cache[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel]


def _scatter_rows(src: Tensor, index: Tensor, n_rows: int) -> Tensor:
    """``out[g, index[j]] += src[g, j]`` for rows: (G, N, R) -> (G, n_rows, R).

    ``index_add_`` adds one row slice per index; a slice above torch's grain size (32768 elements) becomes a
    parallel region of its own, and hundreds of those collapse when the cores are shared with other work
    (measured: 0.6 s instead of 3 ms). Column chunks below the grain size keep every add serial and cheap.
    """
    G, N, R = src.shape
    out = src.new_zeros(G, n_rows, R)
    if src.device.type != "cpu":
        return out.index_add_(1, index, src)
    step = max(1, 16384 // G)
    for c in range(0, R, step):  # a handful of column chunks, not positions
        out[:, :, c : c + step].index_add_(1, index, src[:, :, c : c + step])
    return out


def release_workspaces() -> None:
    """Free this thread's cached CPU workspaces (they are re-created on the next locally-connected call)."""
    _workspaces.__dict__.pop("buffers", None)


class _LocallyConnectedFn(torch.autograd.Function):
    """Gather + bmm forward; backward re-gathers into the workspace instead of saving the unfolded input,
    and writes the unfolded input gradient into that same buffer before scattering it back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, gather_index: Tensor, geom: ConvGeometry) -> Tensor:
        B = x.shape[0]
        wshape, cshape = _bmm_shapes(geom, B)
        xt = _transpose_in(x, geom)  # (G, Q+1, C_in/g·B)
        cols = _workspace(math.prod(cshape), xt).view(xt.shape[0], gather_index.numel(), xt.shape[2])
        torch.index_select(xt, 1, gather_index, out=cols)  # (G, P·T, C_in/g·B): whole-row copies
        out = torch.bmm(weight.view(wshape), cols.view(cshape))  # (G·P, C_out/g, B)
        ctx.save_for_backward(x, xt, weight, gather_index)  # xt: input-sized, spares a transpose in backward
        ctx.geom = geom
        return _transpose_out(out, geom, B)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, xt, weight, gather_index = ctx.saved_tensors
        geom: ConvGeometry = ctx.geom
        need_x, need_w = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain ops so this backward is differentiable
            inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
            y = _lc_forward_graph(x, weight, gather_index, geom)
            grads = iter(torch.autograd.grad(y, inputs, grad_out, create_graph=True))
            return (next(grads) if need_x else None), (next(grads) if need_w else None), None, None
        B, G = x.shape[0], geom.groups
        wshape, cshape = _bmm_shapes(geom, B)
        cog = geom.out_channels // G
        # contiguous, or bmm falls back to one small GEMM (one parallel region) per position
        go = grad_out.reshape(B, G, cog, geom.P).permute(1, 3, 2, 0).reshape(G * geom.P, cog, B).contiguous()
        ws = _workspace(math.prod(cshape), xt)
        grad_x = grad_w = None
        if need_w:
            cols = ws.view(G, gather_index.numel(), -1)
            torch.index_select(xt, 1, gather_index, out=cols)
            grad_w = torch.bmm(go, cols.view(cshape).transpose(1, 2)).view(weight.shape)
        if need_x:
            gcols = torch.bmm(weight.view(wshape).transpose(1, 2), go, out=ws.view(cshape))  # (G·P, T·C_in/g, B)
            gxt = _scatter_rows(gcols.view(G, gather_index.numel(), -1), gather_index, geom.Q + 1)
            gxt = gxt.view(G, geom.Q + 1, geom.in_channels // G, B)[:, : geom.Q]  # drop the padding row
            grad_x = gxt.permute(3, 0, 2, 1).reshape(x.shape).contiguous()
        return grad_x, grad_w, None, None


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
        out = _LocallyConnectedFn.apply(x, self.weight, self.gather_index, self.geometry)
        return out if self.bias is None else out + self.bias


class LocallyConnected1d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, L)`` inputs (see module docstring)."""

    _dim = 1


class LocallyConnected2d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, H, W)`` inputs (see module docstring)."""

    _dim = 2
