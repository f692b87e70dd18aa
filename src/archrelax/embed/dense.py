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

The parts of θ − Pθ that the soft-release penalty and ``subspace_sq_norms`` (δ, off-sharing and CNN distance,
at every evaluation of a training run) are made of come from :mod:`archrelax.embed.dense_residual`, without a
matrix-sized temporary: the off-local sum from one streaming pass that sums the squares over output channels
(the total on the way), the off-sharing part on the gathered local entries alone (zero padding; a padding
mode whose taps collide uses the interface's default, with weight-sized temporaries), the unshared part
through window-adds of whole rows; the penalty's gradient is written in one pass.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import dense_residual as R
from .base import RelaxedConv, SubspaceSqNorms, _check_toward, sq_norm

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

    def read_map(self) -> Tensor:
        """``(P, Q)`` bool: output position p reads input q through some live tap (the in-group blocks' mask)."""
        return self._tap_layers()[0] < self.geometry.T

    def local_mask(self) -> Tensor:
        g = self.geometry
        reads = self.read_map()  # (P, Q)
        grp = torch.arange(g.groups, device=reads.device)
        same = grp.repeat_interleave(g.out_channels // g.groups)[:, None] == grp.repeat_interleave(
            g.in_channels // g.groups)[None, :]  # (C_out, C_in)
        return (same[:, None, :, None] & reads[None, :, None, :]).view(self.weight.shape)

    # ---- the parts of θ − Pθ, the penalty, the subspace norms (dense_residual's passes) --------------------------
    def offlocal_sq(self) -> Tensor:
        return R.CnnLocalFn.apply(self.weight, self, "local")

    def offsharing_sq(self) -> Tensor:
        if self.geometry.padding_mode != "zeros":  # colliding taps: a Gram solve (the interface's default)
            return super().offsharing_sq()
        return R.local_residual(self.weight, self).square().sum(dtype=torch.float64) + self._bias_offsharing_sq()

    def unshared_sq(self) -> Tensor:
        return R.SharedFn.apply(self.weight, self) + self._bias_offsharing_sq()

    def penalty(self, toward: str = "cnn") -> Tensor:
        _check_toward(toward)
        if toward == "cnn" and self.geometry.padding_mode == "zeros":  # both parts in one Function: one backward pass
            return (R.CnnLocalFn.apply(self.weight, self, "cnn") + self._bias_offsharing_sq()).to(self.weight.dtype)
        return super().penalty(toward)

    def add_penalty_grad_(self, toward: str = "cnn", lam: float = 1.0, *, value: bool = False) -> float:
        """The weight's part in one pass over θ and its gradient (:func:`~archrelax.embed.dense_residual.fused_grad_`),
        the bias's through autograd of its own term; colliding taps toward "cnn": the interface's default."""
        _check_toward(toward)
        w, b = self.weight, self.bias
        if not w.requires_grad or (toward == "cnn" and self.geometry.padding_mode != "zeros"):
            return super().add_penalty_grad_(toward, lam, value=value)
        total = R.fused_grad_(w, self, toward, 2.0 * float(lam), value)
        if toward == "local" or b is None:  # a bias is local
            return total
        with torch.enable_grad():
            term = self._bias_offsharing_sq()
        if b.requires_grad:
            (g,) = torch.autograd.grad(term, (b,))
            if b.grad is None:
                b.grad = (g * lam).to(b.dtype)
            else:
                b.grad.add_(g.to(b.dtype), alpha=lam)
        return total + float(term) if value else 0.0

    def subspace_sq_norms(self) -> SubspaceSqNorms:
        """The interface's values (:meth:`RelaxedConv.subspace_sq_norms`) from this layer's own parts: the total
        and the off-local sum in one streaming pass, the off-sharing part on the local entries."""
        with torch.no_grad():
            total, offlocal = (float(v) for v in R.square_sums(self, self.weight))
            offsharing = float(self.offsharing_sq())
            total += 0.0 if self.bias is None else sq_norm(self.bias)
        return SubspaceSqNorms(total, offlocal, offsharing, offlocal + offsharing)

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
