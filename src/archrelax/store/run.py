"""A run folder: what ``archrelax train`` writes, and every reader's view of it.

```
RUN/
  config.json          the resolved TrainConfig (plain data)
  status.json          Status below: the one vocabulary of states, written only by RunFolder.write_status
  metrics.jsonl        one JSON object per evaluation (reading policy: archrelax.store.metrics)
  checkpoints/last.pt  resume point
  snapshots/epoch_<t>.pt  requested snapshots, t = format_epoch(step / steps_per_epoch)
  final.pt             final weights
  error.log            traceback of the failure status.json records (removed by a status that records none)
  .lock                flock held by the process training the run (archrelax.store.lock)
  job.json             the batch job last submitted for the run (archrelax.store.job; Slurm executor only)
```
"""
from __future__ import annotations

import json
import os
import re
import socket
import typing
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .atomic import atomic_write_json, atomic_write_text
from .errors import DamagedCheckpointError, StoreError
from .job import JobRecord
from .lock import RunLock, lock_holder
from .metrics import append_metrics, read_metrics, truncate_metrics

__all__ = ["State", "STATES", "FINISHED", "ENDED", "STOP_REASONS", "Status", "RunFolder", "format_epoch", "parse_epoch",
           "failure_state"]

State = Literal["pending", "running", "interrupted", "done", "failed", "diverged", "damaged"]
STATES: tuple[str, ...] = typing.get_args(State)
"""pending: never trained (no status.json); running: a process is training it (or died without a word:
shown as interrupted when its lock is free); interrupted: stopped by a signal, resumes from its checkpoint;
done: trained to its end (final.pt written); failed: raised an error (retried by the next ``archrelax run``);
diverged: the loss became NaN/inf (kept as it is, like done); damaged: its checkpoint no longer matches its
content digest (a disk or copy error), so it cannot resume from it: ``archrelax train --restart intact|scratch``
restarts it, and the next ``archrelax run`` restarts it from its latest intact snapshot."""
FINISHED: tuple[str, ...] = ("done", "diverged")  # never trained again
ENDED: tuple[str, ...] = FINISHED + ("failed", "damaged")  # the last word of the process that trained it: it
# goes no further until a rerun (a scheduler waiting for a snapshot of such a run waits no more)
STOP_REASONS = ("epochs", "zero_loss", "max_epochs")  # why a done run stopped
_FAILURES = ("failed", "damaged")  # the states whose error.log (a traceback) stays beside them


