"""The experiment spec: a typed, validated description of one relaxation experiment.

A spec is plain data (YAML on disk, nested dataclasses here). ``load_spec`` reads a file or a preset, applies
``--set a.b=value`` overrides typed through the dataclasses' annotations, and validates everything before any
run starts: unknown keys (with the closest valid key suggested), out-of-range values, switch times beyond
the CNN's training and model options the model's factory does not take are reported together, each naming
the key, the value and what is allowed.

The keys that are training settings take their type, check and help from the TrainConfig field of the
same name (:class:`~archrelax.train.TrainConfig`): ``train.*`` names every field whose metadata says
``spec="train"`` (checked at import), the top-level data/model keys and the ``cnn.*``/``relaxed.*`` stopping
rules theirs. Where an experiment's default differs from TrainConfig's (a bare ``archrelax train``), it is
listed in :data:`EXPERIMENT_DEFAULTS`, and nowhere else. Reading plain data into these dataclasses is the
generic parser's (:mod:`archrelax._parse`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .._parse import build, plain_copy, set_key
from .._typed import NO as _NO
from .._typed import conforms, yaml_load, yaml_problem
from ..store import SPEC_RUNTIME_KEYS
from ..store.switch import DEFAULT_RULE, canonical_rule, is_auto, rule_names
from ..train.config import TrainConfig, soft_problem, soft_target_problem
from .attention import is_attention
from .paths import PathStep, RelaxPath, parse_paths, parse_target_spec

__all__ = [
    "SpecError",
    "ExperimentSpec",
    "TrainOptions",
    "StopRule",
    "RelaxedOptions",
    "HierarchicalOptions",
    "SoftOptions",
    "AttentionOptions",
    "PathStep",
    "RelaxPath",
    "SlurmOptions",
    "EXPERIMENT_DEFAULTS",
    "RUNTIME_KEYS",
    "load_spec",
    "spec_from_dict",
    "spec_to_dict",
    "apply_overrides",
    "resolve_times",
    "list_presets",
    "preset_path",
    "parse_target_spec",
]

PRESET_DIR = Path(__file__).with_name("presets")
DATA_SOURCES = ("mnist5k", "cifar10", "cifar100", "synthetic[:CxHxW[:K[:NTRAIN[:NTEST]]]]", "imagefolder:PATH")

# The one table of experiment defaults that differ from TrainConfig's (those of a bare `archrelax train`).
# - train.lr, train.batch_size: the protocol's defaults since its first version, kept so that a spec that
#   leaves them out runs the experiment it always ran, under the same run ids.
# - train.step_size: null, i.e. required with `schedule: step` (no silent 30-epoch decay in an experiment;
#   also what keeps the run ids of every existing spec, whose plans hold step_size: null).
# - cnn.*, relaxed.*: the protocol trains each run to zero training loss, capped (a bare run: 100 epochs).
# - relaxed.lr, relaxed.eval_times: null means "as train.lr / train.eval_times".
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "train.lr": 0.05,
    "train.batch_size": 128,
    "train.step_size": None,
    "cnn.epochs": None,
    "cnn.until_zero_loss": True,
    "cnn.max_epochs": 100.0,
    "relaxed.epochs": None,
    "relaxed.until_zero_loss": True,
    "relaxed.max_epochs": 50.0,
    "relaxed.lr": None,
    "relaxed.eval_times": None,
}
_CONFIG = {f.name: f for f in dataclasses.fields(TrainConfig)}


class SpecError(ValueError):
    """An invalid experiment spec; ``problems`` lists every problem found (one line each)."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line
            super().__init__(f"invalid experiment spec ({source}): {self.problems[0]}")
            return
        head = f"invalid experiment spec ({source}): {len(problems)} problems"
        super().__init__(head + "\n  - " + "\n  - ".join(self.problems))


