"""Interpolation between two models of the same architecture, in weight space and in output space.

Methods (all evaluated with one code path, ``_common.log_probs`` → ``metrics_from_log_probs``):
- ``linear``: θ(α) = (1−α)·θ₀ + α·θ₁, every floating tensor of the state dict.
- ``curvilinear`` (norm-preserving): per tensor, the norm and the direction are interpolated separately,
  θ(α) = ((1−α)‖θ₀‖ + α‖θ₁‖) · u(α), u(α) = normalise((1−α)·θ₀/‖θ₀‖ + α·θ₁/‖θ₁‖); a tensor with a zero
  norm at either end (e.g. zero-initialised biases) and BatchNorm running statistics fall back to linear.
- ``output``: no weights are mixed; the softmax outputs are, p(α) = (1−α)·p₀ + α·p₁.
At α = 0 and α = 1 the endpoint tensors (or log-probabilities) themselves are used, so those points
reproduce each endpoint's own metrics bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from archrelax.store.results import (INTERPOLATION_METHODS, Endpoint, InterpolationRecord, InterpolationResult,
                                     Missing)

from ._common import Metrics, eval_mode, log_probs, metrics_from_log_probs
from .context import Context, guard, weight_files
from .pool import run_jobs
from .registry import register_analysis

__all__ = ["METHODS", "default_alphas", "interpolate_state", "InterpolationCurve", "interpolate"]

METHODS = INTERPOLATION_METHODS


def default_alphas(n: int = 11) -> list[float]:
    """n ≥ 2 equally spaced values in [0, 1], exactly 0.0 and 1.0 at the ends."""
    if n < 2:
        raise ValueError(f"need at least 2 alphas (0 and 1), got n={n}")
    return [i / (n - 1) for i in range(n)]


def _running_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


Stats = tuple[float, float, float]  # ‖a‖, ‖b‖, ⟨a, b⟩ of one tensor at the two ends (float64)


def pair_stats(sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor]) -> dict[str, Stats]:
    """Per floating tensor: the norms at both ends and their inner product, all the curvilinear path needs
    besides the tensors (computed once, then every α costs one pass over the weights)."""
    out = {}
    for k, a in sd0.items():
        if a.is_floating_point() and not _running_stat(k):
            a64, b64 = a.detach().double().reshape(-1), sd1[k].detach().double().reshape(-1)
            out[k] = (a64.norm().item(), b64.norm().item(), torch.dot(a64, b64).item())
    return out


def _coefficients(stats: Stats | None, alpha: float, method: str, name: str) -> tuple[float, float]:
    """(c0, c1) with θ(α) = c0·θ₀ + c1·θ₁ for one tensor: both methods are linear combinations of the ends.

    Curvilinear: u = (1−α)·θ₀/‖θ₀‖ + α·θ₁/‖θ₁‖ has ‖u‖² = (1−α)² + α² + 2α(1−α)·cos(θ₀, θ₁), and
    θ(α) = ((1−α)‖θ₀‖ + α‖θ₁‖)·u/‖u‖."""
    if method == "linear" or _running_stat(name) or stats is None:
        return 1.0 - alpha, alpha
    na, nb, dot = stats
    if na == 0 or nb == 0:
        return 1.0 - alpha, alpha
    nu2 = (1 - alpha) ** 2 + alpha ** 2 + 2 * alpha * (1 - alpha) * dot / (na * nb)
    if nu2 <= 0:  # antipodal directions at α where they cancel: no direction to keep
        return 1.0 - alpha, alpha
    scale = ((1 - alpha) * na + alpha * nb) / math.sqrt(nu2)  # the interpolated norm over the direction's norm
    return (1 - alpha) / na * scale, alpha / nb * scale


def _mix(a: torch.Tensor, b: torch.Tensor, alpha: float, method: str, name: str, stats: Stats | None) -> torch.Tensor:
    c0, c1 = _coefficients(stats, alpha, method, name)
    return torch.mul(a, c0).add_(b, alpha=c1)


def interpolate_state(sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor], alpha: float,
                      method: str = "linear", stats: Mapping[str, Stats] | None = None) -> dict[str, torch.Tensor]:
    """State dict at ``alpha`` between ``sd0`` (α=0) and ``sd1`` (α=1); endpoints returned as is.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are taken from the nearer endpoint. ``stats``:
    ``pair_stats(sd0, sd1)``, when several α of one pair are wanted (computed here otherwise).
    """
    if method not in ("linear", "curvilinear"):
        raise ValueError(f"weight-space method must be 'linear' or 'curvilinear', got {method!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if sd0.keys() != sd1.keys():
        diff = sorted(set(sd0) ^ set(sd1))
        raise ValueError(f"the two models' state dicts differ in keys {diff[:5]}; interpolate models of one architecture")
    for k in sd0:
        if sd0[k].shape != sd1[k].shape:
            raise ValueError(f"{k!r} has shape {tuple(sd0[k].shape)} at α=0 but {tuple(sd1[k].shape)} at α=1")
    if alpha == 0.0:
        return dict(sd0)
    if alpha == 1.0:
        return dict(sd1)
    if stats is None and method == "curvilinear":
        stats = pair_stats(sd0, sd1)
    stats = stats or {}
    return {k: _mix(a, sd1[k], alpha, method, k, stats.get(k)) if a.is_floating_point()
            else (a if alpha < 0.5 else sd1[k]) for k, a in sd0.items()}


@dataclasses.dataclass(frozen=True)
class InterpolationCurve:
    """Metrics at each α for one method; ``train``/``test`` hold one ``Metrics`` per α."""

    method: str
    alphas: list[float]
    train: list[Metrics]
    test: list[Metrics]


def interpolate(model0: nn.Module, model1: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor], *, alphas: Sequence[float] | None = None,
                methods: Sequence[str] = METHODS, batch_size: int | None = 256) -> dict[str, InterpolationCurve]:
    """Train/test loss and accuracy along the path from ``model0`` (α=0) to ``model1`` (α=1).

    ``train``/``test`` are (x (N, C, H, W) normalised, y (N,)) pairs. Neither model is modified: weight-space
    points are loaded into a private deep copy of ``model0``. The two ends are evaluated once for all methods;
    when the model's first layer reads the input and is affine in its weights (``_LeadingAffine``), its output
    at an inner α is mixed from its outputs at the ends instead of recomputed (equal to float32 rounding).
    """
    alphas = default_alphas() if alphas is None else [float(a) for a in alphas]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown interpolation method(s) {bad}; valid: {list(METHODS)}")
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas must lie in [0, 1], got {alphas}")
    sd0 = {k: v.detach() for k, v in model0.state_dict().items()}
    sd1 = {k: v.detach() for k, v in model1.state_dict().items()}
    if sd0.keys() != sd1.keys():
        diff = sorted(set(sd0) ^ set(sd1))
        raise ValueError(f"the two models' state dicts differ in keys {diff[:5]}; interpolate models of one architecture")
    work = copy.deepcopy(model0)
    data = {"train": train, "test": test}
    stats = pair_stats(sd0, sd1) if "curvilinear" in methods else {}
    lead = _LeadingAffine.find(work, train[0][:1]) if any(m != "output" for m in methods) else None
    # the endpoints, evaluated once for every method (and the leading layer's outputs recorded on the way)
    ends: dict[str, list[torch.Tensor]] = {split: [] for split in data}
    for sd in (sd0, sd1):
        work.load_state_dict(sd)
        for split, (x, _) in data.items():
            with (lead.record(split) if lead is not None else contextlib.nullcontext()):
                ends[split].append(log_probs(work, x, batch_size))
    if lead is not None and not lead.check(work, sd0, sd1, stats, train[0][:8]):
        lead = None  # not affine in its parameters after all: evaluate every point in full
    out: dict[str, InterpolationCurve] = {}
    for method in methods:
        res: dict[str, list[Metrics]] = {"train": [], "test": []}
        for a in alphas:
            if method != "output" and a not in (0.0, 1.0):
                work.load_state_dict(interpolate_state(sd0, sd1, a, method, stats))
            for split, (x, y) in data.items():
                if a in (0.0, 1.0):
                    lp = ends[split][int(a)]
                elif method == "output":
                    lp = _mix_log_probs(*ends[split], a)
                elif lead is not None:
                    with lead.replay(split, sd0, sd1, stats, a, method):
                        lp = log_probs(work, x, batch_size)
                else:
                    lp = log_probs(work, x, batch_size)
                res[split].append(metrics_from_log_probs(lp, y))
        out[method] = InterpolationCurve(method, list(alphas), res["train"], res["test"])
    return out


class _LeadingAffine:
    """The model's first layer when it reads the input itself and is affine in its parameters (a Linear, a conv,
    a relaxed layer: z = A(W)·x + B(b), A and B linear). Between two ends, W(α) = c0·W0 + c1·W1 and b(α) likewise
    (``_coefficients``), so z(α) = c0·(z0 − B(b0)) + c1·(z1 − B(b1)) + B(b(α)): its outputs at the two ends,
    recorded while evaluating them, give it at every α without its matmul (most of an eFCN's arithmetic).
    ``check`` compares that with the layer itself once; any mismatch turns the shortcut off."""

    def __init__(self, model: nn.Module, name: str):
        self.name, self.module = name, model.get_submodule(name)
        parent, _, self.attr = name.rpartition(".")
        self.parent = model.get_submodule(parent) if parent else model
        self.keys = {k: f"{name}.{k}" for k, _ in self.module.named_parameters(recurse=False)}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.in_shape: tuple[int, ...] = ()
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None  # B(b0), B(b1)

    @classmethod
    def find(cls, model: nn.Module, example: torch.Tensor) -> "_LeadingAffine | None":
        from archrelax.embed import RelaxedConv

        first: list[str] = []

        def pre(name: str) -> Any:
            def hook(mod: nn.Module, args: tuple) -> None:
                if not first and args and args[0] is example and not list(mod.children()):
                    first.append(name)
            return hook

        handles = [m.register_forward_pre_hook(pre(n)) for n, m in model.named_modules() if n]
        try:
            with torch.no_grad(), eval_mode(model):
                model(example)
        finally:
            for h in handles:
                h.remove()
        if not first:
            return None
        mod = model.get_submodule(first[0])
        names = {k for k, _ in mod.named_parameters(recurse=False)}
        affine = isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd, RelaxedConv))
        if not affine or "weight" not in names or names - {"weight", "bias"}:
            return None
        out = cls(model, first[0])
        out.in_shape = tuple(example.shape[1:])
        return out

    @contextlib.contextmanager
    def record(self, split: str) -> Iterator[None]:
        got: list[torch.Tensor] = []
        h = self.module.register_forward_hook(lambda mod, args, z: got.append(z.detach()))
        try:
            yield
        finally:
            h.remove()
        self.outputs.setdefault(split, []).append(torch.cat(got))

    def _bias_part(self, bias: torch.Tensor) -> torch.Tensor:
        """B(b): the layer's output on a zero input with zero weight, (1, ...)."""
        w = getattr(self.module, "weight")
        zero = torch.zeros(1, *self.in_shape, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            return torch.func.functional_call(self.module, {"weight": torch.zeros_like(w), "bias": bias}, (zero,))

    def mixed(self, split: str, sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor],
              stats: Mapping[str, Stats], alpha: float, method: str) -> torch.Tensor:
        """z(α) = c0·z0 + c1·z1 + (cb0 − c0)·B(b0) + (cb1 − c1)·B(b1) (B linear, b(α) = cb0·b0 + cb1·b1)."""
        z0, z1 = self.outputs[split]
        kw, kb = self.keys["weight"], self.keys.get("bias")
        c0, c1 = _coefficients(stats.get(kw), alpha, method, kw)
        z = torch.mul(z0, c0).add_(z1, alpha=c1)
        if kb is not None:
            if self._bias is None:
                self._bias = (self._bias_part(sd0[kb]), self._bias_part(sd1[kb]))
            b0, b1 = _coefficients(stats.get(kb), alpha, method, kb)
            z.add_(self._bias[0], alpha=b0 - c0).add_(self._bias[1], alpha=b1 - c1)
        return z

    @contextlib.contextmanager
    def replay(self, split: str, sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor],
               stats: Mapping[str, Stats], alpha: float, method: str) -> Iterator[None]:
        setattr(self.parent, self.attr, _Replay(self.mixed(split, sd0, sd1, stats, alpha, method)))
        try:
            yield
        finally:
            setattr(self.parent, self.attr, self.module)

    def check(self, model: nn.Module, sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor],
              stats: Mapping[str, Stats], x: torch.Tensor) -> bool:
        """At α = 0.5 by both weight-space methods, on the first rows of the train split: the shortcut's output
        equals the layer's own (to float32 rounding of the sums)."""
        for method in ("linear", "curvilinear"):
            model.load_state_dict(interpolate_state(sd0, sd1, 0.5, method, stats if method == "curvilinear" else None))
            with torch.no_grad(), eval_mode(model):
                direct = self.module(x)
            mixed = self.mixed("train", sd0, sd1, stats or pair_stats(sd0, sd1), 0.5, method)[: len(x)]
            scale = direct.abs().max().clamp_min(1e-30)
            if direct.shape != mixed.shape or not ((direct - mixed).abs().max() <= 1e-4 * scale):
                return False
        return True


