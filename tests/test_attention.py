"""The attention layer (relax(model, "attn")) against the convs it comes from: exactness over many configurations,
gradients (first and second order) across chunk boundaries, the chunk bound on memory, the RelaxedConv interface,
the model-level moves, the measures, the footprint."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import archrelax
from archrelax.embed import (AttentionConv1d, AttentionConv2d, ablate, footprint, parse_target, relax, subspace_distances,
                             to_cnn, transfer)
from archrelax.embed.attention import attention_param_count, target_coords
from archrelax.embed.attention_chunks import _LIVE, CHUNK_BYTES, chunk_plan, workspace_bytes
from archrelax.embed.attention_measures import MEASURE_KEYS, attention_measures, layer_measures
from archrelax.embed.connectivity import ConvGeometry, index_map
from archrelax.models import build_architecture, create_model
from conv_configs import conv_configs

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def attn_class(conv: nn.Module) -> type:
    return AttentionConv1d if isinstance(conv, nn.Conv1d) else AttentionConv2d


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach().double()).abs().max() / ref.detach().double().abs().max())


def perturb_(layer, alpha=(0.5, 2.0), shift=0.3, content=1.0) -> None:
    """Move a layer off the embedding: soft and shifted positional focus, content attention on."""
    with torch.no_grad():
        layer.alpha.uniform_(*alpha)
        layer.offset.normal_(0, shift)
        if layer.key_dim:
            layer.query_weight.normal_(0, content)


# ---- exactness -------------------------------------------------------------------------------------------------


@SETTINGS
@given(conv_configs(), st.sampled_from([None, 0, 2]), st.sampled_from([CHUNK_BYTES, 1, 3000]))
def test_attention_is_exact(cfg, key_dim, budget):
    """The conv's function at the embedding, to float32 1e-6 and float64 1e-12 (relative to the largest output), for
    any kernel, stride, dilation, groups, padding and padding mode, content on or off, in one chunk or many; the
    oracle is the conv itself, applied in float64 to the same (rounded) weights and inputs."""
    conv, in_spatial = cfg
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, *in_spatial, dtype=F64)
    for dtype, tol in ((torch.float32, 1e-6), (F64, 1e-12)):
        c = copy.deepcopy(conv).to(dtype)
        layer = attn_class(conv).from_conv(c, in_spatial, key_dim=key_dim)
        layer.chunk_bytes = budget
        xd = x.to(dtype).requires_grad_()
        y = layer(xd)
        ref_conv = copy.deepcopy(c).double()
        xr = xd.detach().double().requires_grad_()
        ref = ref_conv(xr)
        assert y.dtype == dtype and y.shape == ref.shape
        if ref.abs().max() > 0:
            assert rel_err(y, ref) <= tol, (dtype, rel_err(y, ref))
        else:  # every output reads only zero padding: relative to the scale the conv's sums have, |W| applied to |x|
            scale = copy.deepcopy(ref_conv)
            with torch.no_grad():
                scale.weight.abs_()
                scale.bias = None
                bound = tol * float(scale(xr.abs()).max() + c.weight.abs().max() * xr.abs().max())
            assert float((y.detach().double() - ref).abs().max()) <= bound
    # float64: the gradients of the input, the value maps and the bias are the conv's
    g = torch.randn_like(ref)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    if ref.abs().max() > 0:
        assert rel_err(xd.grad, xr.grad) <= 1e-12 if xr.grad.abs().max() > 0 else True
        assert rel_err(layer.weight.grad, ref_conv.weight.grad) <= 1e-12
    if layer.bias is not None:
        assert rel_err(layer.bias.grad, ref_conv.bias.grad) <= 1e-12
    for p in (layer.alpha, layer.offset) + ((layer.query_weight, layer.key_weight) if layer.key_dim else ()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # the inverse of the embedding is bit-exact, and the layer has the conv's parameter shapes
    w, b = layer.nearest_cnn()
    assert torch.equal(w, c.weight.double()) and (b is None or torch.equal(b, c.bias.double()))
    assert layer.weight.shape == c.weight.shape
    n = layer.subspace_sq_norms()
    assert n.offlocal == n.offsharing == n.cnn == 0.0


def test_targets_come_from_the_index_map():
    """Where every head points: the index map's input for live taps (every padding mode), and for taps that read
    zero padding a position outside the input (so the null key wins)."""
    for mode in ("zeros", "reflect", "replicate", "circular"):
        geom = ConvGeometry.from_conv(nn.Conv2d(2, 3, (3, 4), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                                padding_mode=mode), (6, 7))
        idx, coords = index_map(geom), target_coords(geom)
        live = idx >= 0
        flat = coords[..., 0] * 7 + coords[..., 1]
        assert torch.equal(flat[live], idx[live])
        inside = ((coords >= 0) & (coords < torch.tensor([6, 7]))).all(-1)
        assert torch.equal(inside, live)


# ---- gradients and chunks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_dim", [None, 0])
@pytest.mark.parametrize("budget", [CHUNK_BYTES, 1, 6000])  # one chunk; one query per chunk; a few per chunk
@pytest.mark.parametrize("dim", [1, 2])
def test_gradients_and_second_derivatives_across_chunks(key_dim, budget, dim):
    """Away from the embedding (soft, shifted focus, content on) the chunked backward is the derivative of the
    forward, and its own derivative too (Hessian-vector products, as the sharpness analysis takes them)."""
    torch.manual_seed(0)
    conv = (nn.Conv2d(2, 2, (3, 2), padding=(1, 0), stride=(1, 2)) if dim == 2 else
            nn.Conv1d(2, 3, 3, padding=2, dilation=2)).double()
    spatial = (3, 4) if dim == 2 else (6,)
    layer = attn_class(conv).from_conv(conv, spatial, key_dim=key_dim)
    layer.chunk_bytes = budget
    perturb_(layer)
    rows, queries = layer._chunks(2, 8)
    assert (len(rows) * len(queries) == 1) == (budget == CHUNK_BYTES or (budget == 6000 and dim == 1 and key_dim == 0))
    x = torch.randn(2, 2, *spatial, dtype=F64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    params = (x, *layer.parameters())
    assert torch.autograd.gradcheck(f, params)
    assert torch.autograd.gradgradcheck(f, params)


def test_chunked_equals_one_chunk():
    """Forward and every gradient are the same in one chunk and in one-query chunks (float64, off the embedding)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    outs = []
    for budget in (CHUNK_BYTES, 1):
        torch.manual_seed(2)
        layer = AttentionConv2d.from_conv(conv, (5, 6), seed=0)
        perturb_(layer)
        layer.chunk_bytes = budget
        x = torch.randn(4, 4, 5, 6, dtype=F64, requires_grad=True)
        y = layer(x)
        y.sin().sum().backward()
        outs.append([y.detach(), x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)


def test_embedding_gradients():
    """At the embedding W_q = 0 and W_k is random: the content gradient reaches W_q (tiny: the softmax is one-hot
    to machine precision), W_k's is exactly 0 (its logit term is multiplied by W_q); α and the offsets get finite
    gradients; the value maps get the conv's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    layer = AttentionConv2d.from_conv(conv, (6, 6))
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    layer(x).square().sum().backward()
    assert (layer.query_weight.grad != 0).any() and torch.isfinite(layer.query_weight.grad).all()
    assert torch.equal(layer.key_weight.grad, torch.zeros_like(layer.key_weight))
    assert (layer.alpha.grad != 0).any() and torch.isfinite(layer.alpha.grad).all()
    assert torch.isfinite(layer.offset.grad).all()
    # a softer focus trades exactness for larger gradients: about e^(-alpha/2) each
    soft = AttentionConv2d.from_conv(conv, (6, 6), alpha=16.0)
    soft(x).square().sum().backward()
    assert soft.alpha.grad.abs().max() > 1e6 * layer.alpha.grad.abs().max()
    assert math.exp(-8) / 10 < rel_err(soft(x), conv(x)) < 10 * math.exp(-8)  # the leak, e^(-alpha/2)


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op returns whose last dim is ``keys`` (the attention's key axis)."""

    def __init__(self, keys: int):
        super().__init__()
        self.keys, self.largest = keys, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.keys:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("key_dim", [None, 0])
def test_never_more_than_one_chunk(key_dim):
    """No op of forward+backward returns more than one chunk of (batch, heads, queries, keys), while the whole
    attention is many chunks big."""
    conv = nn.Conv2d(1, 2, 3, padding=1).double()
    layer = AttentionConv2d.from_conv(conv, (12, 12), key_dim=key_dim)
    g = layer.geometry
    keys, batch = g.Q + 1, 4
    layer.chunk_bytes = 16 * g.T * keys * _LIVE * 8  # 16 queries of one sample per chunk
    rows, queries = chunk_plan(g, layer.key_dim, batch, 8, layer.chunk_bytes)
    chunk = (1 if key_dim == 0 else rows) * queries * g.T * keys
    assert queries == 16 and chunk * 8 * _LIVE == workspace_bytes(g, layer.key_dim, 8, batch, layer.chunk_bytes)
    perturb_(layer)
    x = torch.randn(batch, 1, 12, 12, dtype=F64, requires_grad=True)
    with _MaxNumel(keys) as seen:
        layer(x).square().sum().backward()
    assert 0 < seen.largest <= chunk < batch * g.T * g.P * keys // 8


# ---- the model-level moves --------------------------------------------------------------------------------------


def small_cnn():
    torch.manual_seed(0)
    return create_model("vanilla_cnn", width=8, num_classes=5, in_channels=1, input_size=28)


def attn_types(model):
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, (AttentionConv1d, AttentionConv2d))}


