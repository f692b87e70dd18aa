"""An experiment folder: what ``archrelax run`` writes, and every reader's view of it.

```
EXPERIMENT/
  spec.yaml            the resolved experiment spec
  plan.json            the run graph, id -> Run (archrelax.store.plan), in order
  switch.json          the switch times chosen by rule for the plan's auto runs (archrelax.store.switch):
                       CNN run id -> rule -> {t_w, rule, value}, written once per (CNN, rule)
  runs/<id>/           one run folder each (archrelax.store.run)
  summary.csv          one row per run (SUMMARY_COLUMNS), regenerated after every run
  .lock                the experiment's lock: held while a plan is compared and written (ExperimentFolder.begin),
                       and while the report is written (one writer at a time)
  .sessions/           one lock file per `archrelax run` in progress, held for its whole life, naming it
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
import dataclasses
import fcntl
import io
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .._typed import yaml_problem
from .atomic import atomic_write_text
from .errors import _ABSENT, ExperimentBusyError, SpecMismatchError, StoreError
from .job import JobRecord
from .lock import RunLock, lock_holder
from .plan import Run, plan_digest, plan_from_json, plan_to_json
from .results import RESULT_TYPES, AnalysisResult, read_result, write_result
from .run import FINISHED, RunFolder, format_epoch
from .switch import SwitchError, choose
from .view import read_run

__all__ = ["ExperimentFolder", "SUMMARY_COLUMNS", "SPEC_RUNTIME_KEYS", "spec_changes"]

SUMMARY_COLUMNS = (
    "id", "kind", "seed", "t_w", "t_w2", "auto", "status", "epochs",
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
    switch_path = property(lambda self: self.root / "switch.json")
    summary_path = property(lambda self: self.root / "summary.csv")
    runs_dir = property(lambda self: self.root / "runs")
    analysis_dir = property(lambda self: self.root / "analysis")
    report_dir = property(lambda self: self.root / "report")
    lock_path = property(lambda self: self.root / ".lock")
    sessions_dir = property(lambda self: self.root / ".sessions")

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    # ---- who uses the folder: the experiment's lock and the sessions of `archrelax run` -------------------------
    def begin(self, plan: dict[str, Run], write: Callable[[], Any]) -> RunLock:
        """Start a session of ``archrelax run`` on this folder (a new one is created): under the experiment's lock
        (``.lock``, held for this call only), refuse ``plan`` when it differs from the saved plan while the folder is
        in use (another session, or a run of the saved plan held by a live process: :class:`ExperimentBusyError`
        naming each, before anything is written), then ``write()`` (spec, plan, summary) and register this session
        in ``.sessions/``. Returns the session's lock, held until released (or this process ends); the same plan
        again (a rerun, a second scheduler helping) is always accepted."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # every session starts under it: no plan changes between check and write
            if self._plan_changes(plan):
                sessions = self._sessions()
                who = {h.split(" (since")[0] for h in sessions}  # a session's own runs are not named again
                busy = [f"`archrelax run` {h}" for h in sessions] + [
                    f"run {rid} by {h}" for rid, h in self._held_runs() if h.split(" (since")[0] not in who]
                if busy:
                    raise ExperimentBusyError(self.root, busy)
            write()
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
            return _Session(self.sessions_dir / name).acquire()
        finally:
            os.close(fd)

    def sessions(self) -> list[str]:
        """``"pid N on host H (since T)"`` of each ``archrelax run`` in progress on this folder."""
        return [h for p in sorted(self.sessions_dir.glob("*.lock")) if (h := lock_holder(p)) is not None]

    def _sessions(self) -> list[str]:
        """:meth:`sessions`, removing the files of sessions whose process died (the experiment's lock held: no
        session is between creating its file and locking it)."""
        live = []
        for p in sorted(self.sessions_dir.glob("*.lock")):
            holder = lock_holder(p)
            if holder is None:
                p.unlink(missing_ok=True)
            else:
                live.append(holder)
        return live

    def _plan_changes(self, plan: dict[str, Run]) -> bool:
        if not self.plan_path.is_file():
            return True
        try:
            return plan_digest(self.read_plan(resolve=False)) != plan_digest(plan)
        except StoreError:
            return True

    def _held_runs(self) -> list[tuple[str, str]]:
        """``(run id, holder)`` of the runs in runs/ that a live process holds (a Slurm job, `archrelax train`)."""
        ids = sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir()) if self.runs_dir.is_dir() else []
        return [(rid, h) for rid in ids if (h := self.run(rid).holder()) is not None]

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
            raise StoreError(self.spec_path, f"{str(self.spec_path)!r} is not valid YAML: {yaml_problem(e, text)}") from None
        if not isinstance(data, dict):
            raise StoreError(self.spec_path, f"{str(self.spec_path)!r} must hold a mapping of keys")
        return data

    def write_spec(self, spec: dict[str, Any], *, force: bool = False,
                   normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   runtime: Iterable[str] = SPEC_RUNTIME_KEYS) -> None:
        """Write spec.yaml, refusing to replace a different experiment's spec.

        "Different": any key outside ``runtime`` (dotted keys that change no run: :data:`SPEC_RUNTIME_KEYS`, and
        the protocol adds the runtime training settings such as ``train.tensorboard``) whose value differs from
        the saved spec (both first passed through ``normalise``, e.g. parse-and-dump, so defaults and spellings
        compare equal). A
        folder with a plan.json but no spec.yaml counts as different. Raises :class:`SpecMismatchError`
        listing the dotted keys (old -> new) before anything is written; ``force=True`` replaces it.
        """
        if not force:
            self.check_spec(spec, normalise=normalise, runtime=runtime)
        text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
        atomic_write_text(self.spec_path, "# resolved experiment spec (archrelax run)\n" + text)

    def check_spec(self, spec: dict[str, Any], *,
                   normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   runtime: Iterable[str] = SPEC_RUNTIME_KEYS) -> None:
        """:meth:`write_spec`'s refusal without writing: :class:`SpecMismatchError` when the folder holds a
        different spec (a plan.json without spec.yaml counts as one), :class:`StoreError` when its spec.yaml cannot
        be read as a spec; nothing when the folder holds none or the same one."""
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
            changes = spec_changes(old, normalise(spec) if normalise is not None else spec, runtime)
            if changes:
                raise SpecMismatchError(self.root, changes)

    # ---- plan ------------------------------------------------------------------------------------------------
    def read_plan(self, *, resolve: bool = True) -> dict[str, Run]:
        """plan.json, in order, its auto runs with the switch times recorded in switch.json (``resolve``; those
        not chosen yet as planned: t_w None). FileNotFoundError when absent; :class:`StoreError` naming it when
        unreadable."""
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
            plan = plan_from_json(data, str(self.plan_path))
        except (ValueError, TypeError) as e:
            raise StoreError(self.plan_path, f"{e}; {fix}") from None
        return self.with_switches(plan) if resolve else plan

    def with_switches(self, plan: dict[str, Run]) -> dict[str, Run]:
        """``plan`` with its auto runs' switch times as recorded in switch.json (those not chosen yet unchanged)."""
        if not any(r.auto for r in plan.values()):
            return plan
        chosen = self.read_switches()
        return {rid: self._with_choice(r, chosen) for rid, r in plan.items()}

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

    # ---- automatic switch times --------------------------------------------------------------------------------
    def read_switches(self) -> dict[str, dict[str, dict[str, Any]]]:
        """switch.json: CNN run id -> rule -> ``{t_w, rule, value}`` ({} when no time was chosen yet)."""
        try:
            text = self.switch_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            ok = isinstance(data, dict) and all(isinstance(v, dict) and all(
                isinstance(c, dict) and isinstance(c.get("t_w"), (int, float)) for c in v.values())
                for v in data.values())
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise StoreError(self.switch_path, f"{str(self.switch_path)!r} is not a record of chosen switch times "
                             "(CNN run id -> rule -> {t_w, rule, value}); delete it and rerun `archrelax run` to "
                             "choose again from the CNNs' metrics")
        return data

    def _with_choice(self, run: Run, chosen: dict[str, dict[str, dict[str, Any]]]) -> Run:
        if not run.auto or run.depends_on is None:
            return run
        c = chosen.get(run.depends_on, {}).get(run.auto)
        if c is None:
            return run
        t = float(c["t_w"])
        return dataclasses.replace(run, t_w=t, snapshot_epoch=t,
                                   snapshot=f"runs/{run.depends_on}/snapshots/epoch_{format_epoch(t)}.pt")

    def resolve_auto(self, run: Run) -> Run:
        """``run`` (an auto run) with its switch time: the one recorded in switch.json, else the rule's choice from
        its CNN's metrics rows, recorded first (atomically, under a lock: every scheduler of this folder makes the
        same choice, once). Needs the CNN finished; :class:`SwitchError` naming the run otherwise, or when the rule
        cannot decide from the rows."""
        if not run.auto or run.depends_on is None:
            return run
        fd = os.open(self.root / ".switch.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chosen = self.read_switches()
            if run.auto not in chosen.get(run.depends_on, {}):
                cnn = self.run(run.depends_on)
                st = cnn.read_status()
                if st.status not in FINISHED:
                    raise SwitchError(f"run {run.id}: its switch time (rule {run.auto!r}) is chosen from the whole "
                                      f"training of {run.depends_on}, which is {st.status!r}")
                choice = choose(run.auto, cnn.read_metrics(), where=f"run {run.depends_on}")
                chosen.setdefault(run.depends_on, {})[run.auto] = choice.to_json()
                atomic_write_text(self.switch_path, json.dumps(chosen, indent=2) + "\n")
        finally:
            os.close(fd)
        return self._with_choice(run, chosen)

    # ---- snapshots -------------------------------------------------------------------------------------------
    def snapshot_for(self, run: Run) -> Path | None:
        """THE snapshot ``run`` starts from; None for runs from scratch, or while it cannot be known yet.

        Once the run has started, its config.json's ``init_from`` is the truth (the file the trainer loaded)
        while that file exists: a path relative to the run's folder (as the protocol writes it), or an absolute
        one (written by older versions), read as the same file in this folder, never outside it (a copy of an
        experiment must not train or analyse from the original's files). Otherwise (not started, or the file
        is gone) it is the parent's snapshot at the nearest whole step: the trainer snapshots at step
        round(t · steps_per_epoch) and names the file by that step's epoch, so the name is known once the
        parent has taken a step. The path may not exist yet (the parent is still training): callers check
        ``is_file()``.
        """
        if run.depends_on is None or run.snapshot_epoch is None:
            return None
        folder = self.run(run.id)
        try:
            started = folder.read_config() or {}
        except StoreError:
            started = {}
        init = started.get("init_from")
        if init:
            path = self.inside(Path(init)) if Path(init).is_absolute() else Path(os.path.normpath(folder.path / init))
            if path is not None and path.is_file():
                return path
        parent = self.run(run.depends_on)
        t = float(run.snapshot_epoch)
        if t == 0:
            return parent.snapshot_path(0)
        spe = parent.steps_per_epoch()
        if spe is None:
            return None
        return parent.snapshot_path(round(t * spe) / spe)  # the trainer's rounding (train.schedule.time_steps)

    def inside(self, path: Path) -> Path | None:
        """An absolute path recorded by an older version, as the same file of this folder: itself when it is in
        this folder, else its ``runs/<id>/...`` tail here (the folder was copied or moved); None otherwise."""
        if path.is_relative_to(self.root):
            return path
        parts = path.parts
        at = [i for i, p in enumerate(parts[:-2]) if p == self.runs_dir.name]
        return self.root.joinpath(*parts[at[-1]:]) if at else None

    # ---- job records ----------------------------------------------------------------------------------------
    def write_job(self, run_id: str, record: JobRecord) -> None:
        """``runs/<id>/job.json``, its submitit folder relative to this folder when inside it (a moved experiment
        still finds its job files)."""
        folder = Path(record.folder) if record.folder else None
        if folder is not None and folder.is_absolute() and folder.is_relative_to(self.root):
            record = dataclasses.replace(record, folder=str(folder.relative_to(self.root)))
        self.run(run_id).write_job(record)

    def read_job(self, run_id: str) -> JobRecord | None:
        """The run's job record (None when none was written), its submitit folder as an absolute path."""
        record = self.run(run_id).read_job()
        if record is not None and record.folder and not Path(record.folder).is_absolute():
            record = dataclasses.replace(record, folder=str(self.root / record.folder))
        return record

    # ---- summary.csv -----------------------------------------------------------------------------------------
    def summary_row(self, run: Run) -> dict[str, str]:
        """One row of summary.csv, from the run's view (:func:`~archrelax.store.view.read_run`: its state, final
        and best figures). An unreadable status.json gives status "corrupt", an unreadable metrics log empty
        figures; both put the message in the error column."""
        v = read_run(self.run(run.id), run)
        errors = dict.fromkeys([v.error or "", *v.problems])  # a corrupt status.json's message once
        return {
            "id": run.id, "kind": run.kind, "seed": str(run.seed), "t_w": _num(run.t_w), "t_w2": _num(run.t_w2),
            "auto": run.auto or "", "status": v.status, "epochs": _num(v.epoch),
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


class _Session(RunLock):
    """The lock file of one ``archrelax run`` session: removed when released (a killed session's file is removed
    by the next :meth:`ExperimentFolder.begin`)."""

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)  # before unlocking: a reader never finds the file free and then gone
        super().release()


def spec_changes(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = SPEC_RUNTIME_KEYS
                 ) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old, new)]`` for every key whose value differs (mappings are compared key by key;
    lists and scalars as wholes). Keys in ``ignore`` (dotted: ``slurm``, ``train.tensorboard``) and everything
    under them are left out."""
    skip = set(ignore)
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                key = f"{prefix}{k}"
                if key in skip:
                    continue
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), key + ".")
        elif a != b:
            out.append((prefix.rstrip("."), a, b))

    walk(old, new, "")
    return out
