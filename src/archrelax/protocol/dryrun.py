"""``archrelax run --dry-run``: what a run of a spec into a folder would do, and whether it could, writing nothing.

Everything :func:`archrelax.protocol.run_experiment` checks before it writes is checked the same way
(:func:`~archrelax.protocol.check_start`, the folder's spec by ``ExperimentFolder.check_spec``); then the plan
(each run with its kind, switch time, seed and, where its folder exists, status), the footprint of the model as a
CNN and as every target the plan relaxes it to (:func:`archrelax.embed.footprint.footprint`, the table of
``archrelax footprint``), and the verdict of ``relax()``'s memory guard for each relaxation the plan makes
(:func:`archrelax.embed.relax.memory_need` against :func:`~archrelax.embed.relax.available_memory` of the device
the runs train on). The model is built on the CPU from the data's shape (``archrelax.data.data_shape``: no data
is decoded, no cache written); nothing relaxed is allocated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import ExperimentFolder, SpecMismatchError, StoreError
from .plan import Run, make_plan
from .spec import RUNTIME_KEYS, ExperimentSpec, spec_to_dict
from .table import render

__all__ = ["dry_run"]

_BASELINE_TARGET = {"fcn": "fc", "lcn": "lc"}  # a baseline is its base CNN relaxed to this (models.baselines)


def dry_run(spec: ExperimentSpec, out_dir: str | Path, *, executor: str | None = None, workers: int | None = None,
            force: bool = False, detach: bool = False) -> tuple[str, bool]:
    """The report of ``archrelax run --dry-run`` and whether the run would start with every relaxation fitting
    (False: the folder holds another spec and ``force`` is off, or the guard would refuse a relaxation, or a
    relaxation cannot be made). Raises what :func:`~archrelax.protocol.run_experiment` raises before it writes
    (bad executor, workers, data, optional package). Reads ``out_dir`` if it exists; writes nothing anywhere."""
    from . import _normalised, check_start

    exp = ExperimentFolder(out_dir)
    plan = make_plan(spec)
    todo = check_start(spec, exp, plan, executor=executor, workers=workers, detach=detach)
    ok = True
    lines = [f"dry run: nothing is written. experiment folder {exp.root}"
             + ("" if exp.root.is_dir() else " (does not exist yet: `archrelax run` creates it)")]
    if not force:
        try:
            exp.check_spec(spec_to_dict(spec), normalise=_normalised, runtime=RUNTIME_KEYS)
        except (SpecMismatchError, StoreError) as e:
            ok = False
            lines.append(f"`archrelax run` would refuse this spec: {e}")
    lines += [f"in use by `archrelax run` {who}" for who in exp.sessions()]
    kind = executor or spec.executor
    n = workers if workers is not None else spec.workers
    lines.append(f"\nplan: {len(plan)} runs, {len(plan) - len(todo)} finished, {len(todo)} to run "
                 f"(executor {kind}" + (f", {n} worker{'s' if n != 1 else ''})" if kind == "local" else ")"))
    lines.append(_plan_table(exp, exp.with_switches(plan)))  # an auto run shows the time already chosen
    model, where = _model(plan)
    targets = _targets(plan)
    lines.append(f"\nfootprint of {where} (the CNN and each target it is relaxed to; archrelax footprint):")
    from archrelax.embed.footprint import footprint

    lines.append(str(footprint(model, None, to=("cnn", *dict.fromkeys(t for t, _ in targets)))))
    guard, fits = _guard(model, plan, targets, kind)
    lines.append("\nmemory guard (relax() refuses a relaxation whose layers would not fit on their device):")
    lines += guard
    return "\n".join(lines), ok and fits


def _plan_table(exp: ExperimentFolder, plan: dict[str, Run]) -> str:
    rows = []
    for run in plan.values():
        folder = exp.run(run.id)
        status = "-"  # no folder yet
        if folder.path.is_dir():
            try:
                status = folder.read_status().status
            except StoreError:
                status = "corrupt"
            if status == "running":  # its process may be gone (kill -9): as archrelax status shows it
                status = folder.live_state()
        tw = "" if run.t_w is None else f"{run.t_w:g}" + ("" if run.t_w2 is None else f">{run.t_w2:g}")
        if run.auto:  # chosen by its rule once the CNN is done
            tw = f"auto={tw}" if tw else f"auto:{run.auto}"
        rows.append([run.id, run.kind, tw, str(run.seed), status])
    return render(["run", "kind", "t_w", "seed", "status"], rows)


def _model(plan: dict[str, Run]) -> tuple[Any, str]:
    """The CNN every run of ``plan`` is made from, built on the CPU for the data's shape, and its description."""
    from archrelax.data import data_shape
    from archrelax.models import create_model
    from archrelax.train.config import TrainConfig
    from archrelax.train.setup import model_kwargs_for

    cnn = TrainConfig.from_dict(next(r for r in plan.values() if r.kind == "cnn").config)
    classes, shape = data_shape(cnn.data, cnn.data_root)
    model = create_model(cnn.model, input_shape=cnn.input_shape, **model_kwargs_for(cnn, classes, shape))
    return model, f"{cnn.model} on {'x'.join(map(str, shape))} inputs of {cnn.data!r}, {classes} classes"


