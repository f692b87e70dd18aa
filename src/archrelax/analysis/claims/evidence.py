"""What the claims read from an experiment folder: the store's :class:`~archrelax.store.ExperimentView` (the plan,
each run's kind, state and final figures, the analysis results), with the two facts only the claims ask for.
Files only (no torch, no model loaded), tolerant of a partial or damaged folder: an unreadable file makes its
run (or analysis) unavailable, with the store's message kept as the reason.
"""
from __future__ import annotations

import re
from pathlib import Path

from archrelax.store import ExperimentFolder, ExperimentView, RunView
from archrelax.store.plan import PAPER_KINDS
from archrelax.store.view import finite

__all__ = ["RunView", "Evidence", "load_evidence", "PAPER_KINDS", "finite"]

_CLASSES = {"mnist5k": 10, "cifar10": 10, "cifar100": 100}


class Evidence(ExperimentView):
    """The experiment view, plus the seeds of the plan and the number of classes. Its runs by kind are the runs of
    *fixed* switch times (and the CNNs, baselines): those of claims 1-15, which are about the paper's protocol; the
    runs whose switch time a rule chose (``Run.auto``) are claim 16's, through :meth:`auto_runs`."""

    def of_kind(self, *kinds: str) -> list[RunView]:
        return [v for v in super().of_kind(*kinds) if not v.auto]

    def done_runs(self, *kinds: str) -> list[RunView]:
        return [v for v in super().done_runs(*kinds) if not v.auto]

    def auto_runs(self, *kinds: str) -> list[RunView]:
        """The runs of these kinds (every kind when none is given) whose switch time a rule chooses, in plan order,
        whatever their state."""
        return [v for v in self.runs if v.auto and (not kinds or v.kind in kinds)]

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.plan.values()})

    def num_classes(self) -> int | None:
        """From the memory analysis's model record (the trainer's resolved kwargs), else from the data name."""
        mem = self.results.get("memory")
        n = (getattr(mem, "model_kwargs", None) or {}).get("num_classes") if mem is not None else None
        if isinstance(n, int) and n > 0:
            return n
        data = str(self.spec.get("data") or "mnist5k")
        if data in _CLASSES:
            return _CLASSES[data]
        m = re.fullmatch(r"synthetic(?::[^:]+)?(?::(\d+))?(?::.*)?", data)
        if m:
            return int(m.group(1)) if m.group(1) else 10
        return None


def load_evidence(experiment: str | Path | ExperimentFolder) -> Evidence:
    """Read an experiment folder for the claims. FileNotFoundError when it is not an experiment folder
    (no plan.json); any other damage is kept per run / per analysis."""
    return Evidence.open(experiment)  # plan.json required: FileNotFoundError / StoreError name the file
