"""Sharpness of the training loss: top Hessian eigenvalues (each with its residual bound) and the Hessian trace
(with its standard error), of the whole model or of one layer's block.

The numerical core is :mod:`archrelax.analysis.hessian`: a Hessian operator whose products reuse one forward and
backward pass, Lanczos with full reorthogonalisation (a residual per Ritz value for free), and Hutchinson's
estimator off the Lanczos basis. The loss is the mean loss over a fixed set of examples, evaluated in eval mode
(see ``_common.eval_mode``); the caller's model, its training flags, its parameters and their ``.grad`` are left
as they were, and the global RNG is not touched (seeded private generators).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.store.results import BlockSharpness, Missing, SharpnessPoint, SharpnessResult

from ._common import LossFn
from .context import Context, guard, weight_files
from .hessian import HessianOperator, Ritz, Which, deflated_hutchinson, lanczos
from .pool import run_jobs
from .registry import register_analysis

__all__ = ["Eigenvalues", "TraceEstimate", "Sharpness", "TopEigenvalue", "hessian_vector_product",
           "hessian_eigenvalues", "hessian_trace", "top_eigenvalue", "block_sharpness", "sharpness_layers",
           "measure_sharpness"]

Vec = list[torch.Tensor]  # one tensor per parameter, shaped like it


@dataclasses.dataclass(frozen=True)
class Eigenvalues:
    """Top-k eigenvalues of the Hessian of the loss (largest magnitude first), by Lanczos.

    ``bounds[i]`` = ‖Hv − θv‖ (absolute, nats): H has an eigenvalue within it of ``values[i]`` (within bound² / gap
    when the rest of the spectrum is ``gap`` away); ``residuals[i]`` = bounds[i] / |values[i]|; ``converged[i]``:
    residuals[i] ≤ √tol; ``iterations[i]``: Hessian-vector products done when value i converged (all of them
    when it did not; the k share one run of at most ``max_iter``). ``vectors`` (k, n): the unit Ritz vectors.
    """

    values: list[float]
    iterations: list[int]
    converged: list[bool]
    residuals: list[float]
    tol: float
    max_iter: int
    bounds: list[float] = dataclasses.field(default_factory=list)
    products: int = 0  # Hessian-vector products of the run
    vectors: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """tr(H) ≈ ``exact_part`` + mean over Rademacher probes g of gᵀPHPg (P: the projector off the ``exact_dim``
    Lanczos vectors, whose part tr(VᵀHV) is ``exact_part``; plain Hutchinson when ``exact_dim`` = 0);
    ``stderr`` = sd / √probes."""

    trace: float
    stderr: float
    probes: int
    exact_dim: int = 0
    exact_part: float = 0.0


@dataclasses.dataclass(frozen=True)
class Sharpness:
    loss: float
    eigen: Eigenvalues
    trace: TraceEstimate
    blocks: dict[str, Eigenvalues] = dataclasses.field(default_factory=dict)  # layer path -> its block's top-k


@dataclasses.dataclass(frozen=True)
class TopEigenvalue:
    """One λ_max estimate from a fixed budget of products: ``value`` with ``residual`` = ‖Hv − θv‖ (H has an
    eigenvalue within it), ``converged`` when residual ≤ √tol·|value|; ``vector`` (n,): the unit Ritz vector,
    to pass as ``v0`` to the next call (flat, in the order of the model's trainable parameters)."""

    value: float
    residual: float
    converged: bool
    products: int
    vector: torch.Tensor = dataclasses.field(repr=False, compare=False)

    @property
    def relative_residual(self) -> float:
        return self.residual / abs(self.value) if self.value else math.inf


def _eigenvalues(ritz: Ritz, tol: float, max_iter: int) -> Eigenvalues:
    rel = [r / abs(v) if v else math.inf for r, v in zip(ritz.residuals, ritz.values)]
    return Eigenvalues(values=list(ritz.values), iterations=list(ritz.products), converged=list(ritz.converged),
                       residuals=rel, tol=tol, max_iter=max_iter, bounds=list(ritz.residuals),
                       products=ritz.total_products, vectors=ritz.vectors)


def _solve(op: HessianOperator, k: int, tol: float, max_iter: int, seed: int, max_basis: int,
           v0: torch.Tensor | None = None, which: Which = "magnitude") -> Ritz:
    v0 = op.start_vector(seed) if v0 is None else v0
    return lanczos(op, op.dim, k, tol=tol, max_iter=max_iter, max_basis=max_basis, v0=v0, seed=seed, which=which,
                   dtype=op.dtype, device=op.device)


def hessian_vector_product(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Vec, *,
                           loss_fn: LossFn = F.cross_entropy, batch_size: int | None = 256) -> tuple[float, Vec]:
    """(mean loss, H v) of the mean loss over (x, y), by double backward (eval mode).

    ``v`` is a list of tensors shaped like the model's trainable parameters. For several products at one point,
    build one :class:`~archrelax.analysis.hessian.HessianOperator` instead: it does the forward pass once.
    """
    op = HessianOperator(model, x, y, loss_fn=loss_fn, batch_size=batch_size)
    if len(v) != len(op.params) or any(a.shape != p.shape for a, p in zip(v, op.params)):
        raise ValueError(f"v must hold one tensor per trainable parameter, shaped like it: "
                         f"{[tuple(p.shape) for p in op.params]}")
    hv = op.unflatten(op(op.flatten(v)))
    op.close()
    return op.loss, hv


def hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1, *,
                        loss_fn: LossFn = F.cross_entropy, tol: float = 1e-3, max_iter: int = 100,
                        seed: int = 0, batch_size: int | None = 256, max_basis: int = 24,
                        v0: torch.Tensor | None = None, which: Which = "magnitude",
                        params: Sequence[torch.Tensor] | None = None) -> Eigenvalues:
    """Top-k Hessian eigenvalues (largest magnitude first; ``which="largest"``: largest first) by Lanczos.

    Stops when every value's residual ‖Hv − θv‖ ≤ √tol·|θ| or after ``max_iter`` Hessian-vector products in all.
    "Top" by magnitude: near a minimum, the largest positive curvature. The start vector is ``v0`` (flat, see
    :class:`TopEigenvalue`), else ``HessianOperator.start_vector(seed)`` (the gradient's direction plus a Gaussian
    one). ``params``: a subset
    of the parameters (the Hessian's diagonal block for them); default every trainable parameter.
    """
    if k < 1 or tol <= 0 or max_iter < 1:
        raise ValueError(f"need k >= 1, tol > 0, max_iter >= 1; got k={k}, tol={tol}, max_iter={max_iter}")
    op = HessianOperator(model, x, y, params=params, loss_fn=loss_fn, batch_size=batch_size)
    try:
        return _eigenvalues(_solve(op, k, tol, max_iter, seed, max_basis, v0, which), tol, max_iter)
    finally:
        op.close()