def _targets(plan: dict[str, Run]) -> list[tuple[str, Run]]:
    """(target, run) of every run that relaxes: a relaxed run's own relaxation, a baseline's (fcn: "fc")."""
    out = []
    for run in plan.values():
        to = run.config.get("relax") or _BASELINE_TARGET.get(run.config["model"])
        if to is not None:
            out.append((to, run))
    return out


def _guard(model, plan: dict[str, Run], targets: list[tuple[str, Run]], executor: str) -> tuple[list[str], bool]:
    """One line per relaxation (target, layers, device) the plan makes: the bytes the guard counts, and whether
    they fit in the device's available memory."""
    import torch

    from archrelax.embed.footprint import human_bytes
    from archrelax.embed.relax import available_memory, memory_need
    from archrelax.utils import resolve_device

    def where(device: str) -> str:  # the device a local run resolves, else the reason it cannot
        if executor == "slurm":
            return device
        try:
            return str(resolve_device(device))
        except (ValueError, RuntimeError) as e:
            return f"!{device!r}: {e}"

    groups: dict[tuple, list[Run]] = {}
    for to, run in targets:
        cfg = run.config
        baseline = run.config["model"] in _BASELINE_TARGET
        # a baseline is relaxed inside its factory, on the CPU, before the model moves to its device
        device = "cpu" if baseline else where(cfg["device"])
        layers = cfg["model_kwargs"].get("layers") if baseline else cfg.get("relax_layers")
        key = (to, tuple(layers) if isinstance(layers, list) else layers, device, bool(cfg.get("force_memory")))
        groups.setdefault(key, []).append(run)
    lines, fits = [], True
    for (to, layers, device, forced), runs in groups.items():
        kinds = ", ".join(dict.fromkeys(r.kind for r in runs))
        what = f"  {to}" + (f" on layers {list(layers) if isinstance(layers, tuple) else layers}" if layers else "") \
            + f" ({kinds}: {len(runs)} run{'s' if len(runs) != 1 else ''})"
        try:
            need = sum(memory_need(model, to, None, list(layers) if isinstance(layers, tuple) else layers).values())
        except ValueError as e:  # the relaxation itself would fail: the runs would too
            fits = False
            lines.append(f"{what}: cannot be made: {e}")
            continue
        if forced:
            lines.append(f"{what}: needs {human_bytes(need)}; guard off (train.force_memory: true)")
            continue
        if executor == "slurm":
            lines.append(f"{what}: needs {human_bytes(need)} on {device} of the Slurm nodes (not checked here)")
            continue
        if device.startswith("!"):
            fits = False
            lines.append(f"{what}: needs {human_bytes(need)}; device {device[1:]}")
            continue
        dev = torch.device(device)
        free = available_memory(dev)
        if free is None:
            lines.append(f"{what}: needs {human_bytes(need)} on {dev}, whose free memory is unknown (not checked)")
        elif need > free:
            fits = False
            lines.append(f"{what}: needs {human_bytes(need)} on {dev}: does not fit ({human_bytes(free)} available; "
                         "relax() would refuse it: train.force_memory=true skips the guard)")
        else:
            lines.append(f"{what}: needs {human_bytes(need)} on {dev}: fits ({human_bytes(free)} available)")
    if not lines:
        lines.append("  no run relaxes a model")
    return lines, fits
