"""The settings table of docs/config.md, built from the fields (tests/test_config.py compares the page with it):
one row per TrainConfig field with its ``archrelax train`` option, its default, the spec keys that set it, the
experiment defaults that differ from it (:data:`~archrelax.protocol.spec.EXPERIMENT_DEFAULTS`) and whether it
enters a run's id."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from ..train.config import option_name
from .spec import _CONFIG, ExperimentSpec, _config_default

__all__ = ["settings_rows"]


def _config_keys() -> dict[str, list[tuple[str, Any]]]:
    """TrainConfig field -> [(spec key, its default in a spec)], over the whole spec."""
    out: dict[str, list[tuple[str, Any]]] = {}

    def walk(cls: type, prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(cls):
            tp, value = typing.get_type_hints(cls)[f.name], getattr(obj, f.name)
            if dataclasses.is_dataclass(tp):
                walk(tp, prefix + f.name + ".", value)
            elif f.metadata.get("config"):
                out.setdefault(f.metadata["config"], []).append((prefix + f.name, value))

    walk(ExperimentSpec, "", ExperimentSpec())
    return out


def _cell(v: Any) -> str:
    return "`" + (v if isinstance(v, str) else json.dumps(v)) + "`"


def settings_rows() -> list[dict[str, str]]:
    """One row per TrainConfig field, as docs/config.md shows it (a test compares the two): the field, its
    ``archrelax train`` option, its default, its spec key(s), the spec defaults that differ from it
    (:data:`EXPERIMENT_DEFAULTS`), whether it enters the run id, and its help."""
    keys = _config_keys()
    rows = []
    for name, f in _CONFIG.items():
        default = _config_default(name)
        spec_keys = keys.get(name, [])
        differ = [(k, v) for k, v in spec_keys if v != default or type(v) is not type(default)]
        run_id = ("no (runtime)" if f.metadata["runtime"] else
                  "when not the default, not in identity" if not f.metadata["identity"] and f.metadata["omit_default"]
                  else "yes, not in identity" if not f.metadata["identity"] else
                  "yes, when not the default" if f.metadata["omit_default"] else "yes")
        rows.append({
            "field": f"`{name}`",
            "archrelax train": f"`{option_name(f) or name.upper()}`",
            "default": _cell(default),
            "spec key": ", ".join(f"`{k}`" for k, _ in spec_keys) or "—",
            "spec default": "; ".join(f"`{k}`: {_cell(v)}" for k, v in differ),
            "in run id": run_id,
            "meaning": f.metadata["help"],
        })
    return rows
