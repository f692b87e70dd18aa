"""Errors of the store. Each message names the file, what is wrong with it and what to do."""
from __future__ import annotations

__all__ = ["StoreError", "DamagedFileError", "DamagedCheckpointError", "RunBusyError", "ExperimentBusyError",
           "SpecMismatchError"]


class StoreError(ValueError):
    """A file of a run or experiment folder exists but cannot be read (corrupt, truncated, foreign).

    ``path`` is the file. A ValueError, so the command line reports it as a user-facing error (exit 2).
    """

    def __init__(self, path: object, message: str):
        self.path = str(path)
        super().__init__(message)


class DamagedFileError(StoreError):
    """A file saved with its content digest (checkpoint, snapshot, final weights, data cache) that no longer
    matches it, or cannot be read at all (see :mod:`archrelax.integrity`). ``detail``: what is wrong, naming the
    file; ``advice``: what to do. The message is one line: ``"<detail>; <advice>"``."""

    def __init__(self, path: object, detail: str, advice: str):
        self.detail, self.advice = detail, advice
        super().__init__(path, f"{detail}; {advice}")


class DamagedCheckpointError(DamagedFileError):
    """A run's own resume point (checkpoints/last.pt) is damaged: the trainer marks the run ``damaged``."""


class RunBusyError(RuntimeError):
    """Another live process holds the run folder's lock. ``holder``: its ``"pid N on host H"`` text."""

    def __init__(self, folder: object, holder: str):
        self.folder, self.holder = str(folder), holder
        super().__init__(f"run folder {self.folder!r} is in use: held by {holder}; wait for that process to end "
                         "(or stop it: a stopped run resumes from its last checkpoint), or use another folder")


class ExperimentBusyError(RuntimeError):
    """A new plan for an experiment folder while other processes use it (``ExperimentFolder.begin``): another
    ``archrelax run`` in progress, or a run held by a live process. ``holders``: what holds it, one string each."""

    def __init__(self, folder: object, holders: list[str]):
        self.folder, self.holders = str(folder), list(holders)
        super().__init__(
            f"experiment folder {self.folder!r} is in use ({'; '.join(self.holders)}): its plan cannot change now (the "
            "other process would go on training runs dropped from it); nothing was changed. Wait for it to end, or "
            "stop it (a stopped run resumes from its last checkpoint), then rerun")


class SpecMismatchError(ValueError):
    """``archrelax run`` into an experiment folder that holds a different spec (see ``ExperimentFolder.write_spec``).

    ``changes``: ``[(dotted key, old value, new value)]``.
    """

    def __init__(self, folder: object, changes: list[tuple[str, object, object]]):
        self.folder, self.changes = str(folder), list(changes)
        lines = "\n".join(f"  {k}: {_show(a)} -> {_show(b)}" for k, a, b in self.changes)
        super().__init__(
            f"experiment folder {self.folder!r} holds a different spec (its spec.yaml); {len(self.changes)} key"
            f"{'s differ' if len(self.changes) != 1 else ' differs'} (saved -> new):\n{lines}\n"
            "Nothing was changed. Use another --out, or --force to replace its spec and plan (runs already "
            "trained stay in runs/; those no longer in the plan drop out of `archrelax status` and summary.csv).")


def _show(v: object) -> str:
    return "(absent)" if v is _ABSENT else repr(v)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()
