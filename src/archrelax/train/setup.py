"""Setting a run up: its data, feeds and optimiser, and its model, fresh, from a snapshot or resumed.

:func:`set_up` is the one entry: a run folder with ``checkpoints/last.pt`` resumes from it (weights, optimiser
buffers, the torch RNG: the checkpoint's own ``arch`` record rebuilds the model); otherwise the model is built
afresh from ``cfg.model`` or from the snapshot ``cfg.init_from``, embedded when ``cfg.relax`` is set. What the
run's *folder* takes from a checkpoint (the step, the metrics rows, the clocks) is the recorder's
(:meth:`archrelax.train.recorder.Recorder.attach`).

Optimiser state when continuing a snapshot (``init_from``): ``"reset"`` (default) starts the optimiser
afresh. The CNN's momentum / Adam moments live in the shared-parameter space: they are statistics of each
*shared* weight, whose gradient sums the gradients of every position that uses it. Embedded into the eFCN,
each tied entry would inherit the whole shared statistic, which no eFCN trained from its own gradients would
hold. Resetting makes the relaxed run start the same way as the from-scratch baseline, which is the paper's
protocol. ``"carry"`` maps the buffers through the same embedding (``archrelax.embed.transfer``, keyed by
parameter name) for those who want the continuation to be seamless.

The training RNG stream: a fresh run seeds torch with ``cfg.seed`` after its model is made (however it was
made), a resumed one restores the checkpoint's state; so the first update draws the same numbers either way.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from archrelax.store import RunFolder

from .checkpoint import load_checkpoint, resume_point, rng_state, set_rng_state
from .config import TrainConfig

__all__ = ["RunState", "set_up", "load_run_data", "model_kwargs_for", "make_feeds", "make_optimizer", "determinism", "has_relaxed"]


@dataclass
class RunState:
    """A run's model side as set-up leaves it: the model (train mode) on its device, ``forward`` (the model, or
    its ``torch.compile`` wrapper), the optimiser over ``model.named_parameters()`` in order, the architecture
    record (``models.build_architecture``), the epoch offset inherited from ``init_from`` (a hierarchical run's
    times are on the CNN's clock), and ``checkpoint``: the checkpoint the run resumed from (None: fresh)."""

    model: nn.Module
    forward: Callable[..., torch.Tensor]
    opt: torch.optim.Optimizer
    arch: dict[str, Any]
    device: torch.device
    global_offset: float = 0.0
    checkpoint: dict[str, Any] | None = None

    def weights(self, with_optimizer: bool = True) -> dict[str, Any]:
        """The model side of a checkpoint: ``{"model", "optimizer" (None unless ``with_optimizer``),
        "param_names" (the optimiser's order), "arch", "rng"}`` (the recorder adds the run's progress)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict() if with_optimizer else None,
                "param_names": [n for n, _ in self.model.named_parameters()], "arch": self.arch,
                "rng": rng_state(self.device)}


def set_up(cfg: TrainConfig, folder: RunFolder, data, device: torch.device) -> RunState:
    """The model side of the run in ``folder``: resumed from its ``checkpoints/last.pt`` when there is one, else
    built afresh (from ``cfg.init_from`` when set) for ``data`` (a DataSplits: classes and input shape)."""
    # last.pt verified (on the CPU: RNG states must stay there), and the folder's config and log agreeing with it
    ck = resume_point(folder, cfg.restart, config=cfg)
    if ck is not None:
        return _resumed(cfg, ck, device)
    return _fresh(cfg, data, device, folder)


def load_run_data(cfg: TrainConfig):
    """The DataSplits ``cfg`` trains on (``archrelax.data.load_data`` with the config's data settings)."""
    from archrelax.data import load_data

    return load_data(cfg.data, cfg.data_root, train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.data_seed,
                     subset=cfg.subset)


def make_feeds(cfg: TrainConfig, data, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """A run's shuffled training feed (seeded by ``cfg.seed``) and its evaluation feeds ``{"train", "test"}`` over
    ``data`` (a DataSplits; images already on ``device`` are not copied)."""
    from archrelax.data import BatchFeed

    feed_kw = dict(mean=data.mean, std=data.std, device=device)
    feed = BatchFeed(data.train.images, data.train.labels, cfg.batch_size, shuffle=True, seed=cfg.seed,
                     augment=tuple(cfg.augment), **feed_kw)
    eval_bs = max(cfg.batch_size, 500)
    eval_feeds = {split: BatchFeed(s.images, s.labels, eval_bs, shuffle=False, **feed_kw)
                  for split, s in (("train", data.train), ("test", data.test))}
    return feed, eval_feeds


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over ``model.named_parameters()`` in order (checkpoints record that order).

    Fused kernels where torch has them: one pass over memory instead of several, which matters for the
    eFCN's tens of millions of weights (on CPU, SGD ~1.2x and Adam ~5x faster per step).
    """
    params = [p for _, p in model.named_parameters()]
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return cls(params, **kw)


@contextlib.contextmanager
def determinism(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where they are not already (CUDA); restored afterwards (it is process-global)."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]


def has_relaxed(model: nn.Module) -> bool:
    """Whether ``model`` holds a relaxed layer (an eLCN, eFCN, wide or tiled layer)."""
    from archrelax.embed import RelaxedConv

    return any(isinstance(m, RelaxedConv) for m in model.modules())


def model_kwargs_for(cfg: TrainConfig, num_classes: int, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """The factory arguments of ``cfg.model`` for data of ``num_classes`` classes and (C, H, W) ``image_shape``
    (``create_model(cfg.model, input_shape=cfg.input_shape, **kw)``): the config's ``model_kwargs`` with the data's
    (``models.data_kwargs``); a ``cfg.input_shape`` other than the data's is a ValueError."""
    from archrelax.models import data_kwargs, format_input_shape, parse_input_shape

    shape = tuple(int(s) for s in image_shape)
    if cfg.input_shape is not None and parse_input_shape(cfg.input_shape) != shape:
        raise ValueError(f"input_shape {cfg.input_shape} but the data {cfg.data!r} has images of shape "
                         f"{format_input_shape(shape)}; give --input-shape {format_input_shape(shape)} (the model is "
                         "built for the data it trains on)")
    return {**cfg.model_kwargs, **data_kwargs(cfg.model, num_classes, shape, input_shape=cfg.input_shape is not None,
                                              kwargs=cfg.model_kwargs)}


# ---- the three starts --------------------------------------------------------------------------------------
def _fresh(cfg: TrainConfig, data, device: torch.device, folder: RunFolder) -> RunState:
    from archrelax.models import create_model

    kw = model_kwargs_for(cfg, len(data.classes), data.train.images.shape[1:])
    torch.manual_seed(cfg.seed)
    snap, offset = None, 0.0
    if cfg.init_from is not None:
        snap = load_checkpoint(cfg.init_path(folder.path))
        src, arch = _source_from_snapshot(cfg, snap, kw)
        offset = float(snap.get("global_epoch", snap["epoch"]))
    else:
        src = create_model(cfg.model, input_shape=cfg.input_shape, **kw)
        arch = {"model": cfg.model, "model_kwargs": kw, "relax_chain": [], "relax_layers": None}
        if cfg.input_shape is not None:  # only then: the arch records of every other model stay as they were
            arch["input_shape"] = cfg.input_shape
    src = src.to(device)
    if cfg.relax is not None:
        from archrelax.embed.relax import relax
        from archrelax.models import add_relax_step

        model = relax(src, to=cfg.relax, example_input=torch.zeros(1, *src.input_shape, device=device),
                      layers=cfg.relax_layers, force=cfg.force_memory)
        arch = add_relax_step(arch, cfg.relax, cfg.relax_layers)
    else:
        model = src
    if cfg.soft_lambda > 0 and not has_relaxed(model):
        raise ValueError(f"soft_lambda={cfg.soft_lambda:g} but the model has no relaxed layer for the penalty to act "
                         "on; set relax (e.g. 'fc'), or start from a relaxed snapshot")
    model.train()
    opt = make_optimizer(cfg, model)
    if snap is not None and cfg.optimizer_state == "carry":
        opt.load_state_dict(_carried_state(cfg, snap, src, model, opt, device))
    del src
    torch.manual_seed(cfg.seed)  # the training RNG stream starts the same however the model was made
    return RunState(model, _forward(cfg, model), opt, arch, device, global_offset=offset)


def _resumed(cfg: TrainConfig, ck: dict[str, Any], device: torch.device) -> RunState:
    from archrelax.models import build_architecture

    model = build_architecture(ck["arch"], force=cfg.force_memory).to(device)
    model.load_state_dict(ck["model"])
    model.train()
    opt = make_optimizer(cfg, model)
    opt.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"], device)
    return RunState(model, _forward(cfg, model), opt, ck["arch"], device,
                    global_offset=ck["global_epoch"] - ck["epoch"], checkpoint=ck)


def _forward(cfg: TrainConfig, model: nn.Module) -> Callable[..., torch.Tensor]:
    return torch.compile(model) if cfg.compile else model


def _source_from_snapshot(cfg: TrainConfig, snap: dict, kw: dict) -> tuple[nn.Module, dict]:
    from archrelax.models import build_architecture

    arch = dict(snap["arch"])
    if arch["model"] != cfg.model:
        raise ValueError(f"init_from {cfg.init_from!r} holds model {arch['model']!r} but the config says "
                         f"model={cfg.model!r}; use the snapshot's model name")
    bad = {k: (v, arch["model_kwargs"].get(k)) for k, v in kw.items() if arch["model_kwargs"].get(k) != v}
    if bad:
        raise ValueError(f"init_from {cfg.init_from!r} was built with other model/data settings "
                         f"{{key: (this run, snapshot)}} = {bad}")
    # a relaxation may select other layers than the snapshot's chain did (a path: features.0 at t1,
    # features.3 at t2): the arch record keeps one selection per step (models.relax_steps)
    src = build_architecture(arch, force=cfg.force_memory)
    src.load_state_dict(snap["model"])
    return src, arch


def _carried_state(cfg: TrainConfig, snap: dict, source: nn.Module, model: nn.Module,
                   opt: torch.optim.Optimizer, device: torch.device) -> dict:
    """The snapshot's optimiser state re-keyed by parameter name and embedded into ``model``'s shapes (through the
    same move up the lattice that ``relax`` made from ``source``, the snapshot's model)."""
    from archrelax.embed.relax import transfer

    snap_opt = snap.get("optimizer")
    if snap_opt is None:
        raise ValueError(f"optimizer_state='carry' but {cfg.init_from!r} holds no optimiser state")
    if snap["config"].get("optimizer") != cfg.optimizer:
        raise ValueError(f"optimizer_state='carry': the snapshot used optimizer={snap['config'].get('optimizer')!r}, "
                         f"this run optimizer={cfg.optimizer!r}; buffers of one cannot drive the other")
    names = snap["param_names"]
    by_name = {names[i]: s for i, s in snap_opt["state"].items()}
    keys = {k for s in by_name.values() for k, v in s.items() if torch.is_tensor(v) and v.dim() > 0}
    mapped = {k: {n: s[k].to(device) for n, s in by_name.items() if k in s} for k in keys}
    if cfg.relax is not None:
        mapped = {k: transfer(tensors, model, source=source) for k, tensors in mapped.items()}
    state = {}
    for i, (name, _) in enumerate(model.named_parameters()):
        if name in by_name:
            state[i] = {k: (mapped[k][name] if k in mapped else v) for k, v in by_name[name].items()}
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}
