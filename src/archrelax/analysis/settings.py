"""AnalysisSettings: the costs of the analyses, read back from the experiment's own spec.yaml.

Light (no torch): ``archrelax analyse --help`` builds its options from these fields, and the spec validates
its ``analysis_settings`` against them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from archrelax.store import ExperimentFolder
from archrelax.store.results import INTERPOLATION_ENDPOINTS, INTERPOLATION_METHODS

__all__ = ["AnalysisSettings", "make_settings", "settings_from_spec"]


# the least value of each integer setting (alphas: both endpoints; interp_max_runs may also be None: all)
_AT_LEAST = {"seed": 0, "batch_size": 1, "sharpness_samples": 1, "sharpness_k": 1, "sharpness_max_iter": 1,
             "trace_probes": 1, "eval_train_samples": 1, "eval_test_samples": 1, "alphas": 2, "interp_max_runs": 1,
             "template_count": 1}


@dataclasses.dataclass
class AnalysisSettings:
    """Costs of the analyses; defaults keep the demo to seconds per model on 2 CPUs."""

    device: str = "auto"
    seed: int = 0  # picks the data subsets and the random probes
    batch_size: int = 256
    workers: int | None = None  # processes for the per-run jobs; None: see pool.workers_of (results do not change)
    sharpness_samples: int = 256  # fixed training subset for the Hessian
    sharpness_k: int = 1
    sharpness_tol: float = 1e-3  # converged: ‖Hv − θv‖ ≤ √tol·|θ| (relative residual ≤ 0.032 at 1e-3)
    sharpness_max_iter: int = 20  # Hessian-vector products of the Lanczos run (all k eigenvalues together)
    sharpness_basis: int = 24  # Lanczos vectors kept (memory: basis × parameters × 4 bytes); then thick restart
    sharpness_blocks: bool = False  # also the top eigenvalue of each relaxed (or conv) layer's own Hessian block
    trace_probes: int = 10  # Rademacher probes of the trace (Hutchinson off the Lanczos basis)
    eval_train_samples: int = 512  # ablation and interpolation
    eval_test_samples: int = 1000
    alphas: int = 11
    interp_methods: tuple[str, ...] = INTERPOLATION_METHODS
    interp_start: str = "switch"  # "switch" | "cnn_end"
    interp_end: str = "efcn_end"  # "efcn_end" | "cnn_end" | "switch"
    interp_max_runs: int | None = None  # None: every finished eFCN
    template_count: int = 8

    def __post_init__(self) -> None:
        # every count and size in range, so a bad value is refused before any result is written
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"analysis setting {name}={value!r}; allowed: an integer >= {low}")
        if not self.sharpness_tol > 0:
            raise ValueError(f"analysis setting sharpness_tol={self.sharpness_tol!r}; allowed: a number > 0")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"workers={self.workers!r}; valid: an integer >= 1, or None (the spec's workers)")
        for name in ("interp_start", "interp_end"):
            if getattr(self, name) not in INTERPOLATION_ENDPOINTS:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid endpoints: {list(INTERPOLATION_ENDPOINTS)}")
        if self.interp_start == self.interp_end:
            raise ValueError(f"interpolation endpoints are both {self.interp_start!r}; choose two different ones")
        bad = [m for m in self.interp_methods if m not in INTERPOLATION_METHODS]
        if bad:
            raise ValueError(f"unknown interpolation methods {bad}; valid: {list(INTERPOLATION_METHODS)}")
        self.interp_methods = tuple(self.interp_methods)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def make_settings(raw: dict[str, Any], where: str = "analysis_settings") -> AnalysisSettings:
    """``AnalysisSettings(**raw)`` with an error naming unknown keys and the valid ones."""
    valid = [f.name for f in dataclasses.fields(AnalysisSettings)]
    bad = sorted(set(raw) - set(valid))
    if bad:
        raise ValueError(f"{where}: unknown analysis settings {bad}; valid: {valid}")
    return AnalysisSettings(**raw)


def settings_from_spec(exp_dir: str | Path) -> AnalysisSettings:
    """The experiment's own analysis settings (``analysis_settings`` in its spec.yaml), else the defaults.

    Reading them here keeps one source: ``archrelax run``, ``analyse`` and ``report`` all compute (and
    find in the cache) the same analyses for an experiment.
    """
    exp = ExperimentFolder(exp_dir)
    raw = (exp.read_spec() or {}).get("analysis_settings") or {}
    return make_settings(raw, where=str(exp.spec_path))
