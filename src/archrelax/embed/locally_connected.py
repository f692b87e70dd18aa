"""Locally-connected layers (eLCN): a conv whose filters are not shared across output positions.

Layout, chosen for speed (see benchmarks/bench_lc_layer.py, which compares it with the machine's GEMM
limit): per output position p the layer is one GEMM, ``out[p] = cols[p] · W[p]ᵀ`` with the batch in the
M dimension, ``(B, K_p) × (K_p, C_out/g)``, where K_p = (taps of p that read the input) · C_in/g. Taps
that read zero padding at p (*dead* taps, 28% of the multiply-adds of a 5x5 conv on 8x8 with padding 2, 40%
of a 3x3 on 3x3) are left out of the GEMM: positions are grouped into *classes* of equal live-tap count, and
each class is one batched GEMM over its unfolded input ``cols_c: (groups·n_c, B, K_c)`` and its weights
gathered compactly, ``(groups·n_c, C_out/g, K_c)``, into a reused buffer (a few classes per layer, e.g. 6 for
that 5x5 layer: 25, 20, 16, 15, 12 and 9 live taps). With the batch as the rows, each row of ``cols`` is
made of whole channel vectors: the input is transposed once to small channels-last rows
``(B·(Q + 1)·groups, C_in/g)`` (position Q is a zero row, read by no live tap), and one ``index_select``
through the index map copies those rows straight into every class's ``cols``. No strided transpose of the
unfolded tensor is ever made (that, not the arithmetic, is what makes the ``F.unfold(x).permute(...)``
formulation slow), and the batch × C_out × C_in × P × T product is never materialised. The index tensors
(:class:`LCPlan` per geometry, built from ``index_map`` when a layer is constructed; :class:`BatchIndex` per
batch size) are cached by (geometry, device, batch size), so a step does no index arithmetic. Measured on
2 cores (1 thread, CPU clock): VanillaCNN layer 2 fwd+bwd at batch 250 in 125 ms (192 ms with one dense GEMM
over all taps, the layout before this one), AlexNet layer 2 in 353 ms (486 ms).

Backward computes both GEMMs of each class from one transposed output gradient ``go: (groups·P, B, C_out/g)``:
``dW[p] = go[p]ᵀ · cols[p]`` (spread back to the weight's layout by one gather, dead taps 0) and
``dcols[p] = go[p] · W[p]``. The unfolded input is not kept for backward: backward gathers it again into a
reused per-thread CPU workspace (fresh 100 MB allocations are page-faulted in on every call, which costs as
much as the gather), then writes ``dcols`` into that same buffer. ``dcols`` goes back to the input by a
*gather-sum*: every input row (batch, position q, group) is the sum of the ≤ T rows of ``dcols`` that read
q, listed by the inverse of the index map (``scatter_index``, grouped by q) and summed by
``embedding_bag(mode="sum")``, one fused gather + sum per row in a fixed order. It is deterministic on every
device, and on CPU faster than ``index_add_`` (measured: the whole VanillaCNN layer 2 fwd+bwd takes 0.89x
the time it takes with ``index_add_``). On CUDA, ``index_add_`` (atomic adds, run-to-run non-deterministic) is
used unless ``torch.are_deterministic_algorithms_enabled()`` (the trainer's deterministic mode), which selects
the gather-sum there too (its CUDA speed is not measured). Peak memory is thus about weights (+ their gradient, + one compact copy) +
activations + one unfolded input. Double backward (Hessian-vector products) goes through plain ops.

Under ``torch.autocast`` the GEMMs of forward and backward run in the autocast dtype (like a conv's would),
the output is in that dtype, and the gradients come back in the dtypes of the input and the parameters
(float32 parameters keep float32 gradients): the custom Function casts explicitly and turns autocast off
inside, rather than ``torch.amp.custom_fwd/custom_bwd``, which take one fixed device type. ``torch.compile``
traces the layer with no graph break (the workspaces are not used while compiling).

Parameters:
- ``weight``: ``(groups, P, C_out/g, T, C_in/g)``: the filter of output channel o at position p.
  Entries of dead taps multiply zeros, get zero gradient, are outside ``local_mask()``, and are kept at 0
  by φ and by ``reset_parameters()``.
- ``bias``: ``(C_out, *out_spatial)``: one bias per (channel, position), so bias sharing is released too.

Zero padding only: with reflect/replicate/circular padding the relaxation of a conv is the eFCN (DenseConv).
"""
from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .base import RelaxedConv, SubspaceSqNorms, sq_norm
from .connectivity import ConvGeometry, index_map

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnectedNd", "release_workspaces", "LCPlan",
           "BatchIndex", "plan_for", "kernel_index", "LocallyConnectedFn"]


