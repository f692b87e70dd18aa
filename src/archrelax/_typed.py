"""Plain values typed by annotations: shared by TrainConfig, the experiment spec and the command line.

- :func:`coerce` converts a value read from YAML / ``--set`` to an annotation without guessing (an integral
  float is an int, an int is a float, a single value is not silently a string), :func:`conforms` checks a
  value a program built (no conversion), :func:`describe` says what an annotation allows.
- Numbers: every ordinary notation is a number, in spec files, in ``--set`` and on the command line:
  ``1e-3``, ``1E-3``, ``5e+2``, ``.5``, ``-2``, ``1_000`` (underscores as digit separators, as Python and
  YAML 1.1 read them). PyYAML follows YAML 1.1, where a float needs a dot (``1e-3`` is the *string*
  '1e-3'); :func:`yaml_load` reads such scalars as floats, as YAML 1.2, JSON and Python do. Integer fields
  take a float only when it is integral (``batch_size: 1e3`` is 1000, ``2.5`` is refused). Infinities and
  NaN are never a valid setting: refused everywhere.
"""
from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

__all__ = ["NO", "coerce", "conforms", "describe", "yaml_load", "yaml_problem", "parse_float", "parse_int"]

NO = object()  # "cannot be converted"

# A float in any ordinary notation; plain integers are matched first by YAML's own int resolver.
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3, 5e+2, 1E3 as floats (YAML 1.1 wants a dot in a float)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with every ordinary number notation read as a number."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


_KEY_LINE = re.compile(r"^(\s*)(?:-\s+)?([^\s#:'\"{}\[\],][^:#]*?)\s*:(?:\s|$)")


def yaml_problem(e: yaml.YAMLError, text: str, *, lines: bool = True) -> str:
    """One line saying where and why ``text`` is not valid YAML: ``"expected ..., but found ... (line 2, column 1,
    in the value of 'seeds' from line 1)"``, instead of PyYAML's several lines with a caret. Lines and columns count
    from 1 (``lines=False``: the column only, for a one-line value); the key is the mapping key (dotted) whose value
    was being read when parsing failed, when the error says where that began."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    at = getattr(e, "problem_mark", None)
    if at is None:
        return problem
    where = f"line {at.line + 1}, column {at.column + 1}" if lines else f"column {at.column + 1}"
    began = getattr(e, "context_mark", None)
    key = _key_at(text, began.line) if began is not None and lines else None
    if key is not None:
        where += f", in the value of {key!r}" + (f" from line {began.line + 1}" if began.line != at.line else "")
    return f"{problem} ({where})"


def _key_at(text: str, line: int) -> str | None:
    """The dotted mapping key whose entry is on ``line`` (0-based) or the nearest line above it, by indentation."""
    path: list[tuple[int, str]] = []
    found = None
    for i, row in enumerate(text.splitlines()[: line + 1]):
        m = _KEY_LINE.match(row)
        if not m:
            continue
        indent = len(m.group(1))
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, m.group(2).strip()))
        found = ".".join(k for _, k in path)
    return found


def _union_args(tp: Any) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else None


def describe(tp: Any) -> str:
    """What an annotation allows, in words: 'a number > 0' style texts are built from these."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _union_args(tp) is not None:
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        plural = {int: "integers", float: "finite numbers", str: "strings"}
        return f"a list of {plural.get(args[0]) or describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` if it can be without guessing, else :data:`NO`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _union_args(tp) is not None:
        if value is None:
            return None if type(None) in args else NO
        for a in args:  # str last: try the non-str members first (e.g. 3 for `str | list[float]` is no str)
            if a is not type(None) and a is not str:
                out = coerce(value, a)
                if out is not NO:
                    return out
        return coerce(value, str) if str in args else NO
    if origin is Literal:
        return value if value in args else NO
    if origin is list:
        if not isinstance(value, list):
            return NO
        out = [coerce(v, args[0]) if args else v for v in value]
        return NO if any(o is NO for o in out) else out
    if origin is dict:
        return dict(value) if isinstance(value, dict) else NO
    if tp is bool:
        return value if isinstance(value, bool) else NO
    if tp is int:
        if isinstance(value, bool):
            return NO
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else NO
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return NO
        return float(value) if math.isfinite(value) else NO
    if tp is str:
        return value if isinstance(value, str) else NO
    return value if isinstance(value, tp) else NO


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` already has type ``tp``, converting nothing (250.0 is no int; an int is a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if _union_args(tp) is not None:
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def parse_float(text: str) -> float:
    """A finite float from command-line text (1e-3, .5, 1_000.5); ValueError naming the text otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number (e.g. 0.1, 1e-3)") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_int(text: str) -> int:
    """An integer from command-line text: 250, 1_000, or an integral float such as 1e3."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer (e.g. 250, 1e3)") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{text!r} is not an integer (e.g. 250, 1e3)")
    return int(value)