class _Replay(nn.Module):
    """Stands in for a layer: returns the next rows of precomputed outputs, batch after batch."""

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z, self.i = z, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.z[self.i : self.i + len(x)]
        if len(out) != len(x):
            raise RuntimeError(f"replayed layer ran out of rows ({self.i} + {len(x)} > {len(self.z)})")
        self.i += len(x)
        return out


def _mix_log_probs(lp0: torch.Tensor, lp1: torch.Tensor, alpha: float) -> torch.Tensor:
    """log((1−α)·exp(lp0) + α·exp(lp1)), computed stably; the endpoints themselves at α ∈ {0, 1}."""
    if alpha == 0.0:
        return lp0
    if alpha == 1.0:
        return lp1
    return torch.logaddexp(lp0 + math.log1p(-alpha), lp1 + math.log(alpha))


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------
@register_analysis("interpolation", params=("seed", "eval_train_samples", "eval_test_samples", "alphas",
                                            "interp_methods", "interp_start", "interp_end", "interp_max_runs"),
                   inputs=weight_files)
def run(ctx: Context) -> InterpolationResult:
    """For each finished eFCN: from ``interp_start`` to ``interp_end``, by every method of ``interp_methods``
    (one job per run: in the worker processes when there are several)."""
    s = ctx.s
    res = InterpolationResult(alphas=default_alphas(s.alphas))
    runs = ctx.finished(ctx.of_kind("efcn"), res.missing)
    if s.interp_max_runs is not None:
        runs = runs[: s.interp_max_runs]
    for curves, missing in run_jobs(ctx, _curves, [r.id for r in runs], "interpolation",
                                    label=lambda rid: f"{rid} ({s.interp_start} -> {s.interp_end})"):
        res.curves += curves
        res.missing += missing
    return res