class LCPlan(NamedTuple):
    """The index map laid out for the kernel (built from ``index_map`` once per geometry and device, cached by
    :func:`plan_for`; see module docstring).

    Positions with at least one live tap, sorted by descending live-tap count (stable), form the classes;
    ``classes``: ``(n_c, k_c)`` per class (positions, live taps). Live (p, t) pairs in class order
    (class, position, tap): ``pos`` ``(n_pos,)`` the sorted positions, ``pair_p`` / ``pair_t`` ``(n_live,)``.
    ``gather_index`` ``(P·T,)``: input position read by (p, t), Q for dead taps. ``scatter_index`` /
    ``scatter_offsets``: the live pairs grouped by the input q they read (indices into the pair list) and each
    q's start, for backward's gather-sum. ``weight_rows``: for each compact weight row (class, g, i,
    o, j) of ``C_in/g`` values, its row in the weight; ``weight_inv``: the inverse (the zero row
    ``len(weight_rows)`` for dead taps); ``out_rows`` ``(groups·n_pos,)`` g·P + p of the GEMM outputs' rows
    (class, g, i); ``out_inv``: the inverse (a zero row for positions with no live tap).
    """

    classes: tuple[tuple[int, int], ...]
    pos: Tensor
    pair_p: Tensor
    pair_t: Tensor
    gather_index: Tensor
    scatter_index: Tensor
    scatter_offsets: Tensor
    weight_rows: Tensor
    weight_inv: Tensor
    out_rows: Tensor
    out_inv: Tensor


def lc_plan(index: Tensor, geom: ConvGeometry) -> LCPlan:
    """:class:`LCPlan` from the ``(P, T)`` index map (a loop over classes, at most T + 1 of them)."""
    G, P, T, Q, cog = geom.groups, geom.P, geom.T, geom.Q, geom.out_channels // geom.groups
    dev = index.device
    ar = lambda k: torch.arange(k, device=dev)  # noqa: E731
    live = index >= 0
    cnt = live.sum(1)  # (P,)
    pos = torch.argsort(cnt, descending=True, stable=True)
    pos = pos[cnt[pos] > 0]
    ks, ns = torch.unique_consecutive(cnt[pos], return_counts=True)
    classes = tuple((int(n), int(k)) for n, k in zip(ns.tolist(), ks.tolist()))
    pairs = live[pos].nonzero()  # (n_live, 2): (row in pos, tap), in class order
    pair_p, pair_t = pos[pairs[:, 0]], pairs[:, 1]
    # weight rows (class, g, i, o, j) and GEMM output rows (class, g, i)
    w_rows, o_rows, start = [], [], 0
    for n, k in classes:
        p = pair_p[start : start + n * k].view(n, k)[:, 0]
        t = pair_t[start : start + n * k].view(n, k)
        gp = ar(G)[:, None] * P + p[None, :]  # (G, n)
        o_rows.append(gp.flatten())
        w_rows.append(((gp[:, :, None, None] * cog + ar(cog)[None, None, :, None]) * T + t[None, :, None, :]).flatten())
        start += n * k
    weight_rows, out_rows = _cat(w_rows, dev), _cat(o_rows, dev)
    small = torch.int32 if G * P * cog * T < 2**31 else torch.long  # index_select takes either; half the memory
    weight_inv = torch.full((G * P * cog * T,), weight_rows.numel(), dtype=small, device=dev)
    weight_inv[weight_rows] = ar(weight_rows.numel()).to(small)
    out_inv = torch.full((G * P,), out_rows.numel(), dtype=small, device=dev)
    out_inv[out_rows] = ar(out_rows.numel()).to(small)
    weight_rows, out_rows = weight_rows.to(small), out_rows.to(small)
    # inverse of the index map over the live pairs, grouped by the input q they read (stable: fixed order)
    q = index[pair_p, pair_t]
    scatter_index = torch.argsort(q, stable=True)
    counts = torch.bincount(q, minlength=Q)
    return LCPlan(classes, pos, pair_p, pair_t, torch.where(live, index, Q).flatten(), scatter_index,
                  counts.cumsum(0) - counts, weight_rows, weight_inv, out_rows, out_inv)


