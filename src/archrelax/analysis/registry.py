"""The analyses by name: ``@register_analysis`` next to each analysis's own module.

The names are the analysis result types of the store (``archrelax.store.results.RESULT_TYPES``, in the
order they run), and the runner of analysis ``<name>`` lives in ``archrelax.analysis.<name>``, imported
only when it runs: listing the names (``archrelax --help``, spec validation) imports no torch.

    @register_analysis("sharpness", params=("seed", "sharpness_samples", ...), inputs=weight_files)
    def run(ctx: Context) -> SharpnessResult: ...
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from archrelax.store.results import RESULT_TYPES

__all__ = ["register_analysis", "analysis_names", "get_analysis", "Analysis", "ANALYSES"]


def analysis_names() -> tuple[str, ...]:
    """Every analysis, in the order ``analyse_experiment`` runs them."""
    return tuple(RESULT_TYPES)


ANALYSES = analysis_names()


@dataclass(frozen=True)
class Analysis:
    """A registered analysis.

    ``run(ctx) -> result`` (or ``(result, arrays)`` with arrays saved beside it as ``<name>.npz``);
    ``params``: the AnalysisSettings fields it depends on; ``inputs(ctx)``: the files it reads, and
    ``statuses``: whether the runs' states matter too — with the plan's content, the cache key.
    """

    name: str
    run: Callable[[Any], Any]
    params: tuple[str, ...]
    inputs: Callable[[Any], Iterable[Path]]
    statuses: bool = True


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(name: str, *, params: tuple[str, ...] = (), inputs: Callable[[Any], Iterable[Path]],
                      statuses: bool = True) -> Callable[[Callable], Callable]:
    """Register the decorated ``run(ctx)`` as analysis ``name`` (one of :func:`analysis_names`)."""
    if name not in RESULT_TYPES:
        raise ValueError(f"analysis {name!r} has no result type in archrelax.store.results; known: "
                         f"{list(RESULT_TYPES)} (add its dataclass there first)")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = Analysis(name, fn, tuple(params), inputs, statuses)
        return fn

    return deco


def get_analysis(name: str) -> Analysis:
    """The registered analysis ``name``, importing ``archrelax.analysis.<name>`` on first use."""
    if name not in RESULT_TYPES:
        raise ValueError(f"unknown analysis {name!r}; valid: {list(RESULT_TYPES)}")
    if name not in _REGISTRY:
        importlib.import_module(f"archrelax.analysis.{name}")
    if name not in _REGISTRY:
        raise RuntimeError(f"archrelax.analysis.{name} does not register the {name!r} analysis "
                           "(@register_analysis)")
    return _REGISTRY[name]