def test_relax_model_to_attention():
    cnn = small_cnn().double().eval()
    x = torch.randn(6, 1, 28, 28, dtype=F64)
    rng = torch.get_rng_state()
    model = relax(cnn, "attn")
    assert torch.equal(torch.get_rng_state(), rng)  # W_k's draw does not move the global RNG
    assert attn_types(model) == {f"features.{i}": AttentionConv2d for i in (0, 3, 6)}
    with torch.no_grad():
        assert rel_err(model(x), cnn(x)) <= 1e-12
        assert rel_err(relax(cnn.float(), "attn")(x.float()), cnn.float()(x.float())) <= 1e-6
    cnn.double()
    sd, cnn_sd = model.state_dict(), cnn.state_dict()
    extra = {f"features.{i}.{p}" for i in (0, 3, 6) for p in ("alpha", "offset", "query_weight", "key_weight")}
    assert set(sd) == set(cnn_sd) | extra
    assert all(sd[k].shape == v.shape for k, v in cnn_sd.items())  # the conv's weights, shapes and all
    # one W_k per layer, drawn from the global seed and the layer's path: the same again, other for another seed
    again = relax(cnn, "attn")
    assert torch.equal(again.features[3].key_weight, model.features[3].key_weight)
    assert not torch.equal(model.features[3].key_weight[:, :, :1], model.features[6].key_weight[:, :, :1])
    torch.manual_seed(1)
    assert not torch.equal(relax(cnn, "attn").features[3].key_weight, model.features[3].key_weight)
    # the way back and the subspace tools
    back = to_cnn(model, like=cnn)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), cnn_sd.values()))
    assert subspace_distances(model) == archrelax.SubspaceDistances(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"attention layers.*attention_measures"):
        ablate(model, "local")
    assert transfer({"features.3.weight": cnn.features[3].weight}, model)["features.3.weight"] is cnn.features[3].weight