def _cat(parts: list[Tensor], device: Any, shape: tuple[int, ...] = (0,), dim: int = 0) -> Tensor:
    """torch.cat, also of no parts (a layer where no position reads the input: every tap reads padding)."""
    return torch.cat(parts, dim) if parts else torch.zeros(shape, dtype=torch.long, device=device)


class BatchIndex(NamedTuple):
    """:class:`LCPlan` laid out for one batch size (built once per geometry, device and batch size, then cached:
    :func:`kernel_index`).

    ``gather``: for each row (class, g, i, b, j) of the unfolded input ``cols``, its row in ``_rows_in``.
    ``bag`` / ``bag_offsets``: backward's gather-sum: input row (b, g, q) is the sum of the rows
    ``bag[bag_offsets[r] : bag_offsets[r + 1]]`` of ``dcols`` (r = (b·G + g)·Q + q). int32 where the sizes
    allow (half the index traffic of int64). ``plan``: the layer's :class:`LCPlan`.
    """

    gather: Tensor
    bag: Tensor
    bag_offsets: Tensor
    plan: LCPlan


def batch_index(plan: LCPlan, geom: ConvGeometry, B: int) -> BatchIndex:
    """:class:`BatchIndex` of ``plan`` for batch size ``B``."""
    G, P, T, Q = geom.groups, geom.P, geom.T, geom.Q
    dev, n_live = plan.pos.device, plan.scatter_index.numel()
    # built in int32 where every value fits (the largest is the number of unfolded rows): half the memory
    dtype = torch.int32 if max(B * (Q + 1) * G, B * G * max(n_live, Q)) < 2**31 else torch.int64
    ar = lambda k: torch.arange(k, device=dev, dtype=dtype)  # noqa: E731
    src = plan.gather_index.view(P, T)[plan.pair_p, plan.pair_t].to(dtype)  # (n_live,) input read by each pair
    gathers, row_base, start, rows_before = [], [], 0, 0
    for n, k in plan.classes:
        s = src[start : start + n * k].view(1, n, 1, k)
        gathers.append(((ar(B).view(1, 1, B, 1) * (Q + 1) + s) * G + ar(G).view(G, 1, 1, 1)).flatten())  # (G, n, B, k)
        # dcols row of pair (i, j) of this class at (g, b): B·(G·rows_before + g·n·k + i·k) + b·k + j
        i, j = ar(n * k) // k, ar(n * k) % k
        row_base.append(torch.stack([G * rows_before + i * k, torch.full_like(i, n * k), torch.full_like(i, k), j]))
        start, rows_before = start + n * k, rows_before + n * k
    gather = _cat(gathers, dev).to(dtype)
    a, gstep, kk, j = _cat(row_base, dev, shape=(4, 0), dim=1).to(dtype)[:, plan.scatter_index]  # grouped by q
    bag = (B * (a[None, None, :] + ar(G)[None, :, None] * gstep) + ar(B)[:, None, None] * kk + j).flatten()  # (B, G, n)
    offsets = (ar(B * G)[:, None] * n_live + plan.scatter_offsets.to(dtype)[None, :]).flatten()  # (B·G, Q)
    return BatchIndex(gather, bag, offsets, plan)


