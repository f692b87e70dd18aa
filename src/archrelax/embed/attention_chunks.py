"""How an attention layer (:mod:`.attention`) computes its (batch, heads, queries, keys) attention in bounded memory.

:func:`chunk_plan` cuts the attention into chunks of about :data:`_LIVE` live copies within a byte budget (whole
samples first, then queries); :class:`_ChunkAttention` computes one chunk, softmax(logits) · values, keeping only
its inputs and recomputing its probabilities in backward, so that forward and backward hold one chunk at a time,
in reused workspaces (freed by ``locally_connected.release_workspaces``).
The attention is laid out (rows, queries, heads, keys): its average of the values then comes out as the unfolded
input ``(B, P, T, C_in)`` that the value maps multiply (see :meth:`.attention.AttentionConvNd.forward`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .connectivity import ConvGeometry
from .locally_connected import _workspace

if TYPE_CHECKING:
    from .attention import AttentionConvNd

__all__ = ["chunk_plan", "workspace_bytes", "CHUNK_BYTES"]

CHUNK_BYTES = 128 << 20  # default budget of one chunk of the attention (all its live copies together)
_LIVE = 4  # chunk-sized tensors alive at once in a chunk's forward+backward (logits, A, dA, dlogits)


def chunk_plan(geom: ConvGeometry, key_dim: int, batch: int, itemsize: int,
               budget: int = CHUNK_BYTES) -> tuple[int, int]:
    """``(batch rows, queries)`` of one chunk of the attention, so that about :data:`_LIVE` tensors of
    ``(rows, queries, T, Q + 1)`` elements fit in ``budget`` bytes: whole samples first, then queries within a
    sample; at least one query. With ``key_dim == 0`` the attention is batch-independent: all rows, and queries
    so that ``(queries, T, Q + 1)`` fits."""
    per_query = geom.T * (geom.Q + 1) * _LIVE * itemsize
    if key_dim == 0:
        return batch, max(1, min(geom.P, budget // per_query))
    per_sample = per_query * geom.P
    if per_sample <= budget:
        return max(1, min(batch, budget // per_sample)), geom.P
    return 1, max(1, min(geom.P, budget // per_query))


def workspace_bytes(geom: ConvGeometry, key_dim: int, itemsize: int, batch: int | None = None,
                    budget: int = CHUNK_BYTES) -> int:
    """Bytes of one chunk's live attention tensors at ``batch`` (None: the most any batch can take, the
    budget or one query's chunk if that is larger)."""
    per_query = geom.T * (geom.Q + 1) * _LIVE * itemsize
    if batch is None and key_dim:
        return max(budget, per_query)
    rows, queries = chunk_plan(geom, key_dim, batch or 1, itemsize, budget)
    return (1 if key_dim == 0 else rows) * queries * per_query


# workspace slots of the attention in the per-thread CPU buffers the eLCN owns (its own are 0 and 1): reused from
# chunk to chunk, because glibc does not reuse freed blocks of this size and the resident memory would otherwise
# grow by one chunk per chunk (measured: 20 MB per sample on VanillaCNN's first layer, all returned by malloc_trim)
_POS, _LOGITS, _GRAD, _TMP = 2, 3, 4, 5


