"""Locally-connected layers (eLCN): a conv whose filters are not shared across output positions.

Layout, chosen for speed (see benchmarks/bench_lc_layer.py, which compares it with the machine's GEMM
limit): per output position p the layer is one GEMM, ``out[p] = cols[p] · W[p]ᵀ`` with the batch in the
M dimension, ``(B, T·C_in/g) × (T·C_in/g, C_out/g)``. All positions (and groups) form one batched GEMM
over the unfolded input ``cols``: ``(groups·P, B, T·C_in/g)``. With the batch as the rows, each row of
``cols`` is made of whole channel vectors: the input is transposed once to small channels-last rows
``(B·(Q + 1)·groups, C_in/g)`` (position Q is a zero row, where padding taps read), and one
``index_select`` through the index map copies those rows straight into ``cols``. No strided transpose of
the unfolded tensor is ever made (that, not the arithmetic, is what makes the ``F.unfold(x).permute(...)``
formulation slow), and the batch × C_out × C_in × P × T product is never materialised.

Backward computes both GEMMs from one transposed output gradient ``go: (groups·P, B, C_out/g)``:
``dW[p] = go[p]ᵀ · cols[p]`` and ``dcols[p] = go[p] · W[p]``. The unfolded input is not kept for backward:
backward gathers it again into a reused per-thread CPU workspace (fresh 100 MB allocations are page-faulted
in on every call, which costs as much as the gather), then writes ``dcols`` into that same buffer. ``dcols``
goes back to the input by a *gather-sum*: every input row (batch, position q, group) is the sum of the
≤ T rows of ``dcols`` that read q, listed by the inverse of the index map (``scatter_index``, grouped by q)
and summed by ``embedding_bag(mode="sum")``, one fused gather + sum per row in a fixed order. It is
deterministic on every device, and on CPU faster than ``index_add_`` (measured: 6 ms against 14 ms on the
VanillaCNN layer 2 backward). On CUDA, ``index_add_`` (atomic adds, run-to-run non-deterministic) is used
unless ``torch.are_deterministic_algorithms_enabled()`` (the trainer's deterministic mode), which selects the
gather-sum there too. Peak memory is thus about weights (+ their gradient) + activations + one unfolded
input. Double backward (Hessian-vector products) goes through plain ops.

Under ``torch.autocast`` the two GEMMs of forward and backward run in the autocast dtype (like a conv's
would), the output is in that dtype, and the gradients come back in the dtypes of the input and the
parameters (float32 parameters keep float32 gradients).

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
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .base import RelaxedConv, SubspaceSqNorms, sq_norm
from .connectivity import ConvGeometry

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnectedNd", "release_workspaces", "BatchIndex",
           "batch_index"]


def _rows_in(x: Tensor, geom: ConvGeometry) -> Tensor:
    """(B, C_in, *in_spatial) -> (B·(Q+1)·G, C_in/g) channels-last rows; position Q is the zero row padding
    taps read. One small copy (differentiable, so the double-backward graph uses it too)."""
    B, G, Q = x.shape[0], geom.groups, geom.Q
    cig = geom.in_channels // G
    rows = x.new_empty(B, Q + 1, G, cig)
    rows[:, :Q] = x.reshape(B, G, cig, Q).permute(0, 3, 1, 2)
    rows[:, Q] = 0
    return rows.view(-1, cig)


class BatchIndex(NamedTuple):
    """The index map laid out for one batch size (built once per batch size and device, then cached).

    ``gather``: ``(G·P·B·T,)`` row of ``_rows_in`` read by (group g, position p, batch b, tap t), in that
    order, so that the gathered rows are ``cols`` ``(G·P, B, T·C_in/g)``. ``bag`` / ``bag_offsets``: the
    inverse, for backward's gather-sum: input row (b, g, q) is the sum of the rows ``bag[bag_offsets[i] :
    bag_offsets[i + 1]]`` of ``dcols`` (i = (b·G + g)·Q + q), the (g, p, b, t) whose tap reads q.
    int32 where the sizes allow (half the index traffic of int64).
    """

    gather: Tensor
    bag: Tensor
    bag_offsets: Tensor


def batch_index(gather_index: Tensor, scatter_index: Tensor, scatter_offsets: Tensor, geom: ConvGeometry,
                B: int) -> BatchIndex:
    """:class:`BatchIndex` from the layer's ``(P·T,)`` gather index and its inverse (see ``_inverse_index``)."""
    G, P, T, Q = geom.groups, geom.P, geom.T, geom.Q
    dev, n = gather_index.device, scatter_index.numel()
    ar = lambda k, step: torch.arange(k, device=dev).mul_(step)  # noqa: E731
    gather = (ar(B, Q + 1)[None, None, :, None] + gather_index.view(1, P, 1, T)).mul_(G)  # (1, P, B, T)
    gather = (gather + ar(G, 1)[:, None, None, None]).view(-1)  # (G, P, B, T)
    p, t = scatter_index.div(T, rounding_mode="floor"), scatter_index.remainder(T)
    base = p.mul_(B * T).add_(t)  # dcols row of (g=0, p, b=0, t), grouped by q
    bag = ((ar(B, T)[:, None, None] + ar(G, P * B * T)[None, :, None]) + base[None, None, :]).view(-1)  # (B, G, n)
    offsets = (ar(B * G, n)[:, None] + scatter_offsets[None, :]).view(-1)  # (B·G, Q)
    dtype = torch.int32 if G * P * B * T < 2**31 else torch.int64
    return BatchIndex(gather.to(dtype), bag.to(dtype), offsets.to(dtype))


