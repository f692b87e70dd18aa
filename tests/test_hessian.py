"""The Hessian analyses against the dense Hessian (torch.autograd.functional.hessian) of small real models: the
operator's products, the top-k eigenvalues within their stated residual bounds (and those bounds honest), the
trace within a few of its standard errors, an unconverged estimate marked as such, the warm-started λ_max
routine, per-layer (block) sharpness, and the thick restart of a small basis."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from archrelax.analysis import (
    HessianOperator, block_sharpness, hessian_eigenvalues, hessian_trace, lanczos, measure_sharpness,
    sharpness_layers, top_eigenvalue,
)
from archrelax.analysis._common import eval_mode
from archrelax.embed import relax

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def small_cnn(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).to(dtype)
    with torch.no_grad():
        model[1].running_mean.add_(0.1)
        model[1].running_var.mul_(1.5)
    return model


def data(n: int = 48, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g).to(dtype), torch.randint(0, 4, (n,), generator=g)


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    """A few SGD steps: a Hessian with outlying top eigenvalues, as a network's has."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with eval_mode(model):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """(n, n) Hessian of the mean cross-entropy in eval mode w.r.t. the named parameters (default: all), in the
    order of model.named_parameters()."""
    params = dict(model.named_parameters())
    names = names or list(params)
    sizes = [params[n].numel() for n in names]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(params[n].shape) for n, t in zip(names, flat.split(sizes))}
        return F.cross_entropy(functional_call(model, {**params, **parts}, (x,)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    with eval_mode(model):
        return torch.autograd.functional.hessian(loss_of, flat)


@pytest.fixture(scope="module")
def case():
    x, y = data()
    model = trained(small_cnn(), x, y)
    h = dense_hessian(model, x, y)
    return model, x, y, h, torch.linalg.eigvalsh(h)


def test_operator_products_are_the_dense_hessians(case):
    model, x, y, h, _ = case
    op = HessianOperator(model, x, y, batch_size=20)  # three batches: the mean is weighted by batch size
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        assert torch.allclose(op(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.products == 3 and op.dim == h.shape[0]
    assert op.loss == pytest.approx(F.cross_entropy(model.eval()(x), y).item(), rel=1e-12)
    model.train()  # (the fixture's model: eval() above was ours)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("max_basis", [24, 6])  # 6: thick restarts on the way
def test_top_k_eigenvalues_lie_within_their_residual_bounds(case, max_basis):
    model, x, y, h, eigs = case
    by_mag = eigs[eigs.abs().argsort(descending=True)]
    res = hessian_eigenvalues(model, x, y, k=3, tol=1e-3, max_iter=200, max_basis=max_basis)
    assert all(res.converged) and res.products <= 200
    for i, (v, b, r) in enumerate(zip(res.values, res.bounds, res.residuals)):
        assert abs(v - by_mag[i].item()) <= b + 1e-9, (i, v, by_mag[i].item(), b)
        assert r == pytest.approx(b / abs(v)) and r <= math.sqrt(1e-3)
    # the bound is the true residual of the returned Ritz vector (not a heuristic)
    for v, b, vec in zip(res.values, res.bounds, res.vectors):
        true = (h @ vec - v * vec).norm().item()
        assert true == pytest.approx(b, rel=1e-6, abs=1e-10)
    # a tight tolerance: the top three to 1e-8 relative
    tight = hessian_eigenvalues(model, x, y, k=3, tol=1e-16, max_iter=300, max_basis=max_basis)
    assert all(tight.converged)
    assert torch.allclose(torch.tensor(tight.values, dtype=torch.float64), by_mag[:3], rtol=1e-8)


def test_largest_algebraic_eigenvalue(case):
    model, x, y, _, eigs = case
    res = hessian_eigenvalues(model, x, y, k=1, tol=1e-12, max_iter=300, which="largest")
    assert res.values[0] == pytest.approx(eigs[-1].item(), rel=1e-8)


def test_an_exhausted_budget_is_marked_unconverged(case):
    model, x, y, _, eigs = case
    res = hessian_eigenvalues(model, x, y, k=2, tol=1e-14, max_iter=2)
    assert res.converged == [False, False] and res.iterations == [2, 2] and res.products == 2
    # the bound still holds: H has an eigenvalue within it of each value
    for v, b in zip(res.values, res.bounds):
        assert (eigs - v).abs().min().item() <= b + 1e-9


def test_float32_model_agrees_with_the_float64_dense_hessian(case):
    model, x, y, _, eigs = case
    m32 = small_cnn(dtype=torch.float32)
    m32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    res = hessian_eigenvalues(m32, x.float(), y, k=1, tol=1e-6, max_iter=100)
    top = eigs[eigs.abs().argmax()].item()
    assert res.converged[0] and abs(res.values[0] - top) <= res.bounds[0] + 1e-4 * abs(top)


def test_trace_within_a_few_standard_errors_and_deflation_shrinks_them(case):
    model, x, y, h, _ = case
    true = torch.trace(h).item()
    plain = hessian_trace(model, x, y, probes=64, seed=1)
    deflated = hessian_trace(model, x, y, probes=64, seed=1, deflate=12)
    for est in (plain, deflated):
        assert est.probes == 64 and est.stderr > 0
        assert abs(est.trace - true) <= 4 * est.stderr, (est, true)
    assert plain.exact_dim == 0 and deflated.exact_dim == 12
    assert deflated.stderr < 0.5 * plain.stderr, (deflated.stderr, plain.stderr)
    # measure_sharpness: the trace runs off its own Lanczos basis, and says so
    sh = measure_sharpness(model, x, y, tol=1e-6, max_iter=50, probes=32, seed=2)
    assert 0 < sh.trace.exact_dim <= sh.eigen.products and abs(sh.trace.trace - true) <= 4 * sh.trace.stderr


def test_warm_started_lambda_max_with_a_fixed_budget(case):
    model, x, y, h, eigs = case
    top = eigs[eigs.abs().argmax()].item()
    first = top_eigenvalue(model, x, y, products=2, tol=1e-12, seed=5)
    assert first.products == 2 and not first.converged and first.vector.shape == (h.shape[0],)
    chain = [first]
    for _ in range(4):  # each call starts from the last one's vector: a trajectory's cheap repeated estimate
        chain.append(top_eigenvalue(model, x, y, v0=chain[-1].vector, products=2, tol=1e-12))
    assert chain[-1].residual < 0.2 * first.residual
    for t in chain:  # every estimate carries an honest bound, converged or not
        assert (eigs - t.value).abs().min().item() <= t.residual + 1e-9
        assert (h @ t.vector - t.value * t.vector).norm().item() == pytest.approx(t.residual, rel=1e-6, abs=1e-10)
    assert abs(chain[-1].value - top) <= chain[-1].residual + 1e-9
    # from the converged vector one product suffices
    done = top_eigenvalue(model, x, y, products=60, tol=1e-10)
    again = top_eigenvalue(model, x, y, v0=done.vector, products=1, tol=1e-6)
    assert again.converged and again.products == 1
    with pytest.raises(ValueError, match="v0 has shape"):
        top_eigenvalue(model, x, y, v0=torch.ones(3, dtype=torch.float64))


def test_block_sharpness_is_the_top_eigenvalue_of_the_layers_own_block(case):
    model, x, y, _, _ = case
    assert sharpness_layers(model) == ["0", "4"]  # the convs
    got = block_sharpness(model, x, y, tol=1e-12, max_iter=200)
    for layer in ("0", "4"):
        names = [f"{layer}.weight", f"{layer}.bias"]
        block = torch.linalg.eigvalsh(dense_hessian(model, x, y, names))
        top = block[block.abs().argmax()].item()
        e = got[layer]
        assert e.converged[0] and e.values[0] == pytest.approx(top, rel=1e-8)
        assert e.vectors.shape[-1] == sum(dict(model.named_parameters())[n].numel() for n in names)
    with pytest.raises(ValueError, match="not modules"):
        block_sharpness(model, x, y, ["nope"])


def test_block_sharpness_of_a_relaxed_model_names_its_relaxed_layers():
    x, y = data(16, dtype=torch.float32)
    efcn = relax(small_cnn(dtype=torch.float32), to="fc", example_input=(1, 2, 6, 6))
    sh = measure_sharpness(efcn, x, y, max_iter=20, probes=2, blocks=True)
    assert list(sh.blocks) == ["0", "4"] and all(math.isfinite(b.values[0]) for b in sh.blocks.values())


def test_lanczos_on_an_invariant_start_and_a_tiny_space():
    a = torch.diag(torch.tensor([5.0, -7.0, 1.0, 0.5], dtype=torch.float64))
    op = lambda v: a @ v  # noqa: E731
    # a start vector inside an eigenspace: the Krylov space is invariant after one step, and Lanczos goes on
    r = lanczos(op, 4, k=2, tol=1e-12, max_iter=20, v0=torch.tensor([1.0, 0, 0, 0], dtype=torch.float64),
                dtype=torch.float64)
    assert r.values == pytest.approx([-7.0, 5.0]) and all(r.converged) and r.total_products <= 4
    big = lanczos(op, 4, k=1, tol=1e-12, max_iter=20, which="largest", dtype=torch.float64)
    assert big.values == pytest.approx([5.0])


def test_the_callers_model_is_left_as_it_was():
    x, y = data(16)
    model = small_cnn()
    model.train()
    model[1].eval()  # mixed flags: each module's own flag must come back
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    op = HessianOperator(model, x, y)
    op(torch.ones(op.dim, dtype=torch.float64))
    top_eigenvalue(model, x, y, products=3)
    block_sharpness(model, x, y, max_iter=3)
    measure_sharpness(model, x, y, max_iter=3, probes=2, blocks=True)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
