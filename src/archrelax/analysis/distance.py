"""Distance from the CNN subspace over training, and the final gain against the final distance.

The trainer records δ = ``offlocal_ratio`` and ``cnn_distance`` of relaxed runs in metrics.jsonl; these
functions only gather them (no model is loaded).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

from archrelax.utils import read_jsonl

__all__ = ["read_metrics", "DistanceCurve", "distance_curve", "Gain", "final_gain"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a truncated last line (a crash mid-write) is skipped, as the writer allows."""
    return read_jsonl(path)


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
