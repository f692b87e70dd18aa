"""Relaxation paths: the spec's ``paths`` (per-layer switch times), as typed values.

A path is a named sequence of switches, each from the previous step's run (the first from the CNN): at epoch
``at`` on the CNN's clock, relax ``layers`` (names or globs; null: the spec's ``relax_layers``) to ``to`` (a
lattice target). Steps are in time order, and a step on the same layers as the one before must move up the
lattice (tiled -> lc | fc, lc -> fc, wide -> fc).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._typed import NO, coerce

__all__ = ["PathStep", "RelaxPath", "parse_paths", "parse_target_spec"]

_PATH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class PathStep:
    """One switch of a relaxation path: at ``at`` (epochs on the CNN's clock) relax ``layers`` (names/globs;
    None: the spec's ``relax_layers``, i.e. every conv by default) to ``to``."""

    at: float
    to: str
    layers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RelaxPath:
    """A named sequence of switches, each from the previous step's run (the first from the CNN)."""

    name: str
    steps: tuple[PathStep, ...]


def parse_paths(data: Any, problems: list[str]) -> list[RelaxPath]:
    """The spec's ``paths`` as typed paths; every problem (one line each, naming the path and step) is
    appended to ``problems`` and that path is left out."""
    out: list[RelaxPath] = []
    names: set[str] = set()
    for i, entry in enumerate(data or ()):
        where = f"'paths[{i}]'"
        if not isinstance(entry, dict) or set(entry) - {"name", "steps"} or "steps" not in entry:
            problems.append(f"{where} = {entry!r} must be a mapping {{name: ..., steps: [...]}}; allowed keys: "
                            "name, steps")
            continue
        name = entry.get("name", f"path{i}")
        if not isinstance(name, str) or not _PATH_NAME.match(name):
            problems.append(f"{where}.name = {name!r} must be a word of letters, digits and _ . + - (it is part of "
                            "run ids)")
            continue
        if name in names:
            problems.append(f"{where}.name = {name!r} repeats another path's name; allowed: distinct names")
            continue
        names.add(name)
        steps = _steps(entry["steps"], f"'paths[{i}]' ({name})", problems)
        if steps is not None:
            out.append(RelaxPath(name, steps))
    return out


def _steps(steps: Any, where: str, problems: list[str]) -> tuple[PathStep, ...] | None:
    """A path's steps, each checked, then their order; None (and the problems appended) when any is bad."""
    if not isinstance(steps, list) or not steps:
        problems.append(f"{where}.steps = {steps!r} must be a non-empty list of {{at, to, layers}}")
        return None
    parsed, ok = [], True
    for j, st in enumerate(steps):
        step = _step(st, f"{where}.steps[{j}]", problems)
        ok = ok and step is not None
        if ok:
            parsed.append(step)
    if not ok:
        return None
    for j in range(1, len(parsed)):
        a, b = parsed[j - 1], parsed[j]
        if b.at < a.at:
            problems.append(f"{where}.steps[{j}].at = {b.at:g} is before the previous step's {a.at:g}; allowed: "
                            "times in order")
            ok = False
        elif a.layers == b.layers and not _moves_up(a.to, b.to):
            problems.append(f"{where}.steps[{j}]: {a.to!r} -> {b.to!r} on the same layers is not a move up the "
                            "lattice; allowed: tiled -> lc | fc, lc -> fc, wide -> fc")
            ok = False
    return tuple(parsed) if ok else None


def _step(st: Any, where: str, problems: list[str]) -> PathStep | None:
    """One step ``{at, to, layers}``; None (and its problems appended) when it is bad."""
    from archrelax.embed.targets import TARGET_FORMS, target_problem  # the lattice owns its target strings

    if not isinstance(st, dict) or set(st) - {"at", "to", "layers"} or not {"at", "to"} <= set(st):
        problems.append(f"{where} = {st!r} must be a mapping {{at: epoch, to: target, layers: [names] (optional)}}")
        return None
    at, to, layers = coerce(st["at"], float), st["to"], st.get("layers")
    ok = True
    if at is NO or at < 0:
        problems.append(f"{where}.at = {st['at']!r} must be an epoch >= 0 (on the CNN's clock)")
        ok = False
    if not isinstance(to, str) or target_problem(to) is not None:
        problems.append(f"{where}.to = {to!r} is not a relaxation target; allowed: {TARGET_FORMS}")
        ok = False
    if isinstance(layers, str):
        layers = [layers]
    if layers is not None and (not isinstance(layers, list) or not layers
                               or not all(isinstance(n, str) and n for n in layers)):
        problems.append(f"{where}.layers = {st.get('layers')!r} must be a non-empty list of layer names/globs "
                        "(or null: the spec's relax_layers)")
        ok = False
    return PathStep(float(at), parse_target_spec(to), None if layers is None else tuple(layers)) if ok else None


def parse_target_spec(to: str) -> str:
    """The canonical string of a target (``"wide:5x5"`` -> ``"wide:5"``)."""
    from archrelax.embed.targets import parse_target

    return parse_target(to).spec


def _moves_up(a: str, b: str) -> bool:
    """Whether a layer relaxed to ``a`` can be relaxed further to ``b`` (the lattice's moves, targets.NEXT)."""
    from archrelax.embed.targets import NEXT, parse_target

    return parse_target(b).kind in NEXT[parse_target(a).kind]
