"""Wide convolutions: locality released, sharing kept — a conv embedded exactly into a conv with a larger kernel.

A conv with kernel k, dilation d and zero padding (lo, hi) along a spatial dim reads, at output position i,
the padded input elements ``i·s + j·d − lo`` (taps j < k): a window of extent ``e = d·(k − 1) + 1``. Its
*wide* version has K >= e taps of dilation 1 and padding (lo + a, hi + K − e − a); the original taps sit at
offsets ``a + j·d`` inside it and every other tap is zero. Then wide tap ``a + j·d`` of output i reads
``i·s + a + j·d − (lo + a)``, the same element as before, and the output shape is unchanged, so the wide conv
computes the same function; released, the zero taps let every output read a wider window (K per dim).

- ``kernel_size=K`` (int or per-dim tuple): the original taps are centred, ``a = (K − e) // 2`` (one more
  tap after than before when K − e is odd: the grown padding is then asymmetric, applied with ``F.pad``).
  K below the extent e is an error naming the minimum; K at or above the global conv's size (below) is
  clamped to it, per dim, since further taps would only ever read zeros (so ``"wide:99"`` on a small layer
  is its ``"wide:full"``).
- ``kernel_size="full"``: the global convolution: the smallest K (and its offset) for which every output
  reads every input element, one shared filter per relative offset: ``lo + a = max((o − 1)·s, lo)``,
  ``K = lo + a + max(n, e − lo)`` (for stride 1 and 'same' padding that is ``2n − 1``).

Zero padding only: with reflect / replicate / circular padding a wider window would read elements the
original padding never made; relax those convs to ``'fc'`` (every padding mode folds into the eFCN).

Parameters: ``weight`` ``(C_out, C_in/g, *K)`` (a conv weight), ``bias`` ``(C_out,)`` (shared, as in the
conv). ``geometry`` is the ORIGINAL conv's, so distances are measured against the CNN; ``wide_geometry``
is the wide conv's own. Everything derives from the index map: the wide geometry's index map restricted to
the original taps (``tap_pos``) is the original's index map (tests check this identity).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import RelaxedConv
from .connectivity import ConvGeometry, index_map
from .targets import RelaxTarget, Size, _fmt, per_dim

__all__ = ["WideConv1d", "WideConv2d", "WideConvNd", "wide_layout"]


def wide_layout(geom: ConvGeometry, kernel_size: Size | str, *,
                check_padding: bool = True) -> tuple[ConvGeometry, tuple[int, ...]]:
    """``(wide geometry, offsets)``: the wide conv's geometry and, per spatial dim, the offset ``a`` of the
    original's first tap inside the wide kernel (see module docstring). Raises ValueError for a padding mode
    other than zeros (unless ``check_padding=False``: sizes only) or a kernel smaller than the conv's extent."""
    if check_padding and geom.padding_mode != "zeros":
        raise ValueError(
            f"a wide conv supports padding_mode='zeros' only, got {geom.padding_mode!r}: a wider window would read "
            "padded elements the original never made; relax this conv to 'fc' (DenseConv) instead, which folds every "
            "padding mode in exactly"
        )
    extent = tuple(d * (k - 1) + 1 for k, d in zip(geom.kernel_size, geom.dilation))
    full = kernel_size == "full"
    if not full:
        ks = per_dim(kernel_size, geom.dim, "kernel_size")
        if any(K < e for K, e in zip(ks, extent)):
            least = extent if len(set(extent)) > 1 else extent[0]
            raise ValueError(
                f"kernel_size={_fmt(kernel_size)} is smaller than the conv's extent {extent} "
                f"(dilation·(kernel − 1) + 1 per dim, kernel {geom.kernel_size}, dilation {geom.dilation}); "
                f"the minimum is {_fmt(least)} (to='wide:{_fmt(least)}'), or use 'full'"
            )
    kernel, padding, offsets = [], [], []
    for i in range(geom.dim):
        n, o, s, e = geom.in_spatial[i], geom.out_spatial[i], geom.stride[i], extent[i]
        lo, hi = geom.padding[i]
        a_full = max((o - 1) * s, lo) - lo  # wide padding lo + a reaches back to input 0 from the last output
        K_full = lo + a_full + max(n, e - lo)  # ... and forward to input n - 1 from the first
        if full or ks[i] >= K_full:  # a larger kernel would only add taps that read padding
            K, a = K_full, a_full
        else:
            K = ks[i]
            a = (K - e) // 2
        kernel.append(K)
        padding.append((lo + a, hi + K - e - a))
        offsets.append(a)
    wide = ConvGeometry(
        dim=geom.dim, in_channels=geom.in_channels, out_channels=geom.out_channels, groups=geom.groups,
        kernel_size=tuple(kernel), stride=geom.stride, dilation=(1,) * geom.dim, padding=tuple(padding),
        padding_mode="zeros", bias=geom.bias, in_spatial=geom.in_spatial, out_spatial=geom.out_spatial,
    )
    return wide, tuple(offsets)