def _scratch(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reused buffer of ``shape`` (fresh on other devices, whose caching allocators reuse blocks already)."""
    return _workspace(math.prod(shape), like, slot).view(shape)


def _logits(layer: "AttentionConvNd", p0: int, p1: int, qt: Tensor | None, vals: Tensor, alpha: Tensor,
            offset: Tensor, scratch: bool = False) -> Tensor:
    """``(rows, Pc, T, Q + 1)`` logits of one chunk (rows = 1 without content): content q̃ · x_key plus positional;
    ``scratch``: in the reused workspaces (no graph; the result lives until the next chunk)."""
    g = layer.geometry
    shape = (p1 - p0, g.T, g.Q + 1)
    pos = layer.positional_logits(p0, p1, alpha, offset, out=_scratch(_POS, shape, vals) if scratch else None)
    if qt is None:
        return pos.unsqueeze(0)
    rows, n = qt.shape[0], shape[0] * shape[1]
    # the positional logits broadcast over the rows as baddbmm's input: one pass fewer than bmm, then add
    out = _scratch(_LOGITS, (rows, n, shape[2]), vals) if scratch else None
    return torch.baddbmm(pos.view(1, n, shape[2]), qt, vals.transpose(1, 2), out=out).view(rows, *shape)


def _exp_floor(dtype: torch.dtype) -> float:
    """The logit (relative to the row's max) below which exp is clamped: one above the log of the smallest normal
    number (-86 in float32, -707 in float64). exp of anything lower lands in or at the edge of the denormals, where
    the CPU's exp is 10-25x slower (measured, float32: 7.6 ms for 6.5M values at -80, 196 ms at -95, 208 ms at
    log(tiny) itself), and at α = 80 nearly every key is down there; the clamp moves each weight by less than
    e^-86 = 4e-38 in float32. float16 keeps the exact softmax (its smallest normal, 6e-5, is no negligible
    weight)."""
    return -math.inf if dtype == torch.float16 else math.ceil(math.log(torch.finfo(dtype).tiny)) + 1.0


def _softmax_(logits: Tensor, inplace: bool = True) -> Tensor:
    """Softmax over the last dim, exp clamped at :func:`_exp_floor`; in place (no graph) unless ``inplace=False``."""
    floor = _exp_floor(logits.dtype)
    if not inplace:
        shifted = logits - logits.amax(-1, keepdim=True).detach()
        return torch.softmax(shifted.clamp(min=floor) if floor > -math.inf else shifted, -1)
    logits.sub_(logits.amax(-1, keepdim=True)).clamp_(min=floor).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


def _aggregate(a: Tensor, vals: Tensor) -> Tensor:
    """Σ_q A x[q]: ``a`` ``(rows, Pc, T, K)``; ``vals`` ``(rows, K, C)`` -> ``(rows, Pc·T, C)``, or, for an attention
    shared by the batch (rows = 1), ``vals`` ``(K, B·C)`` -> ``(Pc·T, B·C)``: one GEMM (a broadcast matmul would
    copy the attention once per sample)."""
    if vals.dim() == 2:
        return torch.mm(a.reshape(-1, a.shape[-1]), vals)
    return torch.bmm(a.reshape(a.shape[0], -1, a.shape[-1]), vals)


class _ChunkAttention(torch.autograd.Function):
    """One chunk of the attention, softmax(logits) · values (see :func:`_aggregate`), whose probabilities are
    recomputed in backward rather than saved (only its inputs are kept), so that forward and backward hold one
    chunk at a time, in the reused workspaces. Under ``create_graph=True`` (Hessian-vector products) the backward
    is :func:`_backward_graph`, in differentiable ops, so second derivatives are exact too."""

    @staticmethod
    def forward(ctx: Any, layer: "AttentionConvNd", p0: int, p1: int, qt: Tensor | None, vals: Tensor, alpha: Tensor,
                offset: Tensor) -> Tensor:
        ctx.layer, ctx.span = layer, (p0, p1)
        ctx.save_for_backward(qt, vals, alpha, offset)
        return _aggregate(_softmax_(_logits(layer, p0, p1, qt, vals, alpha, offset, scratch=True)), vals)

    @staticmethod
    def backward(ctx: Any, gu: Tensor) -> tuple[Tensor | None, ...]:
        qt, vals, alpha, offset = ctx.saved_tensors
        (p0, p1), layer = ctx.span, ctx.layer
        want_pos = ctx.needs_input_grad[5] or ctx.needs_input_grad[6]
        if torch.is_grad_enabled():  # create_graph=True: every op on the graph, for second derivatives
            return (None, None, None) + _backward_graph(layer, p0, p1, qt, vals, alpha, offset, gu, want_pos)
        a = _softmax_(_logits(layer, p0, p1, qt, vals, alpha, offset, scratch=True))  # (rows, Pc, T, K), a workspace
        rows, keys = a.shape[0], a.shape[-1]
        a2 = a.view(rows, -1, keys)  # (rows, Pc·T, K)
        ga = _scratch(_GRAD, a2.shape, vals)
        if qt is None:  # shared attention, values (K, B·C): one GEMM each way
            torch.mm(gu, vals.t(), out=ga[0])
            g_vals = torch.mm(a2[0].t(), gu)
        else:
            torch.bmm(gu, vals.transpose(1, 2), out=ga)
            g_vals = torch.bmm(a2.transpose(1, 2), gu)
        # the softmax's backward, ∂/∂logits = a ⊙ (ga − Σ_k a·ga), fused, into a workspace (6x faster than by steps)
        gl = torch._softmax_backward_data(ga, a2, -1, a2.dtype, grad_input=_scratch(_TMP, a2.shape, vals))
        g_qt = None
        if qt is not None:
            g_qt = torch.bmm(gl, vals)
            g_vals = g_vals.add_(torch.bmm(gl.transpose(1, 2), qt))
        g_alpha = g_offset = None
        if want_pos:
            g_pos = gl[0] if rows == 1 else torch.sum(gl, 0, out=_scratch(_GRAD, gl.shape[1:], vals))  # ga is spent
            g_alpha, g_offset = layer.positional_grads(p0, p1, g_pos.view(p1 - p0, -1, keys), alpha, offset)
        return None, None, None, g_qt, g_vals, g_alpha, g_offset


def _backward_graph(layer: "AttentionConvNd", p0: int, p1: int, qt: Tensor | None, vals: Tensor, alpha: Tensor,
                    offset: Tensor, gu: Tensor, want_pos: bool) -> tuple[Tensor | None, ...]:
    """The chunk's backward in differentiable ops (fresh tensors, kept by the graph): what ``create_graph=True``
    needs. The same values as the workspace path."""
    pos = layer.positional_logits(p0, p1, alpha, offset)  # (Pc, T, K)
    if qt is None:
        a = _softmax_(pos, inplace=False)[None]  # (1, Pc, T, K)
    else:
        logits = torch.baddbmm(pos.reshape(1, -1, pos.shape[-1]), qt, vals.transpose(1, 2))
        a = _softmax_(logits.view(qt.shape[0], *pos.shape), inplace=False)
    rows, keys = a.shape[0], a.shape[-1]
    a2 = a.reshape(rows, -1, keys)
    if qt is None:
        ga, g_vals = torch.mm(gu, vals.t())[None], torch.mm(a2[0].t(), gu)
    else:
        ga, g_vals = torch.bmm(gu, vals.transpose(1, 2)), torch.bmm(a2.transpose(1, 2), gu)
    gl = torch._softmax_backward_data(ga, a2, -1, a2.dtype)  # (rows, Pc·T, K): ∂/∂logits
    g_qt = None
    if qt is not None:
        g_qt = torch.bmm(gl, vals)
        g_vals = g_vals + torch.bmm(gl.transpose(1, 2), qt)
    g_alpha = g_offset = None
    if want_pos:
        g_alpha, g_offset = torch.autograd.grad(pos, (alpha, offset), gl.sum(0).view(pos.shape), create_graph=True)
    return g_qt, g_vals, g_alpha, g_offset
