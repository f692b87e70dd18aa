"""Baselines "of the same size": the eFCN / eLCN architecture of a CNN with fresh standard initialisation.

``fcn(base="vanilla_cnn")`` is the paper's vanilla FCN: the base CNN relaxed to dense layers
(``archrelax.embed.relax.relax(to="fc")``), then every relaxed layer re-initialised with
``reset_parameters()`` (uniform ±1/sqrt(fan_in), fan_in = connections per output unit), so it starts from
a generic point of the larger space rather than from the embedded CNN. Layers that ``relax`` leaves alone
(the classifier) keep the base factory's own fresh initialisation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import create_model, register_model


def _relaxed_baseline(to: str, base: str, layers: Any, base_kw: dict[str, Any]) -> nn.Module:
    if base in ("fcn", "lcn"):
        raise ValueError(f"{to}n baseline: base {base!r} is itself a baseline; give a CNN such as 'vanilla_cnn'")
    from archrelax.embed import RelaxedConv
    from archrelax.embed.relax import relax

    # a base that does not say its input shape (torchvision's) gets it from create_model(..., input_shape=)
    cnn = create_model(base, input_shape=base_kw.pop("input_shape", None), **base_kw)
    model = relax(cnn, to=to, example_input=torch.zeros(1, *cnn.input_shape), layers=layers)
    n = 0
    for module in model.modules():
        if isinstance(module, RelaxedConv):
            module.reset_parameters()
            n += 1
    if n == 0:
        raise ValueError(f"{to}n baseline: base {base!r} has no layer that relax(to={to!r}) converts")
    model.input_shape = tuple(cnn.input_shape)
    return model


@register_model("fcn")
def fcn(*, base: str = "vanilla_cnn", layers: Any = None, **base_kw: Any) -> nn.Module:
    """eFCN architecture of ``base`` (built with ``base_kw``), freshly initialised."""
    return _relaxed_baseline("fc", base, layers, base_kw)


fcn.takes_input_shape = True  # create_model hands its input_shape to the base model


@register_model("lcn")
def lcn(*, base: str = "vanilla_cnn", layers: Any = None, **base_kw: Any) -> nn.Module:
    """eLCN architecture of ``base`` (built with ``base_kw``), freshly initialised."""
    return _relaxed_baseline("lc", base, layers, base_kw)


lcn.takes_input_shape = True
