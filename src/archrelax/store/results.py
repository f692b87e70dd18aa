"""The analysis results: one typed dataclass per ``EXPERIMENT/analysis/<name>.json``, read by attribute.

Written by ``archrelax.analysis.analyse_experiment``, read by the report (and by anything that draws claims
from an experiment). Every file is one JSON object: the common header of :class:`AnalysisResult`, then the
analysis's own fields. ``to_json()`` gives that object, ``from_json()`` checks and types it back: an unknown
or missing key, or a value of the wrong type, raises ValueError naming the field (a renamed field fails
loudly instead of reading as None).

Conventions: accuracies are fractions in [0, 1]; losses are mean cross-entropy in nats; epochs are floats on
the CNN's clock (``global_epoch``); bytes are ints; δ (``offlocal_ratio``) and ``cnn_distance`` are relative
norms as defined in ``archrelax.embed.subspace``. JSON has no NaN: a non-finite float is written as null and
read back as NaN in a ``float`` field (as None in a ``float | None`` field).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from .atomic import atomic_write_text
from .errors import StoreError

__all__ = [
    "Missing", "RunTag", "AnalysisResult",
    "BlockSharpness", "SharpnessPoint", "SharpnessResult", "DistanceRecord", "GainRecord", "DistanceResult",
    "Parts", "AblationRecord", "AblationResult", "TemplateRecord", "TemplatesResult",
    "Endpoint", "InterpolationRecord", "InterpolationResult", "MemoryRow", "MemoryResult",
    "RESULT_TYPES", "INTERPOLATION_METHODS", "INTERPOLATION_ENDPOINTS", "read_result", "write_result",
    "plain",
]

INTERPOLATION_METHODS = ("linear", "curvilinear", "output")
INTERPOLATION_ENDPOINTS = ("switch", "cnn_end", "efcn_end")


# ---- shared pieces --------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Missing:
    """A run an analysis skipped, and why (not finished, no snapshot, unreadable file, ...)."""

    run: str
    reason: str


@dataclass(kw_only=True)
class RunTag:
    """The keys every per-run record carries: which run, of which kind, seed and switch times."""

    run: str  # run id
    kind: str  # one of archrelax.store.plan.KINDS
    seed: int | None = None
    t_w: float | None = None  # switch epoch on the CNN's clock (relaxed runs)
    t_w2: float | None = None  # the run's own switch from another relaxed run (hierarchical runs, path steps)

    @property
    def switch(self) -> float | None:
        """The time this run left its parent on the CNN's clock: t_w2 when set (hier, path steps), else t_w."""
        return self.t_w2 if self.t_w2 is not None else self.t_w