def test_partial_and_mixed_relaxations():
    cnn = small_cnn().double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=F64)
    one = relax(cnn, "attn:dk=0", layers=["features.3"])
    assert attn_types(one) == {"features.3": AttentionConv2d} and one.features[3].key_dim == 0
    mixed = relax(relax(cnn, "lc", layers="features.0"), "attn", layers="features.[36]")
    assert attn_types(mixed) == {"features.3": AttentionConv2d, "features.6": AttentionConv2d}
    with torch.no_grad():
        assert rel_err(one(x), cnn(x)) <= 1e-12 and rel_err(mixed(x), cnn(x)) <= 1e-12
    # the subspace ratios of the eLCN layer are not swamped by the attention layers' α (80 per head)
    with torch.no_grad():
        mixed.features[0].weight.add_(torch.randn_like(mixed.features[0].weight) * mixed.features[0].local_mask())
    lc_only = relax(cnn, "lc", layers="features.0")
    lc_only.features[0].load_state_dict(mixed.features[0].state_dict())
    assert subspace_distances(mixed).cnn_distance == pytest.approx(subspace_distances(lc_only).cnn_distance, rel=1e-9)


def test_moves_from_and_to_attention_are_refused():
    cnn = small_cnn()
    model = relax(cnn, "attn", layers=["features.0"])
    with pytest.raises(ValueError, match=r"'features.0' is a AttentionConv2d, whose valid next targets are \[\]"):
        relax(model, "fc", layers=["features.0"])
    lc = relax(cnn, "lc", layers=["features.0"])
    with pytest.raises(ValueError, match=r"'features.0' is a LocallyConnected2d, whose valid next targets are \['fc'\]"):
        relax(lc, "attn", layers=["features.0"])
    assert archrelax.embed.next_targets(model.features[0]) == ()
    assert "attn" in archrelax.embed.next_targets(cnn.features[0])


