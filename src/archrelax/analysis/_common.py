"""Shared pieces of the analyses: a mode guard, a deterministic evaluation, plain-data conversion.

Every analysis evaluates models in eval mode (BatchNorm uses its running statistics, dropout is off): the
loss is then a fixed function of the weights, and no buffer is updated. The caller's training flags are
saved and restored, so an analysis never leaves the caller's model in a different mode.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Mean cross-entropy (nats) and accuracy (fraction in [0, 1]) on a set of N examples."""

    loss: float
    acc: float
    n: int


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive slices of (x, y); ``batch_size=None`` means one batch."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; they must match")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    step = len(x) if batch_size is None else batch_size
    for i in range(0, len(x), max(step, 1)):
        yield x[i : i + step], y[i : i + step]


@contextlib.contextmanager
def cpu_pooling(model: nn.Module, device: torch.device) -> Iterator[None]:
    """For the block, feed every ``nn.MaxPool2d`` of ``model`` its input in channels-last layout and hand its
    output back contiguous (on CPU only). The values are the same bit for bit (a maximum is a maximum), but
    torch's CPU kernel for contiguous NCHW inputs is 2.5-5x slower than for channels-last ones on the shapes of
    a VanillaCNN (13.8 -> 5.4 ms for (256, 32, 15, 15) with the two copies, one thread): the largest cost of
    evaluating an eFCN after its first matmul. The hooks are removed afterwards."""
    if device.type != "cpu":
        yield
        return
    to_cl = lambda mod, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]) \
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 else None  # noqa: E731
    back = lambda mod, args, out: out.contiguous() if isinstance(out, torch.Tensor) else None  # noqa: E731
    handles = []
    for m in model.modules():
        if type(m) is nn.MaxPool2d and not m.return_indices:
            handles += [m.register_forward_pre_hook(to_cl), m.register_forward_hook(back)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def log_probs(model: nn.Module, x: torch.Tensor, batch_size: int | None = 256) -> torch.Tensor:
    """log-softmax of the model's outputs, (N, num_classes), in eval mode."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    step = max(len(x), 1) if batch_size is None else batch_size
    with eval_mode(model), cpu_pooling(model, x.device):
        out = [F.log_softmax(model(x[i : i + step]).float(), dim=1) for i in range(0, len(x), step)]
    return torch.cat(out) if out else torch.empty(0)


def metrics_from_log_probs(logp: torch.Tensor, y: torch.Tensor) -> Metrics:
    """The one place losses and accuracies are computed from (N, K) log-probabilities."""
    if len(y) == 0:
        return Metrics(loss=math.nan, acc=math.nan, n=0)
    loss = F.nll_loss(logp, y.to(logp.device), reduction="mean").item()
    acc = (logp.argmax(dim=1) == y.to(logp.device)).float().mean().item()
    return Metrics(loss=loss, acc=acc, n=len(y))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = 256) -> Metrics:
    """Cross-entropy and accuracy of ``model`` on normalised inputs x (N, C, H, W), labels y (N,)."""
    return metrics_from_log_probs(log_probs(model, x, batch_size), y)


def to_plain(obj: Any) -> Any:
    """Dataclasses / tensors / tuples -> JSON-ready plain data (tensors become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/Infinity; browsers' JSON.parse rejects them
    return obj
