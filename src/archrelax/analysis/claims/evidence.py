"""What the claims read from an experiment folder, through the store: the plan, each run's state and
metrics, the analysis results. Files only (no torch, no model loaded), tolerant of a partial or damaged
folder: an unreadable file makes its run (or analysis) unavailable, with the store's message kept as the
reason.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archrelax.store import ExperimentFolder, Run, StoreError
from archrelax.store.results import RESULT_TYPES, AnalysisResult

__all__ = ["RunView", "Evidence", "load_evidence", "RELAXED", "finite"]

RELAXED = ("efcn", "elcn", "hier")
_CLASSES = {"mnist5k": 10, "cifar10": 10, "cifar100": 100}


def finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class RunView:
    """One planned run: its plan record, its state ("corrupt" when status.json is unreadable) and metrics."""

    run: Run
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # why the run's files could not be read

    id = property(lambda self: self.run.id)
    kind = property(lambda self: self.run.kind)
    seed = property(lambda self: self.run.seed)
    t_w = property(lambda self: self.run.t_w)
    t_w2 = property(lambda self: self.run.t_w2)

    @property
    def done(self) -> bool:
        return self.status == "done" and self.problem is None

    def final(self, key: str) -> float | None:
        """The last finite value of a metric (the run's end for a finished run)."""
        for r in reversed(self.rows):
            if (v := finite(r.get(key))) is not None:
                return v
        return None

    def first(self) -> dict[str, Any] | None:
        """The first evaluation, if it is the run's initial one (step 0): for a relaxed run, the switch."""
        return self.rows[0] if self.rows and self.rows[0].get("step") == 0 else None

    def at(self, global_epoch: float) -> dict[str, Any] | None:
        """The evaluation recorded at ``global_epoch`` (CNN's clock; both sides come from the same
        step / steps-per-epoch arithmetic, so a small tolerance suffices)."""
        for r in self.rows:
            t = finite(r.get("global_epoch", r.get("epoch")))
            if t is not None and abs(t - global_epoch) <= 1e-6 * max(1.0, abs(global_epoch)):
                return r
        return None


@dataclass
class Evidence:
    exp: ExperimentFolder
    plan: dict[str, Run]
    runs: dict[str, RunView]
    results: dict[str, AnalysisResult]
    problems: dict[str, str]  # analysis name -> why its file could not be read
    spec: dict[str, Any]

    def of_kind(self, *kinds: str, done: bool = True) -> list[RunView]:
        return [v for v in self.runs.values() if v.kind in kinds and (v.done or not done)]

    def planned(self, *kinds: str) -> list[RunView]:
        return self.of_kind(*kinds, done=False)

    def parent(self, v: RunView) -> RunView | None:
        return self.runs.get(v.run.depends_on) if v.run.depends_on else None

    def cnn_of(self, v: RunView) -> RunView | None:
        c = self.exp.cnn_of(self.plan, v.run)
        return None if c is None else self.runs.get(c.id)

    def snapshot_file(self, v: RunView) -> str | None:
        """The snapshot ``v`` started from, relative to the experiment (as the analyses record it)."""
        path = self.exp.snapshot_for(v.run)
        if path is None:
            return None
        root = self.exp.root
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

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
    exp = experiment if isinstance(experiment, ExperimentFolder) else ExperimentFolder(experiment)
    if not exp.root.is_dir():
        raise FileNotFoundError(f"experiment folder {str(exp.root)!r} does not exist (expected a folder with "
                                "spec.yaml, plan.json and runs/, as written by `archrelax run`)")
    plan = exp.read_plan()  # FileNotFoundError / StoreError name the file
    runs = {}
    for rid, run in plan.items():
        folder = exp.run(rid)
        view = RunView(run, "pending")
        try:
            view.status = folder.read_status().status
        except StoreError as e:
            view.status, view.problem = "corrupt", str(e)
        try:
            view.rows = folder.read_metrics()
        except StoreError as e:
            view.problem = view.problem or str(e)
        runs[rid] = view
    results, problems = {}, {}
    for name in RESULT_TYPES:
        try:
            res = exp.read_result(name)
        except StoreError as e:
            problems[name] = str(e)
            continue
        if res is not None:
            results[name] = res
    try:
        spec = exp.read_spec() or {}
    except StoreError:
        spec = {}
    return Evidence(exp, plan, runs, results, problems, spec)