def failure_state(e: BaseException) -> State:
    """The state a run stopped by ``e`` is left in: ``interrupted`` for a KeyboardInterrupt that bypassed the
    signal handling (another thread's run: unfinished, not broken; resumable from its last checkpoint),
    ``damaged`` when its own checkpoint is (:class:`DamagedCheckpointError`), else ``failed``."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return "damaged" if isinstance(e, DamagedCheckpointError) else "failed"


def format_epoch(t: float) -> str:
    """Stable text for an epoch time, used in file names: 0, 0.5, 2, 13, 0.125."""
    t = float(t)
    if t == int(t):
        return str(int(t))
    return f"{t:.6g}"


_SNAPSHOT = re.compile(r"epoch_(.+)\.pt")


def parse_epoch(name: str) -> float | None:
    """The epoch of a snapshot file name ``epoch_<t>.pt`` (None for any other name)."""
    m = _SNAPSHOT.fullmatch(name)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Status:
    """status.json. ``epoch``: the run's own epochs at the write; ``global_epoch``: on the CNN's clock (the
    epoch plus the one inherited through ``init_from``); ``n_metrics``: the rows metrics.jsonl held at the write
    (None in files written before it was recorded); ``pid``/``host``: the writer."""

    status: State = "pending"
    error: str | None = None
    stop_reason: str | None = None  # one of STOP_REASONS once done, else None
    epoch: float = 0.0
    global_epoch: float | None = None
    step: int | None = None
    n_metrics: int | None = None
    updated: str | None = None  # ISO time of the write (UTC)
    pid: int | None = None
    host: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "status.json") -> "Status":
        """Typed from plain data; unknown keys (a newer writer's) are ignored, a bad state word is an error."""
        if not isinstance(data, dict):
            raise StoreError(where, f"{where!r} must hold a JSON object, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("status") not in STATES:
            raise StoreError(where, f"{where!r}: status {kw.get('status')!r} is not a state; valid: {list(STATES)}")
        kw["epoch"] = float(kw.get("epoch") or 0.0)
        return cls(**kw)


class RunFolder:
    """Every path of one run folder, and the one reader and writer of its files. Holds no open files."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- paths -----------------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.json")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoints" / "last.pt")
    snapshots_dir = property(lambda self: self.path / "snapshots")
    final_path = property(lambda self: self.path / "final.pt")
    error_log_path = property(lambda self: self.path / "error.log")
    lock_path = property(lambda self: self.path / ".lock")
    job_path = property(lambda self: self.path / "job.json")

    def snapshot_path(self, epoch: float) -> Path:
        """``snapshots/epoch_<format_epoch(epoch)>.pt`` (the trainer passes step / steps_per_epoch)."""
        return self.snapshots_dir / f"epoch_{format_epoch(epoch)}.pt"

    def snapshots(self) -> list[tuple[float, Path]]:
        """The snapshot files present, as (epoch, path) by increasing epoch."""
        found = [(parse_epoch(p.name), p) for p in self.snapshots_dir.glob("epoch_*.pt")]
        return sorted((t, p) for t, p in found if t is not None)

    # ---- config ----------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """config.json as plain data (None when the run was never started)."""
        return _read_json(self.config_path, "it is rewritten by the next `archrelax train`/`run` of this run "
                          "when the run has no training state; otherwise delete the run folder")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, config)

    # ---- status: the single writer -----------------------------------------------------------------------
    def read_status(self) -> Status:
        """The recorded status; ``Status()`` (pending) when there is no status.json. A corrupt file raises
        :class:`StoreError` naming it (never read as pending)."""
        data = _read_json(self.status_path, "delete it and run again: the run resumes from its checkpoint")
        return Status() if data is None else Status.from_json(data, str(self.status_path))

    def write_status(self, status: State, *, error: str | None = None, stop_reason: str | None = None,
                     epoch: float | None = None, global_epoch: float | None = None, step: int | None = None,
                     n_metrics: int | None = None, previous: Status | None = None) -> Status:
        """Write status.json (atomically) and return it. Progress fields left None keep the last recorded
        values (``previous``, else the file's), so marking a run failed keeps the epoch it reached. The trainer
        gives ``n_metrics`` only once the log holds those rows (rows are appended first): so the log never holds
        fewer rows than status.json says, unless rows were lost (:meth:`record_problems`)."""
        if status not in STATES:
            raise ValueError(f"status {status!r} is not a state; valid: {list(STATES)}")
        if stop_reason is not None and stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason {stop_reason!r}; valid: {list(STOP_REASONS)} or None")
        if epoch is None or global_epoch is None or step is None or n_metrics is None:
            if previous is None:
                try:
                    previous = self.read_status()
                except StoreError:  # the file being replaced is unreadable: start afresh
                    previous = Status()
            epoch = previous.epoch if epoch is None else epoch
            global_epoch = previous.global_epoch if global_epoch is None else global_epoch
            step = previous.step if step is None else step
            n_metrics = previous.n_metrics if n_metrics is None else n_metrics
        new = Status(status=status, error=error, stop_reason=stop_reason, epoch=float(epoch),
                     global_epoch=None if global_epoch is None else float(global_epoch), step=step,
                     n_metrics=n_metrics, updated=_now(), pid=os.getpid(), host=socket.gethostname())
        atomic_write_json(self.status_path, new.to_json())
        if status not in _FAILURES:  # error.log is the traceback of the failure status.json records: none now
            self.error_log_path.unlink(missing_ok=True)
        return new

    def progress(self) -> dict[str, Any]:
        """``{"epoch", "global_epoch", "step", "n_metrics"}`` as last recorded (0 for a run that recorded none, or
        whose status.json is unreadable; ``n_metrics`` None then): what a writer keeps while it does not know the
        run's progress itself."""
        try:
            st = self.read_status()
        except StoreError:
            st = Status()
        return {"epoch": st.epoch, "global_epoch": st.global_epoch if st.global_epoch is not None else st.epoch,
                "step": st.step if st.step is not None else 0, "n_metrics": st.n_metrics}

    def live_state(self) -> str:
        """The recorded state, except that a ``running`` run whose lock is free is ``interrupted`` (its process
        died without a word: a kill -9, a lost node)."""
        state = self.read_status().status
        return "interrupted" if state == "running" and self.holder() is None else state

    # ---- metrics ---------------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl (policy: a torn last line is ignored, a corrupt middle line raises)."""
        return read_metrics(self.metrics_path)

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_metrics(self.metrics_path, row)

    def truncate_metrics(self, n: int) -> None:
        truncate_metrics(self.metrics_path, n)

    def steps_per_epoch(self) -> int | None:
        """Steps per epoch, from the status or a metrics row with step > 0 (None until the run took a step)."""
        rows: list[Any] = []
        try:
            rows.append(self.read_status().to_json())
        except StoreError:
            pass
        try:
            rows += self.read_metrics()
        except StoreError:
            pass
        for r in rows:
            step, epoch = r.get("step"), r.get("epoch")
            if isinstance(step, int) and step > 0 and isinstance(epoch, (int, float)) and epoch > 0:
                return int(round(step / epoch))
        return None

    def record_problems(self) -> list[str]:
        """What this run's record lacks, by cheap checks (file sizes and row counts: nothing hashed or unpickled),
        one sentence each, [] when none (or when it cannot tell: a live run's record is in flux, and an unreadable
        file is reported by its reader): metrics.jsonl holding fewer rows than status.json recorded (rows lost),
        a finished run's log holding other than the rows it ended with, or none, and a ``done`` run without
        final.pt. The consistency of a checkpoint with its folder is checked in full at resume
        (``archrelax.train.checkpoint.check_record``)."""
        try:
            st = self.read_status()
            if st.status == "pending" or (st.status == "running" and self.holder() is not None):
                return []
            rows = len(self.read_metrics())
        except StoreError:
            return []
        problems, n = [], st.n_metrics
        log = f"metrics.jsonl holds {rows} row{'s' if rows != 1 else ''}"
        if n is not None and rows < n:
            problems.append(f"{log} where status.json recorded {n}: the log lost rows")
        elif n is not None and st.finished and rows != n:
            problems.append(f"{log} where status.json recorded {n} as the run ended")
        elif st.finished and rows == 0:
            problems.append(f"{log}")
        if st.status == "done" and not self.final_path.is_file():
            problems.append("final.pt is missing")
        return problems

    def has_training_state(self) -> bool:
        """Whether anything was trained here: a checkpoint, final weights, a snapshot or a metrics row. A folder
        without (a start that failed while loading data or building the model) may take another config."""
        if self.checkpoint_path.is_file() or self.final_path.is_file() or self.snapshots():
            return True
        return self.metrics_path.is_file() and self.metrics_path.stat().st_size > 0

    # ---- the lock --------------------------------------------------------------------------------------------
    def lock(self) -> RunLock:
        """The folder's lock, not yet acquired: ``with folder.lock():`` or ``lock.acquire()`` (raises
        :class:`~archrelax.store.errors.RunBusyError` naming the holder)."""
        return RunLock(self.lock_path)

    def holder(self) -> str | None:
        """``"pid N on host H (since T)"`` of the live process training this run, None when nobody holds it."""
        return lock_holder(self.lock_path)

    def write_error_log(self, text: str) -> None:
        atomic_write_text(self.error_log_path, text)

    # ---- the batch job -----------------------------------------------------------------------------------------
    def read_job(self) -> JobRecord | None:
        """The job last submitted for this run (None when none was); a corrupt job.json raises StoreError."""
        data = _read_json(self.job_path, "delete it: the next `archrelax run --executor slurm` submits the run again")
        return None if data is None else JobRecord.from_json(data, str(self.job_path))

    def write_job(self, record: JobRecord) -> None:
        atomic_write_json(self.job_path, record.to_json())


def _read_json(path: Path, fix: str) -> Any:
    """JSON of ``path``; None when it does not exist; :class:`StoreError` naming the file when it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        raise StoreError(path, f"{str(path)!r} is {what}; {fix}") from None