def test_rebuilt_from_its_record_and_a_weights_only_checkpoint(tmp_path):
    """A run's resume path: the arch record rebuilds the model, the state dict (loaded with weights_only) restores it,
    α, offsets and content maps included."""
    cnn = small_cnn()
    arch = {"model": "vanilla_cnn", "model_kwargs": {"width": 8, "num_classes": 5, "in_channels": 1, "input_size": 28},
            "relax_chain": ["attn:alpha=40,dk=4"], "relax_layers": ["features.3", "features.6"]}
    model = relax(cnn, "attn:dk=4,alpha=40", layers=["features.3", "features.6"])
    perturb_(model.features[3])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(5)  # another seed: W_k comes from the checkpoint, not from the draw
    rebuilt = build_architecture(arch)
    rebuilt.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.features[3].target.spec == "attn:alpha=40,dk=4"


def test_target_strings():
    assert parse_target("attn").spec == "attn"
    assert parse_target("attn:dk=4,alpha=40").spec == parse_target("attn:alpha=40, dk=4").spec == "attn:alpha=40,dk=4"
    assert parse_target("attn:alpha=80").spec == "attn"  # the default spelled out is the same target
    assert parse_target("attn:dk=0").key_dim == 0 and parse_target("attn:alpha=2.5").alpha == 2.5
    for bad, text in [("attn:beta=1", "is not an option"), ("attn:alpha=-1", "positive finite"),
                      ("attn:alpha=inf", "positive finite"), ("attn:dk=x", "int >= 0"), ("attn:dk=-1", "int >= 0"),
                      ("attn:alpha=1,alpha=2", "given twice"), ("attn:alpha", "not key=value")]:
        with pytest.raises(ValueError, match=text):
            parse_target(bad)
    with pytest.raises(ValueError, match="do not apply to 'attn'"):
        parse_target("attn", kernel_size=3)
    with pytest.raises(ValueError, match="'attn'"):
        parse_target("atn")  # the error lists attn among the valid targets


def test_reset_parameters_is_a_fresh_attention_layer():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = AttentionConv2d.from_conv(conv, (5, 5))
    perturb_(layer)
    before = layer.key_weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(layer.weight, conv.weight)
    assert layer.weight.abs().max() <= 1 / math.sqrt(3 * 9)
    assert torch.equal(layer.alpha, torch.full((9,), 80.0)) and not layer.offset.any() and not layer.query_weight.any()
    assert not torch.equal(layer.key_weight, before)
    fresh = AttentionConv2d(layer.geometry)  # from a geometry: a random conv in attention form
    x = torch.randn(2, 3, 5, 5)
    probe = layer.geometry.make_conv()
    probe.load_state_dict({"weight": fresh.weight, "bias": fresh.bias})
    with torch.no_grad():
        assert rel_err(fresh(x), probe(x)) <= 1e-6


def test_bad_layer_arguments():
    geom = ConvGeometry.from_conv(nn.Conv2d(1, 1, 3), (5, 5))
    with pytest.raises(ValueError, match="AttentionConv2d"):
        AttentionConv1d(geom)
    with pytest.raises(ValueError, match="key_dim=-1"):
        AttentionConv2d(geom, key_dim=-1)
    with pytest.raises(ValueError, match="alpha=0"):
        AttentionConv2d(geom, alpha=0)
    with pytest.raises(ValueError, match=r"built for inputs \(B, 1, 5, 5\)"):
        AttentionConv2d(geom)(torch.zeros(1, 1, 6, 6))


# ---- measures --------------------------------------------------------------------------------------------------


