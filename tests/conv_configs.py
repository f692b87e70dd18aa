"""Hypothesis strategy for random nn.Conv1d / nn.Conv2d configurations (shared by the embed tests)."""
from __future__ import annotations

from hypothesis import strategies as st
from torch import nn

MODES = ("zeros", "reflect", "replicate", "circular")


@st.composite
def conv_configs(draw, modes: tuple[str, ...] = MODES, max_channels: int = 3):
    """(conv, in_spatial): any kernel, stride, dilation, groups, bias, padding int/tuple/'same'/'valid' and mode."""
    dim = draw(st.sampled_from((1, 2)))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    kind = draw(st.sampled_from(("int", "tuple", "same", "valid")))
    stride = (1,) * dim if kind == "same" else tuple(draw(st.integers(1, 3)) for _ in range(dim))
    mode = draw(st.sampled_from(modes))
    if kind == "int":
        padding = draw(st.integers(0, 3))
        pads = (padding,) * dim
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(dim))
        pads = padding
    else:
        padding = kind
        pads = tuple((d * (k - 1) + 1) // 2 for k, d in zip(kernel, dilation)) if kind == "same" else (0,) * dim
    # input big enough for a non-empty output and for reflect (pad < n) / circular (pad <= n)
    in_spatial = []
    for k, d, p in zip(kernel, dilation, pads):
        lo = max(1, d * (k - 1) + 1 - 2 * p, p + 1 if mode == "reflect" else p)
        in_spatial.append(draw(st.integers(lo, lo + 3)))
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    cin = groups * draw(st.integers(1, max_channels))
    cout = groups * draw(st.integers(1, max_channels))
    bias = draw(st.booleans())
    cls = nn.Conv1d if dim == 1 else nn.Conv2d
    conv = cls(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
               padding_mode=mode)
    return conv, tuple(in_spatial)