def _opt(default: Any, doc: str, check: Any = None, config: str | None = None) -> Any:
    """A spec field: default, one-line doc, ``check(value) -> "what is allowed" | None``, and the TrainConfig
    field it sets (``config``), if any."""
    meta = {"doc": doc, "check": check, "config": config}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _config_default(name: str) -> Any:
    f = _CONFIG[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _from_config(name: str, section: str, doc: str | None = None) -> Any:
    """The spec key ``section.name`` (``name`` at the top level when ``section`` is ""): TrainConfig field
    ``name``'s check and help, and its default unless :data:`EXPERIMENT_DEFAULTS` lists the key."""
    f = _CONFIG[name]
    key = f"{section}.{name}" if section else name
    default = EXPERIMENT_DEFAULTS[key] if key in EXPERIMENT_DEFAULTS else _config_default(name)
    return _opt(default, doc or f.metadata["help"], f.metadata["check"], config=name)


def _positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "a number > 0"


def _times_text(v: Any) -> str | None:
    """Switch times: epoch lists (which may hold 'auto' / 'auto:RULE'), 'log:N' (N >= 1 integer) or a bare auto."""
    from ..store.switch import SwitchError, canonical_rule, is_auto

    allowed = ("'log:N' with an integer N >= 1, or a list of epochs >= 0 and automatic times 'auto' "
               f"(rule {DEFAULT_RULE}) / " + ", ".join(f"'auto:{r}'" for r in rule_names()))
    for t in (v if isinstance(v, list) else [v]):
        if is_auto(t):
            try:
                canonical_rule(t)
            except SwitchError:
                return allowed
        elif isinstance(t, str):
            if not (isinstance(v, str) and t.startswith("log:") and t[4:].isdigit() and int(t[4:]) >= 1):
                return allowed
        elif t < 0:
            return allowed
    return None


@dataclass
class TrainOptions:
    """Options shared by every run of the experiment (CNN, relaxed runs, baselines): the TrainConfig fields
    marked ``spec="train"``, each with TrainConfig's type, check and help, and its default unless
    :data:`EXPERIMENT_DEFAULTS` lists ``train.<name>`` (:func:`_check_train_options` keeps the two in step)."""

    augment: list[str] = _from_config("augment", "train")
    optimizer: Literal["sgd", "adam", "adamw"] = _from_config("optimizer", "train")
    lr: float = _from_config("lr", "train")
    momentum: float = _from_config("momentum", "train")
    weight_decay: float = _from_config("weight_decay", "train")
    schedule: Literal["constant", "step", "cosine"] = _from_config("schedule", "train")
    step_size: float | None = _from_config("step_size", "train")
    gamma: float = _from_config("gamma", "train")
    warmup_epochs: float = _from_config("warmup_epochs", "train")
    batch_size: int = _from_config("batch_size", "train")
    eval_times: str | list[float] = _from_config("eval_times", "train")
    device: str = _from_config("device", "train")
    amp: Literal["bf16"] | None = _from_config("amp", "train")
    compile: bool = _from_config("compile", "train")
    tensorboard: bool = _from_config("tensorboard", "train")
    checkpoint_every_steps: int | None = _from_config("checkpoint_every_steps", "train")
    checkpoint_every_s: float | None = _from_config("checkpoint_every_s", "train")
    force_memory: bool = _from_config("force_memory", "train")


def _check_train_options(cls: type | None = None) -> None:
    """TrainOptions (or ``cls``) lists exactly the TrainConfig fields marked ``spec="train"``, in order, with their
    types (a default of null in EXPERIMENT_DEFAULTS makes the type optional): a field added to TrainConfig must be
    added here too, and importing the spec says so."""
    config, options = typing.get_type_hints(TrainConfig), typing.get_type_hints(cls or TrainOptions)
    want = {}
    for name, f in _CONFIG.items():
        if f.metadata["spec"] == "train":
            tp = config[name]
            none_default = EXPERIMENT_DEFAULTS.get(f"train.{name}", _NO) is None
            want[name] = typing.Optional[tp] if none_default and not conforms(None, tp) else tp
    if list(options.items()) != list(want.items()):
        raise TypeError(f"protocol.spec.TrainOptions must declare the TrainConfig fields marked spec='train', in "
                        f"order, with their types: {want}; it declares {options}")


_check_train_options()

# The spec keys that change no run (rerunning an experiment with other values of these is the same experiment,
# and spec.yaml takes the new ones): where and how runs execute, what is analysed afterwards (the store's
# SPEC_RUNTIME_KEYS), and the training settings that are runtime fields of TrainConfig (tensorboard, checkpoint
# frequency, the memory guard's override).
RUNTIME_KEYS: tuple[str, ...] = SPEC_RUNTIME_KEYS + tuple(
    f"train.{f.name}" for f in dataclasses.fields(TrainOptions) if _CONFIG[f.name].metadata["runtime"])


@dataclass
class StopRule:
    """How long a run trains: a fixed ``epochs``, or ``until_zero_loss`` capped at ``max_epochs`` (the CNN's
    defaults; see :class:`RelaxedOptions` for the relaxed runs'), and the phase's per-evaluation measures
    (``sharpness_products``: λ_max along training)."""

    epochs: float | None = _from_config("epochs", "cnn", "fixed length in epochs (null: use until_zero_loss)")
    until_zero_loss: bool = _from_config("until_zero_loss", "cnn")
    max_epochs: float | None = _from_config("max_epochs", "cnn", "cap when until_zero_loss")
    loss_threshold: float | None = _from_config("loss_threshold", "cnn",
                                                "train loss counted as zero (null: 100 % train accuracy)")
    sharpness_products: int = _from_config("sharpness_products", "cnn")
    sharpness_samples: int = _from_config("sharpness_samples", "cnn")

    def length(self) -> float | None:
        """The longest this rule can train (None when unbounded)."""
        return self.epochs if self.epochs is not None else self.max_epochs


@dataclass
class RelaxedOptions(StopRule):
    """Stopping rule and optimiser hand-over of the relaxed runs (eFCN, eLCN, hierarchical) and baselines."""

    epochs: float | None = _from_config("epochs", "relaxed", "fixed length in epochs (null: use until_zero_loss)")
    until_zero_loss: bool = _from_config("until_zero_loss", "relaxed")
    max_epochs: float | None = _from_config("max_epochs", "relaxed", "cap when until_zero_loss")
    loss_threshold: float | None = _from_config("loss_threshold", "relaxed",
                                                "train loss counted as zero (null: 100 % train accuracy)")
    sharpness_products: int = _from_config("sharpness_products", "relaxed")
    sharpness_samples: int = _from_config("sharpness_samples", "relaxed")
    optimizer_state: Literal["reset", "carry"] = _from_config(
        "optimizer_state", "relaxed", "fresh optimiser, or carry the CNN's embedded state")
    lr: float | None = _from_config("lr", "relaxed", "learning rate of relaxed runs (null: train.lr)")
    eval_times: str | list[float] | None = _from_config("eval_times", "relaxed",
                                                        "evaluations of relaxed runs (null: train.eval_times)")
    soft_lambda: float = _from_config("soft_lambda", "relaxed", "soft release of every relaxed run: λ(0) of the "
                                      "penalty toward soft_toward (0: off, the hard relaxation; see also 'soft')")
    soft_schedule: str = _from_config("soft_schedule", "relaxed")
    soft_toward: Literal["cnn", "local", "shared"] = _from_config("soft_toward", "relaxed")


@dataclass
class HierarchicalOptions:
    """The (t_w1, t_w2) grid of the 'lc>fc' target: CNN -> eLCN at t_w1 -> eFCN at t_w2 >= t_w1."""

    t_w1: list[float] | None = _opt(None, "eLCN switch times (null: the switch times)")
    t_w2: list[float] | None = _opt(None, "eFCN switch times on the CNN's clock (null: the switch times)")


TARGET_KINDS = "'fc' (eFCN), 'lc' (eLCN), 'lc>fc' (the hierarchical grid), 'cnn' (the CNN continued from its snapshot)"


_target_problem = _CONFIG["relax"].metadata["check"]  # TrainConfig.relax's: the lattice's target strings


def _targets(v: list[str]) -> str | None:
    bad = [t for t in v if t not in ("lc>fc", "cnn") and _target_problem(t) is not None]
    if not bad:
        return None
    from archrelax.embed.targets import TARGET_FORMS

    return f"{TARGET_KINDS}, or a lattice target: {TARGET_FORMS} (not {', '.join(map(repr, bad))})"


def _lambdas(v: list[float]) -> str | None:
    return None if all(x > 0 for x in v) else "numbers > 0 (λ = 0 is the hard relaxation: a target)"


def _schedules(v: list[str]) -> str | None:
    from archrelax.train.soft import FORMS, SoftSchedule

    for x in v:
        try:
            SoftSchedule.parse(x)
        except ValueError:
            return f"schedules {FORMS} (not {x!r})"
    return None


@dataclass
class SoftOptions:
    """Soft-release runs beside the hard ones: from every switch time, the relaxation ``target`` trained with
    the penalty λ(t)·‖θ − Pθ‖² toward ``toward``, one run per (λ in ``lambdas``, schedule in ``schedules``)."""

    target: str = _opt("fc", "the relaxation the soft runs train (a lattice target: fc, lc, wide:K, tiled:T, ...)",
                       _target_problem)
    toward: Literal["cnn", "local", "shared"] = _opt("cnn", "subspace the penalty pulls toward")
    lambdas: list[float] = _opt([], "λ(0) values (> 0); with SGD keep relaxed lr·λ < 1 + momentum", _lambdas)
    schedules: list[str] = _opt([], "λ(t) schedules: const, linear:E, exp:H, step:E (epochs after the switch)",
                                _schedules)

    def grid(self) -> list[tuple[float, str]]:
        """(λ, canonical schedule) of every soft run per switch time."""
        from archrelax.train.soft import SoftSchedule

        return [(float(lam), SoftSchedule.parse(s).spec) for lam in self.lambdas for s in self.schedules]


# α at the embedding of the protocol's attention runs whose target names none: the smallest that keeps the
# embedding within float32's 1e-6 of the CNN (leak e^(-α/2) = 1.1e-7), so that the attention's own gradients are
# e^(-16) rather than relax()'s exact-to-the-bit α = 80, whose e^(-40) leaves them at 1e-17 (docs/architecture.md,
# "The attention layer", for the measured trade-off)
PROTOCOL_ALPHA = 32.0


@dataclass
class AttentionOptions:
    """The attention runs (``attn`` targets): which convs they relax, and their α when the target names none.
    A conv's attention costs about :func:`~archrelax.embed.attention.attention_cost` times its conv (the
    attention's entries over the conv's multiply-adds); the runs relax the convs up to ``max_cost``."""

    layers: list[str] | None = _opt(None, "convs the attention runs relax (names/globs); null: every conv of "
                                    "relax_layers whose attention_cost is at most max_cost")
    max_cost: float = _opt(1.0, "largest attention_cost (the attention's heads × queries × keys per sample over the "
                           "conv's multiply-adds) of a conv the attention runs relax; VanillaCNN's first conv reads "
                           "5-25, its others 0.002-0.05", _positive)
    alpha: float = _opt(PROTOCOL_ALPHA, "α at the embedding of an 'attn' target that names none ('attn:alpha=A' "
                        "overrides it); relax()'s own default is 80 (exact to the bit, but the attention's gradients "
                        "are then 1e-17)", _positive)
    anneal_to: float | None = _opt(None, "the sharpness an 'attn' target that names no anneal is annealed to after the "
                                   "switch, linearly over anneal_steps ('attn:...,anneal_to=A,anneal_steps=N'); "
                                   "null: none, α stays at its embedding value, where the softmax is saturated and "
                                   "α, the offsets and the content maps barely move; on the lattice preset 8 "
                                   "moved them at the CNN's accuracy, 4 further at 0.6-0.8 points less "
                                   "(benchmarks/README.md)", _positive)
    anneal_steps: int = _opt(20, "the steps of that anneal (with anneal_to)",
                             lambda v: None if v >= 1 else "an integer >= 1")


@dataclass
class SlurmOptions:
    """Slurm resources (``executor: slurm``), passed to submitit.AutoExecutor."""

    cluster: Literal["slurm", "local", "debug"] = _opt("slurm", "submitit cluster ('local' runs jobs as local processes)")
    partition: str | None = _opt(None, "Slurm partition")
    account: str | None = _opt(None, "Slurm account")
    qos: str | None = _opt(None, "Slurm QOS")
    constraint: str | None = _opt(None, "Slurm constraint")
    gpus_per_node: int = _opt(1, "GPUs per job", lambda v: None if v >= 0 else "an integer >= 0")
    cpus_per_task: int = _opt(8, "CPUs per job", lambda v: None if v >= 1 else "an integer >= 1")
    mem_gb: float = _opt(32.0, "memory per job (GB)", _positive)
    timeout_min: int = _opt(720, "time limit per job (minutes)", lambda v: None if v >= 1 else "an integer >= 1")
    array_parallelism: int = _opt(64, "max simultaneous jobs of one array", lambda v: None if v >= 1 else "an integer >= 1")
    signal_delay_s: int = _opt(90, "seconds before the time limit that Slurm warns a job (USR2): the run "
                               "checkpoints and the job requeues itself", lambda v: None if v >= 1 else "an integer >= 1")
    max_num_timeout: int = _opt(3, "requeues after a time limit (a preemption notice always requeues)",
                                lambda v: None if v >= 0 else "an integer >= 0")
    setup: list[str] = _opt([], "shell lines run before each job (module load ..., source venv)")
    additional: dict[str, Any] = _opt({}, "further sbatch options, e.g. {exclude: node[1-3]}")


@dataclass
class ExperimentSpec:
    """One relaxation experiment: the CNN, its switch times, relaxation targets, baselines and seeds."""

    name: str = _opt("experiment", "experiment name (default output folder: experiments/<name>)")
    model: str = _from_config("model", "")
    model_kwargs: dict[str, Any] = _from_config("model_kwargs", "", "model options, e.g. {width: 64}; checked against "
                                                "the factory's parameters before any run starts")
    input_shape: str | None = _from_config("input_shape", "")
    data: str = _from_config("data", "", "data source: " + ", ".join(DATA_SOURCES))
    data_root: str | None = _from_config("data_root", "")
    train_size: int | None = _from_config("train_size", "")
    test_size: int | None = _from_config("test_size", "")
    data_seed: int = _from_config("data_seed", "")
    subset: Literal["stratified", "first"] = _from_config("subset", "")
    relax_layers: list[str] | None = _from_config("relax_layers", "", "layers to relax (names or globs; null: every conv)")
    seeds: list[int] = _opt([0], "training seeds: one CNN (and its relaxed runs) per seed")
    train: TrainOptions = field(default_factory=TrainOptions, metadata={"doc": "options shared by all runs"})
    cnn: StopRule = field(default_factory=StopRule, metadata={"doc": "how long the CNN trains"})
    relaxed: RelaxedOptions = field(default_factory=RelaxedOptions, metadata={"doc": "relaxed runs and baselines"})
    switch_times: Union[str, list[Union[float, str]]] = _opt(
        "log:6", "switch times t_w: 'log:N' (0 and N-1 log-spaced) or epochs; 'auto' / 'auto:RULE' in the list: the "
        "time a rule picks from the CNN's training (auto = peak-sharpness, the largest converged λ_max; needs "
        "cnn.sharpness_products > 0)", _times_text)
    switch_min: float = _opt(1.0, "smallest non-zero switch time of 'log:N'", _positive)
    targets: list[str] = _opt(["fc"], "relaxations from each switch time: fc, lc, lc>fc (the grid), cnn (the CNN "
                              "continued), wide:K, wide:full, tiled:T, attn (see 'attention')", _targets)
    hierarchical: HierarchicalOptions = field(default_factory=HierarchicalOptions, metadata={"doc": "the 'lc>fc' grid"})
    soft: SoftOptions = field(default_factory=SoftOptions, metadata={"doc": "soft-release runs from every switch time"})
    attention: AttentionOptions = field(default_factory=AttentionOptions,
                                        metadata={"doc": "the attention runs: their layers and α"})
    paths: list[dict[str, Any]] = _opt([], "relaxation paths: [{name, steps: [{at, to, layers}]}], per-layer switch "
                                       "times, each step from the previous step's run")
    baselines: list[Literal["fcn", "lcn"]] = _opt(["fcn"], "from-scratch baselines of the same size")
    analyses: list[str] = _opt([], "analyses to run afterwards (names from archrelax.analysis)")
    analysis_settings: dict[str, Any] = _opt({}, "costs of the analyses (fields of archrelax.analysis.AnalysisSettings), "
                                             "e.g. {sharpness_max_iter: 10, trace_probes: 4}")
    executor: Literal["local", "slurm"] = _opt("local", "where runs execute")
    workers: int = _opt(1, "local worker processes (one per GPU when there are GPUs)", lambda v: None if v >= 1 else "an integer >= 1")
    lockstep: bool = _opt(False, "train the runs that can share a process (one kind, configs equal apart from seed and "
                          "start snapshot) in one process on stacked weights, on the same batches (docs/protocol.md)")
    slurm: SlurmOptions = field(default_factory=SlurmOptions, metadata={"doc": "Slurm resources"})

    def switch_list(self) -> list[float]:
        """The fixed switch times (epochs on the CNN's clock), ascending; the automatic ones are :meth:`auto_rules`."""
        times = self.switch_times
        if isinstance(times, list):
            times = [t for t in times if not is_auto(t)]
        elif is_auto(times):
            times = []
        return resolve_times(times, self.cnn.length() or 0.0, self.switch_min)

    def auto_rules(self) -> list[str]:
        """The switch rules (:mod:`archrelax.store.switch`) of the automatic switch times, each once, in order: one
        relaxed run per target (and soft setting) from a time each rule picks along the CNN's training."""
        times = self.switch_times if isinstance(self.switch_times, list) else [self.switch_times]
        return list(dict.fromkeys(canonical_rule(t) for t in times if is_auto(t)))

    def grid(self) -> list[tuple[float, float]]:
        """The hierarchical (t_w1, t_w2) pairs with t_w1 <= t_w2 (empty unless 'lc>fc' is a target)."""
        if "lc>fc" not in self.targets:
            return []
        sw = self.switch_list()
        t1s = sorted(set(self.hierarchical.t_w1 if self.hierarchical.t_w1 is not None else sw))
        t2s = sorted(set(self.hierarchical.t_w2 if self.hierarchical.t_w2 is not None else sw))
        return [(a, b) for a in t1s for b in t2s if a <= b]

    def path_list(self) -> list[RelaxPath]:
        """The typed ``paths`` (a spec that passed validation has no problem here)."""
        problems: list[str] = []
        out = parse_paths(self.paths, problems)
        if problems:
            raise SpecError(problems)
        return out


def _round_sig(x: float, sig: int = 3) -> float:
    return 0.0 if x == 0 else round(x, sig - 1 - int(math.floor(math.log10(abs(x)))))


def resolve_times(times: str | list[float], end: float, t_min: float = 1.0) -> list[float]:
    """'log:N' -> 0 and N-1 times log-spaced from ``t_min`` to ``end`` (3 significant digits); lists pass through.

    >>> resolve_times("log:4", 8.0)
    [0.0, 1.0, 2.83, 8.0]
    """
    if isinstance(times, list):
        return sorted({float(t) for t in times})
    n = int(times[4:])
    if n == 1 or end <= 0:
        return [0.0]
    lo = min(t_min, end)
    if n == 2 or lo == end:
        return sorted({0.0, float(end)})
    ratio = (end / lo) ** (1.0 / (n - 2))
    return sorted({0.0} | {_round_sig(lo * ratio**i) for i in range(n - 1)})


def _available_analyses() -> tuple[str, ...]:
    from archrelax.analysis.registry import analysis_names  # light: imports no torch

    return analysis_names()


def _check_model(spec: ExperimentSpec) -> list[str]:
    """The model is registered (or its 'pkg.module:factory' imports) and its factory takes ``model_kwargs``
    plus what the trainer adds from the data; read from the factory's signature, nothing is built."""
    from archrelax.models import check_model_kwargs, get_factory, list_models

    name = spec.model
    if ":" in name:
        try:
            get_factory(name)
        except (ValueError, TypeError) as e:
            return [f"'model' = {name!r}: {e}"]
    elif name not in list_models():
        names = list_models()
        close = difflib.get_close_matches(name, names, n=1)
        return [f"'model' = {name!r} is not a registered model{'; did you mean ' + repr(close[0]) + '?' if close else ''} "
                f"(registered: {', '.join(sorted(names))}; or 'pkg.module:factory')"]
    try:
        check_model_kwargs(name, spec.model_kwargs, data_keys=True, input_shape=spec.input_shape is not None)
    except ValueError as e:
        return [f"'model_kwargs' = {_show_mapping(spec.model_kwargs)}: {e}"]
    return []


def _show_mapping(d: dict[str, Any]) -> str:
    return json.dumps(d, default=str)


def _show(v: Any) -> str:
    """Epoch lists as a user writes them: [0, 2.5, auto], not [0.0, 2.5, 'auto']."""
    return "[" + ", ".join(t if isinstance(t, str) else f"{t:g}" for t in v) + "]" if isinstance(v, list) else repr(v)


def _validate(spec: ExperimentSpec, problems: list[str]) -> None:
    """Cross-field rules: stopping rules, switch times within the CNN's training, grid, names."""
    for sec in ("cnn", "relaxed"):
        rule: StopRule = getattr(spec, sec)
        if rule.epochs is None and not rule.until_zero_loss:
            problems.append(f"'{sec}' trains forever: set '{sec}.epochs' or '{sec}.until_zero_loss: true'")
        if rule.epochs is not None and rule.until_zero_loss:
            problems.append(f"'{sec}.epochs' = {rule.epochs} and '{sec}.until_zero_loss' = true conflict; "
                            f"use '{sec}.max_epochs' to cap an until_zero_loss run, or set until_zero_loss: false")
        if rule.epochs is None and rule.until_zero_loss and rule.max_epochs is None:
            problems.append(f"'{sec}.max_epochs' = null with until_zero_loss: a number > 0 is required as a cap")
    if not spec.seeds:
        problems.append("'seeds' = [] is empty; allowed: a list of at least one integer")
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"'seeds' = {spec.seeds} repeats a seed; allowed: distinct integers")
    paths = parse_paths(spec.paths, problems)
    if not spec.targets and not spec.baselines and not paths and not spec.soft.grid():
        problems.append("'targets', 'baselines', 'paths' and 'soft' are all empty: nothing to compare the CNN with")
    if bool(spec.soft.lambdas) != bool(spec.soft.schedules):
        problems.append(f"'soft' has lambdas {spec.soft.lambdas} and schedules {spec.soft.schedules}: soft runs are "
                        "their product; allowed: both empty (no soft runs) or both non-empty")
    lr = spec.relaxed.lr if spec.relaxed.lr is not None else spec.train.lr
    _check_soft_attention(spec, problems)
    for key, lam in [("relaxed.soft_lambda", spec.relaxed.soft_lambda)] + [("soft.lambdas", x) for x in spec.soft.lambdas]:
        bad = soft_problem(lam, spec.train.optimizer, lr, spec.train.momentum)
        if bad:
            problems.append(f"'{key}' = {lam:g}: {bad}")
    if not (spec.data in ("mnist5k", "cifar10", "cifar100", "synthetic")
            or spec.data.startswith(("imagefolder:", "synthetic:"))):
        problems.append(f"'data' = {spec.data!r} is not a data source; allowed: {', '.join(DATA_SOURCES)}")
    problems += _check_model(spec)
    if spec.train.schedule == "step" and spec.train.step_size is None:
        problems.append("'train.schedule' = 'step' needs 'train.step_size' (epochs between decays); allowed: a number > 0")
    known = _available_analyses()
    for a in spec.analyses:
        if a not in known:
            close = difflib.get_close_matches(a, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"'analyses' has unknown analysis {a!r}{hint} (allowed: {', '.join(known)})")
    if spec.analysis_settings:
        try:
            from archrelax.analysis.experiment import make_settings

            make_settings(dict(spec.analysis_settings), where="'analysis_settings'")
        except ValueError as e:
            problems.append(str(e))
    _check_auto(spec, problems)
    end = spec.cnn.length()
    if end is None:
        return
    if isinstance(spec.switch_times, list) and not spec.switch_times and spec.targets:
        problems.append("'switch_times' = [] is empty while 'targets' is set; allowed: 'log:N' or a list of epochs")
    late = [t for t in spec.switch_list() if t > end]
    if late:
        problems.append(f"'switch_times' = {_show(spec.switch_times)} has {_show(late)} after the end of CNN training "
                        f"(epoch {end:g}, from 'cnn.{'epochs' if spec.cnn.epochs is not None else 'max_epochs'}'); "
                        f"allowed: times in [0, {end:g}]")
    for key in ("t_w1", "t_w2"):
        ts = getattr(spec.hierarchical, key) or []
        late = [t for t in ts if t > end or t < 0]
        if late:
            problems.append(f"'hierarchical.{key}' = {_show(ts)} has {_show(late)} outside CNN training; allowed: times in [0, {end:g}]")
    grid = spec.grid()
    if "lc>fc" in spec.targets and not grid:
        problems.append(f"'hierarchical' grid is empty: no t_w1 <= t_w2 among t_w1 = {spec.hierarchical.t_w1} and "
                        f"t_w2 = {spec.hierarchical.t_w2}; allowed: at least one pair with t_w1 <= t_w2")
    relaxed_end = spec.relaxed.length()
    for p in paths:
        late = [st.at for st in p.steps if st.at > end]
        if late:
            problems.append(f"'paths' {p.name!r} switches at {_show(late)} after the end of CNN training; allowed: "
                            f"times in [0, {end:g}]")
        gaps = [(a.at, b.at) for a, b in zip(p.steps, p.steps[1:]) if relaxed_end is not None and b.at - a.at > relaxed_end]
        if gaps:
            problems.append(f"'paths' {p.name!r} steps {', '.join(f'{a:g} -> {b:g}' for a, b in gaps)} need a run to "
                            f"train more than the relaxed runs' length {relaxed_end:g} epochs; allowed: steps at most "
                            f"{relaxed_end:g} apart, or raise 'relaxed.max_epochs' / 'relaxed.epochs'")
    too_far = [(a, b) for a, b in grid if relaxed_end is not None and b - a > relaxed_end]
    if too_far:
        pairs = ", ".join(f"({a:g}, {b:g})" for a, b in too_far)
        problems.append(f"'hierarchical' pairs {pairs} need the eLCN to train t_w2 - t_w1 > {relaxed_end:g} epochs "
                        f"(the relaxed runs' length); allowed: t_w2 - t_w1 <= {relaxed_end:g}, or raise 'relaxed.max_epochs'")


