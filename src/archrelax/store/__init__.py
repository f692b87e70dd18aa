"""The one owner of the on-disk format: run folders, experiment folders and analysis results.

Everything that reads or writes an experiment (the trainer, the protocol and its executors, the analyses,
the report, ``archrelax status``) goes through this package; the layout, the vocabulary of states, the
metrics reading policy, the lock and the snapshot lookup are defined here once (docs/architecture.md).
No torch import: ``archrelax status`` stays fast.

    exp = ExperimentFolder("experiments/demo")
    plan = exp.read_plan()                       # id -> Run, in order
    run = exp.run(next(iter(plan)))              # RunFolder
    run.read_status().status                     # one of STATES
    exp.read_result("sharpness").points[0].lambda_max
    ExperimentView.open(exp).done_runs("efcn")   # every reader's view: kind, state, final figures
"""
from __future__ import annotations

from .atomic import append_line, atomic_write_bytes, atomic_write_json, atomic_write_text, file_mode
from .errors import (DamagedCheckpointError, DamagedFileError, ExperimentBusyError, RunBusyError, SpecMismatchError,
                     StoreError)
from .experiment import SPEC_RUNTIME_KEYS, SUMMARY_COLUMNS, ExperimentFolder, spec_changes
from .job import JobRecord
from .lock import RunLock, lock_holder
from .metrics import append_metrics, read_metrics, truncate_metrics
from .plan import Run, plan_digest, plan_from_json, plan_to_json
from .results import RESULT_TYPES, AnalysisResult, read_result, write_result
from .run import ENDED, FINISHED, STATES, STOP_REASONS, RunFolder, State, Status, failure_state, format_epoch, parse_epoch
from .view import ExperimentView, RunView

__all__ = [
    "ExperimentFolder", "RunFolder", "ExperimentView", "RunView", "Run", "Status", "JobRecord", "State", "STATES",
    "FINISHED", "ENDED", "STOP_REASONS",
    "SUMMARY_COLUMNS", "SPEC_RUNTIME_KEYS", "RESULT_TYPES", "AnalysisResult",
    "StoreError", "DamagedFileError", "DamagedCheckpointError", "RunBusyError", "ExperimentBusyError", "SpecMismatchError",
    "RunLock", "lock_holder",
    "read_metrics", "append_metrics", "truncate_metrics", "read_result", "write_result",
    "plan_to_json", "plan_from_json", "plan_digest", "spec_changes", "format_epoch", "parse_epoch", "failure_state",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "append_line", "file_mode",
]
