"""Sharpness of the training loss: top Hessian eigenvalues and the Hessian trace.

PyHessian's algorithms as pure functions: power iteration with deflation on Hessian-vector products
(double backward), and Hutchinson's trace estimator with seeded Rademacher probes. The loss is the mean
loss over a fixed set of examples, evaluated in eval mode (see ``_common.eval_mode``); the caller's
model, its training flags, its parameters and their ``.grad`` are left as they were.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.store.results import Missing, SharpnessPoint, SharpnessResult

from ._common import LossFn, batches, eval_mode
from .context import Context, guard, weight_files
from .registry import register_analysis

__all__ = ["Eigenvalues", "TraceEstimate", "Sharpness", "hessian_vector_product", "hessian_eigenvalues",
           "hessian_trace", "measure_sharpness"]

Vec = list[torch.Tensor]  # one tensor per parameter, shaped like it


@dataclasses.dataclass(frozen=True)
class Eigenvalues:
    """Top-k eigenvalues (by magnitude, in the order found) of the Hessian of the loss.

    ``residuals[i]`` = ‖Hv − λv‖ / |λ| at the last iterate; ``converged[i]``: it reached √tol within
    ``max_iter`` Hessian-vector products. For a symmetric H, |λ − λ_true| ≤ ‖Hv − λv‖² / gap, so a converged
    value has relative error ≤ tol · |λ| / gap (gap: distance to the rest of the spectrum).
    """

    values: list[float]
    iterations: list[int]
    converged: list[bool]
    residuals: list[float]
    tol: float
    max_iter: int


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate tr(H) ≈ mean_i v_iᵀHv_i over Rademacher probes; ``stderr`` = sd / sqrt(probes)."""

    trace: float
    stderr: float
    probes: int


@dataclasses.dataclass(frozen=True)
class Sharpness:
    loss: float
    eigen: Eigenvalues
    trace: TraceEstimate


def _params(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True; nothing to differentiate")
    return params


def _dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Vec) -> torch.Tensor:
    return _dot(a, a).sqrt()


def _deflate(v: Vec, basis: list[Vec]) -> Vec:
    """v minus its components along the (orthonormal) basis."""
    for u in basis:
        c = _dot(v, u)
        v = [x - c * y for x, y in zip(v, u)]
    return v


def _normalise(v: Vec) -> Vec:
    n = _norm(v)
    return [x / n for x in v]


def hessian_vector_product(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vec, *,
                           loss_fn: LossFn = F.cross_entropy, batch_size: int | None = 256) -> tuple[float, Vec]:
    """(mean loss, H v) of the mean loss over (x, y), by double backward, summed batch by batch.

    ``v`` is a list of tensors shaped like the model's trainable parameters. The caller's model must be in
    the mode it should be differentiated in (the public functions below wrap this in ``eval_mode``).
    """
    params = _params(model)
    hv = [torch.zeros_like(p) for p in params]
    total, n = 0.0, len(x)
    for xb, yb in batches(x, y, batch_size):
        w = len(xb) / n  # the mean over all N examples = Σ_b (n_b / N) · mean over batch b
        loss = loss_fn(model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hvb = torch.autograd.grad(_dot(grads, v), params)
        hv = [a + w * b.detach() for a, b in zip(hv, hvb)]
        total += w * loss.item()
    return total, hv


def hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, *,
                        loss_fn: LossFn = F.cross_entropy, tol: float = 1e-3, max_iter: int = 100,
                        seed: int = 0, batch_size: int | None = 256) -> Eigenvalues:
    """Top-k Hessian eigenvalues (largest magnitude first) by power iteration with deflation.

    Each eigenvector is iterated orthogonal to the ones already found; iteration stops when the relative
    residual ‖Hv − λv‖ / |λ| ≤ √tol (λ = vᵀHv, the Rayleigh quotient) or after ``max_iter`` Hessian-vector
    products. "Top" means largest magnitude (near a minimum: the largest positive curvature).
    The start vectors are Gaussian, drawn from ``torch.Generator`` seeded with ``seed``.
    """
    if k < 1 or tol <= 0 or max_iter < 1:
        raise ValueError(f"need k >= 1, tol > 0, max_iter >= 1; got k={k}, tol={tol}, max_iter={max_iter}")
    gen = torch.Generator().manual_seed(seed)
    found: list[Vec] = []
    values, iters, conv, resid = [], [], [], []
    with eval_mode(model):
        params = _params(model)
        for _ in range(k):
            v = _normalise(_deflate([torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params], found))
            lam, ok, r = math.nan, False, math.inf
            for it in range(1, max_iter + 1):
                _, hv = hessian_vector_product(model, x, y, v, loss_fn=loss_fn, batch_size=batch_size)
                hv = _deflate(hv, found)  # the operator restricted to the complement of found eigenvectors
                lam = _dot(hv, v).item()  # Rayleigh quotient, v has unit norm
                r = _norm([a - lam * b for a, b in zip(hv, v)]).item() / abs(lam) if lam else math.inf
                ok = r <= math.sqrt(tol)
                if ok or it == max_iter:
                    break  # keep v: the residual pairs λ with the v it was measured on
                v = _normalise(hv)
            found.append(v)
            values.append(lam)
            iters.append(it)
            conv.append(ok)
            resid.append(r)
    return Eigenvalues(values, iters, conv, resid, tol, max_iter)