def _check_auto(spec: ExperimentSpec, problems: list[str]) -> None:
    """Automatic switch times are chosen from λ_max along the CNN's training: the CNN must measure it. (Its snapshot
    at every evaluation, so that any chosen time has one, the plan switches on itself: TrainConfig
    ``snapshot_every_eval``.)"""
    if not spec.auto_rules():  # an invalid value was not set: the default has none
        return
    products = spec.cnn.sharpness_products
    what = f"'switch_times' = {_show(spec.switch_times)} asks for a time chosen from λ_max along the CNN's training"
    if not products > 0:
        problems.append(f"{what}, and 'cnn.sharpness_products' = {products} measures none; allowed: "
                        "cnn.sharpness_products > 0 (e.g. 20: Hessian-vector products per λ_max estimate at every "
                        "CNN evaluation), or fixed switch times")
    if spec.targets == ["lc>fc"] and not spec.soft.grid():
        problems.append(f"{what}, but only the 'lc>fc' grid is a target, which uses fixed times only; allowed: an "
                        "automatic time with a target such as fc, lc, cnn, wide:K, or a soft section")


def _check_soft_attention(spec: ExperimentSpec, problems: list[str]) -> None:
    """A soft release is not defined for attention (TrainConfig refuses it): say so before anything runs."""
    if spec.soft.grid() and is_attention(spec.soft.target):
        problems.append(f"'soft.target' = {spec.soft.target!r}: {soft_target_problem(spec.soft.target)}")
    attn = [t for t in spec.targets if is_attention(t)] + [st.to for p in parse_paths(spec.paths, []) for st in p.steps
                                                       if is_attention(st.to)]
    if spec.relaxed.soft_lambda > 0 and attn:
        problems.append(f"'relaxed.soft_lambda' = {spec.relaxed.soft_lambda:g} makes every relaxed run soft, and the "
                        f"attention runs ({', '.join(map(repr, dict.fromkeys(attn)))}) cannot be: "
                        f"{soft_target_problem(attn[0])}; or keep relaxed.soft_lambda 0 and list the soft runs "
                        "of other targets in the 'soft' section")