def _rows_in(x: Tensor, geom: ConvGeometry) -> Tensor:
    """(B, C_in, *in_spatial) -> (B·(Q+1)·G, C_in/g) channels-last rows; position Q is the zero row padding
    taps read. One small copy (differentiable, so the double-backward graph uses it too)."""
    B, G, Q = x.shape[0], geom.groups, geom.Q
    cig = geom.in_channels // G
    rows = x.new_empty(B, Q + 1, G, cig)
    rows[:, :Q] = x.reshape(B, G, cig, Q).permute(0, 3, 1, 2)
    rows[:, Q] = 0
    return rows.view(-1, cig)


def _out_layout(out: Tensor, plan: LCPlan, geom: ConvGeometry, B: int) -> Tensor:
    """GEMM output rows (class, g, i) ``(groups·n_pos + 1, B, C_out/g)`` (last row 0) -> contiguous
    (B, C_out, *out_spatial) (a permuted view would break ``.view`` calls downstream, and elementwise ops would
    keep its strides). One gather along the last dim of the transposed view writes it, in place for groups=1
    (no second output-sized temporary)."""
    G, cog = geom.groups, geom.out_channels // geom.groups
    out = out.permute(1, 2, 0).index_select(2, plan.out_inv)  # (B, C_out/g, G·P), (g, p) order
    if G > 1:
        out = out.view(B, cog, G, geom.P).transpose(1, 2).contiguous()
    return out.view(B, geom.out_channels, *geom.out_spatial)


