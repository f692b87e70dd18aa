"""``relax()`` checks what it returns: the relaxed model must compute its source's function.

Each relaxed layer is exact by construction (tests/test_relax.py proves it over many layer configurations),
but a model's ``forward`` can defeat the swap: it may read a conv's parameters outside the conv
(``self.conv(x) / self.conv.weight.abs().mean()``: the eFCN's weight has another shape and meaning), call a
functional conv (``F.conv2d(x, self.w)``) that the relaxation cannot see, or branch on values that the swap
changes. So after building the relaxed model, ``relax`` runs both models on an input shaped like its
example input and compares the outputs.

The input: the example input at a batch of at least 2, every floating tensor replaced by seeded standard-normal
values of the same shape, dtype and device (the example is often zeros, on which a conv shows only its bias);
integer tensors (token ids, masks) are kept. Both models run in eval mode (dropout off, BatchNorm on its running
statistics; each module's mode restored afterwards), under ``no_grad``, from the same RNG state, with buffers
restored. That is the pass ``relax`` learns the layers' input shapes from (``footprint.probe``): the source's
output from it is reused here, so the source runs once.

Tolerance: ``max|y_relaxed − y| <= tol · max|y|`` over the output tensors, with tol = min(1024·eps, 0.1) of the
output dtype: float32 1.2e-4, float64 2.3e-13, bfloat16 and float16 0.1 (gross failures only). Measured on the
registered models at their default initialisation, every target (VanillaCNN on 3×32×32 and 1×28×28, CIFAR
AlexNet; lc, fc, wide:full, wide:5, tiled:2, and lc/wide/tiled then fc), the float32 relative error is at most
2.9e-7 (about 2.5 eps), so the tolerance leaves a margin of 400 for deeper or trained models; the defeats above
give errors of order 1 (the issue's ``self.conv(x) / self.conv.weight.abs().mean()``: 536 on outputs of ~3).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .footprint import ExampleInput, Probe, eval_forward, probe_inputs

__all__ = ["RelaxCheckError", "check_relaxed", "relative_error", "tolerance"]

_ULPS, _LOOSEST = 1024, 0.1


class RelaxCheckError(ValueError):
    """The relaxed model's output differs from its source's beyond float tolerance (see :func:`check_relaxed`)."""


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance of the check for outputs of ``dtype``: min(1024 · eps(dtype), 0.1)."""
    return min(_ULPS * torch.finfo(dtype).eps, _LOOSEST)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) output: a tensor, or tuples, lists and dicts of them (in order)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def relative_error(source: nn.Module, relaxed: nn.Module, example_input: ExampleInput, *,
                   reference: Probe | None = None) -> tuple[float, float, torch.dtype]:
    """``(max|y_relaxed − y|, max|y|, dtype)`` over every output tensor, on the randomised example input
    (:func:`~archrelax.embed.footprint.probe_inputs`). ``reference``: the probe relax() made of the source (its
    input and eval-mode output), so the source does not run twice."""
    if reference is None:
        args, kwargs = probe_inputs(source, example_input)
        want = _tensors(eval_forward(source, args, kwargs))
    else:
        args, kwargs, want = reference.args, reference.kwargs, _tensors(reference.output)
    try:
        got = _tensors(eval_forward(relaxed, args, kwargs))
    except (RuntimeError, TypeError, ValueError, IndexError) as e:  # e.g. F.conv2d given an eFCN's 2-d weight
        raise _ForwardFailed(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        return float("inf"), 0.0, torch.float32
    diff = scale = 0.0
    dtype = torch.float32
    for a, b in zip(want, got):
        if not a.is_floating_point():
            diff = max(diff, float((a != b).any()))  # integer outputs (argmax, ...) must agree exactly
            continue
        dtype = a.dtype
        diff = max(diff, float((b.double() - a.double()).abs().max()) if a.numel() else 0.0)
        scale = max(scale, float(a.double().abs().max()) if a.numel() else 0.0)
    return diff, scale, dtype


class _ForwardFailed(Exception):
    pass


def check_relaxed(source: nn.Module, relaxed: nn.Module, example_input: ExampleInput, to: str,
                  names: list[str], *, reference: Probe | None = None) -> None:
    """Raise :class:`RelaxCheckError` when ``relaxed`` does not compute ``source``'s function to float tolerance
    (module docstring); ``names``: the relaxed layers, for the message. A source output that is not finite on
    the randomised input cannot be compared: the check is skipped. ``reference``: relax()'s probe of the source
    (its input and output), reused. A model with no input to run is not checked: no
    ``example_input`` and no ``input_shape`` (a relaxation of layers already relaxed, which needs no forward
    pass; the relaxation that made them checked the forward)."""
    if reference is None and example_input is None and getattr(source, "input_shape", None) is None:
        return
    try:
        diff, scale, dtype = relative_error(source, relaxed, example_input, reference=reference)
    except _ForwardFailed as e:
        what = f"its forward() fails on a random input shaped like the example input ({e})"
    else:
        if scale != scale or scale == float("inf"):  # NaN/inf in the source's own output
            return
        tol = tolerance(dtype)
        rel = diff / max(scale, torch.finfo(dtype).tiny)
        if rel <= tol:
            return
        what = (f"outputs differ by up to {diff:.4g} on outputs of scale {scale:.4g} (relative {rel:.3g}; the tolerance "
                f"for {str(dtype).replace('torch.', '')} is {tol:.3g}), on a random input shaped like the example input")
    shown = ", ".join(repr(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise RelaxCheckError(
        f"relax(to={to!r}) of {type(source).__name__}: the relaxed model does not compute the source's function: "
        f"{what}. The "
        f"relaxed layers ({shown}) are exact on their own, so forward() probably uses them in a way the swap cannot "
        "follow: it reads a conv's parameters outside the conv (e.g. `self.conv.weight` in an expression: the relaxed "
        "layer's weight has another shape and meaning), calls a functional conv (F.conv2d) with them, or branches on "
        "the input's values; rewrite forward() to call the conv module only, or pass check=False to skip this check")
