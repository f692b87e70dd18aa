"""Local versus off-local ablation of a relaxed network, and how far its local blocks moved since the switch.

The seed's finding: an eFCN's off-local part alone is useless, but together with the local part it helps.
``ablate`` (archrelax.embed) zeroes one part of every relaxed layer's weights in a copy of the model.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from archrelax.embed import ablate, relaxed_layers

from archrelax.store.results import AblationRecord, AblationResult, Missing, Parts

from ._common import Metrics, evaluate
from .context import RELAXED_KINDS, Context, guard, weight_files
from .pool import run_jobs
from .registry import register_analysis

__all__ = ["Ablation", "evaluate_ablation", "relaxed_layers", "local_change"]


@dataclasses.dataclass(frozen=True)
class Ablation:
    """Metrics of the full model, of its local part only and of its off-local part only."""

    both: Metrics
    local: Metrics
    offlocal: Metrics


def evaluate_ablation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int | None = 256) -> Ablation:
    """Evaluate ``model`` on (x (N, C, H, W) normalised, y (N,)) with both parts, local only, off-local only."""
    if not relaxed_layers(model):
        raise ValueError(f"{type(model).__name__} has no relaxed layer (RelaxedConv); ablation needs an eLCN/eFCN")
    return Ablation(
        both=evaluate(model, x, y, batch_size),
        local=evaluate(ablate(model, keep="local"), x, y, batch_size),
        offlocal=evaluate(ablate(model, keep="offlocal"), x, y, batch_size),
    )


@torch.no_grad()
def local_change(end: nn.Module, switch: nn.Module) -> dict[str, float]:
    """‖local(θ_end) − local(θ_switch)‖ / ‖local(θ_switch)‖ of each relaxed layer's weight.

    ``switch`` is the model at the switch, embedded into the same relaxed architecture as ``end`` (its
    off-local entries are zero). "local" = the entries inside the conv's connectivity (``local_mask()``);
    biases are left out (a relaxed layer's bias has no off-local part to contrast with).
    """
    ends, starts = relaxed_layers(end), relaxed_layers(switch)
    if ends.keys() != starts.keys():
        raise ValueError(f"relaxed layers differ: end has {sorted(ends)}, switch has {sorted(starts)}; "
                         "embed the switch snapshot into the end model's architecture first")
    out = {}
    for name, m in ends.items():
        mask = m.local_mask()
        w1, w0 = m.weight[mask], starts[name].weight[mask]
        if w1.shape != w0.shape:
            raise ValueError(f"layer {name!r}: local entries differ in count ({w1.numel()} vs {w0.numel()})")
        out[name] = ((w1 - w0).norm() / w0.norm()).item()
    return out


# ---- the experiment runner (archrelax.analysis.experiment) -------------------------------------------------
@register_analysis("ablation", params=("seed", "eval_test_samples"), inputs=weight_files)
def run(ctx: Context) -> AblationResult:
    """Every finished relaxed run (efcn, elcn, hier, ...; attention runs skipped): both parts, local only, off-local
    only; local drift (one job per run: in the worker processes when there are several)."""
    res = AblationResult()
    res.missing += [Missing(run=r.id, reason="an attention run: no off-local weights to ablate (its reach is in the "
                            "attention, measured in its metrics)") for r in ctx.of_kind("attn")]
    runs = ctx.finished(ctx.of_kind(*(k for k in RELAXED_KINDS if k != "attn")), res.missing)
    for rec, missing in run_jobs(ctx, _record, [r.id for r in runs], "ablation"):
        res.missing += missing
        if rec is not None:
            res.runs.append(rec)
    return res


def _record(ctx: Context, run_id: str) -> tuple[AblationRecord | None, list[Missing]]:
    from archrelax.train.checkpoint import load_checkpoint

    r, missing = ctx.plan[run_id], []
    final = ctx.folder(r).final_path

    def one() -> AblationRecord:
        ckpt = load_checkpoint(final)
        model = ctx.load(ckpt)
        x, y = ctx.data()["test"]
        ab = evaluate_ablation(model, x, y, batch_size=ctx.s.batch_size)
        change: dict[str, float] = {}
        snap = ctx.switch_snapshot(r)
        if snap is None:
            missing.append(Missing(run=r.id, reason="switch snapshot not found: no local_change"))
        else:
            change = local_change(model, ctx.embedded(snap, model, ckpt["arch"]))
        parts = ("both", "local", "offlocal")
        return AblationRecord(**ctx.tag(r), test_acc=Parts(**{k: getattr(ab, k).acc for k in parts}),
                              test_loss=Parts(**{k: getattr(ab, k).loss for k in parts}), local_change=change)

    return guard(missing, r, "ablation", one), missing
