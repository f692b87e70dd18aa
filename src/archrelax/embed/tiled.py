"""Tiled convolutions (Le et al., NIPS 2010): weight sharing released partially, locality kept.

Output positions whose coordinates agree modulo the tile T (per spatial dim) share one filter: T = 1 is the
CNN, T = the output size is the eLCN, and in between every output position belongs to one of
``n_tiles = prod(T)`` tiles. A T larger than a layer's output size is clamped to it (per dim), so one
``tile=`` can be given to a whole model. Embedding a conv copies its filter into every tile (exact).

Parameters:
- ``weight``: ``(n_tiles, C_out, C_in/g, *kernel)``: ``weight[τ]`` is the conv filter of tile τ (tiles
  numbered row-major over the tile grid, like positions).
- ``bias``: ``(n_tiles, C_out)``: bias sharing is released in the same tiles.
Entries of a tap that reads zero padding at every position of its tile are *dead* (as in the eLCN): they
never influence the output, get zero gradient, are outside ``local_mask()`` and are kept at 0 by φ and by
``reset_parameters()``. ``live`` ``(n_tiles, T)`` marks the others; it and the tile of each position derive
from the index map.

Projection onto the CNN (``project_weight``) is the least-squares preimage in this layer's own parameter
space, (φᵀφ)⁻¹φᵀθ: per tap, the mean over the tiles where that tap is live (φᵀφ is diagonal, its entries
count those tiles; tiles are not weighted by how many positions they hold, because δ, the CNN distance and
the soft penalty all measure distances in this parameter space). For T = the output size that is the
eLCN's mean over live positions, for T = 1 the identity.

Forward, two exact ways (``_use_strided`` picks, from measurements): the positions ≡ (a, b) modulo T are a
conv with stride s·T started at padded input offset (a·s, b·s), so ``n_tiles`` strided convs interleaved back
into place compute the layer; each reads (and in backward writes the gradient of) the whole input, so they
pay off only for few tiles with many input channels. Otherwise the eLCN kernel (one gather through the
index map + one ``bmm``, :mod:`.locally_connected`) runs with the tile filters gathered to every position
(its cost does not depend on T). Zero padding only, as for the eLCN.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import RelaxedConv
from .connectivity import ConvGeometry
from .locally_connected import LocallyConnected1d, LocallyConnected2d, LocallyConnectedFn
from .targets import RelaxTarget, Size, _fmt, per_dim

__all__ = ["TiledConv1d", "TiledConv2d", "TiledConvNd", "tile_layout"]



def _use_strided(geom: ConvGeometry, n_tiles: int) -> bool:
    """Strided convs when they are few and each does real work: measured (benchmarks/bench_lattice.py, one
    thread, batch 250) 2.1-2.6x the conv against 2.9-3.0x for the eLCN kernel at 4 tiles of 16 positions with
    64 input channels, but 5-18x against 2.9x at 16-64 tiles, and 3.3x against 1.3x with 3 input channels
    (every tile's conv re-reads, and in backward re-writes, the whole input)."""
    return n_tiles == 1 or (n_tiles <= 9 and geom.P >= 16 * n_tiles and geom.in_channels // geom.groups >= 16)


def tile_layout(geom: ConvGeometry, tile: Size) -> tuple[int, ...]:
    """The tile per spatial dim, clamped to the output size (a larger tile is the eLCN on that dim)."""
    t = per_dim(tile, geom.dim, "tile")
    return tuple(min(ti, o) for ti, o in zip(t, geom.out_spatial))


def _tile_of(geom: ConvGeometry, tile: tuple[int, ...]) -> Tensor:
    """``(P,)`` int64: the tile of each output position (row-major over the tile grid), by broadcasting."""
    tid = torch.zeros((), dtype=torch.long)
    for o, t in zip(geom.out_spatial, tile):
        tid = tid[..., None] * t + torch.arange(o) % t
    return tid.reshape(-1)


class TiledConvNd(RelaxedConv):
    """Tiled conv for ``geometry.dim`` spatial dims; use TiledConv1d / TiledConv2d (see module docstring)."""


    def __init__(self, geometry: ConvGeometry, *, tile: Size, device: Any = None,
                 dtype: torch.dtype | None = None, _init: bool = True) -> None:
        self._check_geometry(geometry, "conv, in_spatial, tile=T")
        if geometry.padding_mode != "zeros":
            raise ValueError(
                f"a tiled conv supports padding_mode='zeros' only, got {geometry.padding_mode!r} (like the eLCN: the "
                "padded input is not an input of the layer); relax this conv to 'fc' (DenseConv) instead"
            )
        self.tile = tile_layout(geometry, tile)  # before _allocate, which needs n_tiles
        self.n_tiles = math.prod(self.tile)
        super().__init__(geometry, device=device, dtype=dtype, _init=False)
        tile_of = _tile_of(geometry, self.tile).to(self.index.device)
        live_pos = (self.index >= 0).to(torch.int32)  # (P, T)
        # live[τ, t]: tap t reads input somewhere in tile τ
        live = torch.zeros(self.n_tiles, geometry.T, dtype=torch.int32, device=tile_of.device).index_add_(
            0, tile_of, live_pos) > 0
        self.register_buffer("tile_of", tile_of, persistent=False)
        self.register_buffer("live", live, persistent=False)
        # the eLCN kernel's gather index (used with many tiles): padding taps read the zero row Q
        self.register_buffer("gather_index", torch.where(self.index >= 0, self.index, geometry.Q).flatten(),
                             persistent=False)
        # tile offsets (a_1, .., a_dim) in tile order (row-major, like tile_of)
        self._offsets = torch.cartesian_prod(*(torch.arange(t) for t in self.tile)).view(-1, geometry.dim).tolist()
        if _init:
            self.reset_parameters()

    @property
    def target(self) -> RelaxTarget:
        """The lattice point this layer is (``"tiled:T"``, T as clamped to this layer's output)."""
        return RelaxTarget("tiled", tile=self.tile[0] if len(set(self.tile)) == 1 else self.tile)

    @classmethod
    def from_conv(cls, conv: nn.Module, in_spatial: int | tuple[int, ...], *, tile: Size) -> "TiledConvNd":
        """The exact tiled version of ``conv`` on inputs of spatial shape ``in_spatial`` (every tile = the conv)."""
        geom = ConvGeometry.from_conv(conv, in_spatial)
        layer = cls(geom, tile=tile, device=conv.weight.device, dtype=conv.weight.dtype, _init=False)
        return layer.load_conv_(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())

    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        g, kw = self.geometry, dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(self.n_tiles, *g.conv_weight_shape, **kw))
        self.bias = nn.Parameter(torch.empty(self.n_tiles, g.out_channels, **kw)) if g.bias else None

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        return (self.n_tiles, self.geometry.out_channels)

    @property
    def fan_in(self) -> int:
        return self.geometry.in_channels // self.geometry.groups * self.geometry.T

    def _live_w(self) -> Tensor:
        """``live`` shaped to broadcast against ``weight`` ``(n_tiles, C_out, C_in/g, *kernel)``."""
        return self.live.view(self.n_tiles, 1, 1, *self.geometry.kernel_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight.mul_(self._live_w())  # dead taps stay 0

    # ---- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        if _use_strided(self.geometry, self.n_tiles):
            return self._forward_strided(x)
        return self._forward_lc(x)

    def _forward_strided(self, x: Tensor) -> Tensor:
        """``n_tiles`` convs of stride s·T, each on the window of padded input its tile reads, interleaved."""
        g, tile = self.geometry, self.tile
        extent = [d * (k - 1) + 1 for k, d in zip(g.kernel_size, g.dilation)]
        counts = [-(-o // t) for o, t in zip(g.out_spatial, tile)]  # M = ceil(o / T) outputs per tile and dim
        # window of tile offset a: [a·s, a·s + span); pad the end so that every tile gets M outputs (the extra
        # outputs of the short tiles read only zeros and are cropped)
        spans = [(m - 1) * t * s + e for m, t, s, e in zip(counts, tile, g.stride, extent)]
        pads = [(lo, max(hi, (t - 1) * s + span - n - lo))
                for (lo, hi), t, s, span, n in zip(g.padding, tile, g.stride, spans, g.in_spatial)]
        xp = F.pad(x, [v for p in reversed(pads) for v in p])
        conv = F.conv1d if g.dim == 1 else F.conv2d
        stride = tuple(t * s for t, s in zip(tile, g.stride))
        outs = []
        for tau, offset in enumerate(self._offsets):
            window = xp
            for i, a in enumerate(offset):  # tile offset a on spatial dim i: start a·s, length span
                window = window.narrow(2 + i, a * g.stride[i], spans[i])
            outs.append(conv(window, self.weight[tau], None if self.bias is None else self.bias[tau], stride, 0,
                             g.dilation, g.groups))  # (B, C_out, *M)
        y = torch.stack(outs, -1)  # (B, C_out, *M, n_tiles)
        B = x.shape[0]
        if g.dim == 1:
            y = y.reshape(B, g.out_channels, counts[0] * tile[0])
        else:  # (B, C, M_h, M_w, T_h, T_w) -> (B, C, M_h, T_h, M_w, T_w): position m·T + a
            y = y.view(B, g.out_channels, *counts, *tile).permute(0, 1, 2, 4, 3, 5)
            y = y.reshape(B, g.out_channels, counts[0] * tile[0], counts[1] * tile[1])
        for i, o in enumerate(g.out_spatial):
            y = y.narrow(2 + i, 0, o)
        return y.contiguous()

    def _forward_lc(self, x: Tensor) -> Tensor:
        """The eLCN kernel with every position's filter gathered from its tile (gradients flow back through
        the gather onto the tile filters)."""
        g = self.geometry
        G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        w = self.weight.index_select(0, self.tile_of)  # (P, C_out, C_in/g, *kernel)
        w = w.view(g.P, G, cog, cig, g.T).permute(1, 0, 2, 4, 3).contiguous()  # eLCN layout (g, P, C_out/g, T, C_in/g)
        out = LocallyConnectedFn.apply(x, w, self.gather_index, g)
        if self.bias is None:
            return out
        return out + self.bias.index_select(0, self.tile_of).T.reshape(g.out_channels, *g.out_spatial)

    # ---- the embedding φ (the conv filter copied into every tile), its adjoint, the mask ---------------------
    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        w = conv_weight.unsqueeze(0) * self._live_w().to(conv_weight.dtype)  # dead taps 0
        return w.expand(self.weight.shape).contiguous()

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        g = self.geometry
        s = (weight * self._live_w().to(weight.dtype)).sum(0)  # (C_out, C_in/g, *kernel)
        return s.reshape(g.out_channels, g.in_channels // g.groups, g.T)

    def tap_gram(self) -> Tensor:
        """φᵀφ: diagonal, the number of tiles in which each tap is live."""
        return torch.diag(self.live.sum(0).to(torch.long))

    def _local_factor(self) -> Tensor:
        return self._live_w()

    def local_mask(self) -> Tensor:
        """A tiled conv is local: every live entry is inside the conv's connectivity (dead taps are not)."""
        return self._live_w().expand(self.weight.shape).clone()

    # ---- bias: one per (tile, channel) ----------------------------------------------------------------------
    def embed_bias(self, conv_bias: Tensor) -> Tensor:
        return conv_bias.unsqueeze(0).expand(self.n_tiles, -1).clone()

    def adjoint_bias(self, bias: Tensor) -> Tensor:
        return bias.sum(0)

    def project_bias(self, bias: Tensor | None = None) -> Tensor | None:
        bias = self.bias if bias is None else bias
        return None if bias is None else self.adjoint_bias(bias) / self.n_tiles

    # ---- up the lattice --------------------------------------------------------------------------------------
    def to_lc(self) -> LocallyConnected1d | LocallyConnected2d:
        """The exact eLCN: each position's filter is its tile's."""
        g = self.geometry
        G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
        cls = LocallyConnected1d if g.dim == 1 else LocallyConnected2d
        w = self.weight.detach()
        lc = cls(g, device=w.device, dtype=w.dtype, _init=False)
        with torch.no_grad():
            per_pos = w.index_select(0, self.tile_of).view(g.P, G, cog, cig, g.T).permute(1, 0, 2, 4, 3)
            lc.weight.copy_(per_pos * lc._live5().to(w.dtype))  # dead taps of a position 0, as in the eLCN
            if lc.bias is not None:
                lc.bias.copy_(self.bias.detach().index_select(0, self.tile_of).T.reshape(lc.bias.shape))
        return lc

    def to_fc(self) -> RelaxedConv:
        """The exact eFCN (through :meth:`to_lc`, so it is the one hierarchical relaxation gives)."""
        from .dense import DenseConv

        return DenseConv.from_relaxed(self.to_lc())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tile={_fmt(self.tile)}"


class TiledConv1d(TiledConvNd, dim=1):
    """Tiled conv on ``(B, C, L)`` inputs (see module docstring)."""


class TiledConv2d(TiledConvNd, dim=2):
    """Tiled conv on ``(B, C, H, W)`` inputs (see module docstring)."""