def _curves(ctx: Context, run_id: str) -> tuple[list[InterpolationRecord], list[Missing]]:
    from archrelax.train.checkpoint import load_checkpoint

    s, r, missing = ctx.s, ctx.plan[run_id], []
    alphas = default_alphas(s.alphas)

    def one() -> list[InterpolationRecord]:
        final = ctx.folder(r).final_path
        ckpt = load_checkpoint(final)
        end, arch = ctx.load(ckpt), ckpt["arch"]
        cnn = ctx.cnn_of(r)
        sources = {"efcn_end": final, "switch": ctx.switch_snapshot(r),
                   "cnn_end": ctx.folder(cnn).final_path if cnn is not None and ctx.done(cnn) else None}
        models = {}
        for label in (s.interp_start, s.interp_end):
            if sources[label] is None:
                raise FileNotFoundError(f"endpoint {label!r} has no file (not finished or no snapshot)")
            models[label] = end if label == "efcn_end" else ctx.embedded(sources[label], end, arch)
        d = ctx.data()
        curves = interpolate(models[s.interp_start], models[s.interp_end], d["train"], d["test"],
                             alphas=alphas, methods=s.interp_methods, batch_size=s.batch_size)
        ends = {k: Endpoint(label=k, source=ctx.rel(sources[k])) for k in (s.interp_start, s.interp_end)}
        return [InterpolationRecord(**ctx.tag(r), start=ends[s.interp_start], end=ends[s.interp_end], method=m,
                                    train_loss=[v.loss for v in c.train], train_acc=[v.acc for v in c.train],
                                    test_loss=[v.loss for v in c.test], test_acc=[v.acc for v in c.test])
                for m, c in curves.items()]

    return guard(missing, r, "interpolation", one) or [], missing