def test_measures_at_the_embedding():
    """Right after the embedding: no content, no shift, all attention on the conv's taps, the conv's output, and the
    conv's own mean distance (computed here from the conv: the live taps found by unfolding a map of ones)."""
    cnn = small_cnn()
    model = relax(cnn, "attn")
    x = torch.randn(4, 1, 28, 28)
    m = attention_measures(model, x)
    assert list(m) == list(MEASURE_KEYS)
    assert m["attn_content_share"] == 0.0 and m["attn_offset_max"] == 0.0
    assert m["attn_offtarget"] < 1e-12 and m["attn_output_distance"] < 1e-6
    assert m["attn_alpha_min"] == m["attn_alpha_max"] == 80.0
    per = layer_measures(model, x)
    for name, meas in per.items():
        conv, layer = cnn.get_submodule(name), model.get_submodule(name)
        g = layer.geometry
        # distance of each tap to the receptive field's centre, over the taps that read the input (by unfolding ones)
        live = F.unfold(torch.ones(1, 1, *g.in_spatial), g.kernel_size, dilation=g.dilation,
                        padding=conv.padding, stride=g.stride)[0] > 0  # (T, P)
        k = g.kernel_size
        ty, tx = torch.meshgrid(torch.arange(k[0]) - (k[0] - 1) / 2, torch.arange(k[1]) - (k[1] - 1) / 2, indexing="ij")
        dist = (ty.square() + tx.square()).sqrt().reshape(-1, 1).expand_as(live)
        expected = float(dist[live].double().mean())
        assert meas.conv_mean_distance == pytest.approx(expected, rel=1e-6)
        assert meas.mean_distance == pytest.approx(expected, rel=1e-5), name
    # without a probe batch: the positional attention alone, content-dependent figures NaN
    m0 = attention_measures(model)
    assert math.isnan(m0["attn_content_share"]) and math.isnan(m0["attn_output_distance"])
    assert m0["attn_mean_distance"] == pytest.approx(m["attn_mean_distance"], rel=1e-5)
    assert attention_measures(cnn) == {}


def test_measures_move_with_the_released_parameters():
    cnn = small_cnn()
    model = relax(cnn, "attn", layers=["features.3"])
    x = torch.randn(4, 1, 28, 28)
    base = attention_measures(model, x)
    layer = model.features[3]
    with torch.no_grad():
        layer.alpha.fill_(0.05)  # a wide focus: attention spreads over the input
    wide = attention_measures(model, x)
    assert wide["attn_mean_distance"] > base["attn_mean_distance"] + 1
    assert wide["attn_offtarget"] > 0.5 and wide["attn_output_distance"] > 0.1 and wide["attn_content_share"] == 0
    with torch.no_grad():
        layer.query_weight.normal_(0, 3.0)
    content = attention_measures(model, x)
    assert content["attn_content_share"] > 0.05
    with torch.no_grad():
        layer.offset.fill_(1.5)
    assert attention_measures(model, x)["attn_offset_max"] == pytest.approx(1.5 * math.sqrt(2))
    # pure: buffers (none here) and parameters untouched, the result a function of the model
    assert attention_measures(model, x) == attention_measures(model, x)


# ---- footprint and the memory guard ------------------------------------------------------------------------------


def test_footprint_counts_and_workspace(capsys):
    cnn = create_model("vanilla_cnn")
    model = relax(cnn, "attn")
    fp = footprint(cnn, to=("cnn", "attn", "attn:dk=0"), batch_size=250)
    for ly in fp.layers:
        real = model.get_submodule(ly.name)
        assert ly.params["attn"] == sum(p.numel() for p in real.parameters()) == attention_param_count(ly.geometry)
        assert ly.workspace["attn"] == workspace_bytes(ly.geometry, real.key_dim, 4, 250)
        assert ly.workspace["attn:dk=0"] == workspace_bytes(ly.geometry, 0, 4, 250)
    assert fp.to_dict()["total"]["attn"]["workspace_bytes"] == max(ly.workspace["attn"] for ly in fp.layers)
    assert "workspace" not in footprint(cnn, to=("cnn", "lc")).to_dict()["layers"][0]  # other targets: as before
    bound = footprint(cnn, to="attn")  # no batch: the most any batch needs, the budget
    assert all(ly.workspace["attn"] == CHUNK_BYTES for ly in bound.layers)
    from archrelax.cli import main

    assert main(["footprint", "vanilla_cnn", "--to", "attn", "--batch-size", "250"]) == 0
    out = capsys.readouterr().out
    assert "Attn workspace" in out and "at batch 250" in out


