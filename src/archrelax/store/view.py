"""The read-only view of an experiment folder that its readers share: the report, the claims, the analyses'
context and summary.csv.

One definition each of what a run is to a reader:

- its **kind**: its plan record's (one of :data:`~archrelax.store.plan.KINDS`; the groups of kinds are
  defined beside them);
- its **state**: status.json's word (:data:`~archrelax.store.run.STATES`), ``"corrupt"`` when the file cannot
  be read; :attr:`RunView.live_status` is the state as ``archrelax status`` shows it (a ``running`` run whose lock
  is free is ``interrupted``);
- its **final figures**: what its last evaluation recorded (the last row of metrics.jsonl; the trainer always
  evaluates at a run's last step, so for a finished run it is the run's end), None where that row lacks the
  metric or holds a non-finite value (a diverged run's loss). summary.csv is derived from this view and never
  read back by it.

Tolerant of a partial or damaged folder: an unreadable status.json or metrics log is kept as the run's
``problems`` (the store's message, naming the file), an unreadable analysis result as ``result_problems``;
nothing here raises for them. Files only, no torch.

    view = ExperimentView.open("experiments/demo")
    [v.final("test_acc") for v in view.done_runs("efcn")]
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import StoreError
from .plan import Run
from .results import RESULT_TYPES, AnalysisResult
from .run import RunFolder

if TYPE_CHECKING:  # experiment.py writes summary.csv from read_run below
    from .experiment import ExperimentFolder

__all__ = ["RunView", "ExperimentView", "read_run", "finite", "WENT_WRONG"]

# the states in which a run went wrong (as opposed to not finished yet): it stopped with an error, its loss became
# NaN/inf, its checkpoint no longer matches its digest, or its status.json cannot be read. `archrelax status` exits 1
# on them and the claims name such runs as what they are
WENT_WRONG = ("failed", "diverged", "damaged", "corrupt")


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class RunView:
    """One run of the plan as its files show it (see the module docstring for kind, state and finals)."""

    run: Run  # the plan record
    status: str  # a state of STATES, or "corrupt" (status.json unreadable)
    error: str | None = None  # status.json's error; for a corrupt status.json, the store's message
    epoch: float | None = None  # the run's own epochs reached (status.json; a pending run's last row)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows, in order
    problems: tuple[str, ...] = ()  # messages of the run's unreadable files
    path: Path | None = None  # the run folder, when it exists

    id = property(lambda self: self.run.id)
    kind = property(lambda self: self.run.kind)
    seed = property(lambda self: self.run.seed)
    t_w = property(lambda self: self.run.t_w)
    t_w2 = property(lambda self: self.run.t_w2)
    switch = property(lambda self: self.run.switch)
    auto = property(lambda self: self.run.auto)  # the switch rule that chose t_w (None: a fixed t_w)

    @property
    def problem(self) -> str | None:
        """Why the run's files could not be read (the first unreadable file), None when they could."""
        return self.problems[0] if self.problems else None

    @property
    def done(self) -> bool:
        """Trained to its end, with readable files: the runs whose figures count."""
        return self.status == "done" and not self.problems

    @property
    def live_status(self) -> str:
        """The state as ``archrelax status`` shows it: a ``running`` run whose lock is free is ``interrupted``
        (its process died without a word)."""
        if self.status != "running" or self.path is None:
            return self.status
        return RunFolder(self.path).live_state()

    def final(self, key: str) -> float | None:
        """The metric at the run's last evaluation (the last metrics row); None when that row does not hold
        it as a finite number."""
        return finite(self.metrics[-1].get(key)) if self.metrics else None

    def best(self, key: str, pick: Callable[[Iterable[float]], float] = min) -> float | None:
        """``pick`` (min or max) of the finite values of a metric over the run's evaluations."""
        vals = [x for r in self.metrics if (x := finite(r.get(key))) is not None]
        return pick(vals) if vals else None

    def first(self) -> dict[str, Any] | None:
        """The first evaluation, if it is the run's initial one (step 0): for a relaxed run, the switch."""
        return self.metrics[0] if self.metrics and self.metrics[0].get("step") == 0 else None

    def at(self, global_epoch: float) -> dict[str, Any] | None:
        """The evaluation recorded at ``global_epoch`` (CNN's clock; both sides come from the same
        step / steps-per-epoch arithmetic, so a small tolerance suffices)."""
        for r in self.metrics:
            t = finite(r.get("global_epoch", r.get("epoch")))
            if t is not None and abs(t - global_epoch) <= 1e-6 * max(1.0, abs(global_epoch)):
                return r
        return None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs on the CNN's clock, values) of one metric, skipping evaluations without a finite value."""
        offset = self._clock_offset()
        xs, ys = [], []
        for m in self.metrics:
            v = finite(m.get(key))
            if v is not None:
                t = m.get("global_epoch", None)
                xs.append(float(t) if t is not None else float(m.get("epoch", 0.0)) + offset)
                ys.append(v)
        return xs, ys

    def _clock_offset(self) -> float:
        # Rows carrying ``global_epoch`` are on the CNN's clock already. A log without it (an older trainer's)
        # is on the run's own clock when its first epoch lies before the run's switch time: shifted by it.
        s = self.switch
        if not s or not self.metrics or any("global_epoch" in m for m in self.metrics):
            return 0.0
        first = float(self.metrics[0].get("epoch", 0.0))
        return float(s) if first < float(s) - 1e-9 else 0.0


