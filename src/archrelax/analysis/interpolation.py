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

import copy
import dataclasses
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from archrelax.store.results import INTERPOLATION_METHODS, Endpoint, InterpolationRecord, InterpolationResult

from ._common import Metrics, log_probs, metrics_from_log_probs
from .context import Context, guard, weight_files
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


def _mix(a: torch.Tensor, b: torch.Tensor, alpha: float, method: str, name: str) -> torch.Tensor:
    if method == "linear" or _running_stat(name):
        return torch.lerp(a, b, alpha)
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return torch.lerp(a, b, alpha)
    u = torch.lerp(a / na, b / nb, alpha)
    nu = u.norm()
    if nu == 0:  # antipodal directions at α where they cancel: no direction to keep
        return torch.lerp(a, b, alpha)
    return u * (torch.lerp(na, nb, alpha) / nu)


def interpolate_state(sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor], alpha: float,
                      method: str = "linear") -> dict[str, torch.Tensor]:
    """State dict at ``alpha`` between ``sd0`` (α=0) and ``sd1`` (α=1); endpoints returned as is.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are taken from the nearer endpoint.
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
    return {k: _mix(a, sd1[k], alpha, method, k) if a.is_floating_point() else (a if alpha < 0.5 else sd1[k])
            for k, a in sd0.items()}


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
    points are loaded into a private deep copy of ``model0``.
    """
    alphas = default_alphas() if alphas is None else [float(a) for a in alphas]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown interpolation method(s) {bad}; valid: {list(METHODS)}")
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas must lie in [0, 1], got {alphas}")
    sd0 = {k: v.detach() for k, v in model0.state_dict().items()}
    sd1 = {k: v.detach() for k, v in model1.state_dict().items()}
    work = copy.deepcopy(model0)
    data = {"train": train, "test": test}
    out: dict[str, InterpolationCurve] = {}
    for method in methods:
        res: dict[str, list[Metrics]] = {"train": [], "test": []}
        if method == "output":
            ends = {s: [_logp_at(work, sd, x, batch_size) for sd in (sd0, sd1)] for s, (x, _) in data.items()}
        for a in alphas:
            if method != "output":
                work.load_state_dict(interpolate_state(sd0, sd1, a, method))
            for split, (x, y) in data.items():
                if method == "output":
                    lp = _mix_log_probs(*ends[split], a)
                else:
                    lp = log_probs(work, x, batch_size)
                res[split].append(metrics_from_log_probs(lp, y))
        out[method] = InterpolationCurve(method, list(alphas), res["train"], res["test"])
    return out


def _logp_at(work: nn.Module, sd: Mapping[str, torch.Tensor], x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    work.load_state_dict(sd)
    return log_probs(work, x, batch_size)


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
    """For each finished eFCN: from ``interp_start`` to ``interp_end``, by every method of ``interp_methods``."""
    from archrelax.train.checkpoint import load_checkpoint

    s = ctx.s
    res = InterpolationResult(alphas=default_alphas(s.alphas))
    runs = ctx.finished(ctx.of_kind("efcn"), res.missing)
    if s.interp_max_runs is not None:
        runs = runs[: s.interp_max_runs]
    for r in runs:
        ctx.log(f"interpolation: {r.id} ({s.interp_start} -> {s.interp_end})")

        def one() -> list[InterpolationRecord]:
            final = ctx.folder(r).final_path
            end = ctx.load(final)
            arch = load_checkpoint(final)["arch"]
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
                                 alphas=res.alphas, methods=s.interp_methods, batch_size=s.batch_size)
            ends = {k: Endpoint(label=k, source=ctx.rel(sources[k])) for k in (s.interp_start, s.interp_end)}
            return [InterpolationRecord(**ctx.tag(r), start=ends[s.interp_start], end=ends[s.interp_end], method=m,
                                        train_loss=[v.loss for v in c.train], train_acc=[v.acc for v in c.train],
                                        test_loss=[v.loss for v in c.test], test_acc=[v.acc for v in c.test])
                    for m, c in curves.items()]

        res.curves += guard(res.missing, r, "interpolation", one) or []
    return res
