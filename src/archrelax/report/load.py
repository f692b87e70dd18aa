"""The report's view of an experiment folder, read through the store (files only: no models, no torch).

Tolerant of a partial experiment: a missing file gives an empty value, an unreadable one (which the store
names) is skipped; either way the reason goes to ``Experiment.problems`` so the page says what is missing
instead of failing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archrelax.store import ExperimentFolder, StoreError
from archrelax.store.plan import KINDS  # noqa: F401 (the kinds of runs, re-exported for the report)
from archrelax.store.plan import Run as PlanRun
from archrelax.store.results import RESULT_TYPES, AnalysisResult


@dataclass
class Run:
    """One run of the plan, merged from plan.json, summary.csv, status.json and metrics.jsonl."""

    id: str
    kind: str
    seed: int | None = None
    t_w: float | None = None  # switch time (epochs on the CNN's clock) of runs from a CNN snapshot
    t_w2: float | None = None  # the run's own switch from another relaxed run (hier, path steps)
    status: str = "pending"  # a state of archrelax.store.STATES, or "corrupt" (unreadable status.json)
    error: str | None = None
    epoch: float | None = None  # last epoch reached (status.json)
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary.csv row (parsed)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records, in order
    path: Path | None = None

    @property
    def switch(self) -> float | None:
        """The time this run starts on the CNN's clock (its last switch), or None for from-scratch runs."""
        return self.t_w2 if self.t_w2 is not None else self.t_w

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(global epochs, values) of one metric, skipping records without it."""
        offset = self._clock_offset()
        xs, ys = [], []
        for m in self.metrics:
            v = m.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                t = m.get("global_epoch", None)
                xs.append(float(t) if t is not None else float(m.get("epoch", 0.0)) + offset)
                ys.append(float(v))
        return xs, ys

    def final(self, key: str) -> float | None:
        """Final value of a metric: the summary's ``final_<key>`` column, else the last metrics record."""
        v = self.summary.get(f"final_{key}")
        if isinstance(v, float) and math.isfinite(v):
            return v
        _, ys = self.series(key)
        return ys[-1] if ys else None

    def _clock_offset(self) -> float:
        # A relaxed run may log epochs on its own clock (starting at 0) or on the CNN's (starting at t_w).
        # Records carrying ``global_epoch`` are used as they are; otherwise a run whose first epoch lies
        # before its switch time is on its own clock and is shifted by the switch time.
        s = self.switch
        if not s or not self.metrics or any("global_epoch" in m for m in self.metrics):
            return 0.0
        first = float(self.metrics[0].get("epoch", 0.0))
        return float(s) if first < float(s) - 1e-9 else 0.0


@dataclass
class Experiment:
    path: Path
    spec_text: str | None
    plan: dict[str, PlanRun]
    runs: list[Run]
    analysis: dict[str, AnalysisResult]  # analysis/<name>.json, typed (archrelax.store.results)
    problems: list[str]  # files that were missing or unreadable, in words

    def of_kind(self, kind: str, *, done_only: bool = False) -> list[Run]:
        return [r for r in self.runs if r.kind == kind and (not done_only or r.status == "done")]


def _number(text: str) -> Any:
    """CSV cell -> int/float/None/str."""
    text = text.strip()
    if text == "" or text.lower() in ("none", "null", "nan"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_experiment(path: str | Path) -> Experiment:
    """Read spec.yaml, plan.json, summary.csv, runs/*/ and analysis/*.json of an experiment folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"experiment folder {str(path)!r} does not exist (expected a folder with "
                                "spec.yaml, plan.json and runs/, as written by `archrelax run`)")
    exp = ExperimentFolder(path)
    problems: list[str] = []
    spec_text = exp.read_spec_text()
    if spec_text is None:
        problems.append("spec.yaml is missing")
    plan: dict[str, PlanRun] = {}
    try:
        plan = exp.read_plan()
    except FileNotFoundError:
        problems.append("plan.json is missing: runs are listed from runs/ only")
    except StoreError as e:
        problems.append(f"{e} (runs are listed from runs/ only)")

    summary: dict[str, dict[str, Any]] = {}
    if exp.summary_path.is_file():
        for row in exp.read_summary():
            parsed = {k: _number(v or "") for k, v in row.items() if k}
            if parsed.get("id") is not None:
                summary[str(parsed["id"])] = parsed
    else:
        problems.append("summary.csv is missing: finals are read from each run's metrics.jsonl")

    run_dirs = {p.name for p in sorted(exp.runs_dir.glob("*")) if p.is_dir()}
    ids = list(plan) + [i for i in summary if i not in plan] + [i for i in sorted(run_dirs) if i not in plan
                                                                  and i not in summary]
    runs = []
    for rid in ids:
        row, entry = summary.get(rid, {}), plan.get(rid)
        # plan.json is the source of kind, seed and the switch times (CNN's clock); summary.csv repeats them
        src = vars(entry) if entry is not None else row
        run = Run(id=rid, kind=str(src.get("kind") or "unknown"), seed=src.get("seed"), summary=row,
                  t_w=_float(src.get("t_w")), t_w2=_float(src.get("t_w2")))
        if row.get("status"):
            run.status = str(row["status"])
        if rid in run_dirs:
            folder = exp.run(rid)
            run.path = folder.path
            try:  # status.json is fresher than summary.csv
                st = folder.read_status()
                run.status, run.error, run.epoch = st.status, st.error, st.epoch
            except StoreError as e:
                run.status, run.error = "corrupt", str(e)
                problems.append(str(e))
            try:
                run.metrics = folder.read_metrics()
            except StoreError as e:
                problems.append(str(e))
        runs.append(run)

    analysis: dict[str, AnalysisResult] = {}
    for name in RESULT_TYPES:
        try:
            res = exp.read_result(name)
        except StoreError as e:
            problems.append(f"analysis/{name}.json: unreadable ({e})")
            continue
        if res is not None:
            analysis[name] = res
    return Experiment(path=path, spec_text=spec_text, plan=plan, runs=runs, analysis=analysis, problems=problems)


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None