def _go_rows(grad_out: Tensor, plan: LCPlan, geom: ConvGeometry) -> Tensor:
    """(B, C_out, *out_spatial) -> (groups·n_pos, B, C_out/g): rows in class order (class, g, i), contiguous
    (or bmm falls back to one small GEMM, one parallel region, per position). For groups=1 one gather from the
    transposed view (a transpose first, then whole-slab copies, is not measurably faster here and holds a second
    output-sized temporary)."""
    B, G, P = grad_out.shape[0], geom.groups, geom.P
    if G == 1:
        return grad_out.reshape(B, -1, P).permute(2, 0, 1).index_select(0, plan.out_rows)
    go = grad_out.reshape(B, G, geom.out_channels // G, P).permute(1, 3, 0, 2).reshape(G * P, B, -1)  # (g, p) order
    return go.index_select(0, plan.out_rows)


def _split(flat: Tensor, plan: LCPlan, G: int, rows: int, cig: int) -> list[Tensor]:
    """Views of a flat buffer holding one ``(G·n_c, rows, k_c·C_in/g)`` block per class, in class order."""
    sizes = [G * n * rows * k * cig for n, k in plan.classes]
    return [part.view(G * n, rows, k * cig) for part, (n, k) in zip(flat[: sum(sizes)].split(sizes), plan.classes)]


def _lc_forward_graph(x: Tensor, weight: Tensor, gather_index: Tensor, geom: ConvGeometry) -> Tensor:
    """The forward pass in plain differentiable ops (used for double backward, e.g. Hessian-vector products)."""
    B, G = x.shape[0], geom.groups
    idx = kernel_index(geom, x.device, B)
    plan, cig, cog = idx.plan, geom.in_channels // G, geom.out_channels // G
    cols = _rows_in(x, geom).index_select(0, idx.gather).view(-1)
    wc = weight.reshape(-1, cig).index_select(0, plan.weight_rows).view(-1)
    outs = [torch.bmm(c, w.mT) for c, w in zip(_split(cols, plan, G, B, cig), _split(wc, plan, G, cog, cig))]
    outs.append(x.new_zeros(1, B, cog))
    return _out_layout(torch.cat(outs), plan, geom, B)


# No lock (torch.compile cannot trace one): single dict operations are atomic, and a lost race only rebuilds an entry
_plans: dict[tuple[ConvGeometry, torch.device], LCPlan] = {}
_batch_indices: dict[tuple[ConvGeometry, torch.device, int], BatchIndex] = {}


def _evict(cache: dict, size: int) -> None:
    for old in list(cache)[: max(0, len(cache) - size)]:  # dicts keep insertion order: the oldest first
        cache.pop(old, None)


def plan_for(geom: ConvGeometry, device: Any = "cpu") -> LCPlan:
    """The cached :class:`LCPlan` of ``geom`` on ``device`` (built on CPU from ``index_map``, then copied: a layer
    builds it at construction, so a compiled model never traces the data-dependent build)."""
    device = torch.device(device)
    plan = _plans.get((geom, device))
    if plan is None:
        cpu = torch.device("cpu")
        plan = _plans.get((geom, cpu))
        if plan is None:
            plan = _plans[(geom, cpu)] = lc_plan(index_map(geom), geom)
        if device != cpu:
            plan = _plans[(geom, device)] = LCPlan(plan.classes, *(t.to(device) for t in plan[1:]))
        _evict(_plans, 64)
    return plan


def kernel_index(geom: ConvGeometry, device: Any, B: int) -> BatchIndex:
    """The kernel's index tensors for ``geom`` at batch size ``B`` on ``device``. Cached by (geometry, device, B),
    the oldest dropped beyond 16, so a step does no index arithmetic."""
    key = (geom, torch.device(device), B)
    idx = _batch_indices.get(key)
    if idx is None:
        idx = _batch_indices[key] = batch_index(plan_for(geom, device), geom, B)
        _evict(_batch_indices, 16)
    return idx


_workspaces = threading.local()


def _workspace(numel: int, like: Tensor, slot: int = 0) -> Tensor:
    """A reusable flat buffer (CPU only): slot 0 for the unfolded input, slot 1 for compact weights.

    On CPU every fresh allocation above glibc's mmap threshold (32 MB) is page-faulted in again on every
    call, which costs as much as the gather itself; reusing one buffer per thread, slot and dtype (grown
    to the largest layer seen) keeps that cost away. The buffers are only held inside one forward or one
    backward call, never between them, so several forwards before a backward are safe.
    """
    if like.device.type != "cpu" or torch.compiler.is_compiling():
        # caching allocators do this already; a compiled graph plans its own buffers (and may not keep a global)
        return torch.empty(numel, device=like.device, dtype=like.dtype)
    cache = _workspaces.__dict__.setdefault("buffers", {})
    key = (like.dtype, slot)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache.pop(key, None)  # free the old one first: peak memory stays one buffer
        buf = cache[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel]


def release_workspaces() -> None:
    """Free this thread's cached CPU workspaces and the index tensors cached per batch size (re-created on the
    next locally-connected call; the small per-geometry plans stay)."""
    _workspaces.__dict__.pop("buffers", None)
    _batch_indices.clear()


def _use_gather_sum(device: torch.device) -> bool:
    """Whether backward sends ``dcols`` back to the input by the gather-sum (deterministic) rather than by
    ``index_add_``: always on CPU (there it is also the faster one), elsewhere in deterministic mode."""
    return device.type == "cpu" or torch.are_deterministic_algorithms_enabled()


def _gather_sum(dcols: Tensor, bag: Tensor, bag_offsets: Tensor, geom: ConvGeometry, B: int) -> Tensor:
    """Input-gradient rows from ``dcols`` rows ``(n_rows, C_in/g)`` -> ``(B, G, Q, C_in/g)``: row (b, g, q)
    sums the ``dcols`` rows whose tap reads q (see :class:`BatchIndex`). Only gathers, each row summed in a
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


def _compact_weight(weight: Tensor, plan: LCPlan, dtype: torch.dtype | None, cig: int) -> Tensor:
    """The live-tap weight rows (class, g, i, o, j) into workspace slot 1, in the compute dtype: flat."""
    wc = _workspace(plan.weight_rows.numel() * cig, weight, slot=1).view(-1, cig)
    torch.index_select(weight.detach().reshape(-1, cig), 0, plan.weight_rows, out=wc)
    return (wc if dtype is None else wc.to(dtype)).view(-1)


class LocallyConnectedFn:
    """The eLCN kernel: ``LocallyConnectedFn.apply(x, weight, gather_index, geom)`` -> (B, C_out, *out_spatial),
    differentiable (twice). ``weight`` in the eLCN layout ``(groups, P, C_out/g, T, C_in/g)`` (other layers call
    it with filters gathered to that layout); ``gather_index`` is the layer's ``(P·T,)`` gather index (Q for
    dead taps), kept for them: the index tensors themselves come from ``geom``'s cached plan."""

    @staticmethod
    def apply(x: Tensor, weight: Tensor, gather_index: Tensor, geom: ConvGeometry) -> Tensor:
        # looked up (built on a new batch size) out here, so the autograd Function has no side effect: torch.compile
        # traces the cache insertion in the outer graph and passes the tensors in
        idx = kernel_index(geom, x.device, x.shape[0])
        return _LCKernelFn.apply(x, weight, gather_index, idx.gather, idx.bag, idx.bag_offsets, idx.plan, geom)


