"""The few statistics the claims use: a one-sided paired t-test over seeds, Holm's correction, Spearman's ρ
and a t confidence interval. Each works on plain numbers (no torch).

A *paired* difference is computed within one seed (an eFCN against the CNN it branched from, seed s's
eFCN(t_w = 0) against seed s's FCN), so the seed-to-seed spread of the runs themselves cancels; the test is
then a one-sample t-test of the per-seed differences against 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Paired", "paired", "holm", "spearman", "t_interval"]


@dataclass(frozen=True)
class Paired:
    """Per-seed differences and the one-sided t-tests of their mean against 0.

    ``p_greater``: P-value of H1 "mean > 0"; ``p_less``: of H1 "mean < 0" (NaN for fewer than 2 seeds).
    When every difference is equal (sd = 0) the t statistic is infinite: p = 0 in the direction of the
    differences and 1 against it (both 1 when they are all 0).
    """

    diffs: dict[int, float]  # seed -> difference

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def values(self) -> np.ndarray:
        return np.asarray(list(self.diffs.values()), dtype=float)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.n else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation (ddof = 1); 0 for a single seed."""
        return float(self.values.std(ddof=1)) if self.n > 1 else 0.0

    def p(self, direction: str) -> float:
        """One-sided P-value for H1 "mean > 0" (``direction="greater"``) or "mean < 0" (``"less"``)."""
        if direction not in ("greater", "less"):
            raise ValueError(f"direction {direction!r}; valid: 'greater', 'less'")
        if self.n < 2:
            return math.nan
        sign = 1.0 if direction == "greater" else -1.0
        if self.sd == 0.0:
            return 0.0 if sign * self.mean > 0 else 1.0
        from scipy import stats  # lazy: `archrelax --help` does not pay for it

        return float(stats.ttest_1samp(self.values, 0.0, alternative=direction).pvalue)

    @property
    def p_greater(self) -> float:
        return self.p("greater")

    @property
    def p_less(self) -> float:
        return self.p("less")


def paired(a: Mapping[int, float], b: Mapping[int, float] | None = None) -> Paired:
    """Per-seed ``a[s] − b[s]`` over the seeds present (and finite) in both; ``b`` None: ``a`` already holds
    the differences."""
    out = {}
    for s, x in a.items():
        y = 0.0 if b is None else b.get(s)
        if y is not None and math.isfinite(x) and math.isfinite(y):
            out[s] = float(x) - float(y)
    return Paired(dict(sorted(out.items())))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted P-values (step-down; monotone, capped at 1). NaN entries stay NaN and do not
    count as tests."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, math.nan)
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy's; ties get average ranks); NaN when either side is constant or n < 3."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:  # no ranking to correlate (scipy would warn, then say NaN)
        return math.nan
    from scipy import stats  # lazy, as for the t-tests

    return float(stats.spearmanr(a, b).statistic)


def t_interval(d: Paired, level: float) -> tuple[float, float]:
    """Two-sided ``level`` confidence interval of the mean difference (t distribution, n − 1 df); NaNs for
    fewer than 2 seeds."""
    if d.n < 2:
        return math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, d.n - 1)) * d.sd / math.sqrt(d.n)
    return d.mean - half, d.mean + half