def top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, v0: torch.Tensor | None = None,
                   products: int = 8, tol: float = 1e-3, loss_fn: LossFn = F.cross_entropy, seed: int = 0,
                   batch_size: int | None = 256, which: Which = "magnitude",
                   params: Sequence[torch.Tensor] | None = None) -> TopEigenvalue:
    """λ_max from at most ``products`` Hessian-vector products (fewer when converged first), warm-started from
    ``v0`` (the previous call's ``vector``; ``HessianOperator.start_vector`` when None): a cheap, repeated
    estimate along a trajectory. The result's residual bounds its error whatever the budget; ``converged`` says whether it met
    √tol·|value|. Cost: one forward and backward pass plus ``products`` double-backward passes.
    """
    if products < 1:
        raise ValueError(f"products must be >= 1, got {products}")
    op = HessianOperator(model, x, y, params=params, loss_fn=loss_fn, batch_size=batch_size)
    try:
        if v0 is not None and v0.shape != (op.dim,):
            raise ValueError(f"v0 has shape {tuple(v0.shape)}; this model has {op.dim} trainable parameters")
        r = _solve(op, 1, tol, products, seed, max_basis=products + 1, v0=v0, which=which)
    finally:
        op.close()
    return TopEigenvalue(value=r.values[0], residual=r.residuals[0], converged=r.converged[0],
                         products=r.total_products, vector=r.vectors[0])


