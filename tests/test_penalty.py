"""The soft-release penalty ‖θ − Pθ‖² against brute force (explicit projection matrices, least squares)."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from archrelax.embed import (DenseConv, RelaxedConv, TiledConv2d, WideConv2d, add_penalty_grad_, cnn_distance,
                             constraint_penalty, relax, relaxed_layers)
from archrelax.embed.dense_residual import CnnLocalFn as _DenseCnnLocalFn
from archrelax.embed.dense_residual import SharedFn as _DenseSharedFn
from archrelax.embed.penalty import layer_penalty

F64 = torch.float64
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")]

CONVS = {  # name -> (conv factory, input spatial shape)
    "groups_stride": (lambda: nn.Conv2d(2, 4, (2, 3), stride=(1, 2), padding=1, groups=2), (4, 5)),
    "dilated_1d": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2), (7,)),
    "same_even": (lambda: nn.Conv2d(1, 2, 2, padding="same", bias=False), (3, 3)),
    "reflect": (lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (3, 4)),
}
KINDS = ("fc", "lc", "tiled:2", "wide:full", "wide:5")


def num(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def build(name: str, to: str, dtype=F64, seed: int = 0) -> RelaxedConv:
    torch.manual_seed(seed)
    factory, spatial = CONVS[name]
    conv = factory().to(dtype)
    model = relax(nn.Sequential(conv), to, (1, conv.in_channels, *spatial))
    return model[0]


def basis(layer: RelaxedConv, toward: str) -> torch.Tensor:
    """Columns spanning the constrained subspace of (weight, bias) flattened, built independently of penalty.py."""
    w, b = layer.weight, layer.bias
    nw, nb = w.numel(), (0 if b is None else b.numel())
    cols = []

    def col(wpart=None, bpart=None):
        c = torch.zeros(nw + nb, dtype=F64)
        if wpart is not None:
            c[:nw] = wpart.flatten()
        if bpart is not None:
            c[nw:] = bpart.flatten()
        cols.append(c)

    g = layer.geometry
    kind = type(layer).__name__
    if toward == "shared" and kind.startswith("Wide"):
        return torch.eye(nw + nb, dtype=F64)
    if toward == "local" or (toward == "cnn" and kind.startswith("Wide")):
        for j in layer.local_mask().flatten().nonzero().flatten().tolist():
            col(torch.zeros(nw, dtype=F64).index_fill_(0, torch.tensor([j]), 1.0))
        if b is not None:
            for j in range(nb):
                col(None, torch.zeros(nb, dtype=F64).index_fill_(0, torch.tensor([j]), 1.0))
        return torch.stack(cols, 1)
    if toward == "shared" and isinstance(layer, DenseConv):
        # orbits: same (out channel, in channel, q − p·s per dim), every channel pair; enumerated with loops
        shape = (g.out_channels, *g.out_spatial, g.in_channels, *g.in_spatial)
        orbits: dict[tuple, list[int]] = {}
        for flat, idx in enumerate(itertools.product(*(range(n) for n in shape))):
            d = g.dim
            o, p, c, q = idx[0], idx[1:1 + d], idx[1 + d], idx[2 + d:]
            key = (o, c, *(qi - pi * si for qi, pi, si in zip(q, p, g.stride)))
            orbits.setdefault(key, []).append(flat)
        for members in orbits.values():
            col(torch.zeros(nw, dtype=F64).index_fill_(0, torch.tensor(members), 1.0))
    else:  # the CNN subspace: the image of φ
        n = g.out_channels * (g.in_channels // g.groups) * g.T
        for e in torch.eye(n, dtype=F64).view(n, *g.conv_weight_shape):
            col(layer.embed_weight(e))
    if b is not None:
        for e in torch.eye(g.out_channels, dtype=F64):
            col(None, layer.embed_bias(e))
    return torch.stack(cols, 1)


def brute(layer: RelaxedConv, toward: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """‖θ − Πθ‖² with Π = B B⁺ (least squares) and its autograd gradient."""
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    theta = torch.cat([p.detach().flatten() for p in params]).requires_grad_()
    B = basis(layer, toward)
    proj = B @ torch.linalg.pinv(B)
    r = theta - proj @ theta
    val = r @ r
    (g,) = torch.autograd.grad(val, theta)
    out, i = [], 0
    for p in params:
        out.append(g[i:i + p.numel()].view_as(p))
        i += p.numel()
    return val.detach(), out


# every layer kind on every conv it exists for (only the eFCN takes reflect padding)
CASES = [(n, k) for n in CONVS for k in KINDS if n != "reflect" or k == "fc"]


@pytest.mark.parametrize("toward", ["cnn", "local", "shared"])
@pytest.mark.parametrize("name, kind", CASES)
def test_penalty_equals_brute_force(name, kind, toward):
    layer = build(name, kind)
    sq = sum(float(p.detach().square().sum()) for p in layer.parameters())
    # right after the embedding: 0 (the Gram solve of reflect padding is float64-exact only to rounding); a
    # reflect-padded conv is not translation invariant at the borders, so it is not in the "shared" subspace
    if name == "reflect" and toward == "shared":
        assert num(layer_penalty(layer, toward)) > 0.01 * sq
    else:
        assert num(layer_penalty(layer, toward)) <= (1e-25 * sq if name == "reflect" else 0.0)
    with torch.no_grad():  # released: every entry moves, dead and off-local ones included
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    ref_val, ref_grads = brute(layer, toward)
    val = layer_penalty(layer, toward)
    assert val.dim() == 0 and val.dtype == F64
    assert num(val) == pytest.approx(float(ref_val), rel=1e-10, abs=1e-12)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    grads = torch.autograd.grad(val, params, allow_unused=True)
    for gp, ref, p in zip(grads, ref_grads, params):
        gp = torch.zeros_like(p) if gp is None else gp
        torch.testing.assert_close(gp, ref, rtol=1e-9, atol=1e-10)
    # the fused in-place form gives the same gradient (onto existing gradients) and value
    for p in params:
        p.grad = torch.ones_like(p)
    v = add_penalty_grad_(nn.Sequential(layer), toward, lam=0.5, return_value=True)
    assert v == pytest.approx(float(ref_val), rel=1e-10, abs=1e-12)
    for p, ref in zip(params, ref_grads):
        torch.testing.assert_close(p.grad, 1 + 0.5 * ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("to", ["fc", "lc", "tiled:2", "tiled:3", "wide:full", "wide:7"])
def test_zero_right_after_embedding_float32(to):
    from archrelax.models import create_model

    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn", width=4, input_size=28)
    model = relax(cnn, to)
    for toward in ("cnn", "local", "shared"):
        assert num(constraint_penalty(model, toward)) == 0.0, toward
    if to != "fc":
        for toward in ("cnn", "local", "shared"):
            assert num(constraint_penalty(relax(model, "fc"), toward)) == 0.0, (to, toward)
    assert num(constraint_penalty(cnn)) == 0.0  # no relaxed layer: a zero tensor
    with pytest.raises(ValueError, match=r"toward='both' is not valid; use one of \('cnn', 'local', 'shared'\)"):
        constraint_penalty(model, "both")


def test_subspace_order_on_efcn():
    """cnn ⊂ local and cnn ⊂ shared, so the distance to the CNN is the largest; the off-local part is orthogonal
    to the local one, so zeroing it leaves the cnn penalty minus the local one."""
    from archrelax.embed import ablate

    layer = build("groups_stride", "fc")
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * 0.1)
    cnn, local, shared = (num(layer_penalty(layer, t)) for t in ("cnn", "local", "shared"))
    assert cnn >= local and cnn >= shared and local > 0 and shared > 0
    only_local = ablate(nn.Sequential(layer), keep="local")[0]
    assert num(layer_penalty(only_local, "local")) == 0.0
    assert num(layer_penalty(only_local, "cnn")) == pytest.approx(cnn - local, rel=1e-9)


def test_double_backward():
    for name in ("same_even", "dilated_1d"):  # small: gradgradcheck differentiates numerically
        layer = build(name, "fc")
        w = (layer.weight.detach() + 0.1 * torch.randn_like(layer.weight)).requires_grad_()
        for toward in ("cnn", "local"):
            assert torch.autograd.gradgradcheck(lambda w: _DenseCnnLocalFn.apply(w, layer, toward), (w,))
        assert torch.autograd.gradgradcheck(lambda w: _DenseSharedFn.apply(w, layer), (w,))


def test_gradients_accumulate_like_autograd():
    layer = build("groups_stride", "fc")
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    w = layer.weight
    (g1,) = torch.autograd.grad(layer_penalty(layer, "local"), w)
    kept = g1.clone()
    (g2,) = torch.autograd.grad(3 * layer_penalty(layer, "local"), w)
    assert torch.equal(g1, kept) and torch.allclose(g2, 3 * kept)
    (g3,) = torch.autograd.grad(layer_penalty(layer, "local") + 2 * layer_penalty(layer, "local"), w)
    assert torch.allclose(g3, 3 * kept)  # two penalties of one weight in one graph
    w.grad = None
    layer_penalty(layer, "local").backward()
    layer_penalty(layer, "local").backward()
    assert torch.allclose(w.grad, 2 * kept)


def test_sgd_with_large_lambda_stays_on_the_cnn_subspace():
    """With lr·λ = 1/2 one SGD step of the penalty alone projects onto the CNN subspace exactly, so the relaxed
    run leaves the subspace only by the loss's last step; without the penalty it drifts away."""
    from archrelax.models import create_model

    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn", width=4, input_size=28)
    x, y = torch.randn(32, 3, 28, 28), torch.randint(0, 10, (32,))
    lr, dist = 0.1, {}
    for lam in (0.0, 0.5 / lr):
        model = relax(cnn, "fc")
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            add_penalty_grad_(model, "cnn", lam)
            opt.step()
        dist[lam] = cnn_distance(model)
        if lam:
            opt.zero_grad()
            add_penalty_grad_(model, "cnn", lam)  # the penalty's step alone: θ − 2·lr·λ(θ − Pθ) = Pθ
            opt.step()
            assert cnn_distance(model) < 1e-6
    assert dist[0.0] > 2 * dist[0.5 / lr] > 0


def test_wide_and_tiled_layers_report_their_released_parts():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    wide = WideConv2d.from_conv(conv, (5, 5), kernel_size="full")
    tiled = TiledConv2d.from_conv(conv, (5, 5), tile=2)
    with torch.no_grad():
        wide.weight.add_(torch.randn_like(wide.weight))
        tiled.weight.add_(torch.randn_like(tiled.weight) * tiled.local_mask())
    off = float(wide.weight.detach()[~wide.local_mask()].square().sum())
    assert num(layer_penalty(wide, "local")) == pytest.approx(off) == num(layer_penalty(wide, "cnn"))
    assert num(layer_penalty(wide, "shared")) == 0.0
    assert num(layer_penalty(tiled, "local")) == 0.0 and num(layer_penalty(tiled, "cnn")) > 0
    assert num(layer_penalty(tiled, "shared")) == num(layer_penalty(tiled, "cnn"))
