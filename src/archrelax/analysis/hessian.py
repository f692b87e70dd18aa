"""The Hessian of a mean loss as a linear operator; its extreme eigenvalues by Lanczos; its trace by Hutchinson.

- :class:`HessianOperator`: the loss over a fixed set of examples and its gradient are computed once, with
  ``create_graph=True``, and that graph is kept; each product ``H v`` is then one backward pass through it
  (double backward), with no forward pass and no first-order backward per product. The products are those of
  ``torch.autograd`` on the model's own forward, so every layer that supports double backward works (the
  eLCN's kernel included). The model is differentiated in eval mode (``_common.eval_mode``).
- :func:`lanczos`: Lanczos with full reorthogonalisation on flat vectors (two Gram–Schmidt passes per step),
  the projected matrix ``T = VᵀHV`` kept in float64, thick restart when the basis reaches ``max_basis``
  vectors. For a Ritz pair (θ, y = V s) the residual is free: ``‖Hy − θy‖ = β·|s_last|`` (β: the norm of
  the part of the last product outside the basis). H is symmetric, so an eigenvalue of H lies within that
  residual of θ, and within residual² / gap when the rest of H's spectrum is at least ``gap`` away from θ.
  A value is *converged* when its residual is at most ``√tol · |θ|``: the criterion the power iteration of
  earlier versions used, now reached in fewer products.
- :func:`deflated_hutchinson`: tr(H) = tr(VᵀHV) + tr(PHP), with P = I − VVᵀ the projector off an orthonormal
  basis V (the Lanczos basis): the first term is exact (tr T), the second is Hutchinson's estimate with
  Rademacher probes g projected by P, whose variance 2(‖PHP‖_F² − Σ (PHP)_ii²) lacks the top eigenvalues'
  share of ‖H‖_F² (the outliers of a network's Hessian carry most of it). Unbiased because V does not
  depend on the probes. The standard error is the probes' sample sd / √probes.

Vectors are flat: one ``(n,)`` tensor, the trainable parameters in ``model.parameters()`` order (or the
``params`` given), each flattened. ``HessianOperator.unflatten`` gives them back shaped like the parameters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import LossFn, batches, eval_mode

__all__ = ["HessianOperator", "Ritz", "lanczos", "deflated_hutchinson", "rademacher", "Which"]

Which = Literal["magnitude", "largest"]
Operator = Callable[[torch.Tensor], torch.Tensor]


def trainable(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True; nothing to differentiate")
    return params


class HessianOperator:
    """``v ↦ H v`` for the Hessian of the mean loss over (x (N, ...), y (N,)) with respect to ``params``
    (default: every trainable parameter of ``model``), at the parameters' current values.

    Building it costs one forward and one backward pass per batch of ``batch_size`` examples (kept for the
    products: memory grows with N); ``loss`` is the mean loss over the N examples. The caller's model keeps its
    mode, parameters and ``.grad``. Use it while the parameters do not change; ``close()`` frees the graph.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, params: Sequence[torch.Tensor] | None = None,
                 loss_fn: LossFn = F.cross_entropy, batch_size: int | None = 256):
        self.params = list(params) if params is not None else trainable(model)
        if not self.params:
            raise ValueError("params is empty: no parameter to differentiate")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"the parameters mix dtypes {sorted(map(str, dtypes))}; the operator needs one")
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.products = 0
        n = len(x)
        if n == 0:
            raise ValueError("no examples: the Hessian of a mean over zero examples is undefined")
        total, grads = 0.0, None
        with eval_mode(model), torch.enable_grad():
            for xb, yb in batches(x, y, batch_size):
                w = len(xb) / n  # the mean over all N = Σ_b (n_b / N) · mean over batch b
                loss = loss_fn(model(xb), yb)
                gb = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                gb = [w * g if g is not None else None for g in gb]
                grads = gb if grads is None else [a if b is None else b if a is None else a + b for a, b in zip(grads, gb)]
                total += w * loss.item()
        self.loss = total
        # the mean loss's gradient (n,), flat: free here, and a good start for Lanczos (start_vector)
        self.gradient = self.flatten([torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, self.params)])
        # a gradient that is constant in the parameters (or absent) contributes nothing to H v
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = [grads[i] for i in self._live]

    def start_vector(self, seed: int = 0) -> torch.Tensor:
        """A unit start vector for Lanczos (n,): the normalised gradient plus a unit Gaussian vector drawn from a
        ``torch.Generator`` seeded with ``seed``, normalised. A network's gradient lies mostly in the top
        eigenspace of its Hessian (Gur-Ari, Roberts, Dyer 2018), so Lanczos needs fewer products from it (117 ->
        85 over 19 checkpoints of needle-mnist, same values); the Gaussian half keeps every direction in the
        start, as a Gaussian start has. Gaussian alone when the gradient is zero or not finite."""
        r = _random_unit(self.dim, torch.Generator().manual_seed(seed), self.dtype, self.device)
        n = self.gradient.norm()
        if not torch.isfinite(n) or n == 0:
            return r
        v = self.gradient / n + r
        return v / v.norm()

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """(n,) -> one tensor per parameter, shaped like it (views of ``v``)."""
        return [t.view(s) for t, s in zip(v.split(self.sizes), self.shapes)]

    def flatten(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in parts])

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat ``v`` (n,), as a new flat tensor (n,)."""
        if v.shape != (self.dim,):
            raise ValueError(f"v has shape {tuple(v.shape)}; this operator acts on vectors of shape ({self.dim},)")
        if self._grads is None:
            raise RuntimeError("this HessianOperator was closed")
        parts = self.unflatten(v.to(self.dtype))
        self.products += 1
        hv: Sequence[torch.Tensor | None] = [None] * len(self.params)
        if self._grads:
            hv = torch.autograd.grad(self._grads, self.params, grad_outputs=[parts[i] for i in self._live],
                                     retain_graph=True, allow_unused=True)
        return self.flatten([torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, self.params)])

    def close(self) -> None:
        self._grads = None


@dataclasses.dataclass(frozen=True)
class Ritz:
    """The k wanted Ritz pairs of a Lanczos run, and the basis it ended with.

    ``values`` (wanted order: largest magnitude, or largest, first); ``residuals[i]`` = ‖H y_i − θ_i y_i‖
    (absolute); ``converged[i]``: residual ≤ √tol·|θ_i|; ``products[i]``: Hessian-vector products done when
    value i first met that (the total for an unconverged one); ``vectors`` (k, n) unit Ritz vectors;
    ``basis`` (m, n) orthonormal and ``projected`` (m, m) = basisᵀ H basis (float64), for deflation.
    """

    values: list[float]
    residuals: list[float]
    converged: list[bool]
    products: list[int]
    total_products: int
    vectors: torch.Tensor = dataclasses.field(repr=False, compare=False)
    basis: torch.Tensor = dataclasses.field(repr=False, compare=False)
    projected: torch.Tensor = dataclasses.field(repr=False, compare=False)


def _order(theta: torch.Tensor, which: Which) -> torch.Tensor:
    """Indices of the Ritz values, wanted first (ties: the larger value first)."""
    key = theta.abs() if which == "magnitude" else theta
    return torch.sort(key, descending=True, stable=True).indices


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w minus its components along the orthonormal rows of ``basis``, and the coefficients (float64).

    Classical Gram–Schmidt, repeated once when the first pass cancelled most of w (‖w‖ fell below 1/√2 of
    what it was: the DGKS test), which is when rounding leaves w visibly non-orthogonal to the basis; each
    pass reads the whole basis twice, so the second is done only then.
    """
    if len(basis) == 0:
        return w, torch.zeros(0, dtype=torch.float64)
    before = w.norm()
    h = torch.mv(basis, w)
    w = torch.addmv(w, basis.T, h, alpha=-1)  # w − basisᵀh in one pass, no n-sized temporary
    h = h.double().cpu()
    if w.norm() < 0.7071 * before:
        h2 = torch.mv(basis, w)
        w.addmv_(basis.T, h2, alpha=-1)
        h = h + h2.double().cpu()
    return w, h