def test_memory_guard_counts_the_workspace(monkeypatch):
    import importlib

    relax_mod = importlib.import_module("archrelax.embed.relax")  # the module (the package exports a function of its name)
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    geom = ConvGeometry.from_conv(model[0], (16, 16))
    params = attention_param_count(geom) * 4
    monkeypatch.setattr(relax_mod, "available_memory", lambda device: params + CHUNK_BYTES // 2)
    with pytest.raises(MemoryError, match="needs about"):
        relax(model, "attn", (1, 1, 16, 16))
    monkeypatch.setattr(relax_mod, "available_memory", lambda device: params + CHUNK_BYTES)
    relax(model, "attn", (1, 1, 16, 16))


# ---- the sharpness annealed after the switch ("attn:...,anneal_to=A,anneal_steps=N") -------------------------------


def _tiny_attention(target: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.Flatten())
    x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3 * 36, (8,))
    return relax(cnn, target, example_input=x), x, y


def _train_tiny(target: str, steps: int = 30) -> tuple[nn.Module, list[AttentionConv2d], dict[str, float]]:
    """``steps`` SGD steps of cross-entropy on one fixed batch, the sharpness set per step as the trainer does;
    returns the model, its attention layers and the largest |gradient| of α, the offsets and W_q at the last step."""
    from archrelax.embed.attention import anneal_attention_

    model, x, y = _tiny_attention(target)
    layers = [m for m in model.modules() if isinstance(m, AttentionConv2d)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        anneal_attention_(model, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {n: max(float(getattr(m, n).grad.abs().max()) for m in layers)
                 for n in ("alpha", "offset", "query_weight")}
        opt.step()
    anneal_attention_(model, steps)
    return model, layers, grads


def test_annealed_attention_is_the_plain_one_at_the_switch_bit_for_bit():
    plain, x, _ = _tiny_attention("attn:alpha=32")
    annealed, _, _ = _tiny_attention("attn:alpha=32,anneal_to=4,anneal_steps=10")
    assert torch.equal(annealed(x), plain(x))
    layer = annealed[0]
    assert layer.target.spec == "attn:alpha=32,anneal_to=4,anneal_steps=10"
    assert [layer.anneal_shift(t) for t in (0, 5, 10, 20)] == [0.0, -14.0, -28.0, -28.0]
    assert "0.alpha_shift" in annealed.state_dict() and "0.alpha_shift" not in plain.state_dict()


def test_annealed_sharpness_gives_alpha_offsets_and_content_gradients_and_they_move():
    """At α = 32 the softmax is one-hot to e^-16: α, the offsets and W_q get ~1e-7 of the value maps' gradient and
    stay where the embedding put them; annealed to 4 over 10 steps they get O(1e-2) and move."""
    _, plain, g_plain = _train_tiny("attn:alpha=32")
    _, annealed, g_annealed = _train_tiny("attn:alpha=32,anneal_to=4,anneal_steps=10")
    for name in ("alpha", "offset", "query_weight"):
        assert g_plain[name] < 1e-5 < 1e-3 < g_annealed[name], (name, g_plain[name], g_annealed[name])

    def moved(layers):
        return (max(float((m.alpha.detach() - 32).abs().max()) for m in layers),
                max(float(m.offset.detach().abs().max()) for m in layers),
                max(float(m.query_weight.detach().abs().max()) for m in layers))

    assert max(moved(plain)) < 1e-5
    assert min(moved(annealed)) > 1e-3, moved(annealed)
    # the sharpness the logits use: α + s, s = 4 − 32 once the anneal is over
    assert all(torch.equal(m.effective_alpha(), m.alpha - 28) for m in annealed)


def test_anneal_options_in_the_target_string():
    t = parse_target("attn:anneal_steps=20, anneal_to=4.0,alpha=32")
    assert (t.spec, t.anneal_to, t.anneal_steps) == ("attn:alpha=32,anneal_to=4,anneal_steps=20", 4.0, 20)
    for bad, why in [("attn:anneal_to=4", "go together"), ("attn:anneal_steps=3", "go together"),
                     ("attn:anneal_to=0,anneal_steps=3", "positive finite"),
                     ("attn:anneal_to=4,anneal_steps=0", "int >= 1"), ("attn:anneal_to=4,anneal_steps=x", "int >= 1")]:
        with pytest.raises(ValueError, match=why):
            parse_target(bad)
    with pytest.raises(ValueError, match="give both"):
        AttentionConv2d(ConvGeometry.from_conv(nn.Conv2d(1, 1, 3), (5, 5)), anneal_to=4.0)