class _LCKernelFn(torch.autograd.Function):
    """Gather + one batched GEMM per class forward; backward re-gathers into the workspace instead of saving the
    unfolded input, and writes the unfolded input gradient into that same buffer before the gather-sum."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, gather_index: Tensor, gather: Tensor, bag: Tensor,
                bag_offsets: Tensor, plan: LCPlan, geom: ConvGeometry) -> Tensor:
        ctx.amp = amp = _autocast_dtype(x.device)
        B, G = x.shape[0], geom.groups
        cig, cog = geom.in_channels // G, geom.out_channels // G
        with torch.autocast(x.device.type, enabled=False):  # explicit casts instead: backward does the same
            rows = _rows_in(x if amp is None else x.to(amp), geom)  # (B·(Q+1)·G, C_in/g)
            cols = _workspace(gather.numel() * cig, rows).view(-1, cig)
            torch.index_select(rows, 0, gather, out=cols)
            wc = _compact_weight(weight, plan, amp, cig)
            out = rows.new_empty(G * plan.pos.numel() + 1, B, cog)
            out[-1] = 0  # the row of positions with no live tap
            for c, w, o in zip(_split(cols.view(-1), plan, G, B, cig), _split(wc, plan, G, cog, cig),
                               out[:-1].split([G * n for n, _ in plan.classes])):
                torch.bmm(c, w.mT, out=o)  # (G·n_c, B, C_out/g)
        # rows: input-sized, spares a transpose in backward; x and weight as given (double backward needs them)
        ctx.save_for_backward(x, rows, weight, gather_index, gather, bag, bag_offsets)
        ctx.plan, ctx.geom = plan, geom
        return _out_layout(out, plan, geom, B)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, rows, weight, gather_index, gather, bag, bag_offsets = ctx.saved_tensors
        plan: LCPlan = ctx.plan
        geom: ConvGeometry = ctx.geom
        amp: torch.dtype | None = ctx.amp
        need_x, need_w = ctx.needs_input_grad[:2]
        none = (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain ops so this backward is differentiable
            inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
            with torch.autocast(x.device.type, enabled=False):
                y = _lc_forward_graph(x if amp is None else x.to(amp), weight if amp is None else weight.to(amp),
                                      gather_index, geom)
                grads = iter(torch.autograd.grad(y, inputs, grad_out.to(y.dtype), create_graph=True))
            return (next(grads) if need_x else None), (next(grads) if need_w else None), *none
        B, G = x.shape[0], geom.groups
        cig, cog = geom.in_channels // G, geom.out_channels // G
        sizes = [G * n for n, _ in plan.classes]
        with torch.autocast(x.device.type, enabled=False):
            # one transposed output gradient for both GEMMs, split by class: (G·n_c, B, C_out/g)
            go = _go_rows(grad_out.to(rows.dtype), plan, geom).split(sizes)
            ws = _workspace(gather.numel() * cig, rows).view(-1, cig)
            grad_x = grad_w = None
            if need_w:
                torch.index_select(rows, 0, gather, out=ws)
                gwc = _workspace((plan.weight_rows.numel() + 1) * cig, rows, slot=1)  # + a zero row for dead taps
                gwc[-cig:] = 0
                for g, c, w in zip(go, _split(ws.view(-1), plan, G, B, cig), _split(gwc, plan, G, cog, cig)):
                    torch.bmm(g.mT, c, out=w)  # (G·n_c, C_out/g, k_c·C_in/g)
                grad_w = gwc.view(-1, cig).index_select(0, plan.weight_inv).view(weight.shape).to(weight.dtype)
            if need_x:
                wc = _compact_weight(weight, plan, amp, cig)
                for g, w, d in zip(go, _split(wc, plan, G, cog, cig), _split(ws.view(-1), plan, G, B, cig)):
                    torch.bmm(g, w, out=d)  # (G·n_c, B, k_c·C_in/g)
                if _use_gather_sum(x.device):
                    gx = _gather_sum(ws, bag, bag_offsets, geom, B)
                else:
                    gx = _index_add(ws, gather, geom, B)
                grad_x = gx.transpose(2, 3).reshape(x.shape).to(x.dtype)  # (B, G, C_in/g, Q): x's layout
        return grad_x, grad_w, *none


class LocallyConnectedNd(RelaxedConv):
    """Locally-connected layer for ``geometry.dim`` spatial dims; use LocallyConnected1d / 2d."""


    def __init__(self, geometry: ConvGeometry, *, device: Any = None, dtype: torch.dtype | None = None,
                 _init: bool = True) -> None:
        self._check_geometry(geometry)
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
        plan_for(geometry)  # build (or find) the kernel's plan now, outside any compiled region
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

    def _local_factor(self) -> Tensor:
        return self._live5()

    def _tap_sq(self) -> Tensor:
        """``(P, T)`` float64: the squared weights of each (position, tap), one pass over the weight."""
        return torch.linalg.vector_norm(self.weight, dim=(0, 2, 4)).double().square()

    def offlocal_sq(self) -> Tensor:
        """The dead taps' squared weights: a masked sum over the ``(P, T)`` live map, no mask tensor."""
        return self._tap_sq()[~self.live].sum()

    def subspace_sq_norms(self) -> SubspaceSqNorms:
        """The interface's values from this layer's parts: total and off-local from one pass of per-(position,
        tap) norms, the off-sharing part as the interface computes it."""
        with torch.no_grad():
            s = self._tap_sq()
            offlocal, total = float(s[~self.live].sum()), float(s.sum())
            offsharing = float(self.offsharing_sq())
            total += 0.0 if self.bias is None else sq_norm(self.bias)
        return SubspaceSqNorms(total, offlocal, offsharing, offlocal + offsharing)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        out = LocallyConnectedFn.apply(x, self.weight, self.gather_index, self.geometry)
        return out if self.bias is None else out + self.bias.to(out.dtype)  # autocast: the output's dtype, like a conv


class LocallyConnected1d(LocallyConnectedNd, dim=1):
    """Locally-connected layer on ``(B, C, L)`` inputs (see module docstring)."""


class LocallyConnected2d(LocallyConnectedNd, dim=2):
    """Locally-connected layer on ``(B, C, H, W)`` inputs (see module docstring)."""