def rademacher(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """n independent ±1 entries (n,), unpacked from n/8 random bytes drawn from ``gen`` (a draw per entry costs
    about as much as a Hessian-vector product on an eFCN)."""
    octets = torch.randint(0, 256, (-(-n // 8),), generator=gen, dtype=torch.uint8)
    bits = (octets[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return (bits.view(-1)[:n].to(dtype) * 2 - 1).to(device)


def _random_unit(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    v = torch.randn(n, generator=gen, dtype=dtype).to(device)
    return v / v.norm()


def lanczos(op: Operator, dim: int, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, max_basis: int = 24,
            v0: torch.Tensor | None = None, seed: int = 0, which: Which = "magnitude",
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Ritz:
    """The k wanted eigenpairs of the symmetric operator ``op`` ((dim,) -> (dim,)) by Lanczos (module docstring).

    Stops when all k values are converged (residual ≤ √tol·|θ|) or after ``max_iter`` products. ``v0``: the
    start vector (e.g. the previous call's top vector: a warm start), else a Gaussian one drawn from a
    ``torch.Generator`` seeded with ``seed``. The basis holds at most ``max_basis`` vectors of ``dim`` floats
    (memory); when full, it restarts from the ``max(k + 1, max_basis // 2)`` wanted Ritz vectors and the last
    residual (thick restart), which keeps the Ritz values and their residuals.
    """
    if k < 1 or tol <= 0 or max_iter < 1 or dim < 1:
        raise ValueError(f"need k >= 1, tol > 0, max_iter >= 1, dim >= 1; got k={k}, tol={tol}, max_iter={max_iter}, "
                         f"dim={dim}")
    if which not in ("magnitude", "largest"):
        raise ValueError(f"which={which!r}; valid: 'magnitude', 'largest'")
    k = min(k, dim)
    max_basis = min(max(max_basis, k + 2), dim)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    if v0 is None:
        q = _random_unit(dim, gen, dtype, device)
    else:
        if v0.shape != (dim,):
            raise ValueError(f"v0 has shape {tuple(v0.shape)}; expected ({dim},)")
        q = v0.to(device, dtype)
        if not torch.isfinite(q).all() or q.norm() == 0:
            raise ValueError("v0 must be a finite, non-zero vector")
        q = q / q.norm()
    V = torch.empty(max_basis, dim, dtype=dtype, device=device)
    T = torch.zeros(max_basis, max_basis, dtype=torch.float64)
    tiny = torch.finfo(dtype).eps
    j, products = 0, 0
    first_ok: list[int | None] = [None] * k
    while True:
        V[j] = q
        w, h = _orthogonalise(op(q), V[: j + 1])
        products += 1
        T[: j + 1, j] = h
        T[j, : j + 1] = h
        j += 1
        beta = w.norm().item()
        theta, S = torch.linalg.eigh(T[:j, :j])
        idx = _order(theta, which)[:k]
        vals, resid = theta[idx], beta * S[j - 1, idx].abs()
        ok = (resid <= math.sqrt(tol) * vals.abs()).tolist()
        for i, flag in enumerate(ok):
            if flag and first_ok[i] is None:
                first_ok[i] = products
        done = len(vals) == k and all(ok)
        scale = max(theta.abs().max().item(), tiny)
        invariant = beta <= 16 * tiny * scale  # the basis spans an invariant subspace: its Ritz pairs are exact
        if done or products >= max_iter or (invariant and j == dim):
            break
        if invariant:  # continue in a fresh direction orthogonal to the basis (coupling 0)
            w, _ = _orthogonalise(_random_unit(dim, gen, dtype, device), V[:j])
            if w.norm() <= 0.5:  # the basis already spans the space (to rounding)
                break
            beta = w.norm().item()
        if j == max_basis:  # thick restart: keep the wanted Ritz vectors, continue from the last residual
            keep = _order(theta, which)[: max(k + 1, max_basis // 2)]
            V[: len(keep)] = (S[:, keep].T.to(dtype).to(device) @ V[:j])
            T.zero_()
            T[range(len(keep)), range(len(keep))] = theta[keep]
            j = len(keep)
        q = w / beta
    theta, S = torch.linalg.eigh(T[:j, :j])
    idx = _order(theta, which)[:k]
    vals, resid = theta[idx], beta * S[j - 1, idx].abs()
    ok = [bool(r <= math.sqrt(tol) * abs(v)) for r, v in zip(resid.tolist(), vals.tolist())]
    vectors = S[:, idx].T.to(dtype).to(device) @ V[:j]
    return Ritz(values=vals.tolist(), residuals=resid.tolist(), converged=ok,
                products=[first_ok[i] if ok[i] and first_ok[i] is not None else products for i in range(len(ok))],
                total_products=products, vectors=vectors, basis=V[:j], projected=T[:j, :j].clone())


@dataclasses.dataclass(frozen=True)
class TraceSamples:
    """tr(H) ≈ ``exact + mean(samples)``: ``exact`` = tr(BᵀHB) over an orthonormal basis B of ``exact_dim``
    vectors (0 when not deflated), ``samples`` = gᵀPHPg over Rademacher probes g, P = I − BBᵀ."""

    exact: float
    exact_dim: int
    samples: list[float]

    @property
    def trace(self) -> float:
        return self.exact + float(torch.tensor(self.samples, dtype=torch.float64).mean())

    @property
    def stderr(self) -> float:
        return float(torch.tensor(self.samples, dtype=torch.float64).std(unbiased=True)) / math.sqrt(len(self.samples))


def deflated_hutchinson(op: Operator, dim: int, probes: int, *, seed: int = 0, basis: torch.Tensor | None = None,
                        projected_trace: float = 0.0, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> TraceSamples:
    """Hutchinson's estimate of tr(H) off ``basis`` ((m, dim), orthonormal rows; ``projected_trace`` = tr(basisᵀ H
    basis), exact) with ``probes`` Rademacher vectors from a ``torch.Generator`` seeded with ``seed``; without a
    basis, plain Hutchinson. ``op`` is called once per probe."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2 to give a standard error, got {probes}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        g = rademacher(dim, gen, dtype, device)
        if basis is not None and len(basis):
            g.addmv_(basis.T, torch.mv(basis, g), alpha=-1)
        out.append(float(torch.dot(op(g), g)))
    m = 0 if basis is None else len(basis)
    return TraceSamples(exact=float(projected_trace) if m else 0.0, exact_dim=m, samples=out)