def _out_layout(out: Tensor, geom: ConvGeometry, B: int) -> Tensor:
    """(G·P, B, C_out/g) -> contiguous (B, C_out, *out_spatial) (a permuted view would break ``.view`` calls
    downstream, and elementwise ops would keep its strides)."""
    G = geom.groups
    out = out.view(G, geom.P, B, geom.out_channels // G).permute(2, 0, 3, 1)  # (B, G, C_out/g, P)
    return out.contiguous().view(B, geom.out_channels, *geom.out_spatial)


def _bmm_shapes(geom: ConvGeometry, B: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    G = geom.groups
    k = geom.T * (geom.in_channels // G)
    return (G * geom.P, geom.out_channels // G, k), (G * geom.P, B, k)  # weight view, unfolded input


def _lc_forward_graph(x: Tensor, weight: Tensor, gather: Tensor, geom: ConvGeometry) -> Tensor:
    """The forward pass in plain differentiable ops (used for double backward, e.g. Hessian-vector products);
    ``gather``: ``BatchIndex.gather``."""
    B = x.shape[0]
    wshape, cshape = _bmm_shapes(geom, B)
    cols = _rows_in(x, geom).index_select(0, gather).view(cshape)
    return _out_layout(torch.bmm(cols, weight.reshape(wshape).mT), geom, B)


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


def release_workspaces() -> None:
    """Free this thread's cached CPU workspaces (they are re-created on the next locally-connected call)."""
    _workspaces.__dict__.pop("buffers", None)


def _use_gather_sum(device: torch.device) -> bool:
    """Whether backward sends ``dcols`` back to the input by the gather-sum (deterministic) rather than by
    ``index_add_``: always on CPU (there it is also the faster one), elsewhere in deterministic mode."""
    return device.type == "cpu" or torch.are_deterministic_algorithms_enabled()


def _gather_sum(dcols: Tensor, bag: Tensor, bag_offsets: Tensor, geom: ConvGeometry, B: int) -> Tensor:
    """Input-gradient rows from ``dcols`` rows ``(G·P·B·T, C_in/g)`` -> ``(B, G, Q, C_in/g)``: row (b, g, q)
    sums the rows (g, p, b, t) whose tap reads q (see :class:`BatchIndex`). Only gathers, each row summed in a
    fixed order: bitwise reproducible on every device."""
    out = nn.functional.embedding_bag(bag, dcols, bag_offsets, mode="sum")
    return out.view(B, geom.groups, geom.Q, -1)


def _index_add(dcols: Tensor, gather: Tensor, geom: ConvGeometry, B: int) -> Tensor:
    """The same as :func:`_gather_sum` by ``index_add_`` along the forward gather index (atomic adds on CUDA)."""
    G, Q = geom.groups, geom.Q
    rows = dcols.new_zeros(B * (Q + 1) * G, dcols.shape[1]).index_add_(0, gather, dcols)
    return rows.view(B, Q + 1, G, -1)[:, :Q].permute(0, 2, 1, 3)  # (B, G, Q, C_in/g)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


class _LocallyConnectedFn(torch.autograd.Function):
    """Gather + batched GEMM forward; backward re-gathers into the workspace instead of saving the unfolded
    input, and writes the unfolded input gradient into that same buffer before the gather-sum."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, gather: Tensor, bag: Tensor, bag_offsets: Tensor,
                geom: ConvGeometry) -> Tensor:
        ctx.amp = amp = _autocast_dtype(x.device)
        B = x.shape[0]
        wshape, cshape = _bmm_shapes(geom, B)
        with torch.autocast(x.device.type, enabled=False):  # explicit casts instead: backward does the same
            xc, wc = (x, weight) if amp is None else (x.to(amp), weight.to(amp))
            rows = _rows_in(xc, geom)  # (B·(Q+1)·G, C_in/g)
            cols = _workspace(math.prod(cshape), rows).view(-1, rows.shape[1])
            torch.index_select(rows, 0, gather, out=cols)
            out = torch.bmm(cols.view(cshape), wc.view(wshape).mT)  # (G·P, B, C_out/g)
        # rows: input-sized, spares a transpose in backward; x and weight as given (double backward needs them)
        ctx.save_for_backward(x, rows, weight, gather, bag, bag_offsets)
        ctx.geom = geom
        return _out_layout(out, geom, B)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, rows, weight, gather, bag, bag_offsets = ctx.saved_tensors
        geom: ConvGeometry = ctx.geom
        amp: torch.dtype | None = ctx.amp
        need_x, need_w = ctx.needs_input_grad[:2]
        none = (None,) * 4
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain ops so this backward is differentiable
            inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
            with torch.autocast(x.device.type, enabled=False):
                y = _lc_forward_graph(x if amp is None else x.to(amp), weight if amp is None else weight.to(amp),
                                      gather, geom)
                grads = iter(torch.autograd.grad(y, inputs, grad_out.to(y.dtype), create_graph=True))
            return (next(grads) if need_x else None), (next(grads) if need_w else None), *none
        B, G = x.shape[0], geom.groups
        wshape, cshape = _bmm_shapes(geom, B)
        with torch.autocast(x.device.type, enabled=False):
            # one transposed output gradient for both GEMMs; contiguous, or bmm falls back to one small GEMM
            # (one parallel region) per position
            go = grad_out.to(rows.dtype).reshape(B, G, geom.out_channels // G, geom.P).permute(1, 3, 0, 2)
            go = go.contiguous().view(G * geom.P, B, -1)  # (G·P, B, C_out/g)
            ws = _workspace(math.prod(cshape), rows).view(-1, rows.shape[1])
            grad_x = grad_w = None
            if need_w:
                torch.index_select(rows, 0, gather, out=ws)
                grad_w = torch.bmm(go.mT, ws.view(cshape))  # (G·P, C_out/g, T·C_in/g): weight's layout
                grad_w = grad_w.view(weight.shape).to(weight.dtype)
            if need_x:
                wc = weight if amp is None else weight.to(amp)
                dcols = torch.bmm(go, wc.view(wshape), out=ws.view(cshape)).view(-1, rows.shape[1])
                if _use_gather_sum(x.device):
                    gx = _gather_sum(dcols, bag, bag_offsets, geom, B)
                else:
                    gx = _index_add(dcols, gather, geom, B)
                grad_x = gx.transpose(2, 3).reshape(x.shape).to(x.dtype)  # (B, G, C_in/g, Q): x's layout
        return grad_x, grad_w, *none


def _inverse_index(index: Tensor, Q: int) -> tuple[Tensor, Tensor]:
    """The index map inverted: (p·T + t of every live (p, t), grouped by the input q it reads; (Q,) start of
    each q's group). Stable, so the gather-sum adds in a fixed order."""
    P, T = index.shape
    live = index >= 0
    pt = torch.arange(P * T, device=index.device).view(P, T)[live]
    q = index[live]
    order = torch.argsort(q, stable=True)
    counts = torch.bincount(q, minlength=Q)
    return pt[order].contiguous(), (counts.cumsum(0) - counts)


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
        # the inverse, for backward's gather-sum: which (p, t) read each input position
        scatter_index, scatter_offsets = _inverse_index(self.index, geometry.Q)
        self.register_buffer("scatter_index", scatter_index, persistent=False)
        self.register_buffer("scatter_offsets", scatter_offsets, persistent=False)
        self._batch_index: OrderedDict[tuple[int, torch.device], BatchIndex] = OrderedDict()
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

    def subspace_sq_norms(self) -> SubspaceSqNorms:
        """Same values as :meth:`RelaxedConv.subspace_sq_norms`: norms per (position, tap) in one pass, so the
        off-local (dead-tap) sum is a masked sum over the ``(P, T)`` live map; no mask tensor, one difference
        to the shared weights."""
        with torch.no_grad():
            w = self.weight.detach()
            s = torch.linalg.vector_norm(w, dim=(0, 2, 4)).double().square_()  # (P, T)
            offlocal, total = float(s[~self.live].sum()), float(s.sum())
            cw, cb = self.nearest_cnn()
            offsharing = sq_norm(self.embed_weight(cw).sub_(w).mul_(self._live5()))  # dead taps: off-local
        return self._with_bias(total, offlocal, offsharing, offlocal + offsharing, cb)

    def batch_index(self, batch_size: int) -> BatchIndex:
        """The index map laid out for ``batch_size`` on this layer's device, cached (a few batch sizes: the
        training, last and evaluation batches), so a step does no index arithmetic."""
        key = (batch_size, self.gather_index.device)
        idx = self._batch_index.get(key)
        if idx is None:
            idx = batch_index(self.gather_index, self.scatter_index, self.scatter_offsets, self.geometry, batch_size)
            self._batch_index[key] = idx
            while len(self._batch_index) > 4:
                self._batch_index.popitem(last=False)
        return idx

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        out = _LocallyConnectedFn.apply(x, self.weight, *self.batch_index(x.shape[0]), self.geometry)
        return out if self.bias is None else out + self.bias.to(out.dtype)  # autocast: the output's dtype, like a conv


class LocallyConnected1d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, L)`` inputs (see module docstring)."""

    _dim = 1


class LocallyConnected2d(LocallyConnectedNd):
    """Locally-connected layer on ``(B, C, H, W)`` inputs (see module docstring)."""

    _dim = 2