def spec_from_dict(data: dict[str, Any], source: str = "spec") -> ExperimentSpec:
    """Typed, validated spec from plain data; raises :class:`SpecError` listing every problem."""
    problems: list[str] = []
    spec = build(ExperimentSpec, data, problems)
    _validate(spec, problems)  # also after field problems (those keys kept their defaults): report everything
    if problems:
        raise SpecError(problems, source)
    return spec


def spec_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to plain spec data (values parsed as YAML, numbers in any ordinary notation
    such as 1e-3; 'fc,lc' is a list).

    Typing and range checks happen in :func:`spec_from_dict`, which sees the merged data.
    """
    data = plain_copy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError([f"override {item!r} is not key=value (e.g. train.lr=0.1 or seeds=[0,1,2])"], "--set")
        key, raw = item.split("=", 1)
        try:
            set_key(ExperimentSpec, data, key.strip(), raw)
        except ValueError as e:
            raise SpecError([str(e)], "--set") from None
    return data


def list_presets() -> list[str]:
    """Names of the packaged presets (``archrelax run --preset NAME``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = list_presets()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(f"no preset named {name!r}{hint} (presets: {', '.join(names)})")
    return path


def load_spec(path: str | Path | None = None, *, preset: str | None = None,
              overrides: list[str] = ()) -> ExperimentSpec:
    """Read a spec file (or a preset, or the defaults when both are None), apply overrides, validate."""
    if path is not None and preset is not None:
        raise ValueError("give a spec file or a preset, not both")
    src = Path(path) if path is not None else (preset_path(preset) if preset is not None else None)
    data: Any = {}
    if src is not None:
        if src.is_dir():
            src = src / "spec.yaml"
        if not src.is_file():
            raise FileNotFoundError(f"spec file {str(src)!r} does not exist")
        text = src.read_text(encoding="utf-8")
        try:
            data = yaml_load(text) or {}
        except yaml.YAMLError as e:
            raise SpecError([f"not valid YAML: {yaml_problem(e, text)}"], str(src)) from None
        if not isinstance(data, dict):
            raise SpecError([f"the file must hold a mapping of keys, got {type(data).__name__}"], str(src))
    try:
        data = apply_overrides(data, list(overrides))
        return spec_from_dict(data, str(src) if src else "defaults")
    except SpecError as e:
        if overrides and e.args[0].startswith("invalid experiment spec (--set)"):
            raise
        raise SpecError(e.problems, (str(src) if src else "defaults") + (" + --set" if overrides else "")) from None
