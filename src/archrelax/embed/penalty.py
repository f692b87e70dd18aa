"""Soft release: the squared distance of a relaxed model's parameters to a constrained subspace.

``constraint_penalty(model, toward)`` is Σ over relaxed layers of ‖θ − Pθ‖², θ = the layer's ``weight`` and
``bias``, P the orthogonal projection (in the layer's own parameter space) onto

- ``"local"``: locally-connected weights: entries outside ``local_mask()`` are zeroed, so the penalty is
  ‖θ_off-local‖² (biases are local);
- ``"shared"``: translation-invariant weights: for an eFCN the global-convolution subspace, i.e. every
  entry replaced by the mean of the entries with the same (output channel, input channel, relative offset
  ``q − p·s``) — the orbits of the ``"full"`` wide conv's index map, over every channel pair (groups are a
  matter of locality); biases by their mean per channel. For an eLCN or a tiled conv, shared ∩ local is the
  CNN, so ``"shared"`` is ``"cnn"`` there; a wide conv is shared already (0);
- ``"cnn"``: the CNN subspace (local and shared), the image of the layer's φ: ``φ((φᵀφ)⁺φᵀθ)``. With zero
  padding it is the intersection of the two; a reflect / replicate / circular-padded conv folds its border
  taps into other entries, so its eFCN is local but not translation invariant ("shared" is not 0 there).

Because P is an orthogonal projection the gradient is 2(θ − Pθ). Nothing dense is built: everything goes
through the index map (eFCN, cnn/local: a (P, Q) mask of the connections and a gather of the P·T local
entries; eFCN, shared: window-adds of whole weight rows sum every orbit in one streaming pass over the weight,
a second pass applies the means).
The eFCN paths stream the weight in large chunks and run as custom autograd Functions whose backward writes
2·g·(θ − Pθ) in one pass; the small layers use plain differentiable ops.

``add_penalty_grad_(model, toward, lam)`` is the fused form for trainers: it adds λ·2(θ − Pθ) to each
``.grad`` in place, after ``loss.backward()``, in one pass over θ and its gradient, and returns the penalty
only when asked. Same gradient, a fraction of the cost (benchmarks/bench_lattice.py): the autograd form
reads θ once more for the value, writes a weight-sized gradient, and autograd then adds it to the loss's
gradient out of place (the loss's eFCN weight gradient arrives as a transposed view, which autograd does not
accumulate into in place), i.e. one more weight-sized allocation per step.

With SGD, λ·lr must stay below 1 (the penalty's curvature is 2λ on the released directions: one step with
lr·2λ = 1 projects onto the subspace exactly, beyond 2 it diverges); a "very large" λ means lr·λ close to 1/2.

Exactly 0 right after an embedding: every mean is taken as ``ref + mean(entry − ref)`` with ``ref`` one
entry of the same tie / orbit, so when all its entries are equal the differences are 0 and the mean is the
entry itself, in any dtype.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from .base import RelaxedConv
from .dense import DenseConv
from .relax import relaxed_layers
from .wide import WideConvNd

__all__ = ["constraint_penalty", "layer_penalty", "add_penalty_grad_", "TOWARD"]

TOWARD = ("cnn", "local", "shared")
_CHUNK = 1 << 23  # elements of the weight streamed at once: few, large ops (many small parallel regions collapse on
# shared cores), and a 32 MB chunk buffer


def constraint_penalty(model: nn.Module, toward: str = "cnn") -> Tensor:
    """Σ over the relaxed layers of ``model`` of ‖θ − Pθ‖² (0-dim, differentiable; see module docstring).

    ``toward``: ``"cnn"``, ``"local"`` or ``"shared"``. Non-relaxed layers are in every subspace (they add 0).
    A model without relaxed layers gives a zero tensor.
    """
    _check_toward(toward)
    total: Tensor | None = None
    for layer in relaxed_layers(model).values():
        term = layer_penalty(layer, toward)
        total = term if total is None else total + term
    if total is None:
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        return torch.zeros((), device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    return total


def _check_toward(toward: str) -> None:
    if toward not in TOWARD:
        raise ValueError(f"constraint penalty: toward={toward!r} is not valid; use one of {TOWARD}")


def layer_penalty(layer: RelaxedConv, toward: str = "cnn") -> Tensor:
    """‖θ − Pθ‖² of one relaxed layer (weight and bias), 0-dim, in the weight's dtype."""
    _check_toward(toward)
    if isinstance(layer, DenseConv):
        if toward == "shared":
            w = _DenseSharedFn.apply(layer.weight, layer)
            return w + _bias_shared(layer)
        if toward == "local" or layer.geometry.padding_mode == "zeros":
            return _DenseCnnLocalFn.apply(layer.weight, layer, toward) + (
                _bias_shared(layer) if toward == "cnn" else 0.0)
        return _generic_cnn(layer)  # reflect / replicate / circular: the Gram solve of project_weight
    if isinstance(layer, WideConvNd):
        if toward == "shared":  # a wide conv is translation invariant already
            return 0.0 * layer.weight.view(-1)[0]
        return _masked_sq(layer.weight, layer.local_mask())  # cnn = local: the crop keeps the original taps
    # eLCN, tiled conv (and any other local layer): shared ∩ local = the CNN
    if toward == "local":
        return _masked_sq(layer.weight, layer.local_mask())
    return _generic_cnn(layer)