def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, probes: int = 20,
                  loss_fn: LossFn = F.cross_entropy, seed: int = 0, batch_size: int | None = 256,
                  deflate: int = 0) -> TraceEstimate:
    """Hutchinson's estimator with ``probes`` Rademacher vectors from a generator seeded with ``seed``.

    ``deflate`` = m > 0: first m Lanczos steps (m products, Gaussian start from ``seed``); their part of the
    trace is exact and the probes estimate the rest only (a smaller standard error for the same probes when H
    has outlying eigenvalues)."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2 to give a standard error, got {probes}")
    op = HessianOperator(model, x, y, loss_fn=loss_fn, batch_size=batch_size)
    try:
        basis, exact = None, 0.0
        if deflate > 0:
            r = _solve(op, 1, 1e-30, deflate, seed, max_basis=deflate)  # no early stop: all m steps
            basis, exact = r.basis, float(torch.trace(r.projected))
        return _trace(op, probes, seed, basis, exact)
    finally:
        op.close()


def _trace(op: HessianOperator, probes: int, seed: int, basis: torch.Tensor | None, exact: float) -> TraceEstimate:
    s = deflated_hutchinson(op, op.dim, probes, seed=seed, basis=basis, projected_trace=exact, dtype=op.dtype,
                            device=op.device)
    return TraceEstimate(trace=s.trace, stderr=s.stderr, probes=probes, exact_dim=s.exact_dim, exact_part=s.exact)


def sharpness_layers(model: nn.Module) -> list[str]:
    """The layers whose Hessian blocks ``block_sharpness`` measures by default: every relaxed layer (RelaxedConv)
    and every conv (the layers a relaxation acts on: a CNN's, its eLCN's and its eFCN's have the same paths)."""
    from archrelax.embed import RelaxedConv

    return [n for n, m in model.named_modules()
            if isinstance(m, (RelaxedConv, nn.modules.conv._ConvNd)) and any(p.requires_grad for p in m.parameters())]


def block_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str] | None = None, *,
                    k: int = 1, tol: float = 1e-3, max_iter: int = 100, seed: int = 0, max_basis: int = 24,
                    loss_fn: LossFn = F.cross_entropy, batch_size: int | None = 256) -> dict[str, Eigenvalues]:
    """Per layer: the top-k eigenvalues of the Hessian restricted to that layer's own parameters (its weight and
    bias: the diagonal block ∂²L/∂θ_L², the sharpness seen by that layer alone). ``layers`` default:
    :func:`sharpness_layers`."""
    modules = dict(model.named_modules())
    names = sharpness_layers(model) if layers is None else list(layers)
    bad = [n for n in names if n not in modules]
    if bad:
        raise ValueError(f"layers {bad} are not modules of {type(model).__name__}; layers with parameters: "
                         f"{sharpness_layers(model)}")
    out = {}
    for name in names:
        params = [p for p in modules[name].parameters(recurse=False) if p.requires_grad]
        if not params:
            raise ValueError(f"layer {name!r} has no trainable parameter of its own")
        out[name] = hessian_eigenvalues(model, x, y, k, loss_fn=loss_fn, tol=tol, max_iter=max_iter, seed=seed,
                                        batch_size=batch_size, max_basis=max_basis, params=params)
    return out


