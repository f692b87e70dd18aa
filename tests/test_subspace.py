"""offlocal_ratio, cnn_distance, to_cnn and ablate on relaxed models."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

from archrelax.embed import (DenseConv, LocallyConnected1d, LocallyConnected2d, RelaxedConv, SubspaceDistances, ablate,
                             cnn_distance, offlocal_ratio, offsharing_ratio, relax, relaxed_layers, subspace_distances,
                             to_cnn)
from archrelax.embed.base import sq_norm
from conv_configs import conv_configs

F64 = torch.float64
SUBSPACE_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class Net(nn.Module):
    """Odd input sizes (7x7 after the stem) so tie counts are not powers of two; BatchNorm; a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 5, stride=2, padding=2, groups=2)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):  # (B, 3, 7, 7)
        x = F.relu(self.bn(self.conv1(x)))
        return self.head(F.relu(self.conv2(x)).flatten(1))


def make(dtype=F64, seed=0):
    torch.manual_seed(seed)
    model = Net().to(dtype).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model, torch.randn(3, 3, 7, 7, dtype=dtype)


def perturb_offlocal(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in relaxed_layers(model).values():
            noise = torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype) * scale
            layer.weight.add_(noise.masked_fill(layer.local_mask(), 0))
    return model


def sq(model: nn.Module) -> float:
    return sum(float(p.detach().double().square().sum()) for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("to", ["lc", "fc"])
def test_to_cnn_roundtrip_exact_and_zero_distance(to, dtype):
    model, x = make(dtype)
    relaxed = relax(model, to, x)
    assert offlocal_ratio(relaxed) == 0.0
    assert cnn_distance(relaxed) == 0.0
    back = to_cnn(relaxed, like=model)
    assert type(back) is Net and isinstance(back.conv1, nn.Conv2d)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_offlocal_ratio_and_distance_after_perturbation():
    model, x = make()
    efcn = perturb_offlocal(relax(model, "fc", x))
    layers = relaxed_layers(efcn).values()
    off = sum(float(layer.weight.detach()[~layer.local_mask()].square().sum()) for layer in layers)
    delta = offlocal_ratio(efcn)
    assert delta > 0 and delta == pytest.approx((off / sq(efcn)) ** 0.5, rel=1e-12)
    # off-local entries are orthogonal to the CNN subspace: the distance is exactly δ here
    assert cnn_distance(efcn) == pytest.approx(delta, rel=1e-10)
    # θ counts the non-relaxed parameters too
    with torch.no_grad():
        efcn.head.weight.mul_(10)
    assert offlocal_ratio(efcn) < delta


def test_elcn_unshared_weights_count_in_distance_not_delta():
    model, x = make()
    elcn = relax(model, "lc", x)
    with torch.no_grad():
        elcn.conv1.weight[:, 0].add_(0.1 * elcn.conv1.local_mask()[:, 0])  # change the filters of one position
    assert offlocal_ratio(elcn) == 0.0  # still local ...
    assert cnn_distance(elcn) > 1e-3  # ... but no longer a CNN


def test_to_cnn_projects_and_copies_other_params():
    model, x = make()
    elcn = relax(model, "lc", x)
    with torch.no_grad():
        elcn.conv1.weight.mul_(1 + 0.1 * torch.rand_like(elcn.conv1.weight))
        elcn.head.bias.add_(1.0)
        elcn.bn.running_mean.add_(0.5)
    back = to_cnn(elcn, like=model)
    cw, cb = elcn.conv1.project()  # the mean of tied entries (to_cnn refines it to the last bit)
    torch.testing.assert_close(back.conv1.weight.detach(), cw, rtol=1e-13, atol=0)
    torch.testing.assert_close(back.conv1.bias.detach(), cb, rtol=1e-13, atol=0)
    assert float((back.conv1.weight - model.conv1.weight).detach().abs().max()) > 1e-4
    assert torch.equal(back.head.bias, elcn.head.bias) and torch.equal(back.bn.running_mean, elcn.bn.running_mean)
    # the result is a CNN: relaxed again it sits in the CNN subspace
    assert cnn_distance(relax(back, "lc", x)) == 0.0


def test_to_cnn_errors():
    model, x = make()
    efcn = relax(model, "fc", x)
    other = Net().double()
    other.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
    with pytest.raises(ValueError, match=r"like.conv2 has geometry .*kernel_size=\(3, 3\).*relaxed layer came from"):
        to_cnn(efcn, like=other)
    with pytest.raises(ValueError, match=r"like.conv1 is a DenseConv, not a Conv1d/Conv2d"):
        to_cnn(efcn, like=efcn)
    with pytest.raises(ValueError, match=r"`like` has no module at 'conv1'"):
        to_cnn(efcn, like=nn.Sequential(nn.Linear(2, 2)))
    wider = Net().double()
    wider.head = nn.Linear(64, 5)
    with pytest.raises(ValueError, match=r"(?s)same structure outside the relaxed layers.*head.weight"):
        to_cnn(efcn, like=wider)


def test_ablate():
    model, x = make()
    efcn = perturb_offlocal(relax(model, "fc", x))
    before = {k: v.clone() for k, v in efcn.state_dict().items()}
    local = ablate(efcn, keep="local")
    with torch.no_grad():
        out_cnn = model(x)
        assert float((local(x) - out_cnn).abs().max()) <= 1e-10 * float(out_cnn.abs().max())
        assert float((efcn(x) - out_cnn).abs().max()) > 1e-3  # the perturbation did change the function
    assert offlocal_ratio(local) == 0.0 and cnn_distance(local) == 0.0
    off = ablate(efcn, keep="offlocal")
    for name, layer in relaxed_layers(off).items():
        mask, src = layer.local_mask(), efcn.get_submodule(name)
        assert not layer.weight[mask].any() and not layer.bias.any()
        assert torch.equal(layer.weight[~mask], src.weight[~mask])
    assert torch.equal(off.head.weight, efcn.head.weight)  # non-relaxed layers are untouched
    for k, v in efcn.state_dict().items():  # pure: the input is unchanged
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=r"keep='both'.*'local' or 'offlocal'"):
        ablate(efcn, keep="both")


