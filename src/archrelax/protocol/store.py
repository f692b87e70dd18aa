"""The run store: an experiment folder on disk, per-run locks, and the summary table.

```
EXPERIMENT/
  spec.yaml   plan.json   summary.csv
  runs/<id>/  the trainer's run folder (config.json, status.json, metrics.jsonl, checkpoints/, snapshots/)
  runs/<id>/.lock   held (fcntl.flock) by the process training the run
```
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..utils import atomic_write_json, atomic_write_text, format_epoch
from .plan import Run, plan_from_json, plan_to_json
from .spec import ExperimentSpec, spec_to_dict

__all__ = ["Store", "SUMMARY_COLUMNS", "FINISHED"]

SUMMARY_COLUMNS = (
    "id", "kind", "seed", "t_w", "t_w2", "status", "epochs",
    "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
    "best_train_loss", "best_train_acc", "best_test_loss", "best_test_acc",
    "final_offlocal_ratio", "wall_time", "error",
)
# A finished run is never trained again; 'failed' runs are retried by the next `archrelax run`.
FINISHED = ("done", "diverged")


def _num(x: Any) -> str:
    if x is None:
        return ""
    return f"{x:.6g}" if isinstance(x, float) else str(x)


class Store:
    """Reads and writes one experiment folder. Cheap to create; holds no open files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # ---- layout --------------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.csv"

    def write_spec(self, spec: ExperimentSpec) -> None:
        text = yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None)
        atomic_write_text(self.root / "spec.yaml", "# resolved experiment spec (archrelax run)\n" + text)

    def write_plan(self, plan: dict[str, Run]) -> None:
        # not atomic_write_json: it sorts keys, and the plan's order (parents first, switch times ascending)
        # is the order of summary.csv and of `archrelax status`
        atomic_write_text(self.plan_path, json.dumps(plan_to_json(plan), indent=2) + "\n")

    def load_plan(self) -> dict[str, Run]:
        if not self.plan_path.is_file():
            raise FileNotFoundError(f"{self.root} is not an experiment folder: {self.plan_path} does not exist "
                                    "(create it with `archrelax run SPEC --out DIR`)")
        return plan_from_json(json.loads(self.plan_path.read_text()))

    # ---- per-run state -------------------------------------------------------------------------------
    def read_status(self, run_id: str) -> dict[str, Any]:
        """status.json of a run; ``{"status": "pending"}`` when the run has not started."""
        try:
            return json.loads((self.run_dir(run_id) / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"status": "pending", "error": None, "epoch": 0.0}

    def write_status(self, run_id: str, status: str, error: str | None = None, epoch: float | None = None) -> None:
        """Mark a run (used for failures the trainer could not record itself)."""
        old = self.read_status(run_id)
        atomic_write_json(self.run_dir(run_id) / "status.json", {
            "status": status, "error": error, "epoch": old.get("epoch", 0.0) if epoch is None else epoch,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def read_metrics(self, run_id: str) -> list[dict[str, Any]]:
        """metrics.jsonl rows; a truncated last line (crash mid-write) is ignored."""
        path = self.run_dir(run_id) / "metrics.jsonl"
        rows = []
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return rows
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def steps_per_epoch(self, run_id: str) -> int | None:
        """Steps per epoch of a run, from its status or metrics (None until it has taken a step)."""
        rows = [self.read_status(run_id)] + self.read_metrics(run_id)
        for r in rows:
            step, epoch = r.get("step"), r.get("epoch")
            if isinstance(step, int) and step > 0 and isinstance(epoch, (int, float)) and epoch > 0:
                return int(round(step / epoch))
        return None

    def snapshot_file(self, run: Run) -> Path | None:
        """The snapshot ``run`` starts from, where the parent saves it; None while that is not yet known.

        The trainer snapshots at step ``round(t * steps_per_epoch)`` and names the file by that step's
        epoch, so a switch time between two steps resolves to the nearest step's file.
        """
        if run.depends_on is None or run.snapshot_epoch is None:
            return None
        t = float(run.snapshot_epoch)
        if t == 0:
            return self.run_dir(run.depends_on) / "snapshots" / "epoch_0.pt"
        spe = self.steps_per_epoch(run.depends_on)
        if spe is None:
            return None
        step = int(round(t * spe))  # the trainer's own rounding (train.schedule.time_steps)
        return self.run_dir(run.depends_on) / "snapshots" / f"epoch_{format_epoch(step / spe)}.pt"

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[bool]:
        """Non-blocking exclusive lock on runs/<id>/.lock: yields True when held, False when another process has it.

        flock locks die with their process, so a killed run never leaves a stale lock behind.
        """
        path = self.run_dir(run_id) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {os.uname().nodename}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self, run_id: str) -> str | None:
        """'pid host' of the live process holding the run's lock, or None when it is free."""
        path = self.run_dir(run_id) / ".lock"
        if not path.exists():
            return None
        with self.lock(run_id) as got:
            if got:
                return None
        try:
            return path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    # ---- summary -------------------------------------------------------------------------------------
    def summary_row(self, run: Run) -> dict[str, str]:
        st = self.read_status(run.id)
        rows = self.read_metrics(run.id)
        last = rows[-1] if rows else {}

        def best(key: str, fn) -> Any:
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            return fn(vals) if vals else None

        epoch = st.get("epoch") if st.get("epoch") is not None else last.get("epoch")
        return {
            "id": run.id, "kind": run.kind, "seed": str(run.seed), "t_w": _num(run.t_w), "t_w2": _num(run.t_w2),
            "status": st.get("status", "pending"), "epochs": _num(epoch),
            **{f"final_{k}": _num(last.get(k)) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
            "best_train_loss": _num(best("train_loss", min)), "best_train_acc": _num(best("train_acc", max)),
            "best_test_loss": _num(best("test_loss", min)), "best_test_acc": _num(best("test_acc", max)),
            "final_offlocal_ratio": _num(last.get("offlocal_ratio")), "wall_time": _num(last.get("wall_time")),
            "error": " ".join(str(st.get("error") or "").split()),
        }

    def write_summary(self, plan: dict[str, Run] | None = None) -> Path:
        """Regenerate summary.csv from every run folder (atomic; serialised by a lock on .summary.lock)."""
        plan = self.load_plan() if plan is None else plan
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        # read-then-write under one lock: two processes finishing runs at once cannot write stale tables
        lock = self.root / ".summary.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            for run in plan.values():
                writer.writerow(self.summary_row(run))
            atomic_write_text(self.summary_path, buf.getvalue())
        return self.summary_path

    def read_summary(self) -> list[dict[str, str]]:
        with open(self.summary_path, newline="") as f:
            return list(csv.DictReader(f))
