"""Memory table: parameter and optimiser-state bytes of a model as CNN, eLCN and eFCN (archrelax.embed.footprint)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archrelax.embed.footprint import OPTIMIZER_STATE, footprint

__all__ = ["memory_table"]


def memory_table(model: nn.Module, example_input: torch.Tensor | tuple[int, ...] | None = None) -> dict[str, Any]:
    """``{"rows": [{"form", "params", "param_bytes", "optimizer_bytes": {opt: bytes}}], "footprint": {...}}``.

    Forms: "cnn", "lc" (eLCN), "fc" (eFCN) and "fc_ref" (the reference code's eFCN, padding columns kept).
    Nothing relaxed is allocated; the model is left as it was (footprint restores buffers and RNG).
    """
    fp = footprint(model, example_input, to=("cnn", "lc", "fc"))
    rows = [{"form": t, "params": fp.total_params(t), "param_bytes": fp.total_bytes(t),
             "optimizer_bytes": {o: fp.optimizer_bytes(t, o) for o in OPTIMIZER_STATE}} for t in fp.targets]
    return {"rows": rows, "footprint": fp.to_dict()}