# ---- small layers: plain differentiable ops ----------------------------------------------------------------


def _sumsq(t: Tensor) -> Tensor:
    return t.square().sum(dtype=torch.float64).to(t.dtype)


def _masked_sq(weight: Tensor, keep: Tensor) -> Tensor:
    """‖weight outside ``keep``‖²."""
    return _sumsq(weight.masked_fill(keep, 0))


def _generic_cnn(layer: RelaxedConv) -> Tensor:
    """‖θ − φ(project(θ))‖² through the layer's own φ and projection (float64 projection: exact on the image)."""
    w = layer.weight
    r = w - layer.embed_weight(layer.project_weight(w.double())).to(w.dtype)
    out = _sumsq(r)
    if layer.bias is not None:
        b = layer.bias
        out = out + _sumsq(b - layer.embed_bias(layer.project_bias(b.double())).to(b.dtype))
    return out


def _bias_shared(layer: RelaxedConv) -> Tensor | float:
    """‖b − mean over positions‖² of a per-position bias (the shared / CNN bias is one value per channel)."""
    if layer.bias is None:
        return 0.0
    b = layer.bias
    return _sumsq(b - layer.embed_bias(layer.project_bias(b.double())).to(b.dtype))


# ---- eFCN: cnn and local -----------------------------------------------------------------------------------

_masks: "weakref.WeakKeyDictionary[DenseConv, dict]" = weakref.WeakKeyDictionary()


def _off_mask(layer: DenseConv, like: Tensor) -> Tensor:
    """``(P, 1, Q)`` 1.0 where position p does NOT read input q (in-group block), cached per layer and device."""
    cache = _masks.setdefault(layer, {})
    key = (like.device, like.dtype)
    if key not in cache:
        reads = layer._tap_layers()[0] < layer.geometry.T  # (P, Q): p reads q through some live tap
        cache[key] = (~reads).to(device=like.device, dtype=like.dtype)[:, None, :]
    return cache[key]


