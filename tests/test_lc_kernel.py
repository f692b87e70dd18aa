"""The eLCN kernel beyond exactness: the deterministic backward, bf16 autocast, torch.compile."""
from __future__ import annotations

import copy
import os
import shutil
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

from archrelax.embed import locally_connected as lcmod
from archrelax.embed import relax
from archrelax.embed.locally_connected import LocallyConnected1d, LocallyConnected2d
from archrelax.models import create_model
from conv_configs import conv_configs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


def grads(layer: nn.Module, x: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    for p in layer.parameters():
        p.grad = None
    y = layer(x)
    g = torch.Generator().manual_seed(seed)
    (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum().backward()
    return [x.grad] + [p.grad for p in layer.parameters()]


def test_gather_sum_is_chosen_in_deterministic_mode_on_every_device(deterministic, monkeypatch):
    """CPU always takes the gather-sum (it is also the faster one there); other devices take index_add_ (atomic
    adds on CUDA) unless deterministic algorithms are on. Only the device type is read, so no GPU is needed."""
    cuda = torch.device("cuda")
    assert lcmod._use_gather_sum(torch.device("cpu")) and lcmod._use_gather_sum(cuda)
    torch.use_deterministic_algorithms(False)
    assert lcmod._use_gather_sum(torch.device("cpu")) and not lcmod._use_gather_sum(cuda)
    torch.use_deterministic_algorithms(True)
    calls, real = [], lcmod._gather_sum

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(lcmod, "_gather_sum", spy)
    lc = LocallyConnected2d.from_conv(nn.Conv2d(2, 3, 3, padding=1), (4, 4))
    grads(lc, torch.randn(2, 2, 4, 4))
    assert calls == [1]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(conv_configs(modes=("zeros",)))
def test_gather_sum_equals_index_add_and_is_bitwise_reproducible(cfg):
    conv, in_spatial = cfg
    conv = copy.deepcopy(conv).double()
    cls = LocallyConnected1d if isinstance(conv, nn.Conv1d) else LocallyConnected2d
    lc = cls.from_conv(conv, in_spatial)
    with torch.no_grad():
        lc.weight.add_(torch.randn_like(lc.weight) * lc.local_mask())  # unshared filters
    x = torch.randn(3, conv.in_channels, *in_spatial, dtype=torch.float64)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = grads(lc, x), grads(lc, x)
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # run to run, bit for bit
    orig = lcmod._use_gather_sum
    lcmod._use_gather_sum = lambda device: False  # the index_add_ path (CUDA's default), here on CPU
    try:
        other = grads(lc, x)
    finally:
        lcmod._use_gather_sum = orig
    for a, b in zip(first, other):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def small_model(to: str, width: int = 8) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn", width=width)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    return cnn, relax(cnn, to=to, example_input=x), x, y


def loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               call=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and parameter gradients of the cross-entropy; ``call``: what to run instead of ``model`` (compiled)."""
    model.zero_grad(set_to_none=True)
    out = (model if call is None else call)(x)
    F.cross_entropy(out.float(), y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("to", ["lc", "fc"])
def test_bf16_autocast(to):
    """Under CPU bf16 autocast the relaxed layers compute in bf16 like the conv would (output bf16), gradients
    come back float32 for float32 parameters, and everything agrees with float32 within bf16 rounding: each
    parameter's gradient within 15% (relative, in norm) — the CNN itself is at ~7% on the first layer here."""
    cnn, model, x, y = small_model(to)
    out32, g32 = loss_grads(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, g16 = loss_grads(model, x, y)
        geom = model.features[3].geometry
        layer_out = model.features[3](torch.randn(2, geom.in_channels, *geom.in_spatial))
    assert out16.dtype == torch.bfloat16 and layer_out.dtype == torch.bfloat16
    assert float((out16.float() - out32).abs().max()) <= 2e-2 * float(out32.abs().max())
    for name, g in g16.items():
        assert g.dtype == torch.float32, name
        assert float((g - g32[name]).norm()) <= 0.15 * float(g32[name].norm()), name


def test_bf16_autocast_lc_layer_double_backward():
    """Hessian-vector products go through the plain-ops graph; under autocast it runs in bf16 as well."""
    torch.manual_seed(1)
    lc = LocallyConnected2d.from_conv(nn.Conv2d(3, 4, 3, padding=1), (5, 5))
    x = torch.randn(2, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lc(x).float().square().sum()
    (g,) = torch.autograd.grad(loss, lc.weight, create_graph=True)
    (hv,) = torch.autograd.grad((g * lc.weight.detach()).sum(), lc.weight)
    assert g.dtype == hv.dtype == torch.float32
    lc32 = copy.deepcopy(lc)
    (g32,) = torch.autograd.grad(lc32(x).square().sum(), lc32.weight, create_graph=True)
    (hv32,) = torch.autograd.grad((g32 * lc32.weight.detach()).sum(), lc32.weight)
    assert float((hv - hv32).norm()) <= 0.05 * float(hv32.norm())


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.slow
@pytest.mark.skipif(_cxx() is None, reason="torch.compile's inductor backend needs a C++ compiler (c++, g++ or $CXX)")
def test_torch_compile_elcn_model_matches_eager():
    """torch.compile of a VanillaCNN eLCN (width 4, batch 2): same outputs and gradients as eager, and dynamo
    traces the custom autograd Function without a graph break. ~20 s on two loaded cores (compile time; one
    compile thread, no cache, so it measures a cold compile)."""
    import torch._dynamo as dynamo
    import torch._inductor.config as inductor_config

    _, model, x, y = small_model("lc", width=4)
    x, y = x[:2], y[:2]
    out, g = loss_grads(model, x, y)
    dynamo.reset()
    lcmod.release_workspaces()  # cold caches: the index tensors for this batch size are built while tracing
    explain = dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    dynamo.reset()
    lcmod.release_workspaces()
    t = time.perf_counter()
    with inductor_config.patch(compile_threads=1, fx_graph_cache=False):
        compiled = torch.compile(model)
        out_c, g_c = loss_grads(model, x, y, call=compiled)
    elapsed = time.perf_counter() - t
    dynamo.reset()
    torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-6)
    for name in g:
        torch.testing.assert_close(g_c[name], g[name], rtol=1e-4, atol=1e-6, msg=name)
    assert elapsed < 600  # a cold compile took ~20 s here; far more means something recompiles in a loop