def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, probes: int = 20,
                  loss_fn: LossFn = F.cross_entropy, seed: int = 0, batch_size: int | None = 256) -> TraceEstimate:
    """Hutchinson's estimator with ``probes`` Rademacher vectors drawn from a generator seeded with ``seed``."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2 to give a standard error, got {probes}")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    with eval_mode(model):
        params = _params(model)
        for _ in range(probes):
            v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in params]
            _, hv = hessian_vector_product(model, x, y, v, loss_fn=loss_fn, batch_size=batch_size)
            samples.append(_dot(hv, v).item())
    s = torch.tensor(samples, dtype=torch.float64)
    return TraceEstimate(trace=s.mean().item(), stderr=(s.std(unbiased=True) / math.sqrt(probes)).item(), probes=probes)


def measure_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, k: int = 1, tol: float = 1e-3,
              max_iter: int = 100, probes: int = 20, seed: int = 0, loss_fn: LossFn = F.cross_entropy,
              batch_size: int | None = 256) -> Sharpness:
    """Loss, top-k eigenvalues and trace of the Hessian of the mean loss over (x, y)."""
    with eval_mode(model), torch.no_grad():
        loss = sum(loss_fn(model(xb), yb).item() * len(xb) for xb, yb in batches(x, y, batch_size)) / len(x)
    eig = hessian_eigenvalues(model, x, y, k, loss_fn=loss_fn, tol=tol, max_iter=max_iter, seed=seed,
                              batch_size=batch_size)
    tr = hessian_trace(model, x, y, probes=probes, loss_fn=loss_fn, seed=seed, batch_size=batch_size)
    return Sharpness(loss=loss, eigen=eig, trace=tr)


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------
@register_analysis("sharpness", params=("seed", "sharpness_samples", "sharpness_k", "sharpness_tol",
                                        "sharpness_max_iter", "trace_probes"), inputs=weight_files)
def run(ctx: Context) -> SharpnessResult:
    """The CNN at every snapshot and at its end; every other finished run at its end."""
    from archrelax.train.checkpoint import load_checkpoint

    s, res = ctx.s, SharpnessResult()
    jobs = []  # (run, where, checkpoint)
    for r in ctx.of_kind("cnn"):
        snaps = ctx.folder(r).snapshots()
        jobs += [(r, "snapshot", p) for _, p in snaps]
        if not snaps:
            res.missing.append(Missing(run=r.id, reason="no snapshots yet"))
    for r in ctx.finished(ctx.plan.values(), res.missing):
        jobs.append((r, "final", ctx.folder(r).final_path))
    x, y = ctx.data()["hessian"] if jobs else (None, None)
    for i, (r, where, path) in enumerate(jobs):
        ctx.log(f"sharpness {i + 1}/{len(jobs)}: {r.id} {path.name}")

        def one() -> SharpnessPoint:
            ckpt = load_checkpoint(path)
            sh = measure_sharpness(ctx.load(path), x, y, k=s.sharpness_k, tol=s.sharpness_tol,
                                   max_iter=s.sharpness_max_iter, probes=s.trace_probes, seed=s.seed,
                                   batch_size=s.batch_size)
            return SharpnessPoint(**ctx.tag(r), where=where, file=ctx.rel(path),
                                  epoch=float(ckpt.get("global_epoch", ckpt["epoch"])), loss=sh.loss,
                                  eigenvalues=sh.eigen.values, eig_iterations=max(sh.eigen.iterations),
                                  eig_converged=all(sh.eigen.converged), eig_residual=sh.eigen.residuals,
                                  trace=sh.trace.trace, trace_stderr=sh.trace.stderr, trace_probes=sh.trace.probes)

        point = guard(res.missing, r, f"sharpness of {path.name}", one)
        if point is not None:
            res.points.append(point)
    return res