def measure_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, k: int = 1, tol: float = 1e-3,
                      max_iter: int = 100, probes: int = 20, seed: int = 0, loss_fn: LossFn = F.cross_entropy,
                      batch_size: int | None = 256, max_basis: int = 24,
                      blocks: bool | Sequence[str] = False) -> Sharpness:
    """Loss, top-k eigenvalues and trace of the Hessian of the mean loss over (x, y), from one operator: the
    trace's probes run off the Lanczos basis of the eigenvalues. ``blocks``: True (every
    :func:`sharpness_layers`) or layer paths for per-layer sharpness as well."""
    if k < 1 or tol <= 0 or max_iter < 1:
        raise ValueError(f"need k >= 1, tol > 0, max_iter >= 1; got k={k}, tol={tol}, max_iter={max_iter}")
    if probes < 2:
        raise ValueError(f"probes must be >= 2 to give a standard error, got {probes}")
    op = HessianOperator(model, x, y, loss_fn=loss_fn, batch_size=batch_size)
    try:
        ritz = _solve(op, k, tol, max_iter, seed, max_basis)
        tr = _trace(op, probes, seed, ritz.basis, float(torch.trace(ritz.projected)))
        loss = op.loss
    finally:
        op.close()
    per_layer = {}
    if blocks:
        per_layer = block_sharpness(model, x, y, None if blocks is True else list(blocks), k=1, tol=tol,
                                    max_iter=max_iter, seed=seed, max_basis=max_basis, loss_fn=loss_fn,
                                    batch_size=batch_size)
    return Sharpness(loss=loss, eigen=_eigenvalues(ritz, tol, max_iter), trace=tr, blocks=per_layer)


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------
def _weights_digest(path: Path) -> str:
    """A hash of a checkpoint's model tensors: a CNN's last snapshot and its final weights are often one state."""
    from archrelax.train.checkpoint import load_checkpoint

    h = hashlib.sha256()
    for name, t in sorted(load_checkpoint(path)["model"].items()):
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _point(ctx: Context, job: tuple[str, str, str]) -> tuple[SharpnessPoint | None, list[Missing]]:
    """One checkpoint's sharpness (a job of ``run_jobs``: runs in a worker process when there are several)."""
    from archrelax.train.checkpoint import load_checkpoint

    run_id, where, rel = job
    r, path, s, missing = ctx.plan[run_id], ctx.exp.root / rel, ctx.s, []

    def one() -> SharpnessPoint:
        ckpt = load_checkpoint(path)
        x, y = ctx.data()["hessian"]
        sh = measure_sharpness(ctx.load(ckpt), x, y, k=s.sharpness_k, tol=s.sharpness_tol,
                               max_iter=s.sharpness_max_iter, probes=s.trace_probes, seed=s.seed,
                               batch_size=s.batch_size, max_basis=s.sharpness_basis, blocks=s.sharpness_blocks)
        e = sh.eigen
        blocks = [BlockSharpness(layer=n, params=int(b.vectors.shape[-1]), eigenvalue=b.values[0],
                                 residual=b.residuals[0], converged=b.converged[0], products=b.products)
                  for n, b in sh.blocks.items()]
        return SharpnessPoint(**ctx.tag(r), where=where, file=rel, epoch=float(ckpt.get("global_epoch", ckpt["epoch"])),
                              loss=sh.loss, eigenvalues=e.values, eig_iterations=e.products,
                              eig_converged=all(e.converged), eig_residual=e.residuals, eig_bound=e.bounds,
                              eig_converged_each=e.converged, trace=sh.trace.trace, trace_stderr=sh.trace.stderr,
                              trace_probes=sh.trace.probes, trace_exact_dim=sh.trace.exact_dim, blocks=blocks)

    return guard(missing, r, f"sharpness of {path.name}", one), missing


def _state_key(ctx: Context, run_id: str, rel: str) -> tuple[str, str] | None:
    """(run, digest of the weights) for a checkpoint of a run with snapshots; None otherwise or if unreadable."""
    if not ctx.folder(ctx.plan[run_id]).snapshots():
        return None
    try:
        return run_id, _weights_digest(ctx.exp.root / rel)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by its own job
        return None


@register_analysis("sharpness", params=("seed", "sharpness_samples", "sharpness_k", "sharpness_tol",
                                        "sharpness_max_iter", "sharpness_basis", "sharpness_blocks",
                                        "trace_probes"), inputs=weight_files)
def run(ctx: Context) -> SharpnessResult:
    """The CNN at every analysed snapshot (:meth:`Context.snapshots`) and at its end; every other finished run at its end. A checkpoint holding the
    same weights as one already listed (a CNN's last snapshot and its final.pt) is computed once."""
    res = SharpnessResult()
    jobs: list[tuple[str, str, str]] = []  # (run id, where, checkpoint relative to the experiment)
    for r in ctx.of_kind("cnn"):
        snaps = ctx.snapshots(r)
        jobs += [(r.id, "snapshot", ctx.rel(p)) for _, p in snaps]
        if not snaps:
            res.missing.append(Missing(run=r.id, reason="no snapshots yet"))
    for r in ctx.finished(ctx.plan.values(), res.missing):
        jobs.append((r.id, "final", ctx.rel(ctx.folder(r).final_path)))
    # same weights, same numbers: job i reuses the result of job source[i] (itself when computed)
    first: dict[tuple[str, str], int] = {}
    source = [i if (key := _state_key(ctx, rid, rel)) is None else first.setdefault(key, i)
              for i, (rid, _, rel) in enumerate(jobs)]
    todo = [i for i in range(len(jobs)) if source[i] == i]
    out = dict(zip(todo, run_jobs(ctx, _point, [jobs[i] for i in todo], "sharpness",
                                  label=lambda job: f"{job[0]} {Path(job[2]).name}")))
    for i, (_, where, rel) in enumerate(jobs):
        point, missing = out[source[i]]
        if source[i] != i:  # a copy: its missing entries are the source's, already listed
            point, missing = (None if point is None else dataclasses.replace(point, where=where, file=rel)), []
        res.missing += missing
        if point is not None:
            res.points.append(point)
    return res
