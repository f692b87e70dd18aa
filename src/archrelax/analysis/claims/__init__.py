"""The paper's claims, tested on an experiment folder: ``evaluate_claims(EXP) -> list[Claim]``.

Each of the thirteen claims of d'Ascoli et al. (the poster's findings; ``CLAIMS``) gets the statistic that
tests it on this experiment, the number of seeds behind it and a verdict: *supported*, *contradicted*, *not
enough evidence* (too few seeds, a difference within the seed spread, an analysis that failed: the reason
says which) or *not measured* (the experiment lacks the runs or analyses; ``measure`` says what would
measure it). The rules and every threshold are in docs/claims.md; the thresholds are ``ClaimThresholds``.

Files only: the plan, the runs' status and metrics, and the cached analysis results (``archrelax analyse``)
are read through ``archrelax.store``; no model is loaded and torch is not imported, so ``archrelax claims
EXP`` answers in about a second.

    from archrelax.analysis.claims import evaluate_claims
    for c in evaluate_claims("experiments/needle-mnist"):
        print(c.number, c.verdict, c.statistic)
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from archrelax.store import ExperimentFolder

from .base import CLAIMS, THRESHOLDS, VERDICTS, Claim, ClaimInfo, ClaimThresholds, Verdict
from .evidence import load_evidence
from .rules import RULES

__all__ = ["Claim", "ClaimInfo", "ClaimThresholds", "THRESHOLDS", "CLAIMS", "VERDICTS", "Verdict",
           "evaluate_claims", "format_claims", "claims_json"]


def evaluate_claims(experiment: str | Path | ExperimentFolder, thresholds: ClaimThresholds = THRESHOLDS
                    ) -> list[Claim]:
    """The verdict on every claim, in order 1..13, then those asked only of plans with their kinds of run (14, 15:
    the attention runs; 16: runs of an automatic switch time). FileNotFoundError when ``experiment`` has no
    plan.json; anything missing or damaged inside it becomes a verdict's reason, never an exception."""
    ev = load_evidence(experiment)
    return [RULES[n](ev, thresholds) for n in sorted(CLAIMS) if CLAIMS[n].asked(ev.plan)]


def claims_json(experiment: str | Path | ExperimentFolder, claims: list[Claim],
                thresholds: ClaimThresholds = THRESHOLDS) -> dict[str, Any]:
    root = experiment.root if isinstance(experiment, ExperimentFolder) else Path(experiment).resolve()
    return {"experiment": str(root), "thresholds": thresholds.to_json(), "claims": [c.to_json() for c in claims]}


def format_claims(claims: list[Claim], width: int = 110) -> str:
    """The terminal table: one block per claim (number, verdict, seeds, the claim), then the statistic and
    the reason, wrapped to ``width``."""
    head = f"{'#':>2}  {'verdict':<20} {'seeds':>5}  claim"
    out = [head, "-" * min(width, 100)]
    pad = " " * 6
    for c in claims:
        out.append(f"{c.number:>2}  {c.verdict:<20} {c.n_seeds:>5}  {c.text}")
        for label, text in (("statistic", c.statistic), ("reason", c.reason), ("to measure", c.measure)):
            if text and text != "—":
                out += textwrap.wrap(f"{label}: {text}", width, initial_indent=pad, subsequent_indent=pad + "  ")
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    out.append("")
    out.append(", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" (of {len(claims)} claims)")
    return "\n".join(out)


def dumps(experiment: str | Path | ExperimentFolder, claims: list[Claim]) -> str:
    return json.dumps(claims_json(experiment, claims), indent=2, ensure_ascii=False)
