"""The lattice between a CNN and its eFCN: wide convs (locality released), tiled convs (sharing released in
tiles), their target strings and the exact moves along the lattice."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from archrelax.embed import (DenseConv, LocallyConnected1d, LocallyConnected2d, RelaxedConv, TiledConv1d, TiledConv2d,
                             WideConv1d, WideConv2d, cnn_distance, offlocal_ratio, parse_target, relax, to_cnn,
                             transfer)
from archrelax.embed.connectivity import ConvGeometry, index_map
from archrelax.embed.tiled import tile_layout
from archrelax.embed.wide import wide_layout
from conv_configs import conv_configs

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
F64 = torch.float64
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")]


def extent(conv: nn.Module) -> tuple[int, ...]:
    return tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation))


@st.composite
def wide_configs(draw):
    """(conv, in_spatial, kernel_size): zero padding; K = 'full', one int for all dims, or per dim."""
    conv, in_spatial = draw(conv_configs(modes=("zeros",)))
    ext = extent(conv)
    form = draw(st.sampled_from(("full", "int", "tuple")))
    if form == "full":
        ks = "full"
    elif form == "int":
        ks = max(ext) + draw(st.integers(0, 3))
    else:
        ks = tuple(e + draw(st.integers(0, 3)) for e in ext)
    return conv, in_spatial, ks


@st.composite
def tiled_configs(draw):
    conv, in_spatial = draw(conv_configs(modes=("zeros",)))
    dim = len(in_spatial)
    tile = draw(st.integers(1, 4)) if draw(st.booleans()) else tuple(draw(st.integers(1, 5)) for _ in range(dim))
    return conv, in_spatial, tile


def check_close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    err = (y - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item() + 1e-30, (err, ref.abs().max().item())


def pair(conv: nn.Module, in_spatial, dtype, batch: int = 3):
    conv = copy.deepcopy(conv).to(dtype)
    torch.manual_seed(0)
    return conv, torch.randn(batch, conv.in_channels, *in_spatial, dtype=dtype)


def wide_cls(conv):
    return WideConv1d if isinstance(conv, nn.Conv1d) else WideConv2d


def tiled_cls(conv):
    return TiledConv1d if isinstance(conv, nn.Conv1d) else TiledConv2d


def brute_lstsq_projection(layer: RelaxedConv, theta: torch.Tensor) -> torch.Tensor:
    """argmin_w ‖φ(w) − θ‖ by least squares on the explicit matrix of φ (columns: φ of each basis filter)."""
    g = layer.geometry
    n = g.out_channels * (g.in_channels // g.groups) * g.T
    eye = torch.eye(n, dtype=F64).view(n, *g.conv_weight_shape)
    phi = torch.stack([layer.embed_weight(e).flatten() for e in eye], 1)  # (numel(weight), n)
    sol = torch.linalg.lstsq(phi, theta.flatten().to(F64)[:, None], driver="gelsd").solution
    return sol.view(g.conv_weight_shape)


# ---- wide ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(wide_configs())
def test_wide_is_exact_and_derives_from_the_index_map(cfg):
    conv0, in_spatial, ks = cfg
    for dtype, rel in ((torch.float32, 1e-5), (F64, 1e-10)):
        conv, x = pair(conv0, in_spatial, dtype)
        wide = wide_cls(conv).from_conv(conv, in_spatial, kernel_size=ks)
        with torch.no_grad():
            y = wide(x)
            check_close(y, conv(x), rel)
        assert y.shape == conv(x).shape and y.is_contiguous()
    g, wg = wide.geometry, wide.wide_geometry
    assert g == ConvGeometry.from_conv(conv, in_spatial)  # δ etc. are measured against the CNN
    # one source of truth: the wide index map, restricted to the original taps, is the original's
    assert torch.equal(index_map(wg)[:, wide.tap_pos], index_map(g))
    assert wide.weight.shape == wg.conv_weight_shape and (wide.bias is None or wide.bias.shape == (g.out_channels,))
    if ks == "full":  # every output reads every input element through exactly one tap
        reads = index_map(wg)
        counts = torch.zeros(g.P, g.Q, dtype=torch.long).scatter_add_(1, reads.clamp(min=0), (reads >= 0).long())
        assert (counts == 1).all()
    else:  # K as asked, clamped to the global conv's size
        full = wide_layout(g, "full")[0].kernel_size
        asked = (ks,) * g.dim if isinstance(ks, int) else ks
        assert wg.kernel_size == tuple(min(k, f) for k, f in zip(asked, full))
    # mask = the original taps; projection = the crop, exactly; the embedding is zero elsewhere
    assert int(wide.local_mask().sum()) == conv.weight.numel()
    w, b = wide.project()
    assert torch.equal(w, conv.weight.detach()) and (b is None or torch.equal(b, conv.bias.detach()))
    assert not wide.weight[~wide.local_mask()].any()
    # released taps: the layer equals its eFCN (built from the wide index map) and the plain autograd of it
    with torch.no_grad():
        wide.weight.normal_()
    dense = wide.to_fc()
    assert isinstance(dense, DenseConv) and dense.geometry == g
    x = x.clone().requires_grad_()
    y = wide(x)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    with torch.no_grad():
        check_close(dense(x), y, 1e-10)
    # brute force: the wide conv's dense matrix as a differentiable function of its weight (gathered through the
    # wide geometry's index map), applied with a matmul
    builder = DenseConv(wg, dtype=F64, _init=False)
    wref = wide.weight.detach().clone().requires_grad_()
    xref = x.detach().clone().requires_grad_()
    yref = F.linear(xref.flatten(1), builder.embed_weight(wref), None if wide.bias is None else
                    wide.bias.detach().repeat_interleave(g.P)).view_as(y)
    (yref * gy).sum().backward()
    check_close(wide.weight.grad, wref.grad, 1e-10)
    check_close(x.grad, xref.grad, 1e-10)


def test_wide_sizes_full_and_asymmetric():
    # stride 1, 'same' padding: the global conv has 2n - 1 taps
    wide = WideConv2d.from_conv(nn.Conv2d(2, 3, 3, padding=1), (6, 5), kernel_size="full")
    assert wide.wide_geometry.kernel_size == (11, 9) and wide.offsets == (4, 3)
    # K - extent odd: one more tap after than before, padding grown asymmetrically (applied with F.pad)
    conv = nn.Conv1d(1, 2, 3, padding=1).double()
    wide = WideConv1d.from_conv(conv, 7, kernel_size=6)
    assert wide.wide_geometry.padding == ((2, 3),) and wide.offsets == (1,) and wide._pad == (2, 3)
    x = torch.randn(2, 1, 7, dtype=F64)
    check_close(wide(x), conv(x), 1e-12)
    # dilation: the wide conv has dilation 1, the dilated taps sit at their offsets
    conv = nn.Conv2d(1, 1, 3, dilation=(2, 1), padding=(2, 1))
    wide = WideConv2d.from_conv(conv, (6, 6), kernel_size=(5, 5))
    assert wide.wide_geometry.dilation == (1, 1)
    assert wide.tap_pos.tolist() == [5 * r + c + 1 for r in (0, 2, 4) for c in range(3)]


def test_wide_errors():
    with pytest.raises(ValueError, match=r"kernel_size=4 is smaller than the conv's extent \(5, 3\).*minimum is 5x3 \(to='wide:5x3'\)"):
        WideConv2d.from_conv(nn.Conv2d(1, 1, 3, dilation=(2, 1)), (8, 8), kernel_size=4)
    with pytest.raises(ValueError, match=r"padding_mode='zeros' only, got 'circular'.*'fc'"):
        WideConv2d.from_conv(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (8, 8), kernel_size=5)
    with pytest.raises(ValueError, match=r"kernel_size='5x5' has 2 entries; a 1d conv needs 1"):
        WideConv1d.from_conv(nn.Conv1d(1, 1, 3), 8, kernel_size=(5, 5))
    with pytest.raises(ValueError, match="use WideConv1d"):
        WideConv2d.from_conv(nn.Conv1d(1, 1, 3), 8, kernel_size=5)


# ---- tiled --------------------------------------------------------------------------------------------------


def brute_tiled(layer, x: torch.Tensor, tile: tuple[int, ...]) -> torch.Tensor:
    """Each tile's filter applied as a whole conv, then each output position taken from its own tile's conv
    (tile of a position computed here with plain Python, independently of the layer)."""
    g = layer.geometry
    conv = g.make_conv(dtype=x.dtype) if all(a == b for a, b in g.padding) else None
    outs = []
    for tau in range(layer.n_tiles):
        b = None if layer.bias is None else layer.bias[tau]
        if conv is not None:
            fn = F.conv1d if g.dim == 1 else F.conv2d
            outs.append(fn(x, layer.weight[tau], b, g.stride, tuple(p[0] for p in g.padding), g.dilation, g.groups))
        else:  # 'same' with an even kernel: asymmetric padding
            fn = F.conv1d if g.dim == 1 else F.conv2d
            pads = [v for p in reversed(g.padding) for v in p]
            outs.append(fn(F.pad(x, pads), layer.weight[tau], b, g.stride, 0, g.dilation, g.groups))
    out = torch.stack(outs)  # (n_tiles, B, C_out, *out_spatial)
    tid = []
    for p in range(g.P):
        coords, rest = [], p
        for o in reversed(g.out_spatial):
            coords.append(rest % o)
            rest //= o
        coords = coords[::-1]
        t = 0
        for c, ti in zip(coords, tile):
            t = t * ti + c % ti
        tid.append(t)
    flat = out.flatten(3)  # (n_tiles, B, C_out, P)
    sel = flat[torch.tensor(tid), :, :, torch.arange(g.P)]  # (P, B, C_out)
    return sel.permute(1, 2, 0).reshape(x.shape[0], g.out_channels, *g.out_spatial)


@SETTINGS
@given(tiled_configs())
def test_tiled_is_exact_both_forward_paths(cfg):
    conv0, in_spatial, tile = cfg
    for dtype, rel in ((torch.float32, 1e-5), (F64, 1e-10)):
        conv, x = pair(conv0, in_spatial, dtype)
        tiled = tiled_cls(conv).from_conv(conv, in_spatial, tile=tile)
        with torch.no_grad():
            ref = conv(x)
            check_close(tiled._forward_strided(x), ref, rel)
            check_close(tiled._forward_lc(x), ref, rel)
            check_close(tiled(x), ref, rel)
    g = tiled.geometry
    T = tile_layout(g, tile)
    assert tiled.tile == T and all(t <= o for t, o in zip(T, g.out_spatial))
    assert tiled.weight.shape == (tiled.n_tiles, *g.conv_weight_shape)
    # projection: the conv on every tap that reads input somewhere; the least-squares preimage in general
    w, b = tiled.project()
    live = tiled.tap_gram().diagonal() > 0
    assert torch.equal(w.flatten(2)[..., live], conv.weight.detach().flatten(2)[..., live])
    assert b is None or torch.allclose(b, conv.bias.detach(), rtol=1e-15, atol=0)
    # released: unshared random tile filters (dead taps too: they must not matter)
    with torch.no_grad():
        tiled.weight.normal_()
        if tiled.bias is not None:
            tiled.bias.normal_()
    x = x.clone().requires_grad_()
    gy = torch.randn_like(ref)
    grads = {}
    for name, fn in (("strided", tiled._forward_strided), ("lc", tiled._forward_lc),
                     ("brute", lambda x: brute_tiled(tiled, x, T))):
        for t in (x, tiled.weight, tiled.bias):
            if t is not None:
                t.grad = None
        y = fn(x)
        (y * gy).sum().backward()
        grads[name] = (y.detach(), x.grad.clone(), tiled.weight.grad.clone())
    for name in ("strided", "lc"):
        for a, b_ in zip(grads[name], grads["brute"]):
            check_close(a, b_, 1e-10)
    # the weight gradient of a dead entry is exactly 0 (it never reads input)
    assert not grads["strided"][2][~tiled.local_mask()].any()
    with torch.no_grad():
        check_close(tiled.to_lc()(x), grads["brute"][0], 1e-10)
        check_close(tiled.to_fc()(x), grads["brute"][0], 1e-10)
    # projection = least squares on the explicit matrix of φ (dead taps: unidentifiable, 0 by both)
    ref_w = brute_lstsq_projection(tiled, tiled.weight.detach())
    assert torch.allclose(tiled.project_weight().detach(), ref_w, rtol=0, atol=1e-10)


def test_tiled_projection_weights_tiles_by_live_taps_not_positions():
    """3 outputs in tiles of 2: tile 0 holds positions 0 and 2, tile 1 position 1. Tap 0 of position 0 reads
    padding, tap 2 of position 2 too: tap 0 is live in tiles 0 (via 2) and 1, tap 2 in tiles 0 (via 0) and 1."""
    conv = nn.Conv1d(1, 1, 3, padding=1, bias=False).double()
    tiled = TiledConv1d.from_conv(conv, 3, tile=2)
    assert tiled.tile_of.tolist() == [0, 1, 0] and tiled.live.all()
    with torch.no_grad():
        tiled.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [5.0, 7.0, 11.0]], dtype=F64).view(2, 1, 1, 3))
    assert tiled.project_weight().flatten().tolist() == [3.0, 4.5, 7.0]  # plain means over the 2 tiles
    # one output position per tile at the border: the eLCN's tie counts are the live positions
    tiled = TiledConv1d.from_conv(nn.Conv1d(1, 1, 3, padding=1, bias=False), 2, tile=2)
    assert tiled.live.tolist() == [[False, True, True], [True, True, False]]
    assert tiled.tap_gram().diagonal().tolist() == [1, 2, 1]


def test_tiled_clamps_and_errors():
    conv = nn.Conv2d(2, 2, 3)  # 6x7 input -> 4x5 output
    tiled = TiledConv2d.from_conv(conv, (6, 7), tile=(9, 2))
    assert tiled.tile == (4, 2) and tiled.n_tiles == 8
    assert TiledConv2d.from_conv(conv, (6, 7), tile=1).n_tiles == 1
    with pytest.raises(ValueError, match=r"tile='2x2x2' has 3 entries; a 2d conv needs 2"):
        TiledConv2d.from_conv(conv, (6, 7), tile=(2, 2, 2))
    with pytest.raises(ValueError, match=r"padding_mode='zeros' only, got 'reflect'.*'fc'"):
        TiledConv2d.from_conv(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (5, 5), tile=2)


def test_tiled_extremes_are_cnn_and_elcn():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1).double()
    x = torch.randn(2, 3, 9, 8, dtype=F64)
    one = TiledConv2d.from_conv(conv, (9, 8), tile=1)
    assert torch.equal(one.weight[0], conv.weight.detach())
    full = TiledConv2d.from_conv(conv, (9, 8), tile=99)
    assert full.n_tiles == full.geometry.P
    lc = LocallyConnected2d.from_conv(conv, (9, 8))
    assert torch.equal(full.to_lc().weight, lc.weight)
    with torch.no_grad():
        full.weight.normal_()
        check_close(full(x), full.to_lc()(x), 1e-12)


# ---- targets and moves along the lattice --------------------------------------------------------------------


def test_target_strings():
    assert parse_target("wide:5").spec == "wide:5" and parse_target("wide", kernel_size=(5,)).spec == "wide:5"
    assert parse_target("wide:5X3").kernel_size == (5, 3) and parse_target("wide:full").kernel_size == "full"
    assert parse_target("tiled", tile=(2, 3)).spec == "tiled:2x3" and parse_target("lc").spec == "lc"
    for bad, msg in (("wide", "needs a kernel_size"), ("tiled:0", "positive int"), ("tiled:full", "positive int"),
                     ("lc:2", "not a valid target"), ("wide:5:5", "positive int"), ("cnn", "not a valid target")):
        with pytest.raises(ValueError, match=msg) as e:
            parse_target(bad)
        assert "wide:full" in str(e.value) or "needs" in str(e.value)
    with pytest.raises(ValueError, match="given twice"):
        parse_target("wide:5", kernel_size=5)
    with pytest.raises(ValueError, match="kernel_size= applies to to='wide' only"):
        parse_target("tiled:2", kernel_size=5)


def sequential_cnn(dim: int = 2) -> nn.Module:
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    return nn.Sequential(
        conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 8, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.ReLU(), conv(8, 4, 2, padding="same"), nn.Flatten(),
    )


def make(dim: int = 2, dtype=F64):
    torch.manual_seed(0)
    model = sequential_cnn(dim).to(dtype)
    x = torch.randn(3, 3, *((9, 10) if dim == 2 else (11,)), dtype=dtype)
    return model, x


def equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("to", ["wide:5", "wide:full", "tiled:2", "tiled:3"])
def test_relax_keywords_equal_strings_and_roundtrip(to, dim):
    model, x = make(dim)
    kind, _, arg = to.partition(":")
    kw = {"kernel_size": arg if arg == "full" else int(arg)} if kind == "wide" else {"tile": int(arg)}
    relaxed = relax(model, to, x)
    assert equal_state(relaxed, relax(model, kind, x, **kw))
    types = {type(m) for m in relaxed.modules() if isinstance(m, RelaxedConv)}
    assert types == {({"wide": (WideConv1d, WideConv2d), "tiled": (TiledConv1d, TiledConv2d)}[kind])[dim - 1]}
    with torch.no_grad():
        check_close(relaxed(x), model(x), 1e-10)
    # distances generalise through the RelaxedConv interface: 0 right after embedding, the CNN comes back exactly
    assert offlocal_ratio(relaxed) == 0.0 and cnn_distance(relaxed) <= 1e-15
    back = to_cnn(relaxed, like=model)
    assert equal_state(back, model)


@pytest.mark.parametrize("dim", [1, 2])
def test_paths_along_the_lattice_are_exact(dim):
    model, x = make(dim)
    lc, fc = relax(model, "lc", x), relax(model, "fc", x)
    # right after embedding, every path gives the direct relaxation bit for bit
    tiled = relax(model, "tiled:2", x)
    assert equal_state(relax(tiled, "lc", x), lc)
    assert equal_state(relax(tiled, "fc", x), fc)
    assert equal_state(relax(relax(tiled, "lc", x), "fc", x), fc)
    for ks in ("wide:full", "wide:7"):
        assert equal_state(relax(relax(model, ks, x), "fc", x), fc)
    # released weights: each move up the lattice keeps the function
    with torch.no_grad():
        for m in (*tiled.modules(),):
            if isinstance(m, RelaxedConv):
                m.weight.add_(0.1 * torch.randn_like(m.weight) * m.local_mask())
        y = tiled(x)
        check_close(relax(tiled, "lc", x)(x), y, 1e-10)
        check_close(relax(tiled, "fc", x)(x), y, 1e-10)
        check_close(relax(relax(tiled, "lc", x), "fc", x)(x), y, 1e-10)
        wide = relax(model, "wide:full", x)
        for m in wide.modules():
            if isinstance(m, RelaxedConv):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
        check_close(relax(wide, "fc", x)(x), wide(x), 1e-10)
    assert offlocal_ratio(wide) > 0 and offlocal_ratio(relax(wide, "fc", x)) > 0


def test_non_lattice_moves_are_refused():
    model, x = make()
    wide, tiled, lc = relax(model, "wide:5", x), relax(model, "tiled:2", x), relax(model, "lc", x)
    with pytest.raises(ValueError, match=r"nothing to relax.*cannot go to 'lc'.*WideConv2d, whose valid next targets "
                                         r"are \['fc'\]"):
        relax(wide, "lc", x)
    with pytest.raises(ValueError, match=r"cannot go to 'wide:5'.*TiledConv2d, whose valid next targets are \['lc', 'fc'\]"):
        relax(tiled, "wide:5", x)
    with pytest.raises(ValueError, match=r"cannot go to 'tiled:2'.*LocallyConnected2d.*\['fc'\]"):
        relax(lc, "tiled:2", x)
    with pytest.raises(ValueError, match=r"cannot move these layers there: '0' is a WideConv2d.*\['fc'\]"):
        relax(wide, "tiled:3", x, layers=["0"])
    # a partly relaxed model: the convs still go, the relaxed layers stay
    part = relax(model, "wide:5", x, layers=["0"])
    both = relax(part, "tiled:2", x)
    assert isinstance(both[0], WideConv2d) and isinstance(both[2], TiledConv2d)
    with torch.no_grad():
        check_close(both(x), model(x), 1e-10)


def test_relax_errors_name_layer_and_valid_values():
    model, x = make()
    with pytest.raises(ValueError, match=r"layer '2' .*kernel_size=4 is smaller than the conv's extent \(5, 5\).*"
                                         r"minimum is 5 \(to='wide:5'\)"):
        relax(model, "wide:4", x)
    with pytest.raises(ValueError, match=r"layer '0' .*tile='2x2x2' has 3 entries"):
        relax(model, "tiled:2x2x2", x)
    with pytest.raises(ValueError, match=r"to='wid'.*valid targets: 'lc', 'fc', 'wide:K'"):
        relax(model, "wid", x)
    reflect = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    for to, what in (("wide:5", "wide convs"), ("tiled:2", "tiled convs")):
        with pytest.raises(ValueError, match=rf"padding_mode='reflect'; {what} support only zero padding: use to='fc'"):
            relax(reflect, to, (1, 2, 6, 6))


@pytest.mark.parametrize("to", ["tiled:2", "wide:full"])
def test_transfer_through_lattice_moves(to):
    model, x = make()
    first = relax(model, to, x)
    with torch.no_grad():
        for m in first.modules():
            if isinstance(m, RelaxedConv):
                m.weight.add_(torch.randn_like(m.weight) * (m.local_mask() if to.startswith("tiled") else 1))
    nxt = relax(first, "fc", x)
    mapped = transfer(first.state_dict(), nxt, source=first)
    for k, v in nxt.state_dict().items():
        assert torch.equal(mapped[k], v), k
    with pytest.raises(ValueError, match="need source=the source model"):
        transfer({"0.weight": first[0].weight}, nxt)
    if to.startswith("tiled"):
        lc = relax(first, "lc", x)
        mapped = transfer(first.state_dict(), lc, source=first)
        assert all(torch.equal(mapped[k], v) for k, v in lc.state_dict().items())


# ---- whole models ---------------------------------------------------------------------------------------------


def whole_model(name: str):
    """(model in eval mode with non-trivial BatchNorm statistics, input) for VanillaCNN, AlexNet, ResNet-18."""
    torch.manual_seed(0)
    if name == "resnet18":
        torchvision = pytest.importorskip("torchvision")
        model = torchvision.models.resnet18(num_classes=10)
    else:
        from archrelax.models import create_model

        model = create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(2, 3, 32, 32)


# the AlexNet / ResNet-18 eFCNs (0.5 / 0.6 GB) are measured by benchmarks/lattice_exactness.py, not here
_WHOLE = [(name, to) for name in ("vanilla_cnn", "alexnet", "resnet18")
          for to in ("wide:full", "wide:7", "tiled:2", "tiled:3x2", "tiled:2>lc", "tiled:2>fc", "wide:full>fc")
          if name == "vanilla_cnn" or not to.endswith(">fc")]


@pytest.mark.parametrize("name,to", _WHOLE)
def test_whole_models_float32(name, to):
    model, x = whole_model(name)
    relaxed = model
    for step in to.split(">"):
        relaxed = relax(relaxed, step, x)
    assert not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in relaxed.modules())
    with torch.no_grad():
        check_close(relaxed(x), model(x), 1e-5)
    assert cnn_distance(relaxed) <= 1e-7


def test_build_architecture_replays_lattice_targets():
    from archrelax.models import build_architecture, create_model

    for chain in (["tiled:2"], ["wide:full"], ["tiled:2x3", "lc"], ["wide:7", "fc"], ["tiled:3", "fc"]):
        arch = {"model": "vanilla_cnn", "model_kwargs": {"width": 4}, "relax_chain": chain, "relax_layers": None}
        torch.manual_seed(0)
        cnn = create_model("vanilla_cnn", width=4)
        trained = cnn
        for step in chain:
            trained = relax(trained, step)
        with torch.no_grad():  # as if trained: released weights
            for p in trained.parameters():
                p.add_(0.01 * torch.randn_like(p))
        rebuilt = build_architecture(arch)
        rebuilt.load_state_dict(trained.state_dict())  # shapes and keys match
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(rebuilt(x), trained(x)), chain
        assert [type(m) for m in rebuilt.modules()] == [type(m) for m in trained.modules()]
    with pytest.raises(ValueError, match=r"relax_chain step 'wide' is not a valid target.*kernel_size"):
        build_architecture({"model": "vanilla_cnn", "relax_chain": ["wide"]})
    with pytest.raises(ValueError, match=r"relax_chain step 'conv' is not a valid target.*'wide:full'"):
        build_architecture({"model": "vanilla_cnn", "relax_chain": ["conv"]})


def test_footprint_lattice_lines():
    from archrelax.cli import main as cli_main
    from archrelax.embed import footprint
    from archrelax.models import create_model

    model = create_model("vanilla_cnn")
    targets = ("cnn", "tiled:2", "tiled:100", "lc", "wide:7", "wide:full", "fc")
    fp = footprint(model, to=targets, reference=False)
    for to in targets[1:]:  # the counts are those of the real relaxed layers
        relaxed = relax(model, to)
        for ly in fp.layers:
            assert ly.params[to] == sum(p.numel() for p in relaxed.get_submodule(ly.name).parameters()), (to, ly.name)
    by = {ly.name: ly for ly in fp.layers}
    assert by["features.3"].params["tiled:100"] == by["features.3"].params["lc"]  # clamped: the eLCN
    assert by["features.3"].params["wide:full"] == 64 * 64 * 15 * 15 + 64
    assert fp.total_params("cnn") < fp.total_params("tiled:2") < fp.total_params("lc") < fp.total_params("fc")
    assert fp.total_params("wide:7") < fp.total_params("wide:full") < fp.total_params("fc")
    text = str(fp)
    assert "tiled:2 params" in text and "wide:full bytes" in text
    with pytest.raises(ValueError, match=r"to='tiled'.*'tiled:T'"):
        footprint(model, to="tiled")
    assert cli_main(["footprint", "vanilla_cnn", "--to", "lattice", "--json"]) == 0