@dataclass(kw_only=True)
class AnalysisResult:
    """The common header of every analysis file.

    ``fingerprint``: the cache key (a hash of the inputs' contents and the params; see
    ``archrelax.analysis.experiment``): the analysis is recomputed only when it changes. A result whose
    analysis failed as a whole has ``error`` set, ``fingerprint`` None (retried next time) and empty fields.
    """

    NAME: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1  # bumped when this analysis's format changes
    OLDEST: ClassVar[int] = 1  # the oldest version still read (its files lack only fields that have defaults)

    analysis: str = ""  # the name (file stem); filled in from the class
    version: int = 0  # filled in from the class
    params: dict[str, Any] = field(default_factory=dict)  # the analysis settings used
    fingerprint: str | None = None
    created: str = ""  # ISO time (UTC)
    missing: list[Missing] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        self.analysis = self.analysis or self.NAME
        self.version = self.version or self.VERSION

    def to_json(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> "AnalysisResult":
        where = where or f"{cls.NAME}.json"
        obj = _decode(cls, data, where)
        if obj.analysis != cls.NAME:
            raise ValueError(f"{where}: analysis {obj.analysis!r}, expected {cls.NAME!r}")
        if not cls.OLDEST <= obj.version <= cls.VERSION:
            readable = f"version {cls.VERSION}" if cls.OLDEST == cls.VERSION else f"versions {cls.OLDEST}-{cls.VERSION}"
            raise ValueError(f"{where}: format version {obj.version}, this archrelax reads {readable}")
        return obj


# ---- sharpness ------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class BlockSharpness:
    """Top eigenvalue of the Hessian restricted to one layer's parameters (the diagonal block H_LL)."""

    layer: str  # module path
    params: int  # parameters in the block
    eigenvalue: float  # nats
    residual: float  # ‖H_LL v − θv‖ / |θ|
    converged: bool  # residual ≤ √tol
    products: int  # Hessian-vector products of the block's Lanczos run


@dataclass(kw_only=True)
class SharpnessPoint(RunTag):
    """Hessian of the training loss at one checkpoint, on a fixed training subset (eval mode).

    Eigenvalues by Lanczos (``archrelax.analysis.hessian``): each carries its residual ‖Hv − θv‖, an
    eigenvalue of H lies within ``eig_bound[i]`` of ``eigenvalues[i]``; one that did not reach the tolerance
    is marked (``eig_converged_each``) and the claims leave it out. The trace is Hutchinson's estimate off the
    Lanczos basis, with its standard error.
    """

    where: Literal["snapshot", "final"]
    epoch: float  # global epoch of the checkpoint (CNN's clock)
    file: str  # the checkpoint, relative to the experiment folder
    loss: float  # training loss on the subset (nats)
    eigenvalues: list[float]  # top k by magnitude, largest first (nats)
    eig_iterations: int  # Hessian-vector products of the eigenvalue solve (all k together)
    eig_converged: bool  # all k reached ‖Hv − θv‖/|θ| ≤ √tol
    eig_residual: list[float]  # ‖Hv − θv‖/|θ| per eigenvalue
    trace: float  # estimate of tr(H) (nats)
    trace_stderr: float  # its standard error (nats)
    trace_probes: int  # Rademacher probes used
    eig_bound: list[float] = field(default_factory=list)  # ‖Hv − θv‖ per eigenvalue (nats); [] in synthetic files
    eig_converged_each: list[bool] = field(default_factory=list)  # per eigenvalue; [] = eig_converged for all
    trace_exact_dim: int = 0  # Lanczos vectors whose part of the trace, tr(VᵀHV), is exact (0: plain Hutchinson)
    blocks: list[BlockSharpness] = field(default_factory=list)  # per-layer sharpness (sharpness_blocks); else []

    @property
    def lambda_max(self) -> float:
        """The top eigenvalue (nats)."""
        return self.eigenvalues[0]

    @property
    def lambda_max_converged(self) -> bool:
        """Whether the top eigenvalue reached the tolerance (an unconverged one is no measurement)."""
        return bool(self.eig_converged_each[0]) if self.eig_converged_each else self.eig_converged


@dataclass(kw_only=True)
class SharpnessResult(AnalysisResult):
    """CNN points at every snapshot and at its end; every other finished run at its end only.

    Version 2: eigenvalues by Lanczos with their residual bounds, the trace deflated by the Lanczos basis.
    Version 1 files (power iteration, plain Hutchinson) still read, with the new fields at their defaults; their
    cache key differs, so ``analyse_experiment`` recomputes them.
    """

    NAME: ClassVar[str] = "sharpness"
    VERSION: ClassVar[int] = 2
    OLDEST: ClassVar[int] = 1
    points: list[SharpnessPoint] = field(default_factory=list)


# ---- distance -------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DistanceRecord(RunTag):
    """δ(t) and the CNN distance over training, at the evaluations that recorded both."""

    epoch: list[float]  # global epochs (CNN's clock)
    offlocal_ratio: list[float]  # δ = ‖off-local weights‖ / ‖all weights‖
    cnn_distance: list[float]  # ‖θ − P_CNN θ‖ / ‖θ‖


@dataclass(kw_only=True)
class GainRecord(RunTag):
    """Final test accuracy of a finished relaxed run minus its CNN's (fractions), beside its final distances."""

    cnn_run: str
    final_test_acc: float | None
    cnn_final_test_acc: float | None
    gain: float | None  # final_test_acc − cnn_final_test_acc
    final_offlocal_ratio: float | None
    final_cnn_distance: float | None


@dataclass(kw_only=True)
class DistanceResult(AnalysisResult):
    """δ(t) and the CNN distance over training of every run that records them; the final gain beside the final
    distances of every finished relaxed run."""

    NAME: ClassVar[str] = "distance"
    curves: list[DistanceRecord] = field(default_factory=list)
    gain: list[GainRecord] = field(default_factory=list)


# ---- ablation -------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Parts:
    """One value with both parts of the weights, the local part only, and the off-local part only."""

    both: float
    local: float
    offlocal: float


@dataclass(kw_only=True)
class AblationRecord(RunTag):
    test_acc: Parts  # fractions
    test_loss: Parts  # nats
    # per relaxed layer: ‖local(θ_end) − local(θ_switch)‖ / ‖local(θ_switch)‖ ({} when the snapshot is gone)
    local_change: dict[str, float]


@dataclass(kw_only=True)
class AblationResult(AnalysisResult):
    """Finished efcn, elcn and hier runs (an eLCN is all local: its off-local part is all-zero weights)."""

    NAME: ClassVar[str] = "ablation"
    runs: list[AblationRecord] = field(default_factory=list)


# ---- templates ------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TemplateRecord(RunTag):
    key: str  # array name in the .npz: <key> (K, C, H, W) in [0, 1] for display, <key>_raw the weights
    units: list[int]  # unit indices of the first relaxed layer
    offlocal_norm: list[float]  # norm of each unit's off-local weights


@dataclass(kw_only=True)
class TemplatesResult(AnalysisResult):
    """Units chosen on the first eFCN (largest off-local norm); the vanilla FCN shows the same indices."""

    NAME: ClassVar[str] = "templates"
    arrays: str | None = None  # the .npz beside the JSON (load with np.load(path, allow_pickle=False))
    layer: str | None = None  # module path of the first relaxed layer
    input_shape: list[int] | None = None  # [C, H, W]
    runs: list[TemplateRecord] = field(default_factory=list)


# ---- interpolation --------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Endpoint:
    label: Literal["switch", "cnn_end", "efcn_end"]
    source: str  # the checkpoint, relative to the experiment folder when inside it


@dataclass(kw_only=True)
class InterpolationRecord(RunTag):
    """Loss and accuracy along α in ``InterpolationResult.alphas`` from ``start`` (α = 0) to ``end`` (α = 1)."""

    start: Endpoint
    end: Endpoint
    method: Literal["linear", "curvilinear", "output"]
    train_loss: list[float]
    train_acc: list[float]
    test_loss: list[float]
    test_acc: list[float]


@dataclass(kw_only=True)
class InterpolationResult(AnalysisResult):
    """Weight-space (linear, curvilinear) and output-space curves between two endpoints, at the same ``alphas``."""

    NAME: ClassVar[str] = "interpolation"
    alphas: list[float] = field(default_factory=list)  # ≥ 11 in [0, 1], 0 and 1 included
    curves: list[InterpolationRecord] = field(default_factory=list)


# ---- memory ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MemoryRow:
    # "cnn", "lc", "fc", "fc_ref" (the reference code's eFCN with zero-padding columns), or another lattice target
    # of the plan ("wide:full", "tiled:2", ...: archrelax.embed.targets); version 1 files hold the first four only
    form: str
    params: int
    param_bytes: int
    optimizer_bytes: dict[str, int]  # optimiser name -> bytes of its state


@dataclass(kw_only=True)
class MemoryResult(AnalysisResult):
    NAME: ClassVar[str] = "memory"
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    input_shape: list[int] | None = None  # [C, H, W]
    rows: list[MemoryRow] = field(default_factory=list)
    footprint: dict[str, Any] | None = None  # Footprint.to_dict(): per-layer detail


# in the order analyse_experiment runs them (cheap first)
RESULT_TYPES: dict[str, type[AnalysisResult]] = {
    cls.NAME: cls for cls in (MemoryResult, DistanceResult, SharpnessResult, AblationResult, TemplatesResult,
                              InterpolationResult)
}


def read_result(path: str | os.PathLike, name: str | None = None) -> AnalysisResult | None:
    """The typed result in ``path`` (None when the file does not exist); :class:`StoreError` naming the file
    when it is not JSON or not that analysis's format."""
    path = Path(path)
    name = name or path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return RESULT_TYPES[name].from_json(json.loads(text), str(path))
    except KeyError:
        raise StoreError(path, f"{str(path)!r}: no analysis named {name!r}; known: {list(RESULT_TYPES)}") from None
    except ValueError as e:  # JSONDecodeError included
        raise StoreError(path, f"{str(path)!r} cannot be read as the {name} analysis: {e}") from None


def write_result(path: str | os.PathLike, result: AnalysisResult) -> None:
    atomic_write_text(path, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")


# ---- plain data <-> dataclasses -------------------------------------------------------------------------------
def plain(obj: Any) -> Any:
    """JSON-ready plain data, the one encoder of the files archrelax writes from dataclasses: dataclasses as
    dicts of their fields, tuples as lists, keys as strings, NaN/inf as None (JSON has no such numbers),
    numpy scalars as Python numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return plain(obj.item())
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _decode(inner[0], value, where)
        for a in inner:
            try:
                return _decode(a, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} is none of {inner}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object ({tp.__name__}), found {type(value).__name__}")
        hints = _HINTS.get(tp) or _HINTS.setdefault(tp, typing.get_type_hints(tp))
        names = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for {tp.__name__}; valid: {list(names)}")
        kw = {}
        for n, f in names.items():
            if n in value:
                kw[n] = _decode(hints[n], value[n], f"{where}.{n}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing key {n!r} of {tp.__name__}")
        return tp(**kw)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, found {type(value).__name__}")
        return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, found {type(value).__name__}")
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if value is None:
            return math.nan  # written for a non-finite float
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"{where}: no JSON decoding for {tp!r}")
    raise ValueError(f"{where}: expected {tp.__name__}, found {value!r}")
