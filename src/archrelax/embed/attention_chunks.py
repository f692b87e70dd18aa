"""How an attention layer (:mod:`.attention`) computes its (batch, heads, queries, keys) attention in bounded memory.

:func:`chunk_plan` cuts the attention into chunks of about :data:`_LIVE` live copies within a byte budget (whole
samples first, then queries); :class:`_ChunkAttention` computes one chunk, softmax(logits) · values, keeping only
its inputs and recomputing its probabilities in backward, so that forward and backward hold one chunk at a time.
The attention is laid out (rows, queries, heads, keys): its average of the values then comes out as the unfolded
input ``(B, P, T, C_in)`` that the value maps multiply (see :meth:`.attention.AttentionConvNd.forward`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .connectivity import ConvGeometry

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


def _logits(layer: "AttentionConvNd", p0: int, p1: int, qt: Tensor | None, vals: Tensor, alpha: Tensor,
            offset: Tensor) -> Tensor:
    """``(rows, Pc, T, Q + 1)`` logits of one chunk (rows = 1 without content): content q̃ · x_key plus positional."""
    pos = layer.positional_logits(p0, p1, alpha, offset)  # (Pc, T, Q + 1)
    if qt is None:
        return pos.unsqueeze(0)
    return torch.bmm(qt, vals.transpose(1, 2)).view(qt.shape[0], *pos.shape).add_(pos)


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
    chunk at a time. The backward is written in differentiable ops: under ``create_graph=True`` (Hessian-vector
    products) it records its own graph, so second derivatives are exact too."""

    @staticmethod
    def forward(ctx: Any, layer: "AttentionConvNd", p0: int, p1: int, qt: Tensor | None, vals: Tensor, alpha: Tensor,
                offset: Tensor) -> Tensor:
        ctx.layer, ctx.span = layer, (p0, p1)
        ctx.save_for_backward(qt, vals, alpha, offset)
        return _aggregate(_softmax_(_logits(layer, p0, p1, qt, vals, alpha, offset)), vals)

    @staticmethod
    def backward(ctx: Any, gu: Tensor) -> tuple[Tensor | None, ...]:
        qt, vals, alpha, offset = ctx.saved_tensors
        (p0, p1), layer = ctx.span, ctx.layer
        higher = torch.is_grad_enabled()  # create_graph=True: keep every op on the graph
        want_pos = ctx.needs_input_grad[5] or ctx.needs_input_grad[6]
        if not higher:  # only the small positional logits need a graph, to α and the offsets
            alpha, offset = alpha.detach().requires_grad_(want_pos), offset.detach().requires_grad_(want_pos)
        with torch.enable_grad():
            pos = layer.positional_logits(p0, p1, alpha, offset)  # (Pc, T, K)
        with torch.set_grad_enabled(higher):
            p = pos if higher else pos.detach()
            if qt is None:
                a = _softmax_(p.clone(), not higher)[None]  # (1, Pc, T, K)
            else:
                a = _softmax_(torch.bmm(qt, vals.transpose(1, 2)).view(qt.shape[0], *p.shape) + p, not higher)
            rows, keys = a.shape[0], a.shape[-1]
            a2 = a.reshape(rows, -1, keys)  # (rows, Pc·T, K)
            if qt is None:  # shared attention, values (K, B·C): one GEMM each way
                ga = torch.mm(gu, vals.t())[None]
                g_vals = torch.mm(a2[0].t(), gu)
            else:
                ga = torch.bmm(gu, vals.transpose(1, 2))
                g_vals = torch.bmm(a2.transpose(1, 2), gu)
            gl = torch._softmax_backward_data(ga, a2, -1, a2.dtype)  # (rows, Pc·T, K): ∂/∂logits
            g_qt = None
            if qt is not None:
                g_qt = torch.bmm(gl, vals)
                g_vals = g_vals + torch.bmm(gl.transpose(1, 2), qt)
            g_alpha = g_offset = None
            if want_pos:
                g_pos = gl.sum(0).view(pos.shape)
                g_alpha, g_offset = torch.autograd.grad(pos, (alpha, offset), g_pos, create_graph=higher)
        return None, None, None, g_qt, g_vals, g_alpha, g_offset
