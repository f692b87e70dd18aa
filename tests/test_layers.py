"""Relaxed layers (LocallyConnected1d/2d, DenseConv) against the convs they come from."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from archrelax.embed.base import RelaxedConv
from archrelax.embed.connectivity import ConvGeometry
from archrelax.embed.dense import DenseConv
from archrelax.embed.locally_connected import (LocallyConnected1d, LocallyConnected2d, LocallyConnectedFn,
                                               release_workspaces)
from conv_configs import conv_configs

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def lc_class(conv: nn.Module) -> type:
    return LocallyConnected1d if isinstance(conv, nn.Conv1d) else LocallyConnected2d


def conv_matrix(conv: nn.Module, in_spatial: tuple[int, ...]) -> torch.Tensor:
    """The conv as a dense (C_out·P, C_in·Q) matrix, by applying it to every basis input (independent of
    archrelax's index map)."""
    n = conv.in_channels * int(torch.tensor(in_spatial).prod())
    eye = torch.eye(n, dtype=conv.weight.dtype).view(n, conv.in_channels, *in_spatial)
    bias, conv.bias = conv.bias, None
    try:
        cols = conv(eye).flatten(1)  # (C_in·Q, C_out·P)
    finally:
        conv.bias = bias
    return cols.T


def check_close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    err = (y - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item() + 1e-30, (err, ref.abs().max().item())


def relaxed_pair(cfg, dtype):
    conv, in_spatial = cfg
    conv = copy.deepcopy(conv).to(dtype)
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, *in_spatial, dtype=dtype)
    return conv, in_spatial, x


@SETTINGS
@given(conv_configs())
def test_dense_is_exact(cfg):
    for dtype, rel in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        conv, in_spatial, x = relaxed_pair(cfg, dtype)
        fc = DenseConv.from_conv(conv, in_spatial)
        with torch.no_grad():
            check_close(fc(x), conv(x), rel)
    g = fc.geometry
    assert fc.weight.shape == (g.out_channels * g.P, g.in_channels * g.Q)
    with torch.no_grad():
        # the matrix is the conv's own (probed with basis inputs; float32 is plenty and much faster)
        probe = copy.deepcopy(conv).float()
        assert torch.allclose(fc.weight.float(), conv_matrix(probe, in_spatial), rtol=0, atol=1e-6)
        # local mask = where a conv with positive weights reaches (no cancellation possible)
        probe.weight.uniform_(0.5, 1.0)
        mask = conv_matrix(probe, in_spatial) != 0
    assert torch.equal(fc.local_mask(), mask)
    # projection: the exact CNN is recovered, up to unidentifiable (dead or always-tied) taps
    w, b = fc.project()
    assert torch.allclose(fc.embed_weight(w), fc.weight, atol=1e-12)
    gram = fc.tap_gram().double()
    if torch.linalg.matrix_rank(gram) == g.T:
        assert torch.allclose(w, conv_weight_before(cfg), atol=1e-12)
    if b is not None:
        assert torch.allclose(b, conv.bias, atol=1e-12)
    # gradients reach every entry, off-local ones included (all free parameters)
    y = fc(x)
    (y * torch.randn_like(y)).sum().backward()  # random output gradient: no unit is left without one
    assert (fc.weight.grad != 0).all()


def conv_weight_before(cfg) -> torch.Tensor:
    return cfg[0].weight.detach().double()


@SETTINGS
@given(conv_configs(modes=("zeros",)))
def test_locally_connected_is_exact(cfg):
    for dtype, rel in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        conv, in_spatial, x = relaxed_pair(cfg, dtype)
        lc = lc_class(conv).from_conv(conv, in_spatial)
        with torch.no_grad():
            check_close(lc(x), conv(x), rel)
    g = lc.geometry
    assert lc.weight.shape == (g.groups, g.P, g.out_channels // g.groups, g.T, g.in_channels // g.groups)
    assert lc.bias is None or lc.bias.shape == (g.out_channels, *g.out_spatial)
    # projection recovers the conv exactly on every tap that reads some input
    w, b = lc.project()
    live_taps = lc.tap_gram().diagonal() > 0
    assert torch.allclose(w.flatten(2)[:, :, live_taps], conv.weight.flatten(2)[:, :, live_taps], atol=1e-12)
    assert torch.equal(lc.embed_weight(w), lc.weight.detach())
    if b is not None:
        assert torch.allclose(b, conv.bias, atol=1e-12)
    # lc -> fc equals conv -> fc, exactly
    fc = DenseConv.from_conv(conv, in_spatial)
    assert torch.equal(DenseConv.from_relaxed(lc).weight, fc.weight)
    # the local mask covers exactly the conv's connections (counted independently by probing the conv)
    with torch.no_grad():
        probe = copy.deepcopy(conv).float()  # only the sparsity pattern matters here
        probe.weight.uniform_(0.5, 1.0)
        n_conn = int((conv_matrix(probe, in_spatial) != 0).sum())
    assert int(lc.local_mask().sum()) == n_conn == int(fc.local_mask().sum())
    # unshared weights: perturb every live entry; lc -> fc stays exact, and every live entry gets a gradient
    with torch.no_grad():
        lc.weight.add_(torch.randn_like(lc.weight) * lc.local_mask())
    check_close(DenseConv.from_relaxed(lc)(x), lc(x), 1e-10)
    y = lc(x)
    (y * torch.randn_like(y)).sum().backward()
    assert ((lc.weight.grad != 0) == lc.local_mask()).all()  # dead padding taps: exactly zero


@pytest.mark.parametrize("in_spatial", [(3, 4), (9, 10)])  # dense rows (gather) and sparse rows (scatter)
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_dense_build_paths(in_spatial, mode):
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, (3, 2), padding=(2, 1), groups=2, padding_mode=mode).double()
    fc = DenseConv.from_conv(conv, in_spatial)
    probe = copy.deepcopy(conv).float()
    assert torch.allclose(fc.weight.float(), conv_matrix(probe, in_spatial), rtol=0, atol=1e-6)
    w = conv.weight.detach().clone().requires_grad_()
    assert torch.equal(fc.embed_weight(w), fc.weight)
    fc.embed_weight(w).sum().backward()  # differentiable: d(sum)/dw = how often each tap reads an input
    assert torch.equal(w.grad.flatten(2)[0, 0], (fc.index >= 0).sum(0).double())


def test_unshared_lc_gradients_match_plain_autograd():
    """The workspace-based backward equals plain autograd, also with two forwards before one backward."""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    lc = LocallyConnected2d.from_conv(conv, (7, 6))
    with torch.no_grad():
        lc.weight.add_(torch.randn_like(lc.weight))
    x1, x2 = (torch.randn(5, 4, 7, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    (lc(x1).sin().sum() + 2 * lc(x2).cos().sum()).backward()
    got = [t.grad.clone() for t in (x1, x2, lc.weight, lc.bias)]
    for t in (x1, x2, lc.weight, lc.bias):
        t.grad = None
    from archrelax.embed.locally_connected import _lc_forward_graph

    def plain(x):
        return _lc_forward_graph(x, lc.weight, lc.gather_index, lc.geometry) + lc.bias

    (plain(x1).sin().sum() + 2 * plain(x2).cos().sum()).backward()
    for a, t in zip(got, (x1, x2, lc.weight, lc.bias)):
        assert torch.allclose(a, t.grad, atol=1e-12)
    y = lc(x1)
    release_workspaces()  # freed between forward and backward: backward makes a new one
    y.sum().backward()


def test_lc_double_backward():
    torch.manual_seed(2)
    conv = nn.Conv1d(2, 3, 3, padding="same", bias=False).double()
    lc = LocallyConnected1d.from_conv(conv, 5)
    x = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    w = lc.weight.detach().clone().requires_grad_()

    def f(x, w):
        return LocallyConnectedFn.apply(x, w, lc.gather_index, lc.geometry)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize("cls", [LocallyConnected2d, DenseConv])
def test_parameters_init_and_state_dict(cls):
    geom = ConvGeometry.from_conv(nn.Conv2d(3, 4, 3, padding=2), (5, 5))
    layer = cls(geom, dtype=torch.float64)
    assert isinstance(layer, RelaxedConv)
    assert set(layer.state_dict()) == {"weight", "bias"}  # same keys as the conv it replaces
    bound = 1 / layer.fan_in ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.5 * bound
    assert layer.fan_in == (27 if cls is LocallyConnected2d else 3 * 25)
    if cls is LocallyConnected2d:
        assert (layer.weight[~layer.local_mask()] == 0).all()  # dead taps stay zero
    copied = copy.deepcopy(layer).float()
    assert copied.weight.dtype == torch.float32 and copied.index.dtype == torch.int64
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = copied(x)
    assert y.shape == (2, 4, 7, 7)
    assert y.is_contiguous() and y.view(2, -1).shape == (2, 4 * 49)  # models call .view on conv outputs
    y.sum().backward()
    assert x.grad.is_contiguous()


def test_unsupported_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="padding_mode='zeros' only.*'fc'"):
        LocallyConnected2d.from_conv(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (5, 5))
    with pytest.raises(ValueError, match="use LocallyConnected1d"):
        LocallyConnected2d.from_conv(nn.Conv1d(1, 1, 3), 5)
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        DenseConv.from_conv(nn.ConvTranspose2d(1, 1, 3), (5, 5))
    with pytest.raises(TypeError, match="from_conv"):
        DenseConv.from_relaxed(nn.Conv2d(1, 1, 3))
    with pytest.raises(TypeError, match="ConvGeometry"):
        DenseConv(nn.Conv2d(1, 1, 3))
    lc = LocallyConnected2d.from_conv(nn.Conv2d(2, 2, 3), (5, 5))
    with pytest.raises(ValueError, match=r"built for inputs \(B, 2, 5, 5\), got \(1, 2, 6, 6\)"):
        lc(torch.zeros(1, 2, 6, 6))


@pytest.mark.parametrize("name, kw", [("LocallyConnected", {}), ("TiledConv", {"tile": 2}),
                                      ("WideConv", {"kernel_size": "full"}), ("AttentionConv", {})])
def test_each_layer_of_one_dimension_refuses_the_other_and_names_its_class(name, kw):
    import archrelax.embed as embed

    geom = {1: ConvGeometry.from_conv(nn.Conv1d(2, 3, 3), 8), 2: ConvGeometry.from_conv(nn.Conv2d(2, 3, 3), (6, 6))}
    for dim, other in ((1, 2), (2, 1)):
        cls = getattr(embed, f"{name}{dim}d")
        assert cls._dim == dim and getattr(embed, f"{name}Nd", cls.__base__)._dim is None
        refusal = f"{name}{dim}d needs a {dim}d geometry, got dim={other}; use {name}{other}d"
        with pytest.raises(ValueError, match=refusal):
            cls(geom[other], **kw)
        assert cls(geom[dim], **kw).geometry is geom[dim]