def test_no_relaxed_layer():
    model, _ = make()
    assert offlocal_ratio(model) == 0.0 and cnn_distance(model) == 0.0
    same = ablate(model, keep="offlocal")
    for k, v in model.state_dict().items():
        assert torch.equal(same.state_dict()[k], v)


# ---- subspace_distances: one pass, fast per-layer overrides against the interface-only default -------------------

def perturb_all(model: nn.Module, seed: int = 2) -> nn.Module:
    """Off-local noise, unshared local noise and bias noise on every relaxed layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in relaxed_layers(model).values():
            noise = torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype)
            layer.weight.add_(0.05 * noise.masked_fill(layer.local_mask(), 0))
            layer.weight.mul_(1 + 0.1 * torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.add_(0.1 * torch.randn(layer.bias.shape, generator=g, dtype=layer.bias.dtype))
    return model


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-300


@SUBSPACE_SETTINGS
@given(conv_configs())
def test_fast_sq_norms_equal_the_interface_default(cfg):
    """DenseConv and LocallyConnectedNd override subspace_sq_norms; the default in RelaxedConv is built from
    local_mask / embed / project only. Same values, every padding mode, groups, strides, dilations."""
    conv, in_spatial = cfg
    kinds = [DenseConv] + ([LocallyConnected1d if conv.weight.dim() == 3 else LocallyConnected2d]
                           if conv.padding_mode == "zeros" else [])
    for dtype, rel in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for cls in kinds:
            layer = cls.from_conv(copy.deepcopy(conv).to(dtype), in_spatial)
            if conv.padding_mode == "zeros":  # an embedded CNN: exactly 0, in both
                for n in (layer.subspace_sq_norms(), RelaxedConv.subspace_sq_norms(layer)):
                    assert n.offlocal == 0.0 and n.offsharing == 0.0 and n.cnn == 0.0, n
            wrapper = perturb_all(nn.Sequential(layer), seed=len(in_spatial))
            fast, slow = wrapper[0].subspace_sq_norms(), RelaxedConv.subspace_sq_norms(wrapper[0])
            assert fast.total > 0
            for f in ("total", "offlocal", "offsharing", "cnn"):
                # parts are compared relative to the total: a part that is 0 in exact arithmetic (no off-local
                # entries in a full circular layer) may read a rounding-level value in one of the two
                assert abs(getattr(fast, f) - getattr(slow, f)) <= rel * fast.total, (f, fast, slow)
            # the interface-only default computes ‖θ − P_CNN θ‖² directly: the identity is a real check there
            assert close(slow.cnn, slow.offlocal + slow.offsharing, 100 * rel), slow


@pytest.mark.parametrize("to", ["lc", "fc", "tiled:2", "wide:full", "tiled:2>fc", "wide:7>fc"])
def test_subspace_distances_one_pass(to):
    model, x = make()
    relaxed = model
    for step in to.split(">"):
        relaxed = relax(relaxed, step, x)
    assert subspace_distances(relaxed) == SubspaceDistances(0.0, 0.0, 0.0)  # right after embedding
    relaxed = perturb_all(relaxed)
    d = subspace_distances(relaxed)
    assert isinstance(d, SubspaceDistances)
    assert d.offlocal_ratio == offlocal_ratio(relaxed) and d.cnn_distance == cnn_distance(relaxed)
    assert d.offsharing_ratio == offsharing_ratio(relaxed)
    if to == "wide:full":  # a wide conv keeps sharing: its only way off the CNN subspace is the wider taps
        assert d.offsharing_ratio == 0.0 and d.offlocal_ratio > 0
    else:
        assert d.offsharing_ratio > 0
    # cnn_distance² = δ² + off-sharing²: P_CNN is an orthogonal projection with range in the local subspace
    assert d.cnn_distance ** 2 == pytest.approx(d.offlocal_ratio ** 2 + d.offsharing_ratio ** 2, rel=1e-12)
    # against the definitions, with full-size masks and an independent float64 sum
    off = share = dist = 0.0
    for layer in relaxed_layers(relaxed).values():
        mask, w = layer.local_mask(), layer.weight.detach()
        cw, cb = layer.nearest_cnn()
        diff = layer.embed_weight(cw) - w
        off += float(w[~mask].square().sum())
        db = float((layer.embed_bias(cb) - layer.bias.detach()).square().sum())
        share += float(diff[mask].square().sum()) + db
        dist += float(diff.square().sum()) + db
    total = sq(relaxed)
    assert d.offlocal_ratio == pytest.approx((off / total) ** 0.5, rel=1e-12)
    assert d.offsharing_ratio == pytest.approx((share / total) ** 0.5, rel=1e-12)
    assert d.cnn_distance == pytest.approx((dist / total) ** 0.5, rel=1e-12)
    if to == "lc":
        assert d.offlocal_ratio > 0  # dead padding taps, perturbed by perturb_all, are the eLCN's off-local part
    if to == "tiled:2":
        assert d.offlocal_ratio == 0.0  # a tiled conv is local: it holds tile filters only
    assert subspace_distances(model) == SubspaceDistances(0.0, 0.0, 0.0)


@pytest.mark.parametrize("to", ["lc", "fc"])
def test_offsharing_of_a_zero_mean_local_perturbation(to):
    """Independent oracle: a perturbation of the local weights whose mean over the positions sharing a conv weight
    is zero projects to 0, so the off-sharing norm is the perturbation's own norm (and δ stays 0)."""
    model, x = make()
    elcn = relax(model, "lc", x)
    g = torch.Generator().manual_seed(5)
    pert_sq = 0.0
    with torch.no_grad():
        for layer in relaxed_layers(elcn).values():
            live = layer.local_mask()
            n = torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype) * live
            n -= live * (n.sum(1, keepdim=True) / live.sum(1, keepdim=True).clamp(min=1))  # zero mean over P
            layer.weight.add_(n)
            pert_sq += float(n.square().sum())
    relaxed = elcn if to == "lc" else relax(elcn, "fc")
    d = subspace_distances(relaxed)
    assert d.offlocal_ratio == 0.0
    assert d.offsharing_ratio == pytest.approx((pert_sq / sq(relaxed)) ** 0.5, rel=1e-10)
    assert d.cnn_distance == pytest.approx(d.offsharing_ratio, rel=1e-12)


def test_sq_norm_float32_accuracy():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3 * 4096 + 17, generator=g) * torch.logspace(-3, 3, 3 * 4096 + 17)
    assert sq_norm(t) == pytest.approx(float(t.double().square().sum()), rel=1e-6)
    assert sq_norm(torch.zeros(10_000)) == 0.0 and sq_norm(torch.zeros(0)) == 0.0


def test_a_layer_overriding_a_part_must_override_the_norms_too():
    """The penalty and the subspace norms are made of the same per-layer parts (offlocal_sq, offsharing_sq): a
    subclass with a faster part but RelaxedConv's interface-only subspace_sq_norms would compute the norms
    another way than its penalty, so defining one is refused, naming the part."""
    with pytest.raises(TypeError, match="Half overrides offlocal_sq, offsharing_sq: override subspace_sq_norms too"):
        type("Half", (DenseConv,), {"offsharing_sq": lambda self: DenseConv.offsharing_sq(self),
                                    "subspace_sq_norms": RelaxedConv.subspace_sq_norms})
    type("Whole", (DenseConv,), {"offsharing_sq": lambda self: DenseConv.offsharing_sq(self)})  # inherits the norms
