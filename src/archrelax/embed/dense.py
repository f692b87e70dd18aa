"""DenseConv: the eFCN layer, a dense matrix acting on the flattened input.

``weight`` is ``(C_out·P, C_in·Q)``: row ``o·P + p`` is output channel o at position p, column ``c·Q + q``
is input channel c at input position q (torch's row-major flattening, so ``x.flatten(1)`` is the input and
the output is reshaped back to ``(B, C_out, *out_spatial)``; pooling, normalisation and reshaping layers
around it stay unchanged). ``bias`` is ``(C_out·P,)``: one per output unit.

Padding of every mode is folded into the matrix: no columns for padded zeros, and a reflect / replicate /
circular tap adds its weight onto the column of the input element it copies. Every entry is a free
parameter; the entries outside ``local_mask()`` (including those linking channels of different groups) are
the off-local ones.

The matrix is built by a loop over kernel taps (T ≤ a few dozen, never positions): for tap t the index map
gives the live positions p and their source columns q, and one ``index_put_`` writes the
``(C_out, C_in/g, #live)`` entries through flat int64 indices of that size only (never one index per
matrix entry), accumulating so that taps reading the same input element sum.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .base import RelaxedConv

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

    # ---- the tap loop every map below goes through --------------------------------------------------------
    def _tap_entries(self, t: int) -> tuple[Tensor, Tensor]:
        """Live positions ``p`` (n,) of tap t and the flat weight indices ``(C_out, C_in/g, n)`` they touch."""
        g = self.geometry
        cig, cog = g.in_channels // g.groups, g.out_channels // g.groups
        col = self.index[:, t]
        p = (col >= 0).nonzero().squeeze(1)
        pq = p * (g.in_channels * g.Q) + col[p]  # (n,): row offset of p plus column q
        dev = col.device
        o = torch.arange(g.out_channels, device=dev)
        c = (o // cog)[:, None] * cig + torch.arange(cig, device=dev)[None, :]  # (C_out, C_in/g) in-group inputs
        oc = o[:, None] * (g.P * g.in_channels * g.Q) + c * g.Q
        return p, oc[:, :, None] + pq  # (C_out, C_in/g, n)

    def _scatter_(self, dest: Tensor, values: Callable[[int, Tensor], Tensor]) -> Tensor:
        """``dest`` (zeroed, weight-shaped) += φ-style writes; ``values(t, p)`` gives ``(C_out, C_in/g, n)``."""
        flat = dest.view(-1)
        acc = self.geometry.padding_mode != "zeros"  # only then can two taps of one position share a column
        for t in range(self.geometry.T):
            p, lin = self._tap_entries(t)
            if p.numel():
                flat.index_put_((lin.flatten(),), values(t, p).reshape(-1), accumulate=acc)
        return dest

    # ---- the embedding and its adjoint ----------------------------------------------------------------------
    def _conv_values(self, conv_weight: Tensor) -> Callable[[int, Tensor], Tensor]:
        g = self.geometry
        w = conv_weight.reshape(g.out_channels, g.in_channels // g.groups, g.T)
        return lambda t, p: w[:, :, t, None].expand(-1, -1, p.numel())

    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        dest = torch.zeros(self.weight.shape, device=conv_weight.device, dtype=conv_weight.dtype)
        return self._scatter_(dest, self._conv_values(conv_weight))

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        g = self.geometry
        flat = weight.reshape(-1)
        cols = []
        for t in range(g.T):
            _, lin = self._tap_entries(t)
            cols.append(flat[lin].sum(-1))  # (C_out, C_in/g)
        return torch.stack(cols, -1)  # (C_out, C_in/g, T)

    def local_mask(self) -> Tensor:
        mask = torch.zeros(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        return self._scatter_(mask, lambda t, p: torch.ones((), dtype=torch.bool, device=mask.device).expand(
            self.geometry.out_channels, self.geometry.in_channels // self.geometry.groups, p.numel()))

    def load_conv_(self, conv_weight: Tensor, conv_bias: Tensor | None = None) -> "DenseConv":
        # in place: no second matrix-sized buffer
        with torch.no_grad():
            self.weight.zero_()
            self._scatter_(self.weight, self._conv_values(conv_weight.to(self.weight)))
            if self.bias is not None:
                if conv_bias is None:
                    raise ValueError("this layer has a bias but no conv bias was given")
                self.bias.copy_(self.embed_bias(conv_bias))
        return self

    @classmethod
    def from_relaxed(cls, layer: RelaxedConv) -> "DenseConv":
        """The exact eFCN of a relaxed layer (an eLCN's unshared filters included; a DenseConv is copied)."""
        if isinstance(layer, DenseConv):
            out = cls(layer.geometry, device=layer.weight.device, dtype=layer.weight.dtype, _init=False)
            with torch.no_grad():
                out.weight.copy_(layer.weight)
                if out.bias is not None:
                    out.bias.copy_(layer.bias)
            return out
        from .locally_connected import LocallyConnectedNd

        if not isinstance(layer, LocallyConnectedNd):
            raise TypeError(f"DenseConv.from_relaxed takes a LocallyConnected1d/2d or DenseConv, "
                            f"got {type(layer).__name__}; for a conv use DenseConv.from_conv(conv, in_spatial)")
        g = layer.geometry
        out = cls(g, device=layer.weight.device, dtype=layer.weight.dtype, _init=False)
        lw = layer.weight.detach()  # (g, P, C_out/g, T, C_in/g)

        def values(t: int, p: Tensor) -> Tensor:  # (C_out, C_in/g, n)
            return lw[:, p, :, t, :].permute(0, 2, 3, 1).reshape(g.out_channels, g.in_channels // g.groups, -1)

        with torch.no_grad():
            out.weight.zero_()
            out._scatter_(out.weight, values)
            if out.bias is not None:
                out.bias.copy_(layer.bias.reshape(-1))
        return out
