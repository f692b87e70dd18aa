"""Distance from the CNN subspace over training, and the final gain against the final distance.

The trainer records δ = ``offlocal_ratio`` and ``cnn_distance`` of relaxed runs in metrics.jsonl; these
functions only gather them (no model is loaded).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from archrelax.store import read_metrics
from archrelax.store import results as R

from .context import RELAXED_KINDS, Context, metrics_files
from .registry import register_analysis

__all__ = ["read_metrics", "DistanceCurve", "distance_curve", "Gain", "final_gain"]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclasses.dataclass(frozen=True)
class DistanceCurve:
    """δ(t) and cnn_distance(t) at the evaluations that recorded both; epochs on the CNN's clock."""

    epoch: list[float]
    offlocal_ratio: list[float]
    cnn_distance: list[float]


def distance_curve(records: Sequence[dict[str, Any]], epoch_offset: float = 0.0) -> DistanceCurve:
    """Gather (epoch, δ, cnn_distance) from metrics records.

    A record's ``global_epoch`` is used when present; otherwise ``epoch + epoch_offset`` (the run's own clock
    shifted to the CNN's, e.g. by its switch time).
    """
    ep, d, c = [], [], []
    for r in records:
        t = _num(r.get("global_epoch"))
        t = t if t is not None else (_num(r.get("epoch")) or 0.0) + epoch_offset
        dv, cv = _num(r.get("offlocal_ratio")), _num(r.get("cnn_distance"))
        if dv is None or cv is None:
            continue
        ep.append(t)
        d.append(dv)
        c.append(cv)
    return DistanceCurve(ep, d, c)


@dataclasses.dataclass(frozen=True)
class Gain:
    """Final test accuracy of a relaxed run minus its CNN's (fractions), with the run's final distances."""

    final_test_acc: float | None
    cnn_final_test_acc: float | None
    gain: float | None
    final_offlocal_ratio: float | None
    final_cnn_distance: float | None


def _last(records: Sequence[dict[str, Any]], key: str) -> float | None:
    for r in reversed(records):
        v = _num(r.get(key))
        if v is not None:
            return v
    return None


def final_gain(records: Sequence[dict[str, Any]], cnn_records: Sequence[dict[str, Any]]) -> Gain:
    """Gain of a relaxed run over its CNN from both runs' metrics records (last value of each key)."""
    acc, ref = _last(records, "test_acc"), _last(cnn_records, "test_acc")
    return Gain(acc, ref, None if acc is None or ref is None else acc - ref,
                _last(records, "offlocal_ratio"), _last(records, "cnn_distance"))


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------

@register_analysis("distance", inputs=metrics_files)
def run(ctx: Context) -> R.DistanceResult:
    """δ(t) of every run that records it; the gain of every finished relaxed run over its CNN."""
    res = R.DistanceResult()
    metrics: dict[str, list[dict[str, Any]] | None] = {}

    def rows(r) -> list[dict[str, Any]] | None:  # one read per run; an unreadable log is noted once
        if r.id not in metrics:
            try:
                metrics[r.id] = ctx.folder(r).read_metrics()
            except ValueError as e:
                metrics[r.id] = None
                res.missing.append(R.Missing(run=r.id, reason=str(e)))
        return metrics[r.id]

    for r in ctx.plan.values():
        recs = rows(r)
        if recs is None:
            continue
        curve = distance_curve(recs, epoch_offset=r.switch or 0.0)
        if curve.epoch:
            res.curves.append(R.DistanceRecord(**ctx.tag(r), **dataclasses.asdict(curve)))
        elif r.kind in RELAXED_KINDS:
            res.missing.append(R.Missing(run=r.id, reason="no offlocal_ratio/cnn_distance in metrics.jsonl yet"))
    for r in ctx.finished(ctx.of_kind(*RELAXED_KINDS), res.missing):
        cnn = ctx.cnn_of(r)
        if cnn is None or not ctx.done(cnn):
            res.missing.append(R.Missing(run=r.id, reason="its CNN run is not finished: no reference for the gain"))
            continue
        mine, ref = rows(r), rows(cnn)
        if mine is None or ref is None:
            continue
        res.gain.append(R.GainRecord(**ctx.tag(r), cnn_run=cnn.id, **dataclasses.asdict(final_gain(mine, ref))))
    return res
