"""Training-step speed of CNNs and their relaxations (CPU by default).

1. One eFCN training step of VanillaCNN against the bare matmuls of the same shapes (forward X·Wᵀ, backward
   dW = dYᵀ·X and dX = dY·W for every dense layer; no dX for the first), measured interleaved in one run.
   Target: the step reaches >= 0.85 of the bare matmuls' throughput.
2. Training images/s of the CNN, eLCN and eFCN of VanillaCNN and AlexNet.

    python benchmarks/bench_train_step.py [--batch-size 128] [--reps 5] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.embed.relax import relax
from archrelax.models import create_model
from archrelax.train.config import TrainConfig
from archrelax.train.setup import make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, batch: int, device: torch.device, with_optimizer: bool = True):
    """A closure doing exactly the trainer's step (forward, cross-entropy, zero_grad, backward, SGD step)."""
    opt = make_optimizer(TrainConfig(lr=1e-4), model)  # tiny lr: many steps stay finite
    x = torch.randn(batch, *model.input_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if with_optimizer:
            opt.step()

    return step


def make_bare_matmuls(model: nn.Module, batch: int, device: torch.device):
    """The forward and backward matmuls of every dense layer of an eFCN (DenseConv and nn.Linear)."""
    shapes = [m.weight.shape for m in model.modules() if hasattr(m, "weight") and m.weight is not None
              and m.weight.dim() == 2]  # (out, in) of each dense map, in forward order
    ops = []
    for i, (o, n) in enumerate(shapes):
        w, x, dy = (torch.randn(*s, device=device) for s in ((o, n), (batch, n), (batch, o)))
        ops.append((w, x, dy, i > 0))

    def run() -> None:
        for w, x, dy, need_dx in ops:
            x @ w.T  # forward (B, out)
            dy.T @ x  # weight gradient (out, in)
            if need_dx:
                dy @ w  # input gradient (B, in)

    return run, shapes


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def efcn_vs_matmuls(batch: int, reps: int, device: torch.device) -> None:
    example = torch.zeros(1, 3, 32, 32, device=device)
    efcn = relax(create_model("vanilla_cnn").to(device), to="fc", example_input=example)
    step, fwd_bwd = make_step(efcn, batch, device), make_step(efcn, batch, device, with_optimizer=False)
    bare, shapes = make_bare_matmuls(efcn, batch, device)
    for f in (step, fwd_bwd, bare):
        f()  # warm-up
    t_step, t_fb, t_bare = [], [], []
    for _ in range(reps):  # interleaved, so load changes hit all three alike
        t_bare.append(timed(bare, device))
        t_fb.append(timed(fwd_bwd, device))
        t_step.append(timed(step, device))
    b, s, fb = (statistics.median(t) for t in (t_bare, t_step, t_fb))
    flops = sum(2 * batch * o * n * (3 if i else 2) for i, (o, n) in enumerate(shapes))
    print(f"eFCN(VanillaCNN) dense shapes {[tuple(s) for s in shapes]}, batch {batch}, {flops / 1e9:.1f} GFLOP/step")
    print(f"bare matmuls        {b * 1e3:8.1f} ms  ({flops / b / 1e9:.1f} GFLOP/s)")
    print(f"eFCN fwd+bwd        {fb * 1e3:8.1f} ms  ratio {b / fb:.3f} of bare-matmul throughput")
    print(f"eFCN training step  {s * 1e3:8.1f} ms  ratio {b / s:.3f} of bare-matmul throughput (target >= 0.85)")


LABELS = {"cnn": "CNN", "lc": "eLCN", "fc": "eFCN"}


def images_per_s(batch: int, reps: int, device: torch.device, models: list[str]) -> None:
    print(f"training images/s (batch {batch}, SGD momentum, median of {reps}):")
    for name in models:
        cnn = create_model(name).to(device)
        example = torch.zeros(1, *cnn.input_shape, device=device)
        row = []
        for kind in ("cnn", "lc", "fc"):
            model = cnn if kind == "cnn" else relax(cnn, to=kind, example_input=example)
            step = make_step(model, batch, device)
            step()
            t = statistics.median(timed(step, device) for _ in range(reps))
            n_params = sum(p.numel() for p in model.parameters())
            row.append(f"{LABELS[kind]} {batch / t:8.0f} img/s ({n_params / 1e6:.1f}M params)")
            del model, step
        print(f"  {name:12s} " + " | ".join(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    p.add_argument("--models", default="vanilla_cnn,alexnet", help="models for images/s, comma-separated; empty skips (default: vanilla_cnn,alexnet)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    torch.manual_seed(0)
    efcn_vs_matmuls(args.batch_size, args.reps, device)
    models = [m for m in args.models.split(",") if m]
    if models:
        images_per_s(args.batch_size, args.reps, device, models)


if __name__ == "__main__":
    main()
