"""An experiment folder: what ``archrelax run`` writes, and every reader's view of it.

```
EXPERIMENT/
  spec.yaml            the resolved experiment spec
  plan.json            the run graph, id -> Run (archrelax.store.plan), in order
  runs/<id>/           one run folder each (archrelax.store.run)
  summary.csv          one row per run (SUMMARY_COLUMNS), regenerated after every run
  analysis/<name>.json the analysis results (archrelax.store.results), + templates.npz
  report/index.html    the report, figures in report/fig/
```

Tolerance: the writers never leave a torn file (archrelax.store.atomic), so an unreadable spec, plan or
status is reported as an error naming the file (:class:`StoreError`), never read as empty or pending. The
views that must show a whole experiment whatever one file holds (``archrelax status``, summary.csv, the
report, the analyses) catch it per run and show it there ("corrupt", with the message).
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .atomic import atomic_write_text
from .errors import _ABSENT, SpecMismatchError, StoreError
from .plan import Run, plan_from_json, plan_to_json
from .results import RESULT_TYPES, AnalysisResult, read_result, write_result
from .run import RunFolder
from .view import read_run

__all__ = ["ExperimentFolder", "SUMMARY_COLUMNS", "SPEC_RUNTIME_KEYS", "spec_changes"]

SUMMARY_COLUMNS = (
    "id", "kind", "seed", "t_w", "t_w2", "status", "epochs",
    "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
    "best_train_loss", "best_train_acc", "best_test_loss", "best_test_acc",
    "final_offlocal_ratio", "wall_time", "error",
)
# Spec keys that say where and how the runs execute, or what is analysed afterwards, not what is trained:
# rerunning an experiment with other values of these is the same experiment (spec.yaml takes the new ones).
SPEC_RUNTIME_KEYS = ("executor", "workers", "lockstep", "slurm", "analyses", "analysis_settings")


def _num(x: Any) -> str:
    if x is None:
        return ""
    return f"{x:.6g}" if isinstance(x, float) else str(x)


class ExperimentFolder:
    """Every path of an experiment folder, and the one reader and writer of its files. Cheap; holds no files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"ExperimentFolder({str(self.root)!r})"

    spec_path = property(lambda self: self.root / "spec.yaml")
    plan_path = property(lambda self: self.root / "plan.json")
    summary_path = property(lambda self: self.root / "summary.csv")
    runs_dir = property(lambda self: self.root / "runs")
    analysis_dir = property(lambda self: self.root / "analysis")
    report_dir = property(lambda self: self.root / "report")

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    # ---- spec ------------------------------------------------------------------------------------------------
    def read_spec_text(self) -> str | None:
        try:
            return self.spec_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read_spec(self) -> dict[str, Any] | None:
        """spec.yaml as plain data (None when absent); :class:`StoreError` naming it when it is not a mapping."""
        text = self.read_spec_text()
        if text is None:
            return None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise StoreError(self.spec_path, f"{str(self.spec_path)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise StoreError(self.spec_path, f"{str(self.spec_path)!r} must hold a mapping of keys")
        return data

    def write_spec(self, spec: dict[str, Any], *, force: bool = False,
                   normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Write spec.yaml, refusing to replace a different experiment's spec.

        "Different": any key outside :data:`SPEC_RUNTIME_KEYS` whose value differs from the saved spec (both
        first passed through ``normalise``, e.g. parse-and-dump, so defaults and spellings compare equal). A
        folder with a plan.json but no spec.yaml counts as different. Raises :class:`SpecMismatchError`
        listing the dotted keys (old -> new) before anything is written; ``force=True`` replaces it.
        """
        if not force:
            old = self.read_spec()
            if old is None and self.plan_path.is_file():
                raise SpecMismatchError(self.root, [("spec.yaml", _ABSENT, "the new spec")])
            if old is not None:
                if normalise is not None:
                    try:
                        old = normalise(old)
                    except ValueError as e:
                        raise StoreError(self.spec_path, f"{str(self.spec_path)!r} cannot be read as a spec "
                                         f"by this version ({e}); use --force to replace it") from None
                changes = spec_changes(old, normalise(spec) if normalise is not None else spec)
                if changes:
                    raise SpecMismatchError(self.root, changes)
        text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
        atomic_write_text(self.spec_path, "# resolved experiment spec (archrelax run)\n" + text)

    # ---- plan ------------------------------------------------------------------------------------------------
    def read_plan(self) -> dict[str, Run]:
        """plan.json, in order. FileNotFoundError when absent; :class:`StoreError` naming it when unreadable."""
        try:
            text = self.plan_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{str(self.root)!r} is not an experiment folder: {str(self.plan_path)!r} "
                                    "does not exist (create it with `archrelax run SPEC --out DIR`)") from None
        fix = f"`archrelax run {self.root}` rewrites it from spec.yaml"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            what = "empty" if not text.strip() else f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
            raise StoreError(self.plan_path, f"{str(self.plan_path)!r} is {what}; {fix}") from None
        try:
            return plan_from_json(data, str(self.plan_path))
        except (ValueError, TypeError) as e:
            raise StoreError(self.plan_path, f"{e}; {fix}") from None

    def write_plan(self, plan: dict[str, Run]) -> None:
        # keys not sorted: the plan's order is the order of summary.csv, `archrelax status` and the report
        atomic_write_text(self.plan_path, json.dumps(plan_to_json(plan), indent=2) + "\n")

    @staticmethod
    def of_kind(plan: dict[str, Run], *kinds: str) -> list[Run]:
        return [r for r in plan.values() if r.kind in kinds]

    @staticmethod
    def cnn_of(plan: dict[str, Run], run: Run) -> Run | None:
        """The CNN at the root of a run's dependency chain (None for baselines)."""
        seen: set[str] = set()
        r: Run | None = run
        while r is not None and r.kind != "cnn" and r.id not in seen:
            seen.add(r.id)
            r = plan.get(r.depends_on) if r.depends_on else None
        return r if r is not None and r.kind == "cnn" else None

    # ---- snapshots -------------------------------------------------------------------------------------------
    def snapshot_for(self, run: Run) -> Path | None:
        """THE snapshot ``run`` starts from; None for runs from scratch, or while it cannot be known yet.

        Once the run has started, its config.json's ``init_from`` is the truth (the file the trainer loaded)
        while that file exists. Otherwise (not started, or the experiment folder moved) it is the parent's
        snapshot at the nearest whole step: the trainer snapshots at step round(t · steps_per_epoch) and names
        the file by that step's epoch, so the name is known once the parent has taken a step. The path may not
        exist yet (the parent is still training): callers check ``is_file()``.
        """
        if run.depends_on is None or run.snapshot_epoch is None:
            return None
        try:
            started = self.run(run.id).read_config() or {}
        except StoreError:
            started = {}
        init = started.get("init_from")
        if init:
            path = Path(init) if Path(init).is_absolute() else self.root / init
            if path.is_file():
                return path
        parent = self.run(run.depends_on)
        t = float(run.snapshot_epoch)
        if t == 0:
            return parent.snapshot_path(0)
        spe = parent.steps_per_epoch()
        if spe is None:
            return None
        return parent.snapshot_path(round(t * spe) / spe)  # the trainer's rounding (train.schedule.time_steps)

    # ---- summary.csv -----------------------------------------------------------------------------------------
    def summary_row(self, run: Run) -> dict[str, str]:
        """One row of summary.csv, from the run's view (:func:`~archrelax.store.view.read_run`: its state, final
        and best figures). An unreadable status.json gives status "corrupt", an unreadable metrics log empty
        figures; both put the message in the error column."""
        v = read_run(self.run(run.id), run)
        errors = dict.fromkeys([v.error or "", *v.problems])  # a corrupt status.json's message once
        return {
            "id": run.id, "kind": run.kind, "seed": str(run.seed), "t_w": _num(run.t_w), "t_w2": _num(run.t_w2),
            "status": v.status, "epochs": _num(v.epoch),
            **{f"final_{k}": _num(v.final(k)) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
            "best_train_loss": _num(v.best("train_loss", min)), "best_train_acc": _num(v.best("train_acc", max)),
            "best_test_loss": _num(v.best("test_loss", min)), "best_test_acc": _num(v.best("test_acc", max)),
            "final_offlocal_ratio": _num(v.final("offlocal_ratio")), "wall_time": _num(v.final("wall_time")),
            "error": " ".join(" ".join(errors).split()),
        }

    def write_summary(self, plan: dict[str, Run] | None = None) -> Path:
        """Regenerate summary.csv from every run folder (atomic; serialised by a lock on .summary.lock)."""
        plan = self.read_plan() if plan is None else plan
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        # read-then-write under one lock: two processes finishing runs at once cannot write stale tables
        fd = os.open(self.root / ".summary.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for run in plan.values():
                writer.writerow(self.summary_row(run))
            atomic_write_text(self.summary_path, buf.getvalue())
        finally:
            os.close(fd)
        return self.summary_path

    def read_summary(self) -> list[dict[str, str]]:
        """summary.csv rows as strings (empty cell: not applicable / not yet known)."""
        with open(self.summary_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    # ---- analysis results ------------------------------------------------------------------------------------
    def result_path(self, name: str) -> Path:
        if name not in RESULT_TYPES:
            raise ValueError(f"no analysis named {name!r}; known: {list(RESULT_TYPES)}")
        return self.analysis_dir / f"{name}.json"

    def read_result(self, name: str) -> AnalysisResult | None:
        """The typed analysis result (None when not computed yet; StoreError naming an unreadable file)."""
        return read_result(self.result_path(name), name)

    def write_result(self, result: AnalysisResult) -> Path:
        path = self.result_path(result.analysis)
        write_result(path, result)
        return path


def spec_changes(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = SPEC_RUNTIME_KEYS
                 ) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old, new)]`` for every key whose value differs (mappings are compared key by key;
    lists and scalars as wholes). Keys under ``ignore`` (top-level names) are left out."""
    skip = set(ignore)
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                key = f"{prefix}{k}"
                if not prefix and k in skip:
                    continue
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), key + ".")
        elif a != b:
            out.append((prefix.rstrip("."), a, b))

    walk(old, new, "")
    return out
