"""Memory table: parameter and optimiser-state bytes of a model as CNN, eLCN and eFCN (archrelax.embed.footprint)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archrelax.embed.footprint import OPTIMIZER_STATE, footprint
from archrelax.store.results import MemoryResult, MemoryRow, Missing

from .context import Context, cnn_checkpoint
from .registry import register_analysis

__all__ = ["memory_table"]


def memory_table(model: nn.Module, example_input: torch.Tensor | tuple[int, ...] | None = None,
                 targets: tuple[str, ...] = ("cnn", "lc", "fc")) -> dict[str, Any]:
    """``{"rows": [{"form", "params", "param_bytes", "optimizer_bytes": {opt: bytes}}], "footprint": {...}}``.

    Forms: ``targets`` ("cnn", "lc" (eLCN), "fc" (eFCN), and lattice strings such as "wide:full", "tiled:2"),
    plus "fc_ref" (the reference code's eFCN, padding columns kept) with "fc". Nothing relaxed is allocated;
    the model is left as it was (footprint restores buffers and RNG).
    """
    fp = footprint(model, example_input, to=targets)
    rows = [{"form": t, "params": fp.total_params(t), "param_bytes": fp.total_bytes(t),
             "optimizer_bytes": {o: fp.optimizer_bytes(t, o) for o in OPTIMIZER_STATE}} for t in fp.targets]
    return {"rows": rows, "footprint": fp.to_dict()}


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------

def cnn_arch(ctx: Context, ref) -> dict[str, Any]:
    """The CNN's resolved arch record: from one of its checkpoints, else rebuilt as the trainer does (the data
    set fixes num_classes, in_channels and input_size, (H, W) when the images are not square)."""
    from archrelax.train.checkpoint import load_checkpoint

    f = ctx.folder(ref)
    for p in [f.final_path, *(p for _, p in f.snapshots()), f.checkpoint_path]:
        if p.is_file():
            return dict(load_checkpoint(p)["arch"])
    splits = ctx.splits(ref)
    c, h, w = splits.input_shape
    kw = {**(ctx.config(ref).get("model_kwargs") or {}), "num_classes": len(splits.classes),
          "in_channels": int(c), "input_size": int(h) if h == w else [int(h), int(w)]}
    return {"model": ctx.config(ref).get("model", "vanilla_cnn"), "model_kwargs": kw}


def plan_targets(ctx: Context) -> tuple[str, ...]:
    """"cnn", "lc", "fc" and every other lattice target the plan's runs relax to ("wide:full", "tiled:2"), in order."""
    extra = [r.config.get("relax") for r in ctx.plan.values()]
    return ("cnn", "lc", "fc") + tuple(dict.fromkeys(t for t in extra if t and t not in ("lc", "fc")))


@register_analysis("memory", inputs=cnn_checkpoint, statuses=False)
def run(ctx: Context) -> MemoryResult:
    """Parameter and optimiser bytes of the experiment's CNN as CNN, eLCN, eFCN and every other lattice target of
    the plan (nothing relaxed is built)."""
    from archrelax.models import build_architecture

    ref = next(iter(ctx.of_kind("cnn")), None)
    if ref is None:
        return MemoryResult(missing=[Missing(run="-", reason="no CNN run in the plan")])
    arch = cnn_arch(ctx, ref)
    model = build_architecture({**arch, "relax_chain": []})
    table = memory_table(model, tuple(model.input_shape), targets=plan_targets(ctx))
    return MemoryResult(model=arch["model"], model_kwargs=arch.get("model_kwargs"),
                        input_shape=list(model.input_shape), rows=[MemoryRow(**r) for r in table["rows"]],
                        footprint=table["footprint"])
