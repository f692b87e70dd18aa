"""Analyses of trained models and experiment folders: pure functions returning dataclasses.

None of them switches the caller's model to eval mode for good, changes its parameters or buffers, or
touches ``.grad``: models are evaluated in eval mode inside a guard that restores every module's flag
(``eval_mode``), and anything that needs other weights works on a copy. Names load lazily.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Metrics": "_common", "evaluate": "_common", "eval_mode": "_common",
    "Eigenvalues": "sharpness", "TraceEstimate": "sharpness", "Sharpness": "sharpness",
    "hessian_vector_product": "sharpness", "hessian_eigenvalues": "sharpness", "hessian_trace": "sharpness",
    "measure_sharpness": "sharpness", "top_eigenvalue": "sharpness", "TopEigenvalue": "sharpness",
    "block_sharpness": "sharpness", "sharpness_layers": "sharpness",
    "HessianOperator": "hessian", "lanczos": "hessian", "deflated_hutchinson": "hessian",
    "InterpolationCurve": "interpolation", "interpolate": "interpolation", "interpolate_state": "interpolation",
    "default_alphas": "interpolation",
    "Ablation": "ablation", "evaluate_ablation": "ablation", "local_change": "ablation", "relaxed_layers": "ablation",
    "Templates": "templates", "offlocal_templates": "templates", "unit_weights": "templates",
    "DistanceCurve": "distance", "distance_curve": "distance", "Gain": "distance", "final_gain": "distance",
    "read_metrics": "distance",
    "memory_table": "memory",
    "ANALYSES": "registry", "analysis_names": "registry", "register_analysis": "registry",
    "AnalysisSettings": "settings", "make_settings": "settings", "settings_from_spec": "settings",
    "analyse_experiment": "experiment", "AnalysisResults": "experiment",
    "Claim": "claims", "ClaimThresholds": "claims", "evaluate_claims": "claims", "format_claims": "claims",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archrelax.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"archrelax.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
