"""The eFCN's parts of θ − Pθ, in streaming passes over its weight: what :class:`~archrelax.embed.DenseConv`'s
penalty (``penalty``, ``add_penalty_grad_``) and its subspace norms (``subspace_sq_norms``) are computed with.

- **Off-local**: the entries outside the conv's connectivity. Their squared sum comes from one pass that sums
  the squares over output channels into ``(g, P, C_in, Q)`` (so it is a masked sum over the ``(P, Q)`` read
  map, plus the cross-group blocks), with the total on the way (:func:`square_sums`); the residual itself (the
  gradient) is written by :func:`off_local_pass`, in chunks of output channels through a ``(P, 1, Q)`` "not
  read" mask.
- **Off-sharing** (zero padding): each local entry minus the mean of its tie (same channels and tap), on the
  gathered local entries only, ``(C_out, L, C_in/g)`` over the L live (position, tap) pairs
  (:func:`local_residual`), spread back by one ``index_add_``. With other padding modes taps of one position
  may read the same input and the means become a Gram solve: DenseConv uses the interface's default there.
- **Unshared** (the ``"shared"`` penalty): every entry minus the mean of its orbit, the entries with the same
  (output channel, input channel, relative offset ``q − p·s``), through window-adds of whole weight rows
  (:func:`orbit_means`, :func:`shared_pass`).

Exactly 0 on the subspace: every mean is taken as ``ref + mean(entry − ref)`` with ``ref`` one entry of the
same tie, or snapped to an orbit member within its rounding bound, so when all entries are equal the
difference is exactly 0, in any dtype. The derived index tensors are cached per layer and device (they cost
about as much memory as the local entries: built only when the penalty or the norms first need them).
The autograd Functions' backward writes 2·g·(θ − Pθ) in one pass; under ``create_graph`` they differentiate
the same values written in plain ops.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .base import sq_sum

if TYPE_CHECKING:
    from .dense import DenseConv

__all__ = ["square_sums", "off_local_pass", "local_residual", "add_local_residual", "orbit_means", "shared_pass",
           "cnn_local_value", "fused_grad_", "CnnLocalFn", "SharedFn"]

_CHUNK = 1 << 23  # elements of the weight streamed at once: few, large ops (many small parallel regions collapse on
# shared cores), and a 32 MB chunk buffer
_cache: "weakref.WeakKeyDictionary[DenseConv, dict]" = weakref.WeakKeyDictionary()  # per layer: index tensors


def _cached(layer: "DenseConv", key: Any, make: Any) -> Any:
    store = _cache.setdefault(layer, {})
    if key not in store:
        store[key] = make()
    return store[key]


def _row_chunks(n_rows: int, row_numel: int, chunk: int = _CHUNK) -> list[tuple[int, int]]:
    step = max(1, chunk // max(1, row_numel))
    return [(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]


# ---- off-local --------------------------------------------------------------------------------------------------

def square_sums(layer: "DenseConv", weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(‖W‖², ‖W_off-local‖²)`` of an eFCN weight ``(C_out·P, C_in·Q)``, float64 0-dim tensors, in one pass:
    squares summed over the output channels of each group, float32 partial sums, float64 beyond. The off-local
    sum is taken over the off-local entries only (not total − local), so it is exactly 0 when they are."""
    g = layer.geometry
    G, cog, cig, P, Q = g.groups, g.out_channels // g.groups, g.in_channels // g.groups, g.P, g.Q
    with torch.no_grad():
        w = weight.detach()
        # squares summed over the output channels of each group, (G, P, C_in, Q): one streaming pass over the
        # matrix, one output channel at a time (torch's norms reduce outer dims without vectorising)
        v = w.view(G, cog, P, g.in_channels, Q)
        acc = w.new_zeros(G, P, g.in_channels, Q)
        for gi in range(G):
            for o in range(cog):
                acc[gi].addcmul_(v[gi, o], v[gi, o])
        s = acc.view(G, P, G, cig, Q).sum(3, dtype=torch.float64)  # (G, P, G', Q) per channel block
        reads = layer.read_map()  # (P, Q): p reads q through some tap
        same = s.diagonal(dim1=0, dim2=2)  # (P, Q, G): in-group blocks
        blocks = s.sum((1, 3))  # (G, G)
        offlocal = same[~reads].sum() + blocks[~torch.eye(G, dtype=torch.bool, device=s.device)].sum()
        return blocks.sum(), offlocal


def _off_mask(layer: "DenseConv", like: Tensor) -> Tensor:
    """``(P, 1, Q)`` 1.0 where position p does NOT read input q (in-group block)."""
    return _cached(layer, ("off", like.device, like.dtype),
                   lambda: (~layer.read_map()).to(device=like.device, dtype=like.dtype)[:, None, :])


