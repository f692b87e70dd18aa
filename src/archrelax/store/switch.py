"""Automatic switch times: a rule reads the CNN's metrics rows and names the epoch to release at.

A spec's ``switch_times`` may hold ``auto`` (the default rule, :data:`DEFAULT_RULE`) or ``auto:<rule>`` beside
numbers. The plan then holds relaxed runs whose ``Run.auto`` names the rule and whose switch time is not
known yet; once their CNN is done, the scheduler asks :meth:`ExperimentFolder.resolve_auto`, which applies
the rule to the CNN's rows here and records the choice in the experiment's ``switch.json`` (so a resumed or
second scheduler makes the same one, whatever changed since). A rule is a pure function of the rows: the
same seed gives the same rows (the trainer is deterministic) and so the same time.

Rules pick an *evaluation* time: the CNN of an experiment with auto runs saves a snapshot at every evaluation
(TrainConfig ``snapshot_every_eval``), so whichever time is chosen has its snapshot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["SwitchError", "Choice", "RULES", "DEFAULT_RULE", "rule_names", "canonical_rule", "is_auto",
           "choose", "peak_sharpness"]


class SwitchError(ValueError):
    """No switch time can be chosen: an unknown rule, or rows the rule cannot decide from (message says which)."""


@dataclass(frozen=True)
class Choice:
    """A rule's decision: the epoch ``t_w`` (CNN's clock), the rule, and the value that decided it."""

    t_w: float
    rule: str
    value: float | None = None  # e.g. the λ_max at t_w

    def to_json(self) -> dict[str, Any]:
        return {"t_w": self.t_w, "rule": self.rule, "value": self.value}


def peak_sharpness(rows: list[dict[str, Any]], where: str = "the CNN") -> tuple[float, float]:
    """``(epoch, λ_max)`` of the largest converged λ_max among ``rows`` (a metrics log: dicts with ``epoch``,
    ``lambda_max`` and ``lambda_max_converged``); rows without a finite converged value are skipped; ties go to
    the earliest epoch. :class:`SwitchError` naming ``where`` when no row has one."""
    best: tuple[float, float] | None = None
    measured = 0
    for row in rows:
        lam = row.get("lambda_max")
        if lam is None:
            continue
        measured += 1
        if row.get("lambda_max_converged") is not True or not math.isfinite(lam):
            continue
        if best is None or lam > best[1]:  # strictly larger: a tie keeps the earlier epoch
            best = (float(row["epoch"]), float(lam))
    if best is None:
        what = (f"{measured} evaluation(s) measured λ_max, none converged" if measured else
                "no evaluation row measured λ_max (was it trained with sharpness_products > 0?)")
        raise SwitchError(f"rule 'peak-sharpness' cannot choose a switch time from {where}: {what}; raise "
                          "cnn.sharpness_products, or give fixed switch_times")
    return best


def _peak(rows: list[dict[str, Any]], where: str) -> Choice:
    t, lam = peak_sharpness(rows, where)
    return Choice(t, "peak-sharpness", lam)


# name -> rule(rows, where) -> Choice; the first is what a bare `auto` means
RULES: dict[str, Callable[[list[dict[str, Any]], str], Choice]] = {"peak-sharpness": _peak}
DEFAULT_RULE = "peak-sharpness"


def rule_names() -> tuple[str, ...]:
    return tuple(RULES)


def is_auto(value: Any) -> bool:
    """A ``switch_times`` entry that asks for an automatic time: ``auto`` or ``auto:<anything>``."""
    return isinstance(value, str) and (value == "auto" or value.startswith("auto:"))


def canonical_rule(value: str) -> str:
    """The rule an ``auto`` / ``auto:<rule>`` entry names (bare ``auto``: :data:`DEFAULT_RULE`);
    :class:`SwitchError` listing the valid names otherwise."""
    name = DEFAULT_RULE if value == "auto" else value[5:] if value.startswith("auto:") else value
    if name not in RULES:
        raise SwitchError(f"{value!r} names no switch rule; allowed: 'auto' ({DEFAULT_RULE}) or "
                          + ", ".join(f"'auto:{n}'" for n in RULES))
    return name


def choose(rule: str, rows: list[dict[str, Any]], where: str = "the CNN") -> Choice:
    """Apply ``rule`` (a name of :data:`RULES`) to a run's metrics rows."""
    if rule not in RULES:
        raise SwitchError(f"no switch rule named {rule!r}; allowed: {', '.join(RULES)}")
    return RULES[rule](rows, where)