def _tap_positions(geom: ConvGeometry, wide: ConvGeometry, offsets: tuple[int, ...]) -> Tensor:
    """``(T,)`` int64: flat (row-major) wide tap of each original tap; built per dim by broadcasting."""
    pos = torch.zeros((), dtype=torch.long)
    for i in range(geom.dim):
        u = offsets[i] + torch.arange(geom.kernel_size[i]) * geom.dilation[i]  # (k_i,)
        pos = pos[..., None] * wide.kernel_size[i] + u  # append this dim's axis
    return pos.reshape(-1)


class WideConvNd(RelaxedConv):
    """Wide conv for ``geometry.dim`` spatial dims; use WideConv1d / WideConv2d (see module docstring)."""


    def __init__(self, geometry: ConvGeometry, *, kernel_size: Size | str, device: Any = None,
                 dtype: torch.dtype | None = None, _init: bool = True) -> None:
        self._check_geometry(geometry, "conv, in_spatial, kernel_size=K")
        # set before RelaxedConv.__init__, whose _allocate needs the wide shape
        self.wide_geometry, self.offsets = wide_layout(geometry, kernel_size)
        self.kernel_size_spec = "full" if kernel_size == "full" else (
            kernel_size if isinstance(kernel_size, int) else tuple(kernel_size))
        super().__init__(geometry, device=device, dtype=dtype, _init=False)
        self.register_buffer("tap_pos", _tap_positions(geometry, self.wide_geometry, self.offsets).to(device),
                             persistent=False)
        pads = self.wide_geometry.padding
        # symmetric padding goes to the conv itself; asymmetric (K - extent odd) through F.pad first
        self._pad = None if all(a == b for a, b in pads) else tuple(v for p in reversed(pads) for v in p)
        if _init:
            self.reset_parameters()

    @property
    def target(self) -> RelaxTarget:
        """The lattice point this layer is (``"wide:K"`` / ``"wide:full"``)."""
        return RelaxTarget("wide", kernel_size=self.kernel_size_spec)

    @classmethod
    def from_conv(cls, conv: nn.Module, in_spatial: int | tuple[int, ...], *,
                  kernel_size: Size | str) -> "WideConvNd":
        """The exact wide version of ``conv`` on inputs of spatial shape ``in_spatial``."""
        geom = ConvGeometry.from_conv(conv, in_spatial)
        layer = cls(geom, kernel_size=kernel_size, device=conv.weight.device, dtype=conv.weight.dtype, _init=False)
        return layer.load_conv_(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())

    def _allocate(self, device: Any, dtype: torch.dtype | None) -> None:
        w, kw = self.wide_geometry, dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(w.conv_weight_shape, **kw))
        self.bias = nn.Parameter(torch.empty(w.out_channels, **kw)) if w.bias else None

    @property
    def _bias_shape(self) -> tuple[int, ...]:
        return (self.geometry.out_channels,)

    @property
    def fan_in(self) -> int:
        return self.geometry.in_channels // self.geometry.groups * self.wide_geometry.T

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, *in_spatial) -> (B, C_out, *out_spatial)
        self._check_input(x)
        w = self.wide_geometry
        conv = F.conv1d if w.dim == 1 else F.conv2d
        if self._pad is None:
            return conv(x, self.weight, self.bias, w.stride, tuple(p[0] for p in w.padding), 1, w.groups)
        return conv(F.pad(x, self._pad), self.weight, self.bias, w.stride, 0, 1, w.groups)

    # ---- the embedding φ (conv weight -> wide weight: taps placed, zeros elsewhere), its adjoint, the mask ----
    def embed_weight(self, conv_weight: Tensor) -> Tensor:
        c = conv_weight.flatten(2)  # (C_out, C_in/g, T)
        out = c.new_zeros(*c.shape[:2], self.wide_geometry.T).index_copy(2, self.tap_pos, c)
        return out.view(self.wide_geometry.conv_weight_shape)

    def adjoint_weight(self, weight: Tensor) -> Tensor:
        return weight.flatten(2).index_select(2, self.tap_pos)  # (C_out, C_in/g, T): the original taps (a crop)

    def tap_gram(self) -> Tensor:
        """φᵀφ = I: every original tap appears once in the wide kernel (so projection is the crop)."""
        return torch.eye(self.geometry.T, dtype=torch.long, device=self.tap_pos.device)

    def local_mask(self) -> Tensor:
        """True on the original taps (the conv's footprint), False on the taps the widening added."""
        w = self.wide_geometry
        mask = torch.zeros(w.T, dtype=torch.bool, device=self.tap_pos.device)
        mask[self.tap_pos] = True
        return mask.expand(w.out_channels, w.in_channels // w.groups, w.T).reshape(w.conv_weight_shape)

    def unshared_sq(self) -> Tensor:
        """0: a wide conv is translation invariant already (its only way off the CNN is its added taps)."""
        return 0.0 * self.weight.view(-1)[0].double()

    # ---- bias: shared, as in the conv -----------------------------------------------------------------------
    def embed_bias(self, conv_bias: Tensor) -> Tensor:
        return conv_bias.clone()

    def adjoint_bias(self, bias: Tensor) -> Tensor:
        return bias

    def project_bias(self, bias: Tensor | None = None) -> Tensor | None:
        bias = self.bias if bias is None else bias
        return None if bias is None else bias

    # ---- up the lattice --------------------------------------------------------------------------------------
    def to_fc(self) -> "RelaxedConv":
        """The exact eFCN: a DenseConv with the ORIGINAL geometry (so it is the CNN's eFCN shape,
        ``(C_out·P, C_in·Q)``) holding this wide conv's dense matrix (its released taps are off-local there)."""
        from .dense import DenseConv

        w = self.weight.detach()
        out = DenseConv(self.geometry, device=w.device, dtype=w.dtype, _init=False)
        # the gather that builds an eFCN, driven by the wide geometry's index map; built on the meta device so
        # that it allocates no matrix of its own: it writes straight into out.weight
        builder = DenseConv(self.wide_geometry, device="meta", _init=False)
        builder.index = index_map(self.wide_geometry).to(w.device)  # the only real tensor it holds
        with torch.no_grad():
            builder._expand(builder._conv_values(w), out=out.weight)
            if out.bias is not None:
                out.bias.copy_(out.embed_bias(self.bias.detach()))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wide_kernel={self.wide_geometry.kernel_size} ({_fmt(self.kernel_size_spec)})"


class WideConv1d(WideConvNd, dim=1):
    """Wide conv on ``(B, C, L)`` inputs (see module docstring)."""


class WideConv2d(WideConvNd, dim=2):
    """Wide conv on ``(B, C, H, W)`` inputs (see module docstring)."""

