"""Positional self-attention: a conv embedded exactly into a self-attention layer, one head per kernel tap.

A convolution is a multi-head self-attention layer under constraints (Cordonnier, Loukas, Jaggi 2020, "On the
relationship between self-attention and convolutional layers"): every head attends to one fixed relative
offset, with no content term. :class:`AttentionConv2d` is that layer with the constraints made parameters.
Queries are the conv's P output positions, keys its Q input positions plus one *null* key, heads its T taps
(head h is tap h, row-major). With x the input flattened to (B, C_in, Q):

    logit[b, h, p, q]    = −α_h ‖r_q − τ_hp‖² + (W_q^h x[b, :, κ_p]) · (W_k^h x[b, :, q]) / √d_k
    logit[b, h, p, null] = −α_h / 2                                         (the null key's value is 0)
    A = softmax over the Q + 1 keys
    y[b, o, p] = bias[o] + Σ_h Σ_(c in o's group) weight[o, c, h] · Σ_q A[b, h, p, q] x[b, c, q]

- r_q: input position q's coordinates (integers, one per spatial dim);
- τ_hp = tap_coords[p, h] + offset[h]: the input position that tap h reads for output position p
  (:func:`target_coords`, from the index map), moved by a learned shift (0 at the embedding). Under zero padding
  a tap may read outside the input: its target is then the unpadded coordinate, at distance >= 1 from every key.
  Under reflect / replicate / circular padding it is the input element the padding copies;
- κ_p: the query's own input position, the receptive field's centre rounded down and clamped into the input
  (only the content term reads it);
- weight ``(C_out, C_in/g, *kernel)``: the value maps, the conv weight itself (head h uses tap h's slice);
  bias ``(C_out,)``: the conv's. alpha ``(T,)``, offset ``(T, dim)``, query_weight and key_weight
  ``(T, d_k, C_in)`` (absent when d_k = 0: positional attention only).

Why it is exact. At the embedding α_h = α (80 by default), offset = 0, W_q = 0. For a tap that reads input q₀
the logits are 0 at q₀, −α/2 at the null and <= −α at every other key (integers times α, computed as
per-dim differences, so exactly); the softmax then puts 1/(1 + e^(−α/2) + ...) on q₀, which is 1.0 in float32
and float64 (e^(−40) = 4e-18 is below half an ulp of 1), so Σ_q A x[q] is x[q₀] and the sum over heads is the
conv's sum over taps, up to the order of the additions. For a tap that reads zero padding every key is at
squared distance >= 1 and the null (value 0) takes all but e^(−α/2) of the mass. The content logit is 0·(...)
= 0 exactly; W_k is small and random (uniform ±1/√C_in), so W_q's gradient is not 0.

The price of exactness: every gradient through the attention (α, offsets, W_q) goes through the softmax's
Jacobian diag(A) − AAᵀ, which is O(e^(−α/2)) where A is one-hot to that precision: at α = 80 they are
non-zero and finite but about 1e-18 (α: through the null) to 1e-35 (offsets, W_q: through the keys at
distance 1), and only the value maps (the conv weights) and the bias learn at first. ``"attn:alpha=A"`` trades
exactness for live gradients: the leak off the conv's tap, and these gradients, are about e^(−A/2).

Annealing the sharpness after the switch (``"attn:alpha=32,anneal_to=4,anneal_steps=20"``) has both: the logits
use α_h + s(t), s(t) = (anneal_to − α₀)·min(1, t/anneal_steps) at the run's step t (0 = the switch), so the layer
is exact at the switch (s(0) = 0: the same bits as without the option) and its softmax unsaturates over
anneal_steps steps, the function drifting continuously from the conv's, while α, the offsets and the content maps
get gradients within a few orders of the value maps'. The shift is added, not multiplied: α's gradient is then
the effective sharpness's own, where a factor s would shrink α's steps by s² (measured: α moved 1e-4 in 2 epochs
under a factor, benchmarks/README.md). s is the persistent buffer ``alpha_shift`` (present only with the option, so
that a checkpoint or final.pt holds the function it was trained as); the trainer sets it from the step before
each update and evaluation (:func:`anneal_attention_`), so a resumed run needs no state.

Computation. The key map is folded into the query, q̃ = W_kᵀ W_q x[κ_p] / √d_k (a ``(B, P, T, C_in)`` tensor),
so the content logits of a chunk are one batched matmul of q̃ against the keys' values x (the same tensor the
attention then averages); the attention is laid out (batch, queries, heads, keys), so that its average of the
values, Σ_q A x[q], comes out as ``(B, P, T, C_in)``: the unfolded input at the embedding, which the value maps
multiply in one GEMM per group, as an eLCN or an im2col conv would.

Memory: the (batch, heads, queries, keys) attention is never held whole. :func:`~.attention_chunks.chunk_plan` cuts it into
chunks of at most ``chunk_bytes`` (default :data:`CHUNK_BYTES`; about :data:`_LIVE` chunk-sized tensors are
alive at once: logits, probabilities, their gradients) along the batch, then the queries. Each chunk is an
autograd Function (``_ChunkAttention``) that keeps only its inputs and recomputes its probabilities in backward,
so backward holds one chunk at a time too. Outside ``create_graph`` its chunk-sized tensors live in per-thread
CPU workspaces reused from chunk to chunk (``locally_connected.release_workspaces`` frees them) and α's and the
offsets' gradients come from marginal sums (:meth:`AttentionConvNd.positional_grads`); under ``create_graph``
(Hessian-vector products) the backward runs in differentiable ops, so second derivatives are exact too. With d_k = 0 the attention does not depend on the input: it is computed
per query chunk once for the whole batch. What is kept for backward is input-sized: x, q̃ and the averaged values
(each B·P·T·C_in floats, one unfolded input, as the eLCN keeps).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .attention_chunks import CHUNK_BYTES, _ChunkAttention, _logits, _softmax_, chunk_plan
from .base import RelaxedConv
from .connectivity import ConvGeometry, index_map
from .targets import DEFAULT_ALPHA, RelaxTarget

__all__ = ["AttentionConvNd", "AttentionConv1d", "AttentionConv2d", "target_coords", "key_dim_for",
           "attention_param_count", "attention_cost", "anneal_attention_", "DEFAULT_KEY_DIM"]

DEFAULT_KEY_DIM = 8  # content width cap: d_k = min(C_in, 8) unless "attn:dk=K" says otherwise


def key_dim_for(geom: ConvGeometry, key_dim: int | None) -> int:
    """The content query/key width of an attention layer for ``geom``: ``key_dim``, or min(C_in, 8) for None."""
    return min(geom.in_channels, DEFAULT_KEY_DIM) if key_dim is None else int(key_dim)


def attention_param_count(geom: ConvGeometry, key_dim: int | None = None) -> int:
    """Parameters of the attention layer of ``geom``: the conv's weight and bias, α (T), offsets (T·dim) and
    the content maps (2·T·d_k·C_in)."""
    conv = math.prod(geom.conv_weight_shape) + (geom.out_channels if geom.bias else 0)
    return conv + geom.T * (1 + geom.dim + 2 * key_dim_for(geom, key_dim) * geom.in_channels)


def attention_cost(geom: ConvGeometry) -> float:
    """How much bigger than its conv the attention of ``geom`` is: the attention's entries per sample (heads ×
    queries × keys, T·P·(Q + 1)) over the conv's multiply-adds per sample (P·T·C_in/g·C_out), i.e.
    (Q + 1)·g / (C_in·C_out). Every entry costs an exp and, with content, 2·C_in multiply-adds more, so this is
    what decides whether a layer is affordable: VanillaCNN's first conv (3→64 on 32x32: every output over all
    1024 input pixels) reads 5.3 (24.5 on mnist's 28x28 with width 32) and ran 450x its eLCN; its other convs
    and AlexNet's read 0.0001-0.05 and ran 2-11x (benchmarks/bench_attention.py)."""
    return (geom.Q + 1) * geom.groups / (geom.in_channels * geom.out_channels)


def _unravel(idx: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat row-major indices ``(...)`` -> coordinates ``(..., len(shape))``."""
    return torch.stack(torch.unravel_index(idx, shape), -1)


def _unpadded_coords(geom: ConvGeometry) -> Tensor:
    """``(P, T, dim)`` int64: the coordinate, in the unpadded input, of the element tap t reads for output p
    (negative or >= the size where it reads padding): the index map of the same conv on the input with its
    padding made real, shifted back by the padding before."""
    grid = tuple(n + lo + hi for n, (lo, hi) in zip(geom.in_spatial, geom.padding))
    padded = dataclasses.replace(geom, padding=((0, 0),) * geom.dim, padding_mode="zeros", in_spatial=grid)
    return _unravel(index_map(padded), grid) - torch.tensor([lo for lo, _ in geom.padding])


def target_coords(geom: ConvGeometry) -> Tensor:
    """``(P, T, dim)`` int64: where head t's attention points for query p at the embedding: the coordinate of the
    input element tap t reads (the index map); for a tap that reads zero padding, the padded position itself
    (outside the input, so the null key takes it); for reflect / replicate / circular padding the element the
    padding copies."""
    if geom.padding_mode == "zeros":
        return _unpadded_coords(geom)
    return _unravel(index_map(geom), geom.in_spatial)


class AttentionConvNd(RelaxedConv):
    """Positional self-attention for ``geometry.dim`` spatial dims; use AttentionConv1d / AttentionConv2d (see the
    module docstring). ``alpha``: α at the embedding (default 80); ``key_dim``: d_k (default min(C_in, 8), 0 for
    positional attention only); ``chunk_bytes``: the memory budget of one attention chunk; ``seed``: the seed of
    W_k's initial draw in ``from_conv`` (default ``torch.initial_seed()``; the global RNG is not advanced);
    ``anneal_to``, ``anneal_steps``: the sharpness after the switch (see the module docstring; both or neither)."""

    def __init__(self, geometry: ConvGeometry, *, alpha: float | None = None, key_dim: int | None = None,
                 chunk_bytes: int | None = None, seed: int | None = None, anneal_to: float | None = None,
                 anneal_steps: int | None = None, device: Any = None, dtype: torch.dtype | None = None,
                 _init: bool = True) -> None:
        self._check_geometry(geometry)  # before anything below reads it
        if key_dim is not None and (isinstance(key_dim, bool) or int(key_dim) != key_dim or key_dim < 0):
            raise ValueError(f"{type(self).__name__}: key_dim={key_dim!r} must be an int >= 0 (0: positional only)")
        if alpha is not None and not 0 < float(alpha) < math.inf:
            raise ValueError(f"{type(self).__name__}: alpha={alpha!r} must be a positive finite number")
        if (anneal_to is None) != (anneal_steps is None):
            raise ValueError(f"{type(self).__name__}: anneal_to={anneal_to!r} and anneal_steps={anneal_steps!r}: give "
                             "both (an anneal of α after the switch) or neither")
        if anneal_to is not None and not 0 < float(anneal_to) < math.inf:
            raise ValueError(f"{type(self).__name__}: anneal_to={anneal_to!r} must be a positive finite number")
        if anneal_steps is not None and (isinstance(anneal_steps, bool) or int(anneal_steps) != anneal_steps
                                         or anneal_steps < 1):
            raise ValueError(f"{type(self).__name__}: anneal_steps={anneal_steps!r} must be an int >= 1")
        self._spec = (None if alpha is None or float(alpha) == DEFAULT_ALPHA else float(alpha),
                      None if key_dim is None else int(key_dim))
        self.anneal = None if anneal_to is None else (float(anneal_to), int(anneal_steps))
        self.alpha0 = DEFAULT_ALPHA if alpha is None else float(alpha)
        self.key_dim = key_dim_for(geometry, key_dim)
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
        super().__init__(geometry, device=device, dtype=dtype, _init=False)
        g, fdtype = geometry, dtype or torch.get_default_dtype()
        # positions as floats in the layer's dtype (they follow .to(dtype)); integers, so exact in any float dtype
        self.register_buffer("tap_coords", target_coords(g).to(device=device, dtype=fdtype), persistent=False)  # (P, T, dim)
        centre = _unpadded_coords(g).to(torch.float64).mean(1)  # (P, dim): the receptive field's centre
        self.register_buffer("centre", centre.to(device=device, dtype=fdtype), persistent=False)
        near = torch.stack([centre[:, d].floor().clamp(0, n - 1).long() for d, n in enumerate(g.in_spatial)], 1)
        flat = torch.zeros(g.P, dtype=torch.long)
        for d, n in enumerate(g.in_spatial):
            flat = flat * n + near[:, d]
        self.register_buffer("query_index", flat.to(device), persistent=False)  # (P,) κ_p
        if self.anneal is not None:  # s(t), persistent: the checkpoint holds the function it was trained as
            self.register_buffer("alpha_shift", torch.zeros((), device=device, dtype=fdtype))
        gen = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self._embed_attention_(gen)
        if _init:
            self.reset_parameters()

    @property
    def target(self) -> RelaxTarget:
        """The lattice point this layer is (``"attn"``, ``"attn:alpha=40,dk=4"``)."""
        to, steps = self.anneal or (None, None)
        return RelaxTarget("attn", alpha=self._spec[0], key_dim=self._spec[1], anneal_to=to, anneal_steps=steps)

    @classmethod
    def from_conv(cls, conv: nn.Module, in_spatial: int | tuple[int, ...], *, alpha: float | None = None,
                  key_dim: int | None = None, seed: int | None = None, anneal_to: float | None = None,
                  anneal_steps: int | None = None) -> "AttentionConvNd":
        """The exact attention form of ``conv`` on inputs of spatial shape ``in_spatial``."""
        geom = ConvGeometry.from_conv(conv, in_spatial)
        layer = cls(geom, alpha=alpha, key_dim=key_dim, seed=seed, anneal_to=anneal_to, anneal_steps=anneal_steps,
                    device=conv.weight.device, dtype=conv.weight.dtype, _init=False)
        return layer.load_conv_(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())

    # ---- parameters -----------------------------------------------------------------------------------------
    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        g, kw = self.geometry, dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(g.conv_weight_shape, **kw))
        self.bias = nn.Parameter(torch.empty(g.out_channels, **kw)) if g.bias else None
        self.alpha = nn.Parameter(torch.empty(g.T, **kw))
        self.offset = nn.Parameter(torch.empty(g.T, g.dim, **kw))
        if self.key_dim:
            self.query_weight = nn.Parameter(torch.empty(g.T, self.key_dim, g.in_channels, **kw))
            self.key_weight = nn.Parameter(torch.empty(g.T, self.key_dim, g.in_channels, **kw))
        else:
            self.query_weight = self.key_weight = None

    def _embed_attention_(self, gen: torch.Generator | bool | None = None) -> None:
        """α = α₀, offsets 0, W_q = 0 (the conv's attention), the anneal at its start (s = 0); W_k drawn anew when
        ``gen`` is given (uniform ±1/√C_in, from ``gen``, or the global RNG for ``gen=True``)."""
        with torch.no_grad():
            self.alpha.fill_(self.alpha0)
            self.offset.zero_()
            if self.anneal is not None:
                self.alpha_shift.zero_()
            if self.key_dim:
                self.query_weight.zero_()
                if gen is not None:
                    bound = 1.0 / math.sqrt(self.geometry.in_channels)
                    w = self.key_weight
                    draw = torch.rand(w.shape, dtype=torch.float64, generator=None if gen is True else gen)
                    w.copy_(draw.mul_(2 * bound).sub_(bound))

    def _load_weight_(self, conv_weight: Tensor) -> None:
        """The embedding: the conv weight as the value maps, and the attention put back on the conv's taps."""
        self.weight.copy_(conv_weight.reshape(self.weight.shape))
        self._embed_attention_()

    def reset_parameters(self) -> None:
        """A from-scratch attention layer: a freshly initialised conv (uniform ±1/√fan_in, like nn.Linear) in
        attention form (α₀, no shift, W_q = 0, W_k drawn from the global RNG)."""
        super().reset_parameters()
        self._embed_attention_(True)

    @property
    def fan_in(self) -> int:
        return self.geometry.in_channels // self.geometry.groups * self.geometry.T

    # ---- the embedding φ: the identity on the conv's weight and bias -----------------------------------------
    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        return conv_weight.reshape(self.geometry.conv_weight_shape).clone()

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        return weight.flatten(2)

    def tap_gram(self) -> Tensor:
        """φᵀφ = I: each tap's value map is one head's (a dead tap's too: its head can move into the input)."""
        return torch.eye(self.geometry.T, dtype=torch.long, device=self.index.device)

    def local_mask(self) -> Tensor:
        """All True: the value maps are the conv's taps; the attention's reach is in α, the offsets and the
        content maps, which :func:`archrelax.embed.attention_measures.attention_measures` measures."""
        return torch.ones(self.geometry.conv_weight_shape, dtype=torch.bool, device=self.index.device)

    def embed_bias(self, conv_bias: Tensor) -> Tensor:
        return conv_bias.clone()

    def adjoint_bias(self, bias: Tensor) -> Tensor:
        return bias

    def project_bias(self, bias: Tensor | None = None) -> Tensor | None:
        return self.bias if bias is None else bias

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        return (self.geometry.out_channels,)

    # ---- the sharpness's anneal ----------------------------------------------------------------------------
    def anneal_shift(self, step: int) -> float:
        """s(step) = (anneal_to − α₀)·min(1, step/anneal_steps): what is added to α at the run's ``step`` (0 = the
        switch, where it is exactly 0); 0.0 without an anneal."""
        if self.anneal is None:
            return 0.0
        to, steps = self.anneal
        return (to - self.alpha0) * min(1.0, step / steps)

    def effective_alpha(self) -> Tensor:
        """``(T,)``: the sharpness the logits use, α + s (α itself without an anneal: the same tensor, so the same
        bits and graph as a layer without the option; α + 0 is α's bits too)."""
        return self.alpha if self.anneal is None else self.alpha + self.alpha_shift

    # ---- the attention -------------------------------------------------------------------------------------
    def positional_logits(self, p0: int = 0, p1: int | None = None, alpha: Tensor | None = None,
                          offset: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """``(p1 − p0, T, Q + 1)``: −α_h ‖r_q − τ_hp‖² for the queries p0 <= p < p1, the null key's −α_h/2 last
        (``alpha``, ``offset``: in place of the layer's own; ``out``: a buffer to write into, without a graph).
        Per-dim squared differences summed by broadcasting, so integer positions give exact logits."""
        g = self.geometry
        alpha = self.effective_alpha() if alpha is None else alpha
        t = self.tap_coords[p0:p1] + (self.offset if offset is None else offset)  # (Pc, T, dim)
        neg_alpha = -alpha.view(1, -1, 1)
        terms = [(torch.arange(n, device=t.device, dtype=t.dtype) - t[..., d : d + 1]).square() * neg_alpha
                 for d, n in enumerate(g.in_spatial)]  # (Pc, T, n_d) each
        if out is None:
            body = terms[0] if g.dim == 1 else (terms[0].unsqueeze(-1) + terms[1].unsqueeze(-2)).flatten(-2)
            return torch.cat([body, (0.5 * neg_alpha).expand(body.shape[0], g.T, 1)], -1)
        out = out.view(t.shape[0], g.T, g.Q + 1)
        if g.dim == 1:
            out[..., : g.Q].copy_(terms[0])
        else:
            torch.add(terms[0].unsqueeze(-1), terms[1].unsqueeze(-2), out=out[..., : g.Q].unflatten(-1, g.in_spatial))
        out[..., g.Q] = 0.5 * neg_alpha.view(1, -1)
        return out

    def positional_grads(self, p0: int, p1: int, g_pos: Tensor, alpha: Tensor | None = None,
                         offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(∂/∂α (T,), ∂/∂offset (T, dim))`` from ``g_pos`` ``(p1 − p0, T, Q + 1)``, the gradient of
        :meth:`positional_logits`, without a graph: the logits are separable per spatial dim, −α Σ_d (r_d − τ_d)²,
        so only the marginal sums of ``g_pos`` over the key grid's other dims are needed (no key-sized temporary).
        ``alpha``, ``offset``: the values the forward used (default: the layer's own; a backward passes the ones
        it saved, so that a layer whose parameters were swapped since, as lockstep's members share one, is right)."""
        g = self.geometry
        alpha = (self.effective_alpha() if alpha is None else alpha).detach()
        t = self.tap_coords[p0:p1] + (self.offset if offset is None else offset).detach()  # (Pc, T, dim)
        grid = g_pos[..., : g.Q].unflatten(-1, g.in_spatial)  # (Pc, T, *in_spatial)
        g_alpha = -0.5 * g_pos[..., g.Q].sum(0)  # the null key's −α/2
        g_tau = []
        for d, n in enumerate(g.in_spatial):
            marginal = grid.sum([2 + e for e in range(g.dim) if e != d]) if g.dim > 1 else grid  # (Pc, T, n)
            diff = torch.arange(n, device=t.device, dtype=t.dtype) - t[..., d : d + 1]  # r_d − τ_d
            g_alpha = g_alpha - (marginal * diff.square()).sum((0, 2))
            g_tau.append((marginal * diff).sum(2))  # (Pc, T): ∂/∂τ_d = 2α Σ_q g (r_d − τ_d)
        return g_alpha, torch.stack(g_tau, -1).sum(0) * (2 * alpha).view(-1, 1)

    def _queries(self, xf: Tensor) -> Tensor:
        """``(B, P, T, C_in)``: q̃ = W_kᵀ W_q x[:, :, κ_p] / √d_k, so that the content logit of key q is q̃ · x_q
        (the key map folded into the query: one well-shaped matmul against the values per chunk)."""
        g, (B, C) = self.geometry, xf.shape[:2]
        xq = xf[:, :, self.query_index].transpose(0, 1).reshape(C, B * g.P)  # (C_in, B·P)
        wq = (self.query_weight * self.key_dim ** -0.5).reshape(g.T * self.key_dim, C)
        q = torch.mm(wq, xq).view(g.T, self.key_dim, B * g.P)  # W_q x: one GEMM for every head
        qt = torch.bmm(self.key_weight.transpose(1, 2), q)  # (T, C_in, B·P): W_kᵀ per head, long rows
        # (B, P, T, C_in); two einsums did the same with layouts that ran their matmuls at 3.5 GFLOP/s
        return qt.view(g.T, C, B, g.P).permute(2, 3, 0, 1).contiguous()

    def _chunks(self, batch: int, itemsize: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        rows, queries = chunk_plan(self.geometry, self.key_dim, batch, itemsize, self.chunk_bytes)
        return ([(i, min(batch, i + rows)) for i in range(0, batch, rows)],
                [(i, min(self.geometry.P, i + queries)) for i in range(0, self.geometry.P, queries)])

    @staticmethod
    def _split(t: Tensor, spans: list[tuple[int, int]], dim: int) -> tuple[Tensor, ...]:
        """``t`` cut along ``dim`` at ``spans``, by ``split``: its backward is one concatenation, where a slice per
        chunk would allocate (and zero) a gradient of the whole tensor per chunk."""
        return torch.split(t, [b - a for a, b in spans], dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        g = self.geometry
        B, C, T, P = x.shape[0], g.in_channels, g.T, g.P
        G, cog = g.groups, g.out_channels // g.groups
        xf = x.flatten(2)  # (B, C_in, Q)
        vals = torch.nn.functional.pad(xf, (0, 1)).transpose(1, 2)  # (B, Q + 1, C_in): keys and values; the null's 0
        row_chunks, query_chunks = self._chunks(B, x.element_size())
        alpha = self.effective_alpha()  # the chunks' input: α's gradient goes through s by autograd

        def cat(parts: list[Tensor], dim: int) -> Tensor:
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim)

        if self.key_dim == 0:  # one attention for the whole batch: values as one (K, B·C_in) matrix
            v = vals.transpose(0, 1).reshape(g.Q + 1, B * C)
            u = cat([_ChunkAttention.apply(self, p0, p1, None, v, alpha, self.offset) for p0, p1 in query_chunks], 0)
            u = u.view(P, T, B, C).transpose(0, 2).transpose(1, 2)  # (B, P, T, C_in), a view
        else:
            qt = self._queries(xf)  # (B, P, T, C_in)
            rows = []
            for qt_b, vals_b in zip(self._split(qt, row_chunks, 0), self._split(vals, row_chunks, 0)):
                rows.append(cat([_ChunkAttention.apply(self, p0, p1, qt_bp.flatten(1, 2), vals_b, alpha, self.offset)
                                 for (p0, p1), qt_bp in zip(query_chunks, self._split(qt_b, query_chunks, 1))], 1))
            u = cat(rows, 0)
        # u: Σ_q A x[q] per (sample, query, head). Value maps, y[b, o, p] = Σ_(h, c) weight[o, c, h] u[b, p, h, c]:
        # one GEMM per group
        u = u.reshape(B, P, T, G, C // G).permute(3, 0, 1, 2, 4).reshape(G, B * P, T * C // G)
        w = self.weight.reshape(G, cog, C // G, T).permute(0, 3, 2, 1).reshape(G, T * C // G, cog)
        y = torch.bmm(u, w).view(G, B, P, cog).permute(1, 0, 3, 2).reshape(B, g.out_channels, *g.out_spatial)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * g.dim))
        return y

    @torch.no_grad()
    def attention_chunks(self, x: Tensor | None) -> Iterator[tuple[slice, slice, Tensor, Tensor]]:
        """The attention of input ``x`` chunk by chunk (the forward's chunks; no gradient):
        ``(batch rows, queries, A, A_pos)`` with A ``(rows, queries, T, Q + 1)`` (``(1, ...)``, the same for every
        row, when it does not depend on x: d_k = 0, or ``x=None``: the positional attention of one row) and A_pos
        ``(queries, T, Q + 1)`` the attention without its content term (the null key last)."""
        batch = 1 if x is None else x.shape[0]
        qt = vals = None
        if x is not None:
            self._check_input(x)
            xf = x.flatten(2)
            vals = torch.nn.functional.pad(xf, (0, 1)).transpose(1, 2)
            qt = self._queries(xf) if self.key_dim else None
        row_chunks, query_chunks = self._chunks(batch, self.weight.element_size())
        for b0, b1 in row_chunks if qt is not None else [(0, batch)]:
            for p0, p1 in query_chunks:
                a_pos = _softmax_(self.positional_logits(p0, p1))
                a = a_pos[None] if qt is None else _softmax_(
                    _logits(self, p0, p1, qt[b0:b1, p0:p1].flatten(1, 2), vals[b0:b1], self.effective_alpha(),
                            self.offset))
                yield slice(b0, b1), slice(p0, p1), a, a_pos

    def attention_map(self, x: Tensor) -> Tensor:
        """The whole attention ``(B, T, P, Q + 1)`` (batch, heads, queries, keys; the null key last) of input ``x``,
        for inspecting small layers: it materialises what the forward never holds at once."""
        g = self.geometry
        out = x.new_empty(x.shape[0], g.P, g.T, g.Q + 1)
        for rows, queries, a, _ in self.attention_chunks(x):
            out[rows, queries] = a
        return out.transpose(1, 2)

    def extra_repr(self) -> str:
        anneal = "" if self.anneal is None else f", anneal_to={self.anneal[0]:g}, anneal_steps={self.anneal[1]}"
        return f"{super().extra_repr()}, heads={self.geometry.T}, key_dim={self.key_dim}, alpha={self.alpha0:g}{anneal}"


def anneal_attention_(model: nn.Module, step: int) -> None:
    """Set every annealed attention layer of ``model`` to its sharpness at the run's ``step`` (0 = the switch):
    ``alpha_shift`` = :meth:`AttentionConvNd.anneal_shift` (``step``). The trainer calls it whenever its step
    changes, so the schedule is a pure function of the step, as the learning rate and λ(t) are."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AttentionConvNd) and m.anneal is not None:
                m.alpha_shift.fill_(m.anneal_shift(step))


class AttentionConv1d(AttentionConvNd, dim=1):
    """Positional self-attention on ``(B, C, L)`` inputs (see the module docstring)."""


class AttentionConv2d(AttentionConvNd, dim=2):
    """Positional self-attention on ``(B, C, H, W)`` inputs (see the module docstring)."""
