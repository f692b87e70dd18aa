"""ConvGeometry and index_map against torch's own convolutions."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from archrelax.embed.connectivity import ConvGeometry, index_map, tap_gram
from conv_configs import conv_configs


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def torch_index_map(conv: nn.Module, in_spatial: tuple[int, ...]) -> torch.Tensor:
    """(P, T) by running a conv with one output channel per tap (one-hot kernels) on x = 1 + arange(Q)."""
    k = conv.kernel_size
    T = int(torch.tensor(k).prod())
    probe = type(conv)(1, T, k, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False,
                       padding_mode=conv.padding_mode, dtype=torch.float64)
    with torch.no_grad():
        probe.weight.copy_(torch.eye(T, dtype=torch.float64).view(T, 1, *k))
    x = 1 + torch.arange(int(torch.tensor(in_spatial).prod()), dtype=torch.float64).view(1, 1, *in_spatial)
    y = probe(x).view(T, -1).T  # (P, T), 0 where the tap read a padded zero
    return y.round().long() - 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(conv_configs())
def test_index_map_matches_torch(cfg):
    conv, in_spatial = cfg
    geom = ConvGeometry.from_conv(conv, in_spatial)
    idx = index_map(geom)
    assert idx.dtype == torch.int64 and idx.shape == (geom.P, geom.T)
    assert torch.equal(idx, torch_index_map(conv, in_spatial))
    # output shape agrees with torch's
    y = conv(torch.zeros(1, conv.in_channels, *in_spatial))
    assert tuple(y.shape[2:]) == geom.out_spatial
    # plain data round trip (JSON and weights_only-safe)
    assert ConvGeometry.from_dict(json.loads(json.dumps(geom.to_dict()))) == geom
    assert ConvGeometry.from_conv(geom.make_conv(), in_spatial) == geom


def test_same_padding_is_asymmetric_like_torch():
    conv = nn.Conv2d(1, 1, (4, 3), padding="same", dilation=(1, 3))
    geom = ConvGeometry.from_conv(conv, (6, 7))
    assert geom.padding == ((1, 2), (3, 3))
    assert geom.out_spatial == (6, 7)
    assert geom.make_conv().padding == "same"
    assert ConvGeometry.from_conv(nn.Conv1d(1, 1, 3, padding="valid"), 5).padding == ((0, 0),)


def test_circular_padding_up_to_input_size():
    conv = nn.Conv1d(1, 1, 3, padding=4, padding_mode="circular")
    idx = index_map(ConvGeometry.from_conv(conv, 4))
    assert torch.equal(idx, torch_index_map(conv, (4,)))
    assert idx.min() == 0  # no padding taps: every one wraps around


def test_tap_gram():
    # zero padding: diagonal tie counts (number of positions where each tap reads a real input)
    g = tap_gram(index_map(ConvGeometry.from_conv(nn.Conv1d(1, 1, 3, padding=1), 4)))
    assert torch.equal(g, torch.diag(torch.tensor([3, 4, 3])))
    # replicate on a size-1 input: all taps read the same element at the one position
    g = tap_gram(index_map(ConvGeometry.from_conv(nn.Conv1d(1, 1, 3, padding=1, padding_mode="replicate"), 1)))
    assert torch.equal(g, torch.ones(3, 3, dtype=torch.long))


@pytest.mark.parametrize("module, match", [
    (nn.ConvTranspose2d(2, 2, 3), "ConvTranspose2d"),
    (nn.Conv3d(2, 2, 3), "Conv3d"),
    (nn.Linear(3, 3), "Linear"),
])
def test_unsupported_modules(module, match):
    with pytest.raises(TypeError, match=match):
        ConvGeometry.from_conv(module, (8, 8))


def test_bad_geometries_are_named():
    with pytest.raises(ValueError, match="reflect needs padding < input size"):
        ConvGeometry.from_conv(nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect"), (3, 5))
    with pytest.raises(ValueError, match="circular needs padding <= input size"):
        ConvGeometry.from_conv(nn.Conv1d(1, 1, 3, padding=3, padding_mode="circular"), 2)
    with pytest.raises(ValueError, match="empty output"):
        ConvGeometry.from_conv(nn.Conv2d(1, 1, 5), (3, 3))
    with pytest.raises(ValueError, match="in_spatial"):
        ConvGeometry.from_conv(nn.Conv2d(1, 1, 3), (8, 8, 8))
    d = ConvGeometry.from_conv(nn.Conv2d(2, 4, 3), (5, 5)).to_dict()
    with pytest.raises(ValueError, match="unknown keys \\['kernel'\\]"):
        ConvGeometry.from_dict({**d, "kernel": 3})
    with pytest.raises(ValueError, match="out_spatial"):
        ConvGeometry.from_dict({**d, "out_spatial": [4, 4]})
    with pytest.raises(ValueError, match="groups=3"):
        ConvGeometry.from_dict({**d, "groups": 3})