def read_run(folder: RunFolder, run: Run) -> RunView:
    """The view of one run folder (which need not exist: a run never started is ``pending``)."""
    problems = []
    try:
        st = folder.read_status()
        status, error, epoch = st.status, st.error, st.epoch
    except StoreError as e:
        status, error, epoch = "corrupt", str(e), None
        problems.append(str(e))
    try:
        rows = folder.read_metrics()
    except StoreError as e:
        rows = []
        problems.append(str(e))
    if rows and (epoch is None or status == "pending"):
        epoch = rows[-1].get("epoch")
    return RunView(run, status, error, epoch, rows, tuple(problems), folder.path if folder.path.is_dir() else None)


class ExperimentView:
    """Every run of an experiment folder, in plan order, with the analysis results and the spec (read-only).

    ``require_plan`` (default): a folder without a readable plan.json raises as ``read_plan`` does; with False
    (the report, which draws any folder) the runs are listed from ``runs/`` instead, of kind ``"unknown"``,
    and ``problems`` says why.
    """

    def __init__(self, exp: ExperimentFolder, *, require_plan: bool = True):
        self.exp = exp
        self.problems: list[str] = []  # what could not be read, in words (the report lists them)
        try:
            self.plan: dict[str, Run] = exp.read_plan()
        except (FileNotFoundError, StoreError) as e:
            if require_plan:
                raise
            self.problems.append("plan.json is missing: runs are listed from runs/ only"
                                 if isinstance(e, FileNotFoundError) else f"{e} (runs are listed from runs/ only)")
            self.plan = {}
        planned = list(self.plan.values()) or [self._unplanned(p) for p in sorted(exp.runs_dir.glob("*"))
                                                if p.is_dir()]
        self.runs: list[RunView] = [read_run(exp.run(r.id), r) for r in planned]
        self._by_id = {v.id: v for v in self.runs}
        self.problems += [p for v in self.runs for p in v.problems]

    @classmethod
    def open(cls, experiment: str | os.PathLike | ExperimentFolder, *, require_plan: bool = True
             ) -> "ExperimentView":
        """The view of a folder; FileNotFoundError naming it when it is not a folder."""
        from .experiment import ExperimentFolder

        exp = experiment if isinstance(experiment, ExperimentFolder) else ExperimentFolder(experiment)
        if not exp.root.is_dir():
            raise FileNotFoundError(f"experiment folder {str(exp.root)!r} does not exist (expected a folder with "
                                    "spec.yaml, plan.json and runs/, as written by `archrelax run`)")
        return cls(exp, require_plan=require_plan)

    def _unplanned(self, path: Path) -> Run:
        """A run folder plan.json does not list: its id, its config.json, kind unknown."""
        try:
            config = self.exp.run(path.name).read_config() or {}
        except StoreError:
            config = {}
        return Run(id=path.name, kind="unknown", seed=config.get("seed"), config=config)

    @property
    def path(self) -> Path:
        """The experiment folder (resolved)."""
        return self.exp.root

    # ---- runs ----------------------------------------------------------------------------------------------
    def run(self, run_id: str | None) -> RunView | None:
        return self._by_id.get(run_id) if run_id is not None else None

    def of_kind(self, *kinds: str) -> list[RunView]:
        """Every run of these kinds, in plan order, whatever its state."""
        return [v for v in self.runs if v.kind in kinds]

    def done_runs(self, *kinds: str) -> list[RunView]:
        """The runs of these kinds that are done (:attr:`RunView.done`), in plan order."""
        return [v for v in self.runs if v.kind in kinds and v.done]

    def parent(self, v: RunView) -> RunView | None:
        return self.run(v.run.depends_on)

    def cnn_of(self, v: RunView) -> RunView | None:
        """The CNN at the root of a run's dependency chain (None for baselines)."""
        c = self.exp.cnn_of(self.plan, v.run)
        return None if c is None else self.run(c.id)

    def snapshot_file(self, v: RunView) -> str | None:
        """The snapshot ``v`` started from, relative to the experiment (as the analyses record it)."""
        path = self.exp.snapshot_for(v.run)
        if path is None:
            return None
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)

    # ---- analysis results and spec (read when first asked for) -------------------------------------------------
    @functools.cached_property
    def _results(self) -> tuple[dict[str, AnalysisResult], dict[str, str]]:
        results, problems = {}, {}
        for name in RESULT_TYPES:
            try:
                res = self.exp.read_result(name)
            except StoreError as e:
                problems[name] = str(e)
                continue
            if res is not None:
                results[name] = res
        return results, problems

    @property
    def results(self) -> dict[str, AnalysisResult]:
        """analysis/<name>.json of every analysis computed so far, typed (archrelax.store.results)."""
        return self._results[0]

    @property
    def result_problems(self) -> dict[str, str]:
        """Analysis name -> why its file could not be read."""
        return self._results[1]

    @functools.cached_property
    def spec_text(self) -> str | None:
        return self.exp.read_spec_text()

    @functools.cached_property
    def spec(self) -> dict[str, Any]:
        """spec.yaml as plain data ({} when absent or unreadable)."""
        try:
            return self.exp.read_spec() or {}
        except StoreError:
            return {}
