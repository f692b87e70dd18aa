"""Plain data (YAML, ``--set key.sub=value``) into nested dataclasses, typed and checked by their fields.

Generic: the experiment spec (``protocol/spec.py``) is one schema it reads. A schema is a dataclass whose fields
are plain values (typed by their annotations through :mod:`archrelax._typed`) or further dataclasses (its
sections). A field's metadata may hold ``check``: ``value -> None | "what is allowed"``, called on a value
already of the field's type. Every problem is reported as one line naming the dotted key, the value and what
is allowed, and parsing goes on, so that a file's problems are listed together; an unknown key gets the
closest valid one suggested (in the same section, else a key of that name elsewhere, e.g. ``lr`` ->
``train.lr``).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml

from ._typed import NO, coerce, describe, yaml_load, yaml_problem

__all__ = ["build", "set_key", "keys", "unknown_key", "type_at", "plain_copy"]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a schema, sections included."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            out += keys(tp, prefix + f.name + ".")
    return out


def unknown_key(root: type, key: str, prefix: str, siblings: list[str]) -> str:
    """The problem line for ``prefix + key``, which is not a key of ``root``; the closest valid key suggested."""
    every = keys(root)
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if not close:  # maybe it belongs in another section (e.g. 'lr' -> 'train.lr')
        close = [k for k in every if k.rsplit(".", 1)[-1] == key][:1]
        close = close or difflib.get_close_matches(prefix + key, every, n=1, cutoff=0.6)
    else:
        close = [prefix + close[0]]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{prefix}{key}'{hint} (valid here: {', '.join(siblings)})"


def build(cls: type, data: Any, problems: list[str], *, root: type | None = None, prefix: str = "",
          base: Any = None) -> Any:
    """``base`` (default ``cls()``) with the keys of ``data`` set, typed and range-checked; each problem is
    appended to ``problems`` and its key keeps its default. ``root``: the whole schema (for suggestions)."""
    root = cls if root is None else root
    obj = base if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        problems.append(f"'{prefix.rstrip('.') or 'spec'}' must be a mapping of keys, got {data!r}")
        return obj
    hints, fields = _hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            problems.append(unknown_key(root, str(key), prefix, list(fields)))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            build(tp, value, problems, root=root, prefix=prefix + key + ".", base=getattr(obj, key))
            continue
        if typing.get_origin(tp) is list and not isinstance(value, list) and value is not None:
            value = [value]  # 'seeds: 0' means [0]
        out = coerce(value, tp)
        if out is NO:
            problems.append(f"'{prefix}{key}' = {value!r} has the wrong type; allowed: {describe(tp)}")
            continue
        check = fields[key].metadata.get("check")
        bad = check(out) if check is not None and out is not None else None
        if bad:
            problems.append(f"'{prefix}{key}' = {value!r} is out of range; allowed: {bad}")
            continue
        setattr(obj, key, out)
    return obj


def type_at(root: type, parts: list[str]) -> Any:
    """The annotation of the dotted key ``parts`` in ``root`` (a section: its dataclass); ``Any`` inside a free
    mapping (``model_kwargs.width``); None when there is no such key."""
    cls: Any = root
    for p in parts:
        if not dataclasses.is_dataclass(cls):
            return Any if typing.get_origin(cls) is dict else None
        tp = _hints(cls).get(p)
        if tp is None:
            return None
        cls = tp
    return cls


def _siblings(root: type, parts: list[str]) -> list[str]:
    cls: Any = root
    for p in parts:
        hint = _hints(cls).get(p) if dataclasses.is_dataclass(cls) else None
        if hint is None or not dataclasses.is_dataclass(hint):
            return []
        cls = hint
    return [f.name for f in dataclasses.fields(cls)]


def set_key(root: type, data: dict[str, Any], key: str, raw: str) -> None:
    """``data[key.sub] = raw`` in place, ``raw`` parsed as YAML (numbers in any ordinary notation such as 1e-3;
    ``fc,lc`` for a list field is a list). ValueError with the problem line for a key ``root`` does not have.
    Typing and range checks are :func:`build`'s, on the merged data."""
    parts = key.split(".")
    tp = type_at(root, parts)
    if tp is None:
        prefix = ".".join(parts[:-1])
        raise ValueError(unknown_key(root, parts[-1], prefix + "." if prefix else "", _siblings(root, parts[:-1])))
    value = _yaml_value(key, raw) if raw.strip() else None
    if isinstance(value, str) and "," in value and typing.get_origin(tp) is list:
        value = [_yaml_value(key, v) for v in value.split(",")]
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _yaml_value(key: str, raw: str) -> Any:
    try:
        return yaml_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"{key!r} = {raw!r} is not valid YAML: {yaml_problem(e, raw, lines=False)}") from None


def plain_copy(x: Any) -> Any:
    """A copy of plain data (dicts and lists copied, leaves shared)."""
    if isinstance(x, dict):
        return {k: plain_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [plain_copy(v) for v in x]
    return x