def off_local_pass(weight: Tensor, layer: "DenseConv", out: Tensor, *, scale: float = 1.0,
                   accumulate: bool = False) -> None:
    """``out = scale · θ ⊙ off-local`` (``accumulate``: ``+=``, leaving the local entries of ``out`` as they
    are; else they are 0), in one streaming pass. The weight, viewed ``(G, C_out/g, P, C_in, Q)``, goes in
    chunks of output channels: in-group columns are multiplied by the ``(P, 1, Q)`` "not read" mask, the other
    groups' columns are all off-local."""
    g = layer.geometry
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    w5 = weight.view(G, cog, g.P, g.in_channels, g.Q)
    o5 = out.view(w5.shape)
    scaled = _off_mask(layer, weight) * scale
    for gi in range(G):
        lo, hi = gi * cig, (gi + 1) * cig
        others = [sl for sl in (slice(0, lo), slice(hi, g.in_channels)) if sl.stop > sl.start]
        for a, b in _row_chunks(cog, g.P * g.in_channels * g.Q):
            blk, ob = w5[gi, a:b], o5[gi, a:b]  # (rows, P, C_in, Q)
            if accumulate:
                ob[:, :, lo:hi].addcmul_(blk[:, :, lo:hi], scaled)
                for sl in others:
                    ob[:, :, sl].add_(blk[:, :, sl], alpha=scale)
            else:
                torch.mul(blk[:, :, lo:hi], scaled, out=ob[:, :, lo:hi])
                for sl in others:
                    torch.mul(blk[:, :, sl], scale, out=ob[:, :, sl])


# ---- off-sharing (zero padding) ---------------------------------------------------------------------------------

