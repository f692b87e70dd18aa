"""Read an experiment folder into plain data for the report (files only: no models, no torch).

Everything here is tolerant of a partial experiment: a missing file gives an empty value, and the
reasons are collected in ``Experiment.problems`` so the page can say what is missing instead of failing.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archrelax.utils import read_jsonl

KINDS = ("cnn", "fcn", "lcn", "efcn", "elcn", "hier")


@dataclass
class Run:
    """One run of the plan, merged from plan.json, summary.csv, status.json and metrics.jsonl."""

    id: str
    kind: str
    seed: int | None = None
    t_w: float | None = None  # switch time (epochs on the CNN's clock) for efcn/elcn/hier
    t_w2: float | None = None  # second switch (eLCN -> eFCN) for hier runs
    status: str = "pending"  # pending|running|done|failed|diverged (pending: planned, no run folder yet)
    error: str | None = None
    epoch: float | None = None  # last epoch reached (status.json)
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary.csv row (parsed)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records, in order
    path: Path | None = None

    @property
    def switch(self) -> float | None:
        """The time this run starts on the CNN's clock (its last switch), or None for from-scratch runs."""
        return self.t_w2 if self.kind == "hier" else self.t_w

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
    plan: dict[str, Any]
    runs: list[Run]
    analysis: dict[str, Any]  # analysis/<name>.json -> parsed JSON
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


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None


def _plan_runs(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(plan, dict):
        return {}
    runs = plan["runs"] if isinstance(plan.get("runs"), dict) else plan  # a {"runs": {...}} wrapper is accepted
    return {k: v for k, v in runs.items() if isinstance(v, dict)}




def load_experiment(path: str | Path) -> Experiment:
    """Read spec.yaml, plan.json, summary.csv, runs/*/ and analysis/*.json of an experiment folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"experiment folder {str(path)!r} does not exist (expected a folder with "
                                "spec.yaml, plan.json and runs/, as written by `archrelax run`)")
    problems: list[str] = []
    spec_file = path / "spec.yaml"
    spec_text = spec_file.read_text(encoding="utf-8") if spec_file.is_file() else None
    if spec_text is None:
        problems.append("spec.yaml is missing")
    plan = _read_json(path / "plan.json", problems) or {}
    if not plan:
        problems.append("plan.json is missing: runs are listed from runs/ only")
    entries = _plan_runs(plan)

    summary: dict[str, dict[str, Any]] = {}
    if (path / "summary.csv").is_file():
        with open(path / "summary.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                parsed = {k: _number(v or "") for k, v in row.items() if k}
                if parsed.get("id") is not None:
                    summary[str(parsed["id"])] = parsed
    else:
        problems.append("summary.csv is missing: finals are read from each run's metrics.jsonl")

    run_dirs = {p.name: p for p in sorted((path / "runs").glob("*")) if p.is_dir()}
    ids = list(entries) + [i for i in summary if i not in entries] + \
        [i for i in run_dirs if i not in entries and i not in summary]
    runs = []
    for rid in ids:
        row, entry = summary.get(rid, {}), entries.get(rid, {})
        kind = str(entry.get("kind") or row.get("kind") or "unknown")
        seed = entry.get("seed", row.get("seed", (entry.get("config") or {}).get("seed")))
        # plan.json is the source of the switch times (CNN's clock); summary.csv repeats them
        run = Run(id=rid, kind=kind, seed=seed, summary=row, t_w=_float(entry.get("t_w", row.get("t_w"))),
                  t_w2=_float(entry.get("t_w2", row.get("t_w2"))))
        if row.get("status"):
            run.status = str(row["status"])
        d = run_dirs.get(rid)
        if d is not None:
            run.path = d
            st = _read_json(d / "status.json", problems)
            if isinstance(st, dict):  # status.json is fresher than summary.csv
                run.status = str(st.get("status", run.status))
                run.error = st.get("error")
                run.epoch = _float(st.get("epoch"))
            if (d / "metrics.jsonl").is_file():
                run.metrics = read_jsonl(d / "metrics.jsonl")
        runs.append(run)

    analysis = {}
    for f in sorted((path / "analysis").glob("*.json")):
        value = _read_json(f, problems)
        if value is not None:
            analysis[f.stem] = value
    return Experiment(path=path, spec_text=spec_text, plan=plan, runs=runs, analysis=analysis, problems=problems)


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None
