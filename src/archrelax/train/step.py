"""The arithmetic of the loop, written once for one model or for a stack of R (``archrelax.train.stacked``).

:class:`UpdateStep` is one optimiser update: the learning rate set, the forward under autocast, the mean
cross-entropy, backward, the soft release's penalty gradient, the optimiser step. :func:`evaluate` and
:func:`evaluate_splits` are the evaluation: summed cross-entropy and correct counts over every batch of a feed.

A stack takes the *member-major merged batch* ``(R·B, ...)`` (rows ``r·B .. (r+1)·B - 1`` are member r's).
Its loss for member r is the mean cross-entropy of member r's rows and the loss it differentiates their sum,
so member r's parameters get the gradient of its own loss only; every other operation is the one model's, on
each member's rows, so that a member's numbers are those of a run of its own (bit for bit where the stacked
layers run member by member, see ``stacked.py``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TrainConfig

__all__ = ["UpdateStep", "evaluate", "evaluate_splits", "autocast", "set_lr", "Losses"]

Losses = tuple[float, float, float, float]  # (train_loss, train_acc, test_loss, test_acc)


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``amp="bf16"``; nothing for None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class UpdateStep:
    """One update of ``models`` by ``opt``: ``step(x, y, lr, lams) -> (loss, correct)``.

    One model: ``models=[model]``, ``forward`` the model (or its compiled form), ``net=None``. A stack:
    ``forward`` the stacked module ``net`` (or its compiled form), ``models`` its R members (whose parameters
    are views of ``net``'s), ``x`` the merged batch (module docstring). ``lams``: λ(t) of the soft release per
    member, at the member's step before this update (0: no penalty; unused when ``cfg.soft_lambda`` is 0).
    """

    def __init__(self, cfg: TrainConfig, forward: Callable[[Tensor], Tensor], opt: torch.optim.Optimizer,
                 models: Sequence[nn.Module], net: nn.Module | None = None):
        self.forward, self.opt, self.models, self.net = forward, opt, list(models), net
        self.amp, self.soft, self.toward = cfg.amp, cfg.soft_lambda > 0, cfg.soft_toward

    def __call__(self, x: Tensor, y: Tensor, lr: float, lams: Sequence[float]) -> tuple[Tensor, Tensor]:
        """``(loss, correct)``, detached and on the device (no sync): shape ``()`` each for one model, ``(R,)``
        for a stack (member r's mean loss and count of correct predictions over its B rows)."""
        set_lr(self.opt, lr)
        with autocast(x.device, self.amp):
            out = self.forward(x)
            if self.net is None:
                loss = F.cross_entropy(out.float(), y)
            else:  # (R,): each member's mean over its own rows
                loss = F.cross_entropy(out.float(), y, reduction="none").view(len(self.models), -1).mean(1)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # a stack: member r's parameters get the gradient of its own loss only
        self.add_soft_grad(lams)
        self.opt.step()
        hit = out.argmax(1) == y
        correct = hit.sum() if self.net is None else hit.view(len(self.models), -1).sum(1)
        return loss.detach(), correct

    def add_soft_grad(self, lams: Sequence[float]) -> None:
        """Soft release: λ_r·2(θ_r − Pθ_r) added to member r's gradient in place (the fused form of
        λ·‖θ − Pθ‖², one pass over the weights, by ``embed.penalty.add_penalty_grad_`` on the member's model).
        In a stack, the member's ``.grad`` are pointed at its slice of the stacked gradient for the call.
        λ = 0 adds nothing, so λ = 0 is the hard relaxation."""
        if not self.soft:
            return
        from archrelax.embed.penalty import add_penalty_grad_

        if self.net is None:
            if lams[0] > 0:
                add_penalty_grad_(self.models[0], self.toward, lams[0])
            return
        stacked = self._stacked_grads()
        for r, (model, lam) in enumerate(zip(self.models, lams)):
            if lam <= 0:
                continue
            params = dict(model.named_parameters())
            for name, p in params.items():
                p.grad = stacked[name].grad[r]
            try:
                add_penalty_grad_(model, self.toward, lam)  # in place, into the stack's gradients
            finally:
                for p in params.values():
                    p.grad = None

    def _stacked_grads(self) -> dict[str, nn.Parameter]:
        """The stacked parameters by name, the relaxed layers' given a zero gradient where backward left none: the
        penalty creates a gradient the loss did not (``add_penalty_grad_`` on one model does too)."""
        from archrelax.embed.relax import relaxed_layers

        stacked = dict(self.net.named_parameters())
        for path, layer in relaxed_layers(self.models[0]).items():
            for n, _ in layer.named_parameters(recurse=False):
                p = stacked[f"{path}.{n}" if path else n]
                if p.grad is None and p.requires_grad:
                    p.grad = torch.zeros_like(p)
        return stacked


@torch.no_grad()
def evaluate(model: nn.Module, feed, amp: str | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over every batch of ``feed`` (eval mode, restored after)."""
    return _evaluate(model, feed, amp, None)[0]


def evaluate_splits(model: nn.Module, feeds: dict[str, Any], amp: str | None = None,
                    members: int | None = None) -> list[Losses]:
    """``(train_loss, train_acc, test_loss, test_acc)`` over ``feeds["train"]`` and ``feeds["test"]``: one tuple
    for one model (``members=None``), one per member for a stack of ``members`` (each evaluation batch given to
    every member: the merged batch is the batch repeated R times)."""
    train, test = (_evaluate(model, feeds[split], amp, members) for split in ("train", "test"))
    return [(*a, *b) for a, b in zip(train, test)]


@torch.no_grad()
def _evaluate(model: nn.Module, feed, amp: str | None, members: int | None) -> list[tuple[float, float]]:
    """Each member's sums formed exactly as for one model: the same ops on the same rows."""
    was_training = model.training
    model.eval()
    loss = correct = None
    n = 0
    for x, y in feed.epoch(0):
        B = x.shape[0]
        with autocast(x.device, amp):
            if members is None:
                outs = [model(x)]
            else:
                outs = model(x.unsqueeze(0).expand(members, *x.shape).reshape(members * B, *x.shape[1:]))
                outs = outs.view(members, B, -1).unbind(0)
        batch_loss = torch.stack([F.cross_entropy(o.float(), y, reduction="sum") for o in outs])
        batch_correct = torch.stack([(o.argmax(1) == y).sum() for o in outs])
        loss = batch_loss if loss is None else loss + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        n += B
    model.train(was_training)
    return [(lo / n, c / n) for lo, c in zip(loss.tolist(), correct.tolist())]