def _local_entries(layer: "DenseConv", device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The local (in-group, live) entries of the weight, from the index map: their flat indices
    ``(C_out·L·C_in/g,)`` ordered ``(C_out, L, C_in/g)`` over the L live (position, tap) pairs, each pair's tap
    ``(L,)``, the first pair of each tap ``(T,)`` (its reference entry) and the tie counts ``(T,)`` (int32
    indices where they fit: a flat ``index_select`` / ``index_add_`` is twice as fast as the equivalent advanced
    indexing)."""
    def make() -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
        return flat, t, first, counts

    return _cached(layer, ("local", device), make)


def local_residual(weight: Tensor, layer: "DenseConv") -> Tensor:
    """``(C_out, L, C_in/g)``: each local entry minus the mean of its tied entries (same channels and tap), in
    differentiable ops. The mean is taken as ``ref + mean(entry − ref)`` with ``ref`` one entry of the tie (its
    first position): plain float32, yet exactly the entry when all tied entries are equal (right after an
    embedding)."""
    g = layer.geometry
    flat, t, first, counts = _local_entries(layer, weight.device)
    vals = weight.reshape(-1).index_select(0, flat).view(g.out_channels, t.numel(), g.in_channels // g.groups)
    if t.numel() == 0:  # no position reads any input (every tap reads padding): no local entry
        return vals
    d = vals - vals.index_select(1, first).index_select(1, t)  # entry − its tie's reference entry
    sums = torch.zeros(vals.shape[0], g.T, vals.shape[2], dtype=vals.dtype, device=vals.device).index_add_(1, t, d)
    return d - (sums / counts[:, None].to(vals.dtype)).index_select(1, t)


def add_local_residual(out: Tensor, layer: "DenseConv", resid: Tensor, scale: float) -> None:
    """``out[local entries] += scale · resid``."""
    flat = _local_entries(layer, out.device)[0]
    out.view(-1).index_add_(0, flat, resid.reshape(-1), alpha=scale)


def cnn_local_value(weight: Tensor, layer: "DenseConv", toward: str) -> tuple[Tensor, Tensor | None]:
    """‖θ − Pθ‖² of an eFCN weight toward "local" (the off-local part) or "cnn" (zero padding: off-local plus
    off-sharing), float64 0-dim, and the local residual for "cnn" (None for "local")."""
    with torch.no_grad():
        total = square_sums(layer, weight)[1]
        if toward != "cnn":
            return total, None
        resid = local_residual(weight, layer)
        return total + sq_sum(resid), resid


class CnnLocalFn(torch.autograd.Function):
    """‖θ − Pθ‖² of an eFCN weight toward "cnn" (zero padding) or "local" (float64); backward writes 2g(θ − Pθ)
    once."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: "DenseConv", toward: str) -> Tensor:
        total, resid = cnn_local_value(weight, layer, toward)
        ctx.layer, ctx.toward = layer, toward
        ctx.save_for_backward(weight, resid)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        weight, resid = ctx.saved_tensors
        layer: DenseConv = ctx.layer
        if torch.is_grad_enabled():  # create_graph=True: differentiate plain ops so this backward is differentiable
            with torch.enable_grad():
                val = _plain(weight, layer, ctx.toward)
                return torch.autograd.grad(val, weight, grad, create_graph=True)[0], None, None
        scale = 2.0 * float(grad)
        out = torch.empty_like(weight)
        off_local_pass(weight, layer, out, scale=scale)  # local entries come out 0 ...
        if resid is not None:  # ... and get 2g(θ − mean) for "cnn"
            add_local_residual(out, layer, resid, scale)
        return out, None, None


def _plain(weight: Tensor, layer: "DenseConv", toward: str) -> Tensor:
    """The same penalty in plain differentiable ops (for double backward)."""
    if toward == "shared":
        return _shared_plain(weight, layer)
    off = weight.masked_fill(layer.local_mask(), 0).square().sum(dtype=torch.float64)
    return off if toward == "local" else off + local_residual(weight, layer).square().sum(dtype=torch.float64)


# ---- unshared: the global convolution's orbits ------------------------------------------------------------------
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


def _shared_dims(layer: "DenseConv") -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((o_h, n_h, s_h), (o_w, n_w, s_w)); a 1d conv is a 2d one with a single row."""
    g = layer.geometry
    dims = list(zip(g.out_spatial, g.in_spatial, g.stride))
    return ((1, 1, 1), dims[0]) if g.dim == 1 else (dims[0], dims[1])


def _w6(weight: Tensor, layer: "DenseConv") -> Tensor:
    """The eFCN weight ``(C_out·P, C_in·Q)`` as ``(C_out, o_h, o_w, C_in, n_h, n_w)`` (a view)."""
    g = layer.geometry
    (oh, nh, _), (ow, nw, _) = _shared_dims(layer)
    return weight.view(g.out_channels, oh, ow, g.in_channels, nh, nw)


def _shared_chunks(layer: "DenseConv") -> list[tuple[int, int]]:
    """Chunks of output channels whose row buffer ``(c, o_w, C_in, V_h, n_w)`` fits :data:`_SHARED_CHUNK`."""
    g = layer.geometry
    (oh, nh, sh), (ow, nw, _) = _shared_dims(layer)
    return _row_chunks(g.out_channels, ow * g.in_channels * (nh + (oh - 1) * sh) * nw, _SHARED_CHUNK)


def _row_rows(layer: "DenseConv") -> list[tuple[int, slice]]:
    """(ph, its rows a_h(ph) .. a_h(ph) + n_h on the label axis V_h) of every output row."""
    (oh, nh, sh), _ = _shared_dims(layer)
    return [(ph, slice((oh - 1 - ph) * sh, (oh - 1 - ph) * sh + nh)) for ph in range(oh)]


def _spread_cols(x: Tensor, layer: "DenseConv") -> Tensor:
    """Per-label ``(c, C_in, V_h, V_w)`` -> row buffer ``(c, o_w, C_in, V_h, n_w)``: column pw reads labels
    a_w(pw) .. a_w(pw) + n_w."""
    _, (ow, nw, sw) = _shared_dims(layer)
    return torch.stack([x[..., (ow - 1 - pw) * sw : (ow - 1 - pw) * sw + nw] for pw in range(ow)], 1)


def orbit_means(weight: Tensor, layer: "DenseConv") -> Tensor:
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


def shared_pass(weight: Tensor, layer: "DenseConv", means: Tensor, *, value: bool = True, out: Tensor | None = None,
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


class SharedFn(torch.autograd.Function):
    """‖θ − P_shared θ‖² of an eFCN weight (float64) through window-adds (see above); backward writes
    2g(θ − Pθ) once."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: "DenseConv") -> Tensor:
        means = orbit_means(weight, layer)
        total = shared_pass(weight, layer, means)
        ctx.layer = layer
        ctx.save_for_backward(weight, means)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        weight, means = ctx.saved_tensors
        layer: DenseConv = ctx.layer
        if torch.is_grad_enabled():
            with torch.enable_grad():
                val = _shared_plain(weight, layer)
                return torch.autograd.grad(val, weight, grad, create_graph=True)[0], None
        out = torch.empty_like(weight)
        shared_pass(weight, layer, means, value=False, out=out, scale=2.0 * float(grad))
        return out, None


def _shared_plain(weight: Tensor, layer: "DenseConv") -> Tensor:
    """The shared penalty in plain differentiable ops (for double backward)."""
    means = orbit_means(weight, layer)
    w6 = _w6(weight, layer)
    total = None
    for a, b in _shared_chunks(layer):
        m_cols = _spread_cols(means[a:b], layer)
        for p, r in _row_rows(layer):
            term = w6[a:b, p].sub(m_cols[..., r, :]).square().sum(dtype=torch.float64)
            total = term if total is None else total + term
    return total


# ---- the fused form for trainers -----------------------------------------------------------------------------

def fused_grad_(w: Tensor, layer: "DenseConv", toward: str, scale: float, value: bool) -> float:
    """``w.grad += scale · (θ − Pθ)`` for an eFCN weight ("cnn": zero padding); the penalty of the weight if
    ``value`` (else 0)."""
    if w.grad is None:
        w.grad = torch.zeros_like(w)
    if toward == "shared":
        v = shared_pass(w, layer, orbit_means(w, layer), value=value, out=w.grad, scale=scale, accumulate=True)
        return float(v) if value else 0.0
    off_local_pass(w, layer, w.grad, scale=scale, accumulate=True)
    resid = None
    if toward == "cnn":
        resid = local_residual(w, layer)
        add_local_residual(w.grad, layer, resid, scale)
    if not value:
        return 0.0
    total = square_sums(layer, w)[1]
    return float(total if resid is None else total + sq_sum(resid))
