"""job.json: the batch job last submitted for a run (``archrelax run --executor slurm``, detached or not).

```
RUN/job.json   {"job_id": "123_0", "cluster": "slurm", "folder": "slurm",
                "dependency": "afterok:122_0" | null, "submitted": ISO time, "host": submitting host}
```

It says which job owns a run, so that a rerun (after the login node or the scheduler process went away)
submits no second job for a run whose job is still queued or running, and ``archrelax status`` can show
that job's state beside the run's. It says nothing about the run itself: status.json stays the run's one
state. ``job_id`` is Slurm's (``<array>_<task>`` for a task of a job array); ``folder`` is submitit's
folder of job files and logs (the job's ``<job_id>_0_log.err`` is there), relative to the experiment folder when
inside it (``ExperimentFolder.write_job`` / ``read_job``).
"""
from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from .errors import StoreError

__all__ = ["JobRecord"]


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    cluster: str = "slurm"
    folder: str = ""
    dependency: str | None = None
    submitted: str = ""
    host: str = ""

    @classmethod
    def now(cls, job_id: str, *, cluster: str = "slurm", folder: str = "", dependency: str | None = None) -> "JobRecord":
        """A record of a job submitted just now from this host."""
        return cls(job_id=str(job_id), cluster=cluster, folder=folder, dependency=dependency,
                   submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"), host=socket.gethostname())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "job.json") -> "JobRecord":
        """Typed from plain data; a missing ``job_id`` or a value of the wrong type is an error naming the file."""
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            raise StoreError(where, f"{where!r} is not a job record (expected a JSON object with a string 'job_id'); "
                             "delete it: the next `archrelax run --executor slurm` submits the run again")
        kw = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key in ("cluster", "folder", "submitted", "host"):
            if not isinstance(kw.get(key, ""), str):
                raise StoreError(where, f"{where!r}: {key!r} must be a string, found {kw[key]!r}")
        if kw.get("dependency") is not None and not isinstance(kw["dependency"], str):
            raise StoreError(where, f"{where!r}: 'dependency' must be a string or null, found {kw['dependency']!r}")
        return cls(**kw)