def _row_chunks(n_rows: int, row_numel: int, chunk: int = _CHUNK) -> list[tuple[int, int]]:
    step = max(1, chunk // max(1, row_numel))
    return [(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]


def _off_local_pass(weight: Tensor, layer: DenseConv, *, value: bool = True, out: Tensor | None = None,
                    scale: float = 1.0, accumulate: bool = False) -> Tensor | None:
    """One streaming pass over the off-local part of an eFCN weight.

    ``value``: return Σ of the squared off-local entries (float64). ``out``: also write ``scale · θ ⊙ off-local``
    into it (``accumulate``: add instead; the local entries of ``out`` are then left as they are, else 0).
    The weight, viewed ``(G, C_out/g, P, C_in, Q)``, goes in chunks of output channels: in-group columns are
    multiplied by the ``(P, 1, Q)`` "not read" mask (into one reused chunk buffer: a fresh allocation per chunk
    costs more than the arithmetic), the other groups' columns are all off-local.
    """
    g = layer.geometry
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    w5 = weight.view(G, cog, g.P, g.in_channels, g.Q)
    o5 = None if out is None else out.view(w5.shape)
    off = _off_mask(layer, weight)
    # small chunks when a value is wanted (the masked chunk is re-read from cache by the dot), large ones else
    chunks = _row_chunks(cog, g.P * g.in_channels * g.Q, _CHUNK // 8 if value else _CHUNK)
    buf = weight.new_empty((chunks[0][1] - chunks[0][0]) * g.P * cig * g.Q) if value else None
    scaled = off * scale
    total = torch.zeros((), dtype=torch.float64, device=weight.device)
    for gi in range(G):
        lo, hi = gi * cig, (gi + 1) * cig
        others = [sl for sl in (slice(0, lo), slice(hi, g.in_channels)) if sl.stop > sl.start]
        for a, b in chunks:
            blk = w5[gi, a:b]  # (rows, P, C_in, Q)
            if value:
                inside = torch.mul(blk[:, :, lo:hi], off, out=buf[: (b - a) * g.P * cig * g.Q].view(b - a, g.P, cig, g.Q))
                total += torch.dot(inside.view(-1), inside.view(-1)).double()  # what the conv does not read
                for sl in others:  # other groups' channels: all off-local
                    total += torch.linalg.vector_norm(blk[:, :, sl]).double() ** 2
            if o5 is not None:
                ob = o5[gi, a:b]
                if accumulate:
                    ob[:, :, lo:hi].addcmul_(blk[:, :, lo:hi], scaled)
                    for sl in others:
                        ob[:, :, sl].add_(blk[:, :, sl], alpha=scale)
                else:
                    torch.mul(blk[:, :, lo:hi], scaled, out=ob[:, :, lo:hi])
                    for sl in others:
                        torch.mul(blk[:, :, sl], scale, out=ob[:, :, sl])
    return total if value else None


def _local_entries(layer: DenseConv, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The local (in-group, live) entries of the weight, from the index map: their flat indices
    ``(C_out·L·C_in/g,)`` ordered ``(C_out, L, C_in/g)`` over the L live (position, tap) pairs, each pair's tap
    ``(L,)``, the first pair of each tap ``(T,)`` (its reference entry) and the tie counts ``(T,)``. Cached per
    layer (int32 indices where they fit: a flat ``index_select`` / ``index_add_`` is twice as fast as the
    equivalent advanced indexing)."""
    cache = _masks.setdefault(layer, {})
    key = ("local", device)
    if key not in cache:
        g = layer.geometry
        idx = layer.index.to(device)
        p, t = (idx >= 0).nonzero(as_tuple=True)  # live (position, tap) pairs
        cog, cig = g.out_channels // g.groups, g.in_channels // g.groups
        o = torch.arange(g.out_channels, device=device)
        c = (o // cog * cig)[:, None] + torch.arange(cig, device=device)  # (C_out, C_in/g): o's group's inputs
        flat = ((o[:, None, None] * g.P + p[None, :, None]) * g.in_channels + c[:, None, :]) * g.Q + idx[p, t][None, :, None]
        flat = flat.reshape(-1)
        if flat.numel() == 0 or int(flat.max()) < 2**31 - 1:
            flat = flat.to(torch.int32)
        first = torch.full((g.T,), max(t.numel() - 1, 0), dtype=torch.long, device=device)
        first = first.scatter_reduce_(0, t, torch.arange(t.numel(), device=device), "amin")  # dead taps: unused
        counts = torch.bincount(t, minlength=g.T).clamp(min=1)
        cache[key] = (flat, t, first, counts)
    return cache[key]


def _local_residual(weight: Tensor, layer: DenseConv) -> Tensor:
    """``(C_out, L, C_in/g)``: each local entry minus the mean of its tied entries (same channels and tap).

    The mean is taken as ``ref + mean(entry − ref)`` with ``ref`` one entry of the tie (its first position):
    plain float32, yet exactly the entry when all tied entries are equal (right after an embedding)."""
    g = layer.geometry
    flat, t, first, counts = _local_entries(layer, weight.device)
    vals = weight.reshape(-1).index_select(0, flat).view(g.out_channels, t.numel(), g.in_channels // g.groups)
    d = vals - vals.index_select(1, first).index_select(1, t)  # entry − its tie's reference entry
    sums = torch.zeros(vals.shape[0], g.T, vals.shape[2], dtype=vals.dtype, device=vals.device).index_add_(1, t, d)
    return d - (sums / counts[:, None].to(vals.dtype)).index_select(1, t)


def _add_local_residual(out: Tensor, layer: DenseConv, resid: Tensor, scale: float) -> None:
    """``out[local entries] += scale · resid``."""
    flat = _local_entries(layer, out.device)[0]
    out.view(-1).index_add_(0, flat, resid.reshape(-1), alpha=scale)


class _DenseCnnLocalFn(torch.autograd.Function):
    """‖θ − Pθ‖² of an eFCN weight toward "cnn" (zero padding) or "local"; backward writes 2g(θ − Pθ) once."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: DenseConv, toward: str) -> Tensor:
        total = _off_local_pass(weight, layer)
        resid = None
        if toward == "cnn":
            resid = _local_residual(weight, layer)
            total = total + torch.dot(resid.reshape(-1), resid.reshape(-1)).double()
        ctx.layer, ctx.toward = layer, toward
        ctx.save_for_backward(weight, resid)
        return total.to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        weight, resid = ctx.saved_tensors
        layer: DenseConv = ctx.layer
        if torch.is_grad_enabled():  # create_graph=True: differentiate plain ops so this backward is differentiable
            with torch.enable_grad():
                val = _plain_dense(weight, layer, ctx.toward)
                return torch.autograd.grad(val, weight, grad, create_graph=True)[0], None, None
        scale = 2.0 * float(grad)
        out = torch.empty_like(weight)
        _off_local_pass(weight, layer, value=False, out=out, scale=scale)  # local entries come out 0 ...
        if resid is not None:  # ... and get 2g(θ − mean) for "cnn"
            _add_local_residual(out, layer, resid, scale)
        return out, None, None


def _plain_dense(weight: Tensor, layer: DenseConv, toward: str) -> Tensor:
    """The same penalty in plain differentiable ops (for double backward)."""
    if toward == "local":
        return _masked_sq(weight, layer.local_mask())
    if toward == "shared":
        return _shared_plain(weight, layer)
    r = weight - layer.embed_weight(layer.project_weight(weight.double())).to(weight.dtype)
    return _sumsq(r)


# ---- eFCN: shared (global convolution) ---------------------------------------------------------------------
#
# Orbit of an entry (o, p, c, q): the entries with the same (o, c) and the same relative offset q − p·s per dim.
# Per dim, with positions reversed (a(p) = (o − 1 − p)·s), entry q of position p has the orbit label
# v = q + a(p) in [0, n + (o − 1)·s): the labels of one position are a window of the label axis, so orbit sums
# are window-adds and spreading the means back is the same windows read the other way.
#
# Layout, chosen from measurements (benchmarks/bench_lattice.py): the weight is read in its own order, one
# output row ph at a time, into a buffer laid out like that row, (C_out, o_w, C_in, V_h, n_w): row ph's window
# on it, rows a_h(ph) .. a_h(ph) + n_h, is contiguous over (n_h, n_w) like the weight, so each add is one long
# vectorised op; only then are the o_w columns folded onto the label axis V_w, on a buffer ~o_h/2 times smaller
# than the weight. Output channels go in chunks that keep the buffer in the L2 cache, so the weight is read from
# memory once per pass. (Adds per output column or per position instead run over n_w-long pieces: 2-3x slower.)

_SHARED_CHUNK = 1 << 20  # elements of the row buffer per chunk of output channels (4 MiB: L3-resident; measured
# fastest from 2^19 to 2^20, smaller chunks pay more per-op overhead than they gain in cache hits)


def _shared_dims(layer: DenseConv) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((o_h, n_h, s_h), (o_w, n_w, s_w)); a 1d conv is a 2d one with a single row."""
    g = layer.geometry
    dims = list(zip(g.out_spatial, g.in_spatial, g.stride))
    return ((1, 1, 1), dims[0]) if g.dim == 1 else (dims[0], dims[1])


def _w6(weight: Tensor, layer: DenseConv) -> Tensor:
    """The eFCN weight ``(C_out·P, C_in·Q)`` as ``(C_out, o_h, o_w, C_in, n_h, n_w)`` (a view)."""
    g = layer.geometry
    (oh, nh, _), (ow, nw, _) = _shared_dims(layer)
    return weight.view(g.out_channels, oh, ow, g.in_channels, nh, nw)


def _shared_chunks(layer: DenseConv) -> list[tuple[int, int]]:
    """Chunks of output channels whose row buffer ``(c, o_w, C_in, V_h, n_w)`` fits :data:`_SHARED_CHUNK`."""
    g = layer.geometry
    (oh, nh, sh), (ow, nw, _) = _shared_dims(layer)
    return _row_chunks(g.out_channels, ow * g.in_channels * (nh + (oh - 1) * sh) * nw, _SHARED_CHUNK)


def _row_rows(layer: DenseConv) -> list[tuple[int, slice]]:
    """(ph, its rows a_h(ph) .. a_h(ph) + n_h on the label axis V_h) of every output row."""
    (oh, nh, sh), _ = _shared_dims(layer)
    return [(ph, slice((oh - 1 - ph) * sh, (oh - 1 - ph) * sh + nh)) for ph in range(oh)]


def _spread_cols(x: Tensor, layer: DenseConv) -> Tensor:
    """Per-label ``(c, C_in, V_h, V_w)`` -> row buffer ``(c, o_w, C_in, V_h, n_w)``: column pw reads labels
    a_w(pw) .. a_w(pw) + n_w."""
    _, (ow, nw, sw) = _shared_dims(layer)
    return torch.stack([x[..., (ow - 1 - pw) * sw : (ow - 1 - pw) * sw + nw] for pw in range(ow)], 1)


def _orbit_means(weight: Tensor, layer: DenseConv) -> Tensor:
    """``(C_out, C_in, V_h, V_w)``: the mean of every orbit (label), in the weight's dtype.

    One streaming pass: the orbit sums (adds of whole weight rows, then of buffer columns) and, on the way, a
    reference member of every orbit (the first one met: the new rows / columns of each window, copied), with
    no gather from the weight. Exact on the subspace: where all members of an orbit are equal, the computed
    mean S/n carries rounding error of at most (o_h + o_w)·ε/2 relative (two-level summation), and it is
    snapped to the member itself when within (o_h + o_w + 2)·ε of it. Elsewhere that moves a mean by less than
    its own rounding bound. The snap adds a constant (detached), so the gradient is the plain mean's (the
    double-backward path differentiates these same plain ops)."""
    g = layer.geometry
    (oh, nh, sh), (ow, nw, sw) = _shared_dims(layer)
    Co, Ci = g.out_channels, g.in_channels
    Vh, Vw = nh + (oh - 1) * sh, nw + (ow - 1) * sw
    w6 = _w6(weight, layer)
    dev = weight.device
    sums = torch.zeros(Co, Ci, Vh, Vw, dtype=weight.dtype, device=dev)
    ref = torch.zeros_like(sums)  # labels no window covers (dead) stay 0, as do their sums
    for a, b in _shared_chunks(layer):
        rows = torch.zeros(b - a, ow, Ci, Vh, nw, dtype=weight.dtype, device=dev)  # (c, o_w, C_in, V_h, n_w)
        ref_rows = torch.zeros_like(rows)
        met = Vh  # label rows >= met have been met (windows start lower and lower)
        for p, r in _row_rows(layer):  # whole rows of the weight per add
            w = w6[a:b, p]  # (c, o_w, C_in, n_h, n_w)
            rows[..., r, :].add_(w)
            new = min(met, r.stop) - r.start
            if new > 0:
                ref_rows[..., r.start : r.start + new, :].copy_(w[..., :new, :])
            met = min(met, r.start)
        met = Vw
        for p in range(ow):  # then over output columns, on the small buffer (in-place on views: no copy back)
            c0 = (ow - 1 - p) * sw
            sums[a:b, :, :, c0 : c0 + nw].add_(rows[:, p])
            new = min(met, c0 + nw) - c0
            if new > 0:
                ref[a:b, :, :, c0 : c0 + new].copy_(ref_rows[:, p, ..., :new])
            met = min(met, c0)
    n_h = torch.zeros(Vh, dtype=torch.long, device=dev)
    n_w = torch.zeros(Vw, dtype=torch.long, device=dev)
    for p in range(oh):
        n_h[(oh - 1 - p) * sh : (oh - 1 - p) * sh + nh] += 1
    for p in range(ow):
        n_w[(ow - 1 - p) * sw : (ow - 1 - p) * sw + nw] += 1
    means = sums / (n_h[:, None] * n_w).clamp(min=1).to(weight.dtype)
    with torch.no_grad():
        d = ref - means  # exact when the two are this close (Sterbenz), so means + d is ref exactly
        tol = (oh + ow + 2) * torch.finfo(weight.dtype).eps
        d = torch.where(d.abs() <= tol * ref.abs(), d, torch.zeros((), dtype=d.dtype, device=dev))
    return means + d


def _shared_pass(weight: Tensor, layer: DenseConv, means: Tensor, *, value: bool = True, out: Tensor | None = None,
                 scale: float = 1.0, accumulate: bool = False) -> Tensor | None:
    """One pass over an eFCN weight, one output row at a time: Σ (θ − mean of its orbit)² (float64) if
    ``value``; ``out`` = (or += with ``accumulate``) ``scale · (θ − means)`` if given. θ − mean goes through a
    reused row-sized buffer (one chunk of channels: cache-resident), so the weight and ``out`` are each read
    (and ``out`` written) once."""
    w6 = _w6(weight, layer)
    o6 = None if out is None else _w6(out, layer)
    total = torch.zeros((), dtype=torch.float64, device=weight.device)
    for a, b in _shared_chunks(layer):
        m_cols = _spread_cols(means[a:b], layer)  # (c, o_w, C_in, V_h, n_w)
        buf = None
        for p, r in _row_rows(layer):
            w = w6[a:b, p]  # (c, o_w, C_in, n_h, n_w)
            buf = torch.sub(w, m_cols[..., r, :], out=torch.empty_like(w) if buf is None else buf)
            if value:
                total += torch.dot(buf.view(-1), buf.view(-1)).double()
            if o6 is not None:
                if accumulate:
                    o6[a:b, p].add_(buf, alpha=scale)
                else:
                    torch.mul(buf, scale, out=o6[a:b, p])
    return total if value else None


class _DenseSharedFn(torch.autograd.Function):
    """‖θ − P_shared θ‖² of an eFCN weight through window-adds (see above); backward writes 2g(θ − Pθ) once."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: DenseConv) -> Tensor:
        means = _orbit_means(weight, layer)
        total = _shared_pass(weight, layer, means)
        ctx.layer = layer
        ctx.save_for_backward(weight, means)
        return total.to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        weight, means = ctx.saved_tensors
        layer: DenseConv = ctx.layer
        if torch.is_grad_enabled():
            with torch.enable_grad():
                val = _shared_plain(weight, layer)
                return torch.autograd.grad(val, weight, grad, create_graph=True)[0], None
        out = torch.empty_like(weight)
        _shared_pass(weight, layer, means, value=False, out=out, scale=2.0 * float(grad))
        return out, None


def _shared_plain(weight: Tensor, layer: DenseConv) -> Tensor:
    """The shared penalty in plain differentiable ops (for double backward)."""
    means = _orbit_means(weight, layer)
    w6 = _w6(weight, layer)
    total = None
    for a, b in _shared_chunks(layer):
        m_cols = _spread_cols(means[a:b], layer)
        for p, r in _row_rows(layer):
            term = _sumsq(w6[a:b, p] - m_cols[..., r, :])
            total = term if total is None else total + term
    return total


# ---- the fused form for trainers -----------------------------------------------------------------------------


def _fused_dense(w: Tensor, layer: DenseConv, toward: str, scale: float, value: bool) -> float:
    """``w.grad += scale · (θ − Pθ)`` for an eFCN weight; the penalty of the weight if ``value`` (else 0)."""
    if w.grad is None:
        w.grad = torch.zeros_like(w)
    if toward == "shared":
        v = _shared_pass(w, layer, _orbit_means(w, layer), value=value, out=w.grad, scale=scale, accumulate=True)
        return float(v) if value else 0.0
    v = _off_local_pass(w, layer, value=value, out=w.grad, scale=scale, accumulate=True)
    if toward == "cnn":
        resid = _local_residual(w, layer)
        _add_local_residual(w.grad, layer, resid, scale)
        if value:
            v = v + torch.dot(resid.reshape(-1), resid.reshape(-1)).double()
    return float(v) if value else 0.0


@torch.no_grad()
def add_penalty_grad_(model: nn.Module, toward: str = "cnn", lam: float = 1.0, *,
                      return_value: bool = False) -> float | None:
    """Add ``lam · ∇‖θ − Pθ‖² = lam · 2(θ − Pθ)`` to the ``.grad`` of every relaxed layer's parameters, in place.

    The same gradient as ``(lam * constraint_penalty(model, toward)).backward()``, for a trainer to call after
    ``loss.backward()``: eFCN weights get it in one pass over θ and their gradient (a missing ``.grad`` is
    created), the other (small) parameters through autograd of their own terms. Parameters that do not
    require grad are skipped. Returns the penalty (a float, θ before the update) when ``return_value``, else
    None (the value costs one more read of the eFCN weights).
    """
    _check_toward(toward)
    total, scale = 0.0, 2.0 * float(lam)
    for layer in relaxed_layers(model).values():
        w = layer.weight
        fused = isinstance(layer, DenseConv) and w.requires_grad and (
            toward != "cnn" or layer.geometry.padding_mode == "zeros")
        if fused:
            total += _fused_dense(w, layer, toward, scale, return_value)
        rest = [p for p in ((layer.bias,) if fused else (w, layer.bias)) if p is not None and p.requires_grad]
        with torch.enable_grad():  # the small terms: the bias of a fused eFCN, every parameter of the others
            term = (_bias_shared(layer) if toward != "local" else None) if fused else layer_penalty(layer, toward)
        if not isinstance(term, Tensor):
            continue
        if return_value:
            total += float(term)
        if rest and term.requires_grad:
            for p, gp in zip(rest, torch.autograd.grad(term, rest, allow_unused=True)):
                if gp is not None:
                    if p.grad is None:
                        p.grad = gp * lam
                    else:
                        p.grad.add_(gp, alpha=lam)
    return total if return_value else None
