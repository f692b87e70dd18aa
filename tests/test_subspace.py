"""offlocal_ratio, cnn_distance, to_cnn and ablate on relaxed models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archrelax.embed import ablate, cnn_distance, offlocal_ratio, relax, relaxed_layers, to_cnn

F64 = torch.float64


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
