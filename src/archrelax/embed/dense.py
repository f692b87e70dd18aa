"""DenseConv: the eFCN layer, a dense matrix acting on the flattened input.

``weight`` is ``(C_out·P, C_in·Q)``: row ``o·P + p`` is output channel o at position p, column ``c·Q + q``
is input channel c at input position q (torch's row-major flattening, so ``x.flatten(1)`` is the input and
the output is reshaped back to ``(B, C_out, *out_spatial)``; pooling, normalisation and reshaping layers
around it stay unchanged). ``bias`` is ``(C_out·P,)``: one per output unit.

Padding of every mode is folded into the matrix: no columns for padded zeros, and a reflect / replicate /
circular tap adds its weight onto the column of the input element it copies. Every entry is a free
parameter; the entries outside ``local_mask()`` (including those linking channels of different groups) are
the off-local ones.

Construction inverts the index map once into a ``(P, Q)`` tap map (which tap, if any, links position p to
input q) and writes the whole matrix, viewed as ``(C_out, P, C_in, Q)``, with one streaming ``gather`` from
the small ``(C_out, C_in, T + 1)`` table of tap weights (block-diagonal over groups; slot T is the zero of
"no tap"): every entry is written once, so no separate zero fill and no scattered writes, and the only index
tensor is the ``(P, Q)`` map broadcast over channels. Where a padding mode makes several taps of one position
read the same input (reflect / replicate / circular), further tap maps add their weights. When rows are
sparse (T <= Q/8, e.g. a first layer) a zero fill plus a ``scatter_add_`` through the index map is faster and
is used instead. The adjoint gathers through the index map itself.

``subspace_sq_norms`` (δ, off-sharing and CNN distance, at every evaluation of a training run) never makes a
matrix-sized temporary: one streaming pass sums the squares over output channels into ``(g, P, C_in, Q)``,
so off-local sums are masked sums over the ``(P, Q)`` tap map (plus the cross-group blocks); the sharing part
works on the local entries alone, gathered as ``(g, C_out/g, C_in/g, P, K)``, slot k of position p holding the
k-th input p reads (a small, eLCN-sized tensor), where φ and its adjoint are products with a ``(P·K, T)`` 0/1
matrix (the refined projection as well).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import RelaxedConv, SubspaceSqNorms, sq_norm

__all__ = ["DenseConv"]


class DenseConv(RelaxedConv):
    """eFCN layer equivalent to a conv on one input size (see module docstring)."""

    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        g = self.geometry
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(g.out_channels * g.P, g.in_channels * g.Q, **kw))
        self.bias = nn.Parameter(torch.empty(g.out_channels * g.P, **kw)) if g.bias else None

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        return (self.geometry.out_channels * self.geometry.P,)

    @property
    def fan_in(self) -> int:
        return self.geometry.in_channels * self.geometry.Q

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        g = self.geometry
        return nn.functional.linear(x.flatten(1), self.weight, self.bias).view(-1, g.out_channels, *g.out_spatial)

    # ---- the one gather every map below goes through -----------------------------------------------------
    def _tap_layers(self) -> list[Tensor]:
        """From the index map: ``(P, Q)`` maps giving, for each (position p, input q), the k-th tap through
        which p reads q (T where there is none); k = 0 only, unless a padding mode makes taps collide."""
        idx, P, T, Q = self.index, self.geometry.P, self.geometry.T, self.geometry.Q
        dev = idx.device
        p = torch.arange(P, device=dev)[:, None].expand(P, T)
        t = torch.arange(T, device=dev)[None, :].expand(P, T)
        if self.geometry.padding_mode == "zeros":
            # at most one tap per (p, q): one write, padding taps land in a spare slot P*Q that is dropped
            key = torch.where(idx >= 0, p * Q + idx, P * Q)
            layer = torch.full((P * Q + 1,), T, dtype=torch.long, device=dev)
            return [layer.index_put_((key.flatten(),), t.flatten())[: P * Q].view(P, Q)]
        live = idx >= 0
        key, t = (p * Q + idx)[live], t[live]  # flat (p, q) of every live (p, t)
        # sort by (p, q), keeping taps in order; rank = how many earlier taps read the same (p, q)
        key, order = key.sort(stable=True)
        t = t[order]
        rank = torch.arange(key.numel(), device=dev) - torch.searchsorted(key, key)
        layers = []
        for k in range(int(rank.max()) + 1 if key.numel() else 1):  # loop over collision ranks
            sel = rank == k
            layer = torch.full((P * Q,), T, dtype=torch.long, device=dev)
            layers.append(layer.index_put_((key[sel],), t[sel]).view(P, Q))
        return layers

    def _expand(self, values: Tensor, out: Tensor | None = None) -> Tensor:
        """The φ-style matrix (weight-shaped) from ``values`` ``(C_out, P | 1, C_in, T + 1)``: tap weights per
        (out, in) channel pair, zero outside the groups and at slot T (no tap). Written into ``out`` if given
        (no autograd then), else differentiable.

        Dense rows: one streaming ``gather`` writes every matrix entry (no separate zero fill, no scatter),
        with the ``(P, Q)`` tap map broadcast over channels as its index; colliding taps (reflect...) add
        further passes. Sparse rows (T <= Q/8): zero fill, then ``scatter_add_`` through the index map.
        """
        g = self.geometry
        shape = (g.out_channels, g.P, g.in_channels, g.Q)
        values = values.expand(g.out_channels, g.P, g.in_channels, g.T + 1)
        if 8 * g.T <= g.Q:
            # sparse rows (a first layer: 16 taps in 1024 columns): a zero fill plus a scatter of the live
            # taps along the same index map is faster than gathering every entry; padding taps add 0 to column
            # 0, colliding taps (reflect...) add up
            src = values[..., : g.T] * (self.index >= 0).to(values.dtype)[None, :, None, :]  # (C_out, P, C_in, T)
            index = self.index.clamp(min=0)[None, :, None, :].expand(src.shape)
            if out is None:
                return torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_add(3, index, src).view(
                    self.weight.shape)
            return out.view(shape).zero_().scatter_add_(3, index, src).view(self.weight.shape)
        res = None
        for layer in self._tap_layers():
            part_out = out.view(shape) if (out is not None and res is None) else None
            part = torch.gather(values, 3, layer[None, :, None, :].expand(shape), out=part_out)
            res = part if res is None else (res.add_(part) if out is not None else res + part)
        return res.view(self.weight.shape)

    def _block_values(self, per_group: Tensor) -> Tensor:
        """(C_out/g, P | 1, C_in/g, T, g) -> (C_out, P | 1, C_in, T + 1): block-diagonal over groups, slot T 0."""
        g = self.geometry
        G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        n = per_group.shape[1]
        if G == 1:
            return nn.functional.pad(per_group.squeeze(4), (0, 1))
        full = per_group.new_zeros(G, cog, n, G, cig, g.T + 1)
        full.diagonal(dim1=0, dim2=3)[..., : g.T, :] = per_group  # (C_out/g, n, C_in/g, T+1, g) view
        return full.view(g.out_channels, n, g.in_channels, g.T + 1)

    def _conv_values(self, conv_weight: Tensor) -> Tensor:
        """conv weight (C_out, C_in/g, *kernel) -> (C_out, 1, C_in, T + 1)."""
        g = self.geometry
        w = conv_weight.reshape(g.groups, g.out_channels // g.groups, g.in_channels // g.groups, 1, g.T)
        return self._block_values(w.permute(1, 3, 2, 4, 0))

    # ---- the embedding, its adjoint, the mask ------------------------------------------------------------------
    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        return self._expand(self._conv_values(conv_weight))

    def _grouped(self, dense: Tensor) -> Tensor:
        """(C_out·P, C_in·Q) -> view (C_out/g, P, C_in/g, Q, g): the in-group blocks only."""
        g = self.geometry
        G = g.groups
        return dense.view(G, g.out_channels // G, g.P, G, g.in_channels // G, g.Q).diagonal(dim1=0, dim2=3)

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        g = self.geometry
        G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        view = self._grouped(weight)
        live = (self.index >= 0).to(weight.dtype)[None, :, None, :, None]
        index = self.index.clamp(min=0)[None, :, None, :, None]  # padding taps read column 0, then zeroed
        step = max(1, (1 << 24) // (g.P * g.in_channels * g.T))  # bound the (.., P, C_in/g, T, g) temporaries
        parts = []
        for i in range(0, cog, step):
            part = view[i : i + step]
            taps = torch.gather(part, 3, index.expand(part.shape[0], g.P, cig, g.T, G)) * live
            parts.append(taps.sum(1))  # (chunk, C_in/g, T, g)
        return torch.cat(parts).permute(3, 0, 1, 2).reshape(g.out_channels, cig, g.T)

    def local_mask(self) -> Tensor:
        g = self.geometry
        reads = self._tap_layers()[0] < g.T  # (P, Q): p reads q through some tap
        grp = torch.arange(g.groups, device=reads.device)
        same = grp.repeat_interleave(g.out_channels // g.groups)[:, None] == grp.repeat_interleave(
            g.in_channels // g.groups)[None, :]  # (C_out, C_in)
        return (same[:, None, :, None] & reads[None, :, None, :]).view(self.weight.shape)

    def subspace_sq_norms(self) -> SubspaceSqNorms:
        """Same values as :meth:`RelaxedConv.subspace_sq_norms`, without matrix-sized temporaries (see module
        docstring); float32 partial sums over output channels, float64 beyond."""
        g = self.geometry
        G, cog, cig, P, Q, T = g.groups, g.out_channels // g.groups, g.in_channels // g.groups, g.P, g.Q, g.T
        with torch.no_grad():
            w = self.weight.detach()
            # squares summed over the output channels of each group, (G, P, C_in, Q): one streaming pass over
            # the matrix, one output channel at a time (torch's norms reduce outer dims without vectorising)
            v = w.view(G, cog, P, g.in_channels, Q)
            acc = w.new_zeros(G, P, g.in_channels, Q)
            for gi in range(G):
                for o in range(cog):
                    acc[gi].addcmul_(v[gi, o], v[gi, o])
            s = acc.view(G, P, G, cig, Q).sum(3, dtype=torch.float64)  # (G, P, G', Q) per channel block
            layers = self._tap_layers()
            reads = layers[0] < T  # (P, Q): p reads q through some tap
            same = s.diagonal(dim1=0, dim2=2)  # (P, Q, G): in-group blocks
            blocks = s.sum((1, 3))  # (G, G)
            # off-local: summed over off-local entries only (not total - local), so it is exactly 0 when they are
            offlocal = float(same[~reads].sum() + blocks[~torch.eye(G, dtype=torch.bool, device=s.device)].sum())
            total = float(blocks.sum())

            # the local entries by slot: slot k of position p holds the k-th input q that p reads (ascending); the
            # slots past p's count (slot K - 1 at least) are empty: q_of = Q, no tap reads them, masked at the end
            cnt = reads.sum(1)  # (P,)
            K = int(cnt.max()) + 1
            pq = reads.nonzero()  # (n, 2), by p then q
            rank = torch.arange(pq.shape[0], device=w.device) - (cnt.cumsum(0) - cnt)[pq[:, 0]]
            q_of = torch.full((P, K), Q, dtype=torch.long, device=w.device)  # ascending per row; Q: empty
            q_of[pq[:, 0], rank] = pq[:, 1]
            valid = q_of < Q
            # gathered straight into (g, C_out/g, C_in/g, P, K), the layout of the matmuls below, from a transposed
            # view: the gathered axis stays last (contiguous rows of Q), and no transposed copy follows (measured
            # on layer 2 of VanillaCNN: half the time of gathering as (C_out/g, P, C_in/g, K) and transposing)
            index = q_of.clamp(max=Q - 1).view(1, 1, P, K).expand(cog, cig, P, K)
            blocks6 = w.view(G, cog, P, G, cig, Q)
            vals = w.new_empty(G, cog, cig, P, K)
            for gi in range(G):  # in-group blocks
                torch.gather(blocks6[gi, :, :, gi].transpose(1, 2), 3, index, out=vals[gi])
            vals = vals.view(G * cog * cig, P * K)
            # φ restricted to the slots is the (P·K, T) matrix A: A[(p, k), t] = 1 where tap t of p reads slot k
            # (several taps of one p may read one input under reflect / replicate / circular padding). So
            # φᵀ v = v @ A and φ r = r @ Aᵀ: matmuls with a 0/1 matrix, exact where a slot has one tap
            live = self.index >= 0
            slot_of = torch.searchsorted(q_of, self.index.clamp(min=0))  # (P, T)
            p_of = torch.arange(P, device=w.device)[:, None].expand(P, T)
            a = w.new_zeros(P * K, T)
            a[(p_of * K + slot_of)[live], torch.arange(T, device=w.device).expand(P, T)[live]] = 1

            def adjoint(v: Tensor) -> Tensor:  # slots (G·C_out/g·C_in/g, P·K) -> conv layout (C_out, C_in/g, T)
                return (v @ a).view(g.out_channels, cig, T)

            r = self._solve_gram(adjoint(vals))
            res = torch.addmm(vals, r.view(-1, T), a.T, alpha=-1)  # θ − φ(r) on the slots
            r = r + self._solve_gram(adjoint(res))  # refined as in nearest_cnn
            res = vals.addmm_(r.view(-1, T), a.T, alpha=-1)  # in place: vals is not needed any more
            # empty slots hold whatever their clamped gather read: only the valid ones count
            offsharing = sq_norm(res.view(-1, P, K).mul_(valid))
        return self._with_bias(total, offlocal, offsharing, offlocal + offsharing)

    def _load_weight_(self, conv_weight: Tensor) -> None:
        # in place: the gather writes straight into the parameter, no second matrix-sized buffer
        self._expand(self._conv_values(conv_weight.to(self.weight)), out=self.weight)

    @classmethod
    def from_relaxed(cls, layer: RelaxedConv) -> "DenseConv":
        """The exact eFCN of a relaxed layer (an eLCN's unshared filters included; a DenseConv is copied; tiled and
        wide layers through their ``to_fc()``)."""
        if isinstance(layer, DenseConv):
            out = cls(layer.geometry, device=layer.weight.device, dtype=layer.weight.dtype, _init=False)
            with torch.no_grad():
                out.weight.copy_(layer.weight)
                if out.bias is not None:
                    out.bias.copy_(layer.bias)
            return out
        from .locally_connected import LocallyConnectedNd

        if isinstance(layer, RelaxedConv) and not isinstance(layer, LocallyConnectedNd) and hasattr(layer, "to_fc"):
            return layer.to_fc()  # tiled and wide layers know their own dense matrix
        if not isinstance(layer, LocallyConnectedNd):
            raise TypeError(f"DenseConv.from_relaxed takes a relaxed layer (LocallyConnected1d/2d, TiledConv1d/2d, "
                            f"WideConv1d/2d, DenseConv), got {type(layer).__name__}; for a conv use "
                            "DenseConv.from_conv(conv, in_spatial)")
        g = layer.geometry
        out = cls(g, device=layer.weight.device, dtype=layer.weight.dtype, _init=False)
        # (g, P, C_out/g, T, C_in/g) -> (C_out/g, P, C_in/g, T, g); dead taps are never read (slot T is)
        values = out._block_values(layer.weight.detach().permute(2, 1, 4, 3, 0))
        with torch.no_grad():
            out._expand(values, out=out.weight)
            if out.bias is not None:
                out.bias.copy_(layer.bias.reshape(-1))
        return out
