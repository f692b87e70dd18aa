"""Conv connectivity: which input element every (output position, kernel tap) reads.

:func:`index_map` is THE single source of truth of archrelax: the locally-connected forward pass, the eFCN
matrix, local masks, projections and tie counts all derive from it. It is built by broadcasting one small
per-dimension table per spatial dimension; there is no Python loop over positions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ConvGeometry", "index_map", "tap_gram", "PADDING_MODES"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _tuple(value: Any, dim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dim
    out = tuple(int(v) for v in value)
    if len(out) != dim:
        raise ValueError(f"{name}={value!r} has {len(out)} entries; a {dim}d conv needs {dim}")
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """Everything that fixes a conv layer's connectivity on one input size (plain data, hashable).

    ``padding`` holds one ``(before, after)`` pair per spatial dim, so 'same' (which may pad one more element
    after than before, exactly like torch) and 'valid' are resolved. Derived: ``P`` output positions,
    ``T`` kernel taps, ``Q`` input positions.
    """

    dim: int
    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    padding_mode: str
    bias: bool
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]

    def __post_init__(self) -> None:
        d = self.dim
        if d not in (1, 2):
            raise ValueError(f"ConvGeometry.dim={d!r}: only 1d and 2d convolutions are supported")
        for name in ("kernel_size", "stride", "dilation", "in_spatial", "out_spatial"):
            val = getattr(self, name)
            if len(val) != d or any(int(v) < 1 for v in val):
                raise ValueError(f"ConvGeometry.{name}={val!r}: need {d} positive ints")
        if len(self.padding) != d or any(len(p) != 2 or min(p) < 0 for p in self.padding):
            raise ValueError(f"ConvGeometry.padding={self.padding!r}: need {d} (before, after) pairs of ints >= 0")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"ConvGeometry.padding_mode={self.padding_mode!r}; valid: {PADDING_MODES}")
        g = self.groups
        if g < 1 or self.in_channels % g or self.out_channels % g:
            raise ValueError(
                f"ConvGeometry.groups={g!r} must divide in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}"
            )
        for i, ((lo, hi), n) in enumerate(zip(self.padding, self.in_spatial)):
            # the limits torch's F.pad enforces for these modes
            if self.padding_mode == "reflect" and max(lo, hi) >= n:
                raise ValueError(
                    f"reflect padding {(lo, hi)} on spatial dim {i} of size {n}: reflect needs padding < input size"
                )
            if self.padding_mode == "circular" and max(lo, hi) > n:
                raise ValueError(
                    f"circular padding {(lo, hi)} on spatial dim {i} of size {n}: circular needs padding <= input size"
                )
        expected = _out_spatial(self.in_spatial, self.kernel_size, self.stride, self.dilation, self.padding)
        if tuple(self.out_spatial) != expected:
            raise ValueError(f"ConvGeometry.out_spatial={self.out_spatial!r} but these hyper-parameters give {expected}")

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def P(self) -> int:
        """Number of output positions."""
        return math.prod(self.out_spatial)

    @property
    def T(self) -> int:
        """Number of kernel taps."""
        return math.prod(self.kernel_size)

    @property
    def Q(self) -> int:
        """Number of input positions."""
        return math.prod(self.in_spatial)

    @property
    def conv_weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_conv(cls, conv: nn.Module, in_spatial: int | tuple[int, ...] | list[int]) -> "ConvGeometry":
        """Geometry of ``conv`` (nn.Conv1d / nn.Conv2d) applied to inputs of spatial shape ``in_spatial``."""
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
            raise TypeError(
                f"cannot build a ConvGeometry from {type(conv).__name__}: only nn.Conv1d and nn.Conv2d are supported "
                "(not ConvTranspose or Conv3d)"
            )
        dim = 1 if isinstance(conv, nn.Conv1d) else 2
        in_spatial = _tuple(in_spatial, dim, "in_spatial")
        k, s, dl = conv.kernel_size, conv.stride, conv.dilation
        if conv.padding == "valid":
            pad = tuple((0, 0) for _ in range(dim))
        elif conv.padding == "same":
            # torch pads total//2 before and the rest after (nn.Conv*'s F.pad path and ATen's 'same' agree)
            pad = tuple((dl[i] * (k[i] - 1) // 2, dl[i] * (k[i] - 1) - dl[i] * (k[i] - 1) // 2) for i in range(dim))
        else:
            pad = tuple((p, p) for p in _tuple(conv.padding, dim, "padding"))
        out = _out_spatial(in_spatial, k, s, dl, pad)
        if min(out) < 1:
            raise ValueError(f"{type(conv).__name__} on input spatial shape {in_spatial} gives empty output {out}")
        return cls(
            dim=dim,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            groups=conv.groups,
            kernel_size=tuple(k),
            stride=tuple(s),
            dilation=tuple(dl),
            padding=pad,
            padding_mode=conv.padding_mode,
            bias=conv.bias is not None,
            in_spatial=in_spatial,
            out_spatial=out,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists and ints), safe for JSON and ``torch.load(weights_only=True)``."""
        d = asdict(self)
        for key, val in d.items():
            if isinstance(val, tuple):
                d[key] = [list(v) if isinstance(v, tuple) else v for v in val]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConvGeometry":
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown or names - set(d):
            raise ValueError(
                f"ConvGeometry.from_dict: unknown keys {sorted(unknown)}, missing keys {sorted(names - set(d))}; "
                f"valid keys: {sorted(names)}"
            )
        kw = dict(d)
        for key in ("kernel_size", "stride", "dilation", "in_spatial", "out_spatial"):
            kw[key] = tuple(int(v) for v in kw[key])
        kw["padding"] = tuple((int(a), int(b)) for a, b in kw["padding"])
        return cls(**kw)

    def make_conv(self, *, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
        """A fresh nn.Conv1d/2d with this geometry (randomly initialised)."""
        before = tuple(p[0] for p in self.padding)
        if all(a == b for a, b in self.padding):
            padding: Any = before
        elif all(s == 1 for s in self.stride) and all(
            (a, b) == (dl * (k - 1) // 2, dl * (k - 1) - dl * (k - 1) // 2)
            for (a, b), k, dl in zip(self.padding, self.kernel_size, self.dilation)
        ):
            padding = "same"
        else:
            raise ValueError(f"padding {self.padding} is asymmetric and not torch's 'same'; no nn.Conv expresses it")
        cls = nn.Conv1d if self.dim == 1 else nn.Conv2d
        return cls(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias, padding_mode=self.padding_mode,
            device=device, dtype=dtype,
        )


def _out_spatial(in_spatial, kernel, stride, dilation, padding) -> tuple[int, ...]:
    return tuple(
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, k, s, d, (lo, hi) in zip(in_spatial, kernel, stride, dilation, padding)
    )


def _source_1d(n: int, out: int, k: int, s: int, d: int, lo: int, mode: str) -> torch.Tensor:
    """(out, k) int64: input index read by output position o through tap j along one dim (-1: zero pad)."""
    j = torch.arange(out).mul_(s)[:, None] + torch.arange(k).mul_(d)[None, :] - lo  # unpadded coordinate
    if mode == "zeros":
        return torch.where((j >= 0) & (j < n), j, -1)
    if mode == "replicate":
        return j.clamp(0, n - 1)
    if mode == "circular":
        return j.remainder(n)  # padding <= n (checked), so wrapping once is what F.pad does
    # reflect (padding < n, checked): mirror about the first and last element, which are not repeated
    j = j.abs()
    return torch.where(j > n - 1, 2 * (n - 1) - j, j)


def index_map(geom: ConvGeometry) -> torch.Tensor:
    """``(P, T)`` int64: flat input spatial index read by output position p through tap t; -1 reads zero padding.

    Positions and taps are both flattened row-major (torch's order). For reflect/replicate/circular
    padding the source index of the padded element is given, so several taps of one position may read
    the same input element.
    """
    idx = torch.zeros((), dtype=torch.long)
    dead = torch.zeros((), dtype=torch.bool)
    dim = geom.dim
    for i in range(dim):  # loop over spatial dims only; positions are handled by broadcasting
        src = _source_1d(geom.in_spatial[i], geom.out_spatial[i], geom.kernel_size[i], geom.stride[i],
                         geom.dilation[i], geom.padding[i][0], geom.padding_mode)
        # place this dim's output axis at i and its tap axis at dim + i
        shape = [1] * (2 * dim)
        shape[i], shape[dim + i] = src.shape
        src = src.view(shape)
        idx = idx * geom.in_spatial[i] + src
        dead = dead | (src < 0)
    idx = torch.where(dead, -1, idx).expand(*geom.out_spatial, *geom.kernel_size)
    return idx.reshape(geom.P, geom.T).contiguous()


def tap_gram(idx: torch.Tensor) -> torch.Tensor:
    """``(T, T)`` int64 Gram matrix φᵀφ of the conv→dense embedding restricted to one (out, in) channel pair.

    ``G[t, u]`` counts the positions where taps t and u read the same (real) input element. It is the same
    for every channel pair, and diagonal (the tie counts) under zero padding.
    """
    live = idx >= 0
    same = (idx[:, :, None] == idx[:, None, :]) & live[:, :, None]  # (P, T, T)
    return same.sum(0)
