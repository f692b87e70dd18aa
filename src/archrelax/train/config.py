"""TrainConfig: one training run as plain data (JSON beside the run, a plain dict inside every checkpoint).

Every training setting is declared once, as a field below: its type (Literal types are the choices), its
default, and in the field's metadata (:func:`setting`) its help text, its command-line spelling, its range
check, where an experiment spec sets it, and whether it is part of a run's identity. Built from these
fields: the ``archrelax train`` options (``train/_cli.py``), the spec's ``train.*`` keys and the typing of
its top-level and ``cnn.*``/``relaxed.*`` keys (``protocol/spec.py``), the shared part of every planned
run's config and what its run id hashes (``protocol/plan.py``), and the table in ``docs/config.md``
(checked against these fields by a test).

Two kinds of fields are not part of what a run computes:

- ``runtime=True`` (:data:`RUNTIME_FIELDS`): how a run is watched, how often it saves, whether the memory
  guard may be overridden; never its numbers. A run may be resumed with other values of these, and they
  are left out of a planned run's id and identity.
- ``identity=False`` (:data:`NOT_IDENTITY`, which also holds every runtime field): ``snapshots``,
  ``snapshot_every_eval`` and the sharpness along training (``sharpness_products``, ``sharpness_samples``: a
  measurement that leaves the weights, the mode and the RNG as they were). Which epochs a run saves does not change
  its training trajectory, so it is left out of the *training identity* that a child run hashes (an eFCN started
  from the CNN's epoch-2 snapshot is the same run
  whatever other snapshots the CNN keeps). But it is not a runtime field: it is part of the run's own id
  (a CNN asked for one more snapshot is a new run, which must save it), and a run cannot be resumed with
  other snapshot epochs (those already passed would silently be missing; rows already written would lack
  λ_max, or have it from another subset).

A third flag concerns settings added after run ids existed: ``omit_default=True`` (:data:`OMIT_DEFAULT`, the
soft-release and sharpness fields) enters a planned run's id only when the value differs from the field's
default, so the plans of every older spec keep their ids (a run at the default computes what it always did).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from archrelax._typed import conforms, describe, yaml_load

__all__ = ["TrainConfig", "RUNTIME_FIELDS", "NOT_IDENTITY", "OMIT_DEFAULT", "SPEC_PLACES", "LOCKSTEP_FREE",
           "setting", "option_name", "soft_problem", "soft_target_problem", "missing_packages", "lockstep_key"]

# where an experiment spec sets a field: "train" (train.*), "top" (a top-level key), "stop" (cnn.* and
# relaxed.*), "relaxed" (relaxed.* only); None: set per run by the plan, or by the executor
SPEC_PLACES = ("train", "top", "stop", "relaxed", None)
Check = Callable[[Any], "str | None"]


def setting(default: Any, help: str, *, flag: str | None = None, group: str | None = None,
            check: Check | None = None, spec: str | None = None, runtime: bool = False,
            identity: bool = True, omit_default: bool = False, needs: str | None = None) -> Any:
    """A TrainConfig field with its declaration in the metadata.

    help: one line (``--help``, the spec's docs, docs/config.md). flag: the option's spelling when it is not
    ``--<name-with-dashes>`` ("" for a positional argument). group: its ``--help`` section. check:
    ``value -> None | "what is allowed"``, for a value already of the field's type (None never checked).
    spec: see :data:`SPEC_PLACES`. runtime / identity / omit_default: see the module docstring. needs: the
    optional package (an extra of the same name) a true value needs (:func:`missing_packages`).
    """
    if spec not in SPEC_PLACES:
        raise ValueError(f"setting spec={spec!r} is not one of {SPEC_PLACES}")
    meta = {"help": help, "flag": flag, "group": group, "check": check, "spec": spec, "runtime": runtime,
            "identity": identity and not runtime, "omit_default": omit_default, "needs": needs}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


# ---- range checks (the value already has the field's type) ---------------------------------------------


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a number > 0"


def _nonneg(v: Any) -> str | None:
    return None if v >= 0 else "a number >= 0"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "an integer >= 1"


def _times(v: Any, every: bool) -> str | None:
    """'log:N' (N >= 2), 'every' (evaluations only) or a list of epochs >= 0."""
    if isinstance(v, list):
        return None if all(t >= 0 for t in v) else "epochs >= 0"
    if (every and v == "every") or (v.startswith("log:") and v[4:].isdigit() and int(v[4:]) >= 2):
        return None
    return "'log:N' with an integer N >= 2, " + ("'every', " if every else "") + "or a list of epochs >= 0"


def _parses(parse: Callable[[Any], Any], v: Any, allowed: str) -> str | None:
    """None when ``parse`` accepts ``v``, else ``allowed``: the check of a setting whose owner parses it (each
    check below imports its parser when called, from the module that owns the spelling)."""
    try:
        parse(v)
    except ValueError:
        return allowed
    return None


def _augment(v: str | list[str]) -> str | None:
    from archrelax.data.feed import parse_augment  # the data feed owns the names

    return _parses(parse_augment, v, "'flip', 'crop', 'crop:PAD', 'crop:PAD:reflect'")


def _input_shape(v: str) -> str | None:
    from archrelax.models import parse_input_shape  # the registry owns the spelling

    return _parses(parse_input_shape, v, "CxHxW with positive integers, e.g. 3x32x32")


def _target(v: str) -> str | None:
    from archrelax.embed.targets import target_problem  # the lattice owns its target strings

    return target_problem(v)


def _soft_schedule(v: str) -> str | None:
    from .soft import FORMS, SoftSchedule

    return _parses(SoftSchedule.parse, v, FORMS)


@dataclass
class TrainConfig:
    """Everything that defines one training run. Defaults follow the paper's seed (SGD, constant lr)."""

    # model and its relaxation
    model: str = setting("vanilla_cnn", "registered model name (vanilla_cnn, alexnet, fcn, lcn, ...) or "
                         "'pkg.module:factory'", flag="", spec="top")
    model_kwargs: dict[str, Any] = setting({}, "model options, e.g. {\"width\": 32}; classes, channels and input "
                                           "size come from the data", spec="top")
    input_shape: str | None = setting(None, "the model's input shape CxHxW (e.g. 3x32x32), for a model that does not say "
                                      "it (no input_shape attribute, no in_channels/input_size options: torchvision's); "
                                      "it must equal the data's, and the factory then gets only num_classes from the "
                                      "data (default: the model says it)", check=_input_shape, spec="top",
                                      omit_default=True)
    relax: str | None = setting(None, "train the model's exact relaxation: lc (eLCN), fc (eFCN), wide:K, wide:KxK, "
                                "wide:full (locality released), tiled:T, tiled:TxT (sharing released in tiles), attn, "
                                "attn:alpha=A,dk=K (positional self-attention, one head per tap)",
                                check=_target, group="relaxation")
    relax_layers: list[str] | None = setting(None, "conv names/globs to relax (default: all)", group="relaxation",
                                             spec="top")
    init_from: str | None = setting(None, "snapshot whose weights start this run (embedded when relax is set); a "
                                    "relative path is read from the run folder", flag="--from", group="relaxation")
    optimizer_state: Literal["reset", "carry"] = setting(
        "reset", "with a snapshot to start from: a fresh optimiser, or its buffers carried through the embedding",
        group="relaxation", spec="relaxed")
    soft_lambda: float = setting(0.0, "soft release: λ(0) of the penalty λ(t)·‖θ − Pθ‖² added to the loss's gradient "
                                 "(0: off, the hard relaxation; with SGD keep lr·λ < 1 + momentum)", check=_nonneg,
                                 group="relaxation", spec="relaxed", omit_default=True)
    soft_schedule: str = setting("const", "λ(t) over the run's own epochs (0 = the switch): const, linear:E (0 at epoch "
                                 "E), exp:H (half-life H epochs), step:E (0 from epoch E)", check=_soft_schedule,
                                 group="relaxation", spec="relaxed", omit_default=True)
    soft_toward: Literal["cnn", "local", "shared"] = setting(
        "cnn", "subspace the penalty pulls toward: cnn (local and shared), local (locality only), shared (sharing only)",
        group="relaxation", spec="relaxed", omit_default=True)
    # data
    data: str = setting("mnist5k", "mnist5k | cifar10 | cifar100 | imagefolder:PATH | "
                        "synthetic[:CxHxW[:K[:NTRAIN[:NTEST]]]]", group="data", spec="top")
    data_root: str | None = setting(None, "folder holding or receiving the data set", group="data", spec="top")
    train_size: int | None = setting(None, "training subset size (default: all)", check=_positive, group="data",
                                     spec="top")
    test_size: int | None = setting(None, "test subset size (default: all)", check=_positive, group="data", spec="top")
    data_seed: int = setting(0, "seed of the subsets", group="data", spec="top")
    subset: Literal["stratified", "first"] = setting(
        "stratified", "how train_size/test_size pick images: stratified (class proportions kept, drawn by data_seed) "
        "or first (the first N in the source's stored order, as the paper's code; each class must appear)",
        group="data", spec="top", omit_default=True)
    augment: list[str] = setting([], "on-device batch augmentations, e.g. crop,flip", check=_augment, group="data",
                                 spec="train")
    # optimisation
    optimizer: Literal["sgd", "adam", "adamw"] = setting("sgd", "optimiser", flag="--opt", group="optimisation",
                                                         spec="train")
    lr: float = setting(0.1, "learning rate", check=_positive, group="optimisation", spec="train")
    momentum: float = setting(0.9, "SGD momentum (Adam's beta1 stays at its default)",
                              check=lambda v: None if 0 <= v < 1 else "0 <= momentum < 1", group="optimisation",
                              spec="train")
    weight_decay: float = setting(0.0, "weight decay", check=_nonneg, group="optimisation", spec="train")
    schedule: Literal["constant", "step", "cosine"] = setting("constant", "learning-rate schedule",
                                                              group="optimisation", spec="train")
    step_size: float | None = setting(30.0, "epochs between decays of the 'step' schedule (required by it)",
                                      check=_positive, group="optimisation", spec="train")
    gamma: float = setting(0.1, "decay factor of the 'step' schedule",
                           check=lambda v: None if 0 < v <= 1 else "0 < gamma <= 1", group="optimisation", spec="train")
    warmup_epochs: float = setting(0.0, "linear warm-up from 0 to lr over this many epochs", check=_nonneg,
                                   group="optimisation", spec="train")
    batch_size: int = setting(250, "batch size", check=_at_least_one, group="optimisation", spec="train")
    # length
    epochs: float | None = setting(100.0, "number of epochs (fractional allowed)", check=_nonneg,
                                   group="length and records", spec="stop")
    until_zero_loss: bool = setting(False, "stop at 100 % train accuracy (or train loss < loss_threshold); needs "
                                    "max_epochs", group="length and records", spec="stop")
    max_epochs: float | None = setting(None, "cap of an until-zero-loss run", check=_positive,
                                       group="length and records", spec="stop")
    loss_threshold: float | None = setting(None, "also stop when the train loss is below this", check=_positive,
                                           group="length and records", spec="stop")
    # what is recorded
    eval_times: str | list[float] = setting("log:20", "evaluations on the full train and test sets: log:N, every, "
                                            "or epochs like 0,1,5", check=lambda v: _times(v, every=True),
                                            group="length and records", spec="train")
    snapshots: str | list[float] = setting([], "snapshot epochs: log:N or epochs like 0,0.5,2",
                                           check=lambda v: _times(v, every=False), group="length and records",
                                           identity=False)
    snapshot_every_eval: bool = setting(False, "also a snapshot at every evaluation (what a switch time chosen from "
                                        "the evaluations, switch_times: auto, starts from)",
                                        group="length and records", identity=False, omit_default=True)
    seed: int = setting(0, "seed of initialisation and batch order", group="length and records")
    sharpness_products: int = setting(0, "λ_max of the training loss at every evaluation, from this many Hessian-vector "
                                      "products (Lanczos steps) warm-started from the previous evaluation's eigenvector "
                                      "(0: off); rows get lambda_max, lambda_max_residual, lambda_max_converged",
                                      check=lambda v: None if v >= 0 else "an integer >= 0 (0: off)", group="length and records", spec="stop", identity=False,
                                      omit_default=True)
    sharpness_samples: int = setting(256, "training images of the fixed subset (drawn by data_seed) whose mean loss "
                                     "sharpness_products measures, the same at every evaluation", check=_at_least_one,
                                     group="length and records", spec="stop", identity=False, omit_default=True)
    # how it runs
    device: str = setting("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps", group="execution", spec="train")
    amp: Literal["bf16"] | None = setting(None, "bf16 autocast (GPU)", group="execution", spec="train")
    compile: bool = setting(False, "torch.compile the model", group="execution", spec="train")
    progress: bool | None = setting(None, "progress bar (default: only when stderr is a terminal)", group="execution",
                                    runtime=True)
    tensorboard: bool = setting(False, "also log metrics to OUT/tensorboard", group="execution", spec="train",
                                runtime=True, needs="tensorboard")
    checkpoint_every_steps: int | None = setting(None, "also checkpoint every N steps (checkpoints are always "
                                                 "written at epoch ends)", check=_at_least_one, group="execution",
                                                 spec="train", runtime=True)
    checkpoint_every_s: float | None = setting(60.0, "checkpoint at least this often (seconds)", check=_positive,
                                               group="execution", spec="train", runtime=True)
    force_memory: bool = setting(False, "skip relax()'s memory guard, which refuses when the relaxed parameters alone "
                                 "would exceed the device's free memory (see archrelax footprint); the run may then "
                                 "fail out of memory", flag="--force", group="execution", spec="train", runtime=True)
    restart: Literal["intact", "scratch"] | None = setting(
        None, "when the run cannot resume as its folder stands (checkpoints/last.pt damaged, or metrics.jsonl lacking "
        "rows it was written after; a finished run whose log or final.pt is gone): train again from the latest intact "
        "snapshot whose rows the log holds (intact) or from step 0 (scratch); unset, the run stops and is marked "
        "'damaged'",
        group="execution", runtime=True)

    def __post_init__(self) -> None:
        for name, tp in _hints().items():  # a tuple where a list is meant (snapshots=(0, 1)): the same list
            value = getattr(self, name)
            if isinstance(value, tuple) and list in (typing.get_origin(tp), *map(typing.get_origin, typing.get_args(tp))):
                setattr(self, name, list(value))
        self._canonical()
        self.validate()

    def _canonical(self) -> None:
        """Target and schedule strings in their canonical spelling ('wide:05' is 'wide:5', 'exp:2.0' is
        'exp:2'), so that equal settings are equal configs (resume check, run ids); invalid ones are left for
        :meth:`validate` to name."""
        if isinstance(self.input_shape, (list, tuple)) or (isinstance(self.input_shape, str)
                                                             and _input_shape(self.input_shape) is None):
            from archrelax.models import format_input_shape, parse_input_shape

            try:
                self.input_shape = format_input_shape(parse_input_shape(self.input_shape))
            except ValueError:
                pass  # validate() names it
        from .schedule import parse_times  # "0,1" means the epochs [0, 1] here as on the command line

        for name in ("eval_times", "snapshots"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, parse_times(getattr(self, name)))
        if isinstance(self.relax, str) and _target(self.relax) is None:
            from archrelax.embed.targets import parse_target

            self.relax = parse_target(self.relax).spec
        if isinstance(self.soft_schedule, str) and _soft_schedule(self.soft_schedule) is None:
            from .soft import SoftSchedule

            self.soft_schedule = SoftSchedule.parse(self.soft_schedule).spec

    @classmethod
    def problem(cls, name: str, value: Any) -> str | None:
        """What is wrong with ``value`` for field ``name`` ('allowed: ...'), or None when it is valid."""
        f, tp = _fields()[name], _hints()[name]
        if not conforms(value, tp):
            return f"allowed: {describe(tp)}"
        check = f.metadata["check"]
        bad = check(value) if check is not None and value is not None else None
        return f"allowed: {bad}" if bad else None

    def validate(self) -> None:
        for name in _fields():
            bad = self.problem(name, getattr(self, name))
            if bad:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not valid; {bad}")
        if self.until_zero_loss:
            if self.max_epochs is None:
                raise ValueError("TrainConfig.until_zero_loss=True needs max_epochs > 0 (the cap), "
                                 f"got max_epochs={self.max_epochs!r}")
            if self.epochs is not None:
                raise ValueError(f"TrainConfig.epochs={self.epochs!r} with until_zero_loss=True: set epochs=None "
                                 "(max_epochs is the cap)")
        elif self.epochs is None:
            raise ValueError(f"TrainConfig.epochs={self.epochs!r}: give epochs >= 0, or until_zero_loss=True "
                             "with max_epochs")
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("TrainConfig.schedule='step' needs step_size (epochs between decays), got None")
        if self.init_from is None and self.optimizer_state == "carry":
            raise ValueError("TrainConfig.optimizer_state='carry' needs init_from (a snapshot to carry from)")
        bad = soft_problem(self.soft_lambda, self.optimizer, self.lr, self.momentum)
        if bad:
            raise ValueError(f"TrainConfig.soft_lambda={self.soft_lambda!r}: {bad}")
        bad = soft_target_problem(self.relax) if self.soft_lambda > 0 else None
        if bad:
            raise ValueError(f"TrainConfig.soft_lambda={self.soft_lambda!r} with relax={self.relax!r}: {bad}")

    def init_path(self, run_dir: str | os.PathLike) -> Path | None:
        """``init_from`` as a file (None when unset): a relative path is relative to the run folder ``run_dir``, so
        that a folder holding both, an experiment, trains from its own files wherever it is copied or moved."""
        if self.init_from is None:
            return None
        path = Path(self.init_from)
        return path if path.is_absolute() else Path(os.path.normpath(Path(run_dir) / path))

    @property
    def horizon(self) -> float:
        """Planned length in epochs (the cap for an until-zero-loss run)."""
        return float(self.max_epochs if self.until_zero_loss else self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # deep plain-data copy

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        valid = list(_fields())
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys are {valid}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        from archrelax.utils import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            return cls.from_dict(yaml_load(path.read_text()) or {})
        return cls.from_dict(json.loads(path.read_text()))


def missing_packages(config: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(field, package)]`` for each setting of ``config`` (plain data) whose value needs an optional package that
    is not installed here (``tensorboard: true`` without tensorboard). Checked before a run's folder is written
    (``archrelax train``, ``archrelax run``), not when a config is read: a run recorded with such a value may be
    resumed without it (they are runtime fields)."""
    import importlib.util

    out = []
    for f in dataclasses.fields(TrainConfig):
        pkg = f.metadata["needs"]
        if pkg and config.get(f.name) and importlib.util.find_spec(pkg) is None:
            out.append((f.name, pkg))
    return out


def soft_problem(lam: float, optimizer: str, lr: float, momentum: float) -> str | None:
    """Why λ = ``lam`` cannot be trained with this optimiser, or None. The penalty's curvature is 2λ on the
    released directions: SGD with heavy-ball momentum β is stable on it only while lr·2λ < 2(1 + β)."""
    if optimizer == "sgd" and lam > 0 and lam * lr >= 1 + momentum:
        return (f"with SGD, lr·λ = {lr:g}·{lam:g} = {lr * lam:g} >= 1 + momentum = {1 + momentum:g}, where the "
                f"penalty's own dynamics diverge (curvature 2λ); allowed: λ < {(1 + momentum) / lr:g} "
                "(lr·λ = 0.5 without momentum makes each step project exactly)")
    return None


def soft_target_problem(relax: str | None) -> str | None:
    """Why a soft release of target ``relax`` is not defined, or None. An attention layer's weight is the conv's
    weight itself, always in the CNN subspace: its penalty reads 0 (its reach is in α, the offsets and the content
    maps, which no projection of the lattice measures), so a soft attention run would silently train the hard
    one."""
    if isinstance(relax, str) and relax.split(":")[0] == "attn":
        return ("the soft release is not defined for attention (its weight is the conv's, always in the CNN subspace: "
                "the penalty reads 0); allowed: soft_lambda 0 (the hard release), or a lattice target (fc, lc, "
                "wide:K, tiled:T)")
    return None


@functools.cache
def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def option_name(f: dataclasses.Field) -> str:
    """The ``archrelax train`` spelling of a field: ``--lr``, ``--opt``, ``--from``; "" for the positional MODEL."""
    flag = f.metadata["flag"]
    return ("--" + f.name.replace("_", "-")) if flag is None else flag


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["runtime"])
NOT_IDENTITY = tuple(f.name for f in dataclasses.fields(TrainConfig) if not f.metadata["identity"])
OMIT_DEFAULT = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(TrainConfig) if f.metadata["omit_default"]}  # name -> default


# Fields in which runs trained in lockstep (archrelax.train.lockstep) may differ: where each starts, its batch order
# and initialisation, which epochs it saves; besides the runtime fields. Everything else fixes the shared loop.
LOCKSTEP_FREE = ("init_from", "seed", "snapshots")


def lockstep_key(config: "TrainConfig | dict[str, Any]") -> str:
    """Runs with equal keys can be trained in lockstep: their configs agree outside :data:`LOCKSTEP_FREE` and the
    runtime fields (plain data in, so the scheduler can group runs without importing torch)."""
    d = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    return json.dumps({k: v for k, v in d.items() if k not in LOCKSTEP_FREE and k not in RUNTIME_FIELDS},
                      sort_keys=True)
