"""The vocabulary of the claims: verdicts, thresholds (in ONE place: docs/claims.md repeats them and a test
checks that it does), the thirteen claims in words (and claims 1 and 4 for attention runs, asked only of plans
that have them; claim 16, the automatic switch time, only of plans with auto runs) and the typed :class:`Claim`
each evaluation returns."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from archrelax.store.results import plain

__all__ = ["Verdict", "VERDICTS", "ClaimThresholds", "THRESHOLDS", "ClaimInfo", "CLAIMS", "Claim"]

Verdict = Literal["supported", "contradicted", "not enough evidence", "not measured"]
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "not enough evidence", "not measured")


@dataclass(frozen=True)
class ClaimThresholds:
    """Every number a verdict depends on. docs/claims.md states the same values (tests/test_claims.py)."""

    alpha: float = 0.05  # significance level of every one-sided test
    min_seeds: int = 3  # fewest seeds for a statistical verdict
    multiplicity: str = "holm"  # correction when a claim tests several switch times (claims 3, 4, 5, 15)
    jump_tol: float = 1e-4  # claim 1: largest relative train-loss jump at the switch (float32 sums reordered)
    jump_tol_bf16: float = 1e-2  # claim 1, runs evaluated under bf16 autocast (amp: bf16)
    loss_floor: float = 0.01  # claim 1: jumps are relative to max(loss at the switch, this) in nats
    chance_margin: float = 0.05  # claim 9: "at chance" = accuracy <= 1/classes + this (fraction)
    local_change_max: float = 0.10  # claim 10: "hardly change" = relative change of the local blocks <= this
    memory_ratio_min: float = 5.0  # claim 12: eFCN/eLCN parameter memory at least this ("about 10x")
    equivalence_margin: float = 0.02  # claims 12, 16: "similar gain" = CI of the difference within +- this;
    # "not worse" = its lower end above -this
    equivalence_level: float = 0.90  # claims 12, 16: level of that confidence interval (TOST at alpha = 0.05)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or self.min_seeds < 2 or self.multiplicity not in ("holm",):
            raise ValueError(f"thresholds: alpha={self.alpha} must be in (0, 1), min_seeds={self.min_seeds} >= 2, "
                             f"multiplicity={self.multiplicity!r} one of ['holm']")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


THRESHOLDS = ClaimThresholds()


@dataclass(frozen=True)
class ClaimInfo:
    """A claim of the paper: its words, a short name, how it is tested ("seeds": a statistic over seeds;
    "runs": a check of every run; "both") and the report sections (anchors) its evidence is drawn in;
    ``only_with``: the kinds of run it is about when it is asked only of a plan that has them (the attention
    runs' claims, which are not the paper's); ``only_with_auto``: asked only of a plan with runs whose switch time
    a rule chooses (``switch_times: [auto]``)."""

    number: int
    short: str
    text: str
    test: Literal["seeds", "runs", "both"]
    anchors: tuple[str, ...]
    only_with: tuple[str, ...] = ()  # kinds of run: asked only of a plan that has runs of one of them
    only_with_auto: bool = False

    def asked(self, plan: Any) -> bool:
        """Whether the claim is asked of an experiment whose plan (id -> Run) is ``plan``."""
        runs = list(plan.values())
        if self.only_with_auto and not any(r.auto for r in runs):
            return False
        return not self.only_with or any(r.kind in self.only_with and not r.auto for r in runs)


CLAIMS: dict[int, ClaimInfo] = {c.number: c for c in (
    ClaimInfo(1, "no jump at the switch",
              "After the switch the training loss keeps decreasing (no jump at the switch beyond float noise).",
              "runs", ("curves-efcn",)),
    ClaimInfo(2, "eFCN(0) beats the FCN", "eFCN(t_w = 0) beats the vanilla FCN of the same size.",
              "seeds", ("final-efcn",)),
    ClaimInfo(3, "no overfitting after the switch",
              "After the switch the test accuracy does not fall (no overfitting), up to the run's end.",
              "seeds", ("curves-efcn",)),
    ClaimInfo(4, "late eFCN beats the CNN",
              "Released late enough, the eFCN beats the CNN (some t_w with a positive paired gain).",
              "seeds", ("final-efcn",)),
    ClaimInfo(5, "best t_w is intermediate",
              "The gain is largest at an intermediate t_w (neither the first nor the last switch time).",
              "seeds", ("final-efcn",)),
    ClaimInfo(6, "gain where the CNN is sharpest",
              "The gain is largest where the CNN's trajectory is sharpest (best t_w against the peak of λ_max "
              "along the CNN).", "seeds", ("sharpness", "final-efcn")),
    ClaimInfo(7, "wider basins", "The relaxed networks end in wider basins than the CNN (λ_max and trace at "
              "the end, eFCN vs CNN).", "seeds", ("sharpness",)),
    ClaimInfo(8, "earlier release, further escape",
              "The earlier the release, the further the escape from the CNN subspace (final δ decreasing in t_w).",
              "seeds", ("distance",)),
    ClaimInfo(9, "off-local alone at chance, helps combined",
              "The off-local part alone is at chance; local + off-local beats local alone.", "both", ("ablation",)),
    ClaimInfo(10, "local blocks hardly change",
              "The local blocks hardly change after the switch.", "runs", ("ablation",)),
    ClaimInfo(11, "interpolation beats both ends",
              "Interpolating in weight space between the CNN and the eFCN gives an intermediate point that beats "
              "both ends.", "seeds", ("interpolation",)),
    ClaimInfo(12, "eLCN: similar gain, ~10× less memory",
              "The eLCN gives a similar gain at a memory cost about 10× smaller than the eFCN's.", "both",
              ("final-elcn", "memory")),
    ClaimInfo(13, "hierarchical beats single relaxation",
              "Hierarchical relaxation (CNN → eLCN(t_w1) → eFCN(t_w2)) gains beyond the best single relaxation.",
              "seeds", ("hierarchical",)),
    ClaimInfo(14, "attention: no jump at the switch",
              "Claim 1 for the attention runs: after the switch to self-attention the training loss keeps decreasing "
              "(no jump beyond float noise: the embedding is exact up to e^(−α/2)).", "runs", ("attention",),
              only_with=("attn",)),
    ClaimInfo(15, "late attention beats the CNN",
              "Claim 4 for the attention runs: released late enough, the attention beats the CNN (some t_w with a "
              "positive paired gain).", "seeds", ("attention", "lattice"), only_with=("attn",)),
    ClaimInfo(16, "automatic t_w not worse than the best fixed",
              "Released where the CNN is sharpest (t_w chosen during its training: switch_times auto), the eFCN is "
              "not worse than at the best fixed t_w.", "seeds", ("final-efcn",), only_with_auto=True),
)}


@dataclass(frozen=True)
class Claim:
    """One claim's verdict on one experiment.

    ``statistic``: what was measured, in words and numbers (accuracies in percentage points, pp);
    ``n_seeds``: the seeds that entered it; ``reason``: why this verdict (for *not measured*, also
    ``measure``: what would measure it); ``anchors``: ids of the report sections it is read from;
    ``numbers``: the raw figures (per-seed differences, P-values, ...), plain data.
    """

    number: int
    short: str
    text: str
    test: str
    verdict: Verdict
    reason: str
    statistic: str = "—"
    n_seeds: int = 0
    anchors: tuple[str, ...] = ()
    measure: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return plain(self)  # the store's encoder: NaN/inf -> None, tuples -> lists, numpy scalars -> numbers
